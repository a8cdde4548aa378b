"""Loading checkpoints, architecture anatomy, pair checks and the forward-pass primitives (``forward.py``).

This package imports nothing above it (only ``crosspatch.errors``)."""

from .anatomy import Anatomy, find_anatomy
from .forward import ForwardStates, ModelHandle, capture_forward, late_forward, readout
from .loading import LoadOptions
from .vocab import RealVocabulary, build_real_vocabulary, masked_argmax, tokenize_once

__all__ = [
    "Anatomy", "ForwardStates", "LoadOptions", "ModelHandle", "RealVocabulary", "build_real_vocabulary",
    "capture_forward", "find_anatomy", "late_forward", "masked_argmax", "readout", "tokenize_once",
]
