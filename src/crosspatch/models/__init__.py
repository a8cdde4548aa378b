"""Loading checkpoints, architecture anatomy, pair checks and the forward-pass primitives (``forward.py``).

This package imports nothing above it (only ``crosspatch.errors``). Its names are imported on first
use, so that ``crosspatch.models.options`` is read without torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Anatomy": "anatomy", "find_anatomy": "anatomy", "LoadOptions": "options",
    "ForwardStates": "forward", "ModelHandle": "forward", "capture_forward": "forward", "late_forward": "forward",
    "readout": "forward", "RealVocabulary": "vocab", "build_real_vocabulary": "vocab", "masked_argmax": "vocab",
    "tokenize_once": "vocab",
}
__all__ = [
    "Anatomy", "ForwardStates", "LoadOptions", "ModelHandle", "RealVocabulary", "build_real_vocabulary",
    "capture_forward", "find_anatomy", "late_forward", "masked_argmax", "readout", "tokenize_once",
]

if TYPE_CHECKING:
    from .anatomy import Anatomy, find_anatomy
    from .forward import ForwardStates, ModelHandle, capture_forward, late_forward, readout
    from .options import LoadOptions
    from .vocab import RealVocabulary, build_real_vocabulary, masked_argmax, tokenize_once


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
