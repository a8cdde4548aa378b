"""Hooks on decoder layers: the hidden-state argument of a layer call, the late stack's edits,
and the zeroed padding that makes a full pass and a late-only pass over the same batch compute
the same thing."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder layer (or the final norm) is called with."""
    return args[0] if args else kwargs["hidden_states"]


def replace_hidden(args: tuple, kwargs: dict, new: torch.Tensor) -> tuple[tuple, dict]:
    """The call's arguments with its hidden states replaced by ``new``."""
    if args:
        return (new,) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = new
    return args, kwargs


# what decoder layers call their MLP (or mixture of experts), whose output is added to the residual
MLP_NAMES = ("mlp", "block_sparse_moe", "feed_forward", "ffn")


def layer_mlp(layer: nn.Module) -> nn.Module:
    """The MLP (or mixture-of-experts block) of a decoder layer, by the names the families give it
    (:data:`MLP_NAMES`: Granite-MoE's ``block_sparse_moe``, Llama 4's ``feed_forward``, MPT's
    ``ffn``); an :class:`~crosspatch.errors.UnsupportedArchitectureError` naming the layer's
    parts where it has none of them."""
    from ..errors import UnsupportedArchitectureError

    mlp = next((m for name in MLP_NAMES if isinstance(m := getattr(layer, name, None), nn.Module)), None)
    if mlp is None:
        parts = ", ".join(name for name, _ in layer.named_children())
        raise UnsupportedArchitectureError(
            f"{type(layer).__name__} has no MLP crosspatch knows by name ({', '.join(MLP_NAMES)}; its parts: {parts}): "
            "the analyses that read or edit a layer's MLP output cannot run on it")
    return mlp


def edit_hook(layer: nn.Module, site: str, fn):
    """Register a forward hook replacing the output of ``site`` (``mlp``: the layer's MLP or
    mixture of experts, see :func:`layer_mlp`; ``residual``: the layer's output; or a submodule's
    name)."""
    if site == "mlp":
        mlp = layer_mlp(layer)

        def edit_mlp(module, args, output):
            if isinstance(output, (tuple, list)):  # some MLPs (MoE) also return router logits
                return (fn(output[0]),) + tuple(output[1:])
            return fn(output)

        return mlp.register_forward_hook(edit_mlp)
    if site == "residual":
        def edit_residual(module, args, output):
            if isinstance(output, (tuple, list)):
                return (fn(output[0]),) + tuple(output[1:])
            return fn(output)

        return layer.register_forward_hook(edit_residual)
    try:
        module = layer.get_submodule(site)
    except AttributeError:
        raise ValueError(f"edit site must be 'mlp', 'residual' or a submodule of the layer, not {site!r}") from None

    def edit_module(mod, args, output):
        if isinstance(output, (tuple, list)):  # edit the first matrix-like output (e.g. router logits)
            k = next((i for i, o in enumerate(output) if isinstance(o, torch.Tensor) and o.ndim >= 2), 0)
            return tuple(output[:k]) + (fn(output[k]),) + tuple(output[k + 1:])
        return fn(output)

    return module.register_forward_hook(edit_module)




@contextlib.contextmanager
def zeroed_padding(layers: nn.ModuleList, mask: torch.Tensor) -> Iterator[None]:
    """While active, the hidden states entering every layer of ``layers`` are zero at the padding
    positions of ``mask`` (``[batch, seq]``, 0 at padding). Real tokens never attend to padding,
    but a mixture-of-experts layer multiplies each expert's tokens together, padding included, and
    its rounding can depend on them: with padding zero at every layer, a late-only pass over a
    batch computes bit for bit what the full pass over the same batch computed from the same
    boundary states (the exact plan's zero interaction of a late-only fine-tune, on MoE models too).
    Padding's own outputs are never read."""
    keep = mask.bool()[..., None]

    def zero(module, args, kwargs):
        hidden = hidden_arg(args, kwargs)
        return replace_hidden(args, kwargs, torch.where(keep.to(hidden.device), hidden, hidden.new_zeros(())))

    hooks = [layer.register_forward_pre_hook(zero, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
