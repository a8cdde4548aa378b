"""crosspatch: first-divergence cross-patching of a base model and its fine-tuned descendant.

    pair = crosspatch.load_pair("base-dir", tuned="tuned-dir")          # or adapter="lora-dir"
    result = crosspatch.run(pair, crosspatch.load_prompts("prompts.jsonl"), boundary=0.6)
    result.verdict; result.effects(); result.events  # pandas DataFrames

Names are imported on first use, so that ``crosspatch --help`` answers without loading torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CELLS": "cells", "READOUTS": "cells", "CellRecord": "cells",
    "DivergenceEvent": "divergence", "NoDivergence": "divergence",
    "CrosspatchError": "errors",
    "Analysis": "analysis", "EventSet": "analysis",
    "ModelPair": "execution", "ModelSet": "execution", "load_models": "execution", "load_pair": "execution",
    "models_from_modules": "execution", "pair_from_models": "execution",
    "LoadOptions": "models",
    "RunConfig": "runconfig", "RunResult": "result", "rerender": "result", "run": "pipeline",
    "compare": "compare", "lineage": "compare",
    "Prompt": "prompts", "load_prompts": "prompts",
}

__all__ = [  # literal, for readers and static tools; a test keeps it equal to _EXPORTS
    "Analysis", "CELLS", "CellRecord", "CrosspatchError", "DivergenceEvent", "EventSet", "LoadOptions", "ModelPair",
    "ModelSet", "NoDivergence", "Prompt", "READOUTS", "RunConfig", "RunResult", "compare", "lineage", "load_models",
    "load_pair", "load_prompts", "models_from_modules", "pair_from_models", "rerender", "run",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crosspatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    if name == "compare":  # the submodule of the same name is callable (it calls the function)
        return globals()["compare"]
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
