"""Loading pairs, architecture anatomy, pair checks and the execution primitives."""

from .anatomy import Anatomy, find_anatomy
from .execution import Capture, ModelHandle, capture_forward, late_forward, readout
from .loading import LoadOptions, ModelPair, load_pair, pair_from_models
from .vocab import RealVocabulary, build_real_vocabulary, masked_argmax, tokenize_once

__all__ = [
    "Anatomy", "Capture", "LoadOptions", "ModelHandle", "ModelPair", "RealVocabulary",
    "build_real_vocabulary", "capture_forward", "find_anatomy", "late_forward", "load_pair",
    "masked_argmax", "pair_from_models", "readout", "tokenize_once",
]
