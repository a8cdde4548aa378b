"""crosspatch: first-divergence cross-patching of a base model and its fine-tuned descendant.

    pair = crosspatch.load_pair("base-dir", tuned="tuned-dir")          # or adapter="lora-dir"
    result = crosspatch.run(pair, crosspatch.load_prompts("prompts.jsonl"), boundary=0.6)
    result.verdict; result.effects(); result.events  # pandas DataFrames

Names are imported on first use, so that ``crosspatch --help`` answers without loading torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_EXPORTS = {
    "CELLS": "core.cells", "READOUTS": "core.cells", "CellRecord": "core.cells",
    "DivergenceEvent": "core.divergence", "NoDivergence": "core.divergence",
    "CrosspatchError": "errors",
    "Analysis": "core.analysis", "EventSet": "core.analysis",
    "ModelPair": "execution", "ModelSet": "execution", "load_models": "execution", "load_pair": "execution",
    "models_from_modules": "execution", "pair_from_models": "execution", "pair_from_peft_model": "execution",
    "LoadOptions": "models",
    "RunConfig": "runner.config", "RunResult": "runner.result", "rerender": "runner.result", "open_run": "workflows.opening",
    "run": "runner.pipeline",
    "compare": "runner.compare", "lineage": "runner.lineage",
    "Prompt": "inputs.prompts", "load_prompts": "inputs.prompts",
    "preflight": "workflows.preflight", "splice": "workflows.splice", "merge_check": "workflows.mergecheck",
    "CrosspatchCallback": "workflows.callback",
}

# Modules that moved when the package was grouped by layer (docs/architecture.md). Their old import
# paths still work for one release: ``import crosspatch.pipeline`` gives ``crosspatch.runner.pipeline``
# itself (the same module object, so patching either patches both), with a DeprecationWarning.
MOVED_MODULES = {
    "analysis": "core.analysis", "cells": "core.cells", "divergence": "core.divergence", "records": "core.records",
    "registry": "core.registry", "stats": "core.stats", "tokens": "core.tokens", "verdict": "core.verdict",
    "kinds": "analyses.event_kinds", "routing": "analyses.routing", "consequence": "analyses.consequence",
    "controls": "analyses.controls", "features": "analyses.features",
    "pipeline": "runner.pipeline", "runconfig": "runner.config", "result": "runner.result", "resume": "runner.resume",
    "shards": "runner.shards", "summary": "runner.summary", "finished": "runner.finished", "reopen": "runner.finished",
    "progress": "runner.progress", "compare": "runner.compare", "validation": "runner.checks",
    "schemas": "store.schemas", "prompts": "inputs.prompts", "validators": "inputs.validators",
    "gate": "workflows.gate", "integrations": "workflows.callback", "models.execution": "models.forward",
    "workflows.section": "analyses.preflight_section",
}

__all__ = [  # literal, for readers and static tools; a test keeps it equal to _EXPORTS
    "Analysis", "CELLS", "CellRecord", "CrosspatchCallback", "CrosspatchError", "DivergenceEvent", "EventSet",
    "LoadOptions", "ModelPair", "ModelSet", "NoDivergence", "Prompt", "READOUTS", "RunConfig", "RunResult", "compare",
    "lineage", "load_models", "load_pair", "load_prompts", "merge_check", "models_from_modules", "open_run",
    "pair_from_models", "pair_from_peft_model", "preflight", "rerender", "run", "splice",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crosspatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers the old import path of a moved module (and of its submodules) with the module at
    its new path."""

    def find_spec(self, fullname, path=None, target=None):
        new = _new_name(fullname)
        return importlib.util.spec_from_loader(fullname, self) if new is not None else None

    def create_module(self, spec):
        import warnings

        new = _new_name(spec.name)
        assert new is not None  # find_spec answered only for a moved name
        warnings.warn(f"{spec.name} moved to {new}; the old path is kept for one release",
                      DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:  # the module at the new path is already executed
        pass


def _new_name(fullname: str) -> str | None:
    prefix = __name__ + "."
    if not fullname.startswith(prefix):
        return None
    rest = fullname[len(prefix):]
    for old in sorted(MOVED_MODULES, key=len, reverse=True):
        if rest == old or rest.startswith(old + "."):
            return prefix + MOVED_MODULES[old] + rest[len(old):]
    return None


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):  # once, also under importlib.reload
    sys.meta_path.insert(0, _MovedModuleFinder())


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
