"""How the search, the rollouts and the histories decode (``--decode``): :func:`decoding` sets the
mode for the decoders made inside it, :func:`new_decoder` makes one of that mode (eager: a
growing KV cache, :class:`~crosspatch.execution.decoder.CachedDecoder`; static and compiled:
a preallocated one, :mod:`crosspatch.execution.static`)."""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from typing import Iterator

import torch

from ..models.anatomy import text_config
from ..models.checks import logits_gap, position_limit
from ..models.forward import ModelHandle, step_logits
from .decoder import CachedDecoder
from .static import SlotDecoder, StaticDecoder

__all__ = ["DECODE_MODES", "decoding", "new_decoder"]

DECODE_MODES = ("auto", "eager", "static", "compiled")
_MODE: contextvars.ContextVar[tuple[str, int, dict | None]] = contextvars.ContextVar("crosspatch_decode",
                                                                                     default=("eager", 0, None))


@contextlib.contextmanager
def decoding(mode: str, budget: int, used: dict | None = None) -> Iterator[None]:
    """Decoders made inside (:func:`new_decoder`) step ``eager`` (a growing cache), ``static`` (a
    preallocated one of fixed shape), ``compiled`` (static, the step compiled) or ``auto``
    (static on CUDA, else eager); ``budget``: tokens a row may still grow by (sizes a static
    cache). ``used`` receives the mode each decoder used and why (``{"mode", "reason"}``)."""
    if mode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, not {mode!r}")
    token = _MODE.set((mode, budget, used))
    try:
        yield
    finally:
        _MODE.reset(token)


def new_decoder(handle: ModelHandle, models, capture: list[int] | None = None, keep_on=None) -> CachedDecoder:
    """A decoder of the mode :func:`decoding` set (eager outside it). ``auto`` is static on CUDA
    and eager elsewhere. Measured on an H200 (docs/benchmarks.md): a static cache's fixed-shape
    steps beat the growing cache's (0.94 s against 1.49 s for 96 prompts of a 134M pair), while
    ``compiled`` spent 46 s compiling and capturing each new shape of the run, so compiling is
    asked for, never chosen; on the CPU neither pays. A model whose cache cannot be static falls
    back to eager, the reason recorded."""
    mode, budget, used = _MODE.get()
    reason = "as asked"
    if mode == "auto":
        on_cuda = handle.input_device.type == "cuda"
        mode, reason = ("static", "auto: CUDA") if on_cuda else ("eager", "auto: not on CUDA")
    model = handle.anatomy.model
    if mode == "compiled" and getattr(model, "_can_compile_fullgraph", True) is False:
        mode, reason = "static", f"{type(model).__name__} cannot be compiled whole in this transformers"
    if mode in ("static", "compiled") and getattr(model, "_supports_static_cache", True) is False:
        mode, reason = "eager", f"{type(model).__name__} has no static KV cache in this transformers"
    if mode in ("static", "compiled") and (wrong := static_mismatch(handle, models, budget)) is not None:
        mode, reason = "eager", wrong
    if used is not None:
        used.update(mode=mode, reason=reason)
    if mode in ("static", "compiled"):
        # static steps take new rows into free slots (continuous batching); a compiled step keeps
        # batch after batch (its per-row inputs are unmeasured on a GPU: see static.SlotDecoder)
        decoder = StaticDecoder(handle, models, capture, keep_on, budget=budget, compiled=True) \
            if mode == "compiled" else SlotDecoder(handle, models, capture, keep_on, budget=budget)
        decoder.used = used if used is not None else {}
        return decoder
    return CachedDecoder(handle, models, capture, keep_on)


# the attention spans a config may name (sliding windows, GPT-Neo's local window, Llama 4's chunks)
_WINDOW_KEYS = ("sliding_window", "window_size", "attention_chunk_size", "local_attention")
_STATIC_CHECKED: "weakref.WeakKeyDictionary[torch.nn.Module, dict[int, str | None]]" = weakref.WeakKeyDictionary()


def static_mismatch(handle: ModelHandle, models, budget: int) -> str | None:
    """Why a static cache would not reproduce this model's own logits, or None where it does.
    Checked once per model and cache length: a prompt of four tokens and four more fed through a
    static cache at least as long as the run's (and longer than the model's attention window, where
    a model that slices its masks by the cache's length goes wrong: GPT-Neo's local attention),
    against one full forward pass without a cache."""
    model = handle.anatomy.model
    config = text_config(model.config)
    windows = [w for k in _WINDOW_KEYS if isinstance(w := getattr(config, k, None), int) and not isinstance(w, bool)]
    limit = position_limit(model) or 1 << 30
    span = max([budget] + [w + 8 for w in windows])
    span = max(8, min(span, limit - 9))
    checked = _STATIC_CHECKED.setdefault(model, {})
    if span not in checked:
        skip = {handle.anatomy.image_token_id, models.pad_id}
        tokens = [i for i in range(1, 64) if i not in skip][:8]
        decoder = StaticDecoder(handle, models, budget=span)
        try:
            stepped = torch.cat([decoder.start([tokens[:4]])[:, None], decoder.feed(torch.tensor([tokens[4:]]))], 1)[0]
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
            if type(exc).__name__ == "OutOfMemoryError":  # (torch's; a RuntimeError, named so since torch 2.5)
                raise
            # (XGLM under transformers 4.x builds its mask for the tokens seen, not the cache's length)
            checked[span] = (f"{type(model).__name__}'s forward fails with a static cache in this transformers "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}): eager")
            return checked[span]
        ids = torch.tensor([tokens], device=handle.input_device)
        full = step_logits(handle, len(tokens) - 3, len(tokens), input_ids=ids, use_cache=False)[0].to(stepped.device)
        gap = logits_gap(stepped, full, next(model.parameters()).dtype)
        checked[span] = None if gap is None else (
            f"a static cache of {decoder.length} positions does not reproduce {type(model).__name__}'s own logits in "
            f"this transformers (largest difference {gap:.3g}): eager")
    return checked[span]
