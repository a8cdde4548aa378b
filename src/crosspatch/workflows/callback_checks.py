"""The checks :class:`~crosspatch.workflows.callback.CrosspatchCallback` makes when it is made and
when training begins, so that a callback that cannot run, or would never run, is refused then and
not at its first diagnostic, hours into training."""

from __future__ import annotations

from pathlib import Path

from ..errors import OptionError
from ..models.anatomy import is_peft_model

__all__ = ["check_base", "check_base_dtype", "check_it_runs", "refuse_sharded_training"]


def check_it_runs(every_n_steps: int | None, on_save: bool, args, state) -> None:
    """A callback that would diagnose no step of this training is refused as it begins: at saves
    only, where the trainer saves nothing (``save_strategy="no"``), or every N steps beyond the
    training's last step and no save to diagnose at."""
    save_strategy = getattr(args, "save_strategy", None)
    saves = on_save and str(getattr(save_strategy, "value", save_strategy)) != "no"
    last = int(getattr(state, "max_steps", 0) or 0)  # (0: not known yet)
    if saves or (every_n_steps and not (last and every_n_steps > last)):
        return
    why = (f"every_n_steps={every_n_steps} is beyond this training's last step ({last})" if every_n_steps
           else "it diagnoses at each save")
    saving = ("this training saves no checkpoint (save_strategy='no')" if on_save else
              "it does not diagnose at saves (on_save=False)")
    raise OptionError(f"CrosspatchCallback would never run: {why}, and {saving}; give a smaller every_n_steps=, "
                      "or diagnose at the trainer's saves")


def refuse_sharded_training(args, model) -> None:
    """A model whose weights are split across processes (DeepSpeed ZeRO-3, FSDP, FSDP2's
    DTensors) cannot be run by one process alone: named when training begins."""
    way = None
    if model is not None:
        if any(hasattr(p, "ds_id") for p in model.parameters()):
            way = "DeepSpeed ZeRO-3"
        elif any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
            way = "FSDP"
        elif any(type(p).__name__ == "DTensor" or type(getattr(p, "data", None)).__name__ == "DTensor"
                 for p in model.parameters()):
            way = "FSDP2 (DTensor weights)"
    if way is None and args is not None and getattr(args, "fsdp", None):
        way = "FSDP"
    if way is None:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            way = "DeepSpeed ZeRO-3"
    if way is not None:
        raise OptionError(f"CrosspatchCallback cannot run on a model sharded by {way}: each process holds only a "
                          "part of every weight, so no process can run the diagnostic alone. Diagnose the saved "
                          "checkpoints instead (`crosspatch lineage BASE --checkpoints OUTPUT_DIR`), or train with "
                          "DDP or DeepSpeed ZeRO-1/2")


def check_base_dtype(base, model) -> None:
    """A base given in memory computes in the dtype of the model trained (one model's states enter
    the other's layers): refused when training begins, not at the first diagnostic, hours in (a
    base given as a path is loaded in the model's dtype)."""
    import torch

    from ..execution.in_memory import differing_dtypes

    if not isinstance(base, torch.nn.Module) or model is None or is_peft_model(model):
        return
    if (shown := differing_dtypes({"base": base, "the model trained": model})) is not None:
        raise OptionError(f"CrosspatchCallback base= is a model of another dtype than the model trained ({shown}): "
                          "cast it to the model's dtype, or give the base's path (loaded in the model's dtype)")


def check_base(base) -> None:
    """``base`` is None, a torch module, or the path (or hub id) of a checkpoint that is there:
    checked when the callback is made, not at its first diagnostic, hours into training."""
    import torch

    if base is None or isinstance(base, torch.nn.Module):
        return
    if not isinstance(base, (str, Path)):
        raise OptionError(f"CrosspatchCallback base= must be a checkpoint's path or hub id, or a model in memory, "
                          f"not {type(base).__name__}")
    from ..models.paths import check_model_path

    check_model_path(str(base), "CrosspatchCallback base=")
