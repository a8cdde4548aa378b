"""A model computing as itself while crosspatch runs it: by its own forward, in eval mode, in
its weights' dtype, returning output objects, whatever a trainer, an enclosing autocast or its
config set (:func:`own_forward`, entered by every pass through ``ModelHandle.active``), and left
as it was found (:func:`evaluating`)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["evaluating", "own_forward", "without_autocast"]


@contextlib.contextmanager
def own_forward(model: nn.Module) -> Iterator[None]:
    """Run ``model`` by its own forward, in its weights' dtype, returning output objects:

    - not the mixed-precision forward a trainer gave it: accelerate (under Trainer, TRL,
      ``accelerate launch``) wraps a prepared model's forward in ``torch.autocast`` and keeps the
      forward it had as ``_original_forward``. Every other pass runs the model's layers in its
      weights' dtype, so decoding under the autocast would find events on half-precision logits
      that its cells do not reproduce. Any other forward (an accelerate device-map hook) is kept.
    - outside an autocast the caller entered (a training loop's ``with torch.autocast(...)``
      around a call of crosspatch): its passes would compute in half precision while the run
      records the weights' dtype.
    - in eval mode (no dropout, no router noise) where a training loop left it in training mode:
      the mode of each module is put back on leaving (:func:`evaluating`; a model already in eval
      mode costs one attribute read).
    - with ``return_dict`` on where a config turns it off (``"return_dict": false`` in a
      checkpoint's config.json): transformers 5's models then fail inside their forward, whose
      inner model reads it from the config and returns a tuple (callers also pass
      ``return_dict=True``, which transformers 4 hands down).

    All is put back on leaving (a training goes on with its forward and its autocast)."""
    config = getattr(model, "config", None)
    configs = [c for c in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None))
               if c is not None and getattr(c, "return_dict", True) is False]
    original = model.__dict__.get("_original_forward")
    wrapped = model.__dict__.get("forward")
    swap = callable(original) and callable(wrapped) and wrapped is not original
    autocast = _autocast_devices()
    if not swap and not configs and not autocast and not model.training:
        yield
        return
    with contextlib.ExitStack() as stack:
        if model.training:
            stack.enter_context(evaluating(model))
        if autocast:
            stack.enter_context(without_autocast())
        if swap:
            model.forward = original  # pyright: ignore[reportAttributeAccessIssue] - callable, checked above
        for c in configs:
            c.return_dict = True
        try:
            yield
        finally:
            if swap:
                model.forward = wrapped  # pyright: ignore[reportAttributeAccessIssue] - callable, checked above
            for c in configs:
                c.return_dict = False


@contextlib.contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """``models`` in eval mode for the duration, each of their modules put back in the mode it had
    (a training loop's model goes on training; a module its owner kept in eval mode stays there).
    Entered once around a run by the model sets, and by :func:`own_forward` around a pass that
    finds a model in training mode."""
    modules = [list(model.modules()) for model in models]
    training = [{id(m) for m in mods if m.training} for mods in modules]
    for model, on in zip(models, training):
        if on:
            model.eval()
    try:
        yield
    finally:
        for model, mods, on in zip(models, modules, training):
            if len(on) == len(mods):
                model.train()  # the whole model trained: its own train(), which some modules extend (DoRA's cache)
            elif on:
                for module in mods:
                    module.training = id(module) in on


@contextlib.contextmanager
def without_autocast() -> Iterator[None]:
    """Every autocast the caller entered turned off for the duration (work crosspatch does in its
    weights' dtype whatever the calling loop computes in: passes, a crosscoder's training)."""
    with contextlib.ExitStack() as stack:
        for device_type in _autocast_devices():
            stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def _autocast_devices() -> list[str]:
    """The device types on which an autocast is on in this thread (torch 2.4+ takes the device
    type; older versions have a function for each)."""
    try:
        return [d for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
    except TypeError:  # torch < 2.4
        return [d for d, on in (("cpu", torch.is_autocast_cpu_enabled()), ("cuda", torch.is_autocast_enabled())) if on]
