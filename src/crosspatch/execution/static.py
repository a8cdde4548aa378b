"""Decoding over a preallocated KV cache of fixed shape (``--decode static`` and ``compiled``):
:class:`StaticDecoder` steps a batch that started together at one shared cache position;
:class:`SlotDecoder` also takes new rows into the slots of rows that ended (continuous batching).

A :class:`StaticDecoder` leaves no room for a row that starts later: its prompts are
left-padded to one width and every row writes at the same position. Once a row joins a
:class:`SlotDecoder`, each row writes at its own position instead: every layer of the cache puts
row ``r``'s new keys and values at ``write_at[r]`` (:func:`slot_layer_class`), and the model is
given the 4D additive mask that lets each new token see the positions its row filled, up to
itself. The cache keeps its shape (slots x length), so a step's shape never changes.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch

from ..models.forward import ModelHandle, step_logits
from . import caches
from .caches import static_length
from .decoder import CachedDecoder

__all__ = ["SlotDecoder", "StaticDecoder", "slot_layer_class", "static_length"]

_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _graphs_on(device: torch.device) -> bool:
    """Whether a compiled step on ``device`` runs as CUDA graphs (``mode="reduce-overhead"``)."""
    return device.type == "cuda"


class StaticDecoder(CachedDecoder):
    """A :class:`CachedDecoder` over a preallocated KV cache of fixed shape (Hugging Face's
    ``StaticCache``): its batch never shrinks (a finished row's slot is fed padding, its output
    dropped) and its length is the prompt width + the budget rounded up to a bucket, so that every
    step of a batch has one shape: what ``torch.compile(mode="reduce-overhead")`` and CUDA graphs
    need (``compiled``). Rows cannot be added (continuous batching falls back to batch after
    batch; :class:`SlotDecoder` takes them). The same events as the eager decoder; logits to
    float rounding (attention runs over the whole, masked, cache length)."""

    prefill_in_groups = False  # its rows cannot be joined (see can_add)

    def __init__(self, handle: ModelHandle, models, capture: list[int] | None = None, keep_on=None,
                 budget: int = 0, compiled: bool = False) -> None:
        super().__init__(handle, models, capture, keep_on)
        self.budget, self.compiled = budget, compiled
        self.length = 0  # the cache's length (set with each fresh cache)
        self.graph_outputs = False  # whether the last step's outputs are CUDA-graph memory that the next step reuses
        self.slots: list[int] = []
        self.used: dict = {}  # where a compilation failure is recorded (new_decoder passes the run's)

    @property
    def can_add(self) -> bool:
        return False

    def _batch_rows(self) -> list[int]:
        return self.slots

    def _fresh_cache(self, batch: int, width: int):
        self.length = static_length(width + self.budget + 1)
        return caches.new_static_cache(self.handle, batch, self.length)

    def _attention_mask(self) -> torch.Tensor:
        """The padding mask over the cache's whole length, zeros past the tokens fed so far: one
        shape for every step of a batch, so that a compiled step is not traced, and a CUDA graph
        not recorded, again at every step (Hugging Face pads a shorter mask with zeros to the
        cache's length inside the forward, and builds its causal mask over the whole cache: the
        model computes exactly what it would with the shorter mask)."""
        return torch.nn.functional.pad(self.mask, (0, self.length - self.mask.shape[1]))

    def _forward(self, keep: int, real_tokens: int, **inputs) -> torch.Tensor:
        ids = inputs["input_ids"]
        inputs["cache_position"] = torch.arange(self.cursor, self.cursor + ids.shape[1], device=ids.device)
        # The prompt pass runs uncompiled, as Hugging Face's generate runs it: its width changes
        # with every batch, and a compiled prefill would be traced (and captured) for each.
        compiled = self._compiled() if self.cursor > 0 else None
        self.graph_outputs = compiled is not None and _graphs_on(self.handle.input_device)
        if compiled is not None:
            try:
                if self.graph_outputs:  # a new step: the outputs of the last one may be overwritten
                    torch.compiler.cudagraph_mark_step_begin()
                return self._outlives(step_logits(self.handle, keep, real_tokens, forward=compiled, **inputs))
            except Exception as exc:  # noqa: BLE001 - whatever the compiler raises, the step runs uncompiled
                _COMPILED[self.handle.anatomy.model] = None
                self.graph_outputs = False
                self.used.update(mode="static", reason=f"torch.compile failed ({type(exc).__name__}): static, uncompiled")
        return step_logits(self.handle, keep, real_tokens, **inputs)

    def _outlives(self, t: torch.Tensor) -> torch.Tensor:
        """A copy where the step ran as a CUDA graph: its outputs (the logits, and the states the
        recorder's hooks took inside the graph) live in the graph's memory, which its next replay
        overwrites, and they are read long after (logits across the other model's step, states
        when events are scored)."""
        return t.clone() if self.graph_outputs else t

    def _compiled(self):
        """The model's forward compiled once per model (``compiled``; on CUDA with CUDA graphs), else
        None (uncompiled, or its compilation failed before)."""
        model = self.handle.anatomy.model
        if not self.compiled:
            return None
        if model not in _COMPILED:
            graphs = _graphs_on(self.handle.input_device)
            _COMPILED[model] = torch.compile(model, mode="reduce-overhead" if graphs else "default")
        return _COMPILED[model]

    def start(self, prompts: list[list[int]], rows: list[int] | None = None) -> torch.Tensor:
        self.cursor = 0
        self.slots = list(range(len(prompts)))
        logits = super().start(prompts, rows)
        self.cursor = max(len(p) for p in prompts)
        return logits

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        full = torch.full((len(self.mask), tokens.shape[1]), self.models.pad_id, dtype=tokens.dtype)
        full[self.slots] = tokens.cpu()
        rows = self.slots
        logits = super().feed(full)
        self.cursor += tokens.shape[1]
        return logits[rows]

    def select(self, keep: list[int]) -> None:
        self.slots = [self.slots[i] for i in keep]
        self.rows = [self.rows[i] for i in keep]


@functools.cache
def slot_layer_class() -> type:
    """Hugging Face's ``StaticLayer`` writing each row at its own positions: while
    ``write_positions`` (``[rows, k]`` cache positions) is set, ``update`` puts row ``r``'s ``k``
    new keys and values at ``write_positions[r]`` in place (the buffers keep their addresses);
    unset, it is Hugging Face's own update (the shared position of a batch that started together)."""
    from transformers.cache_utils import StaticLayer

    class SlotLayer(StaticLayer):
        write_positions: torch.Tensor | None = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            at = self.write_positions
            if at is None:
                return super().update(key_states, value_states, *args, **kwargs)
            keys, values = self.keys, self.values
            assert keys is not None and values is not None  # a slot decoder switches only filled caches
            rows = torch.arange(at.shape[0], device=at.device)[:, None]
            keys[rows, :, at] = key_states.transpose(1, 2).to(keys.dtype)  # [rows, k, heads, dim]
            values[rows, :, at] = value_states.transpose(1, 2).to(values.dtype)
            return keys, values

    return SlotLayer


def _plain_static_layers(cache) -> list | None:
    """The layers of ``cache`` where each is a plain, filled full-attention ``StaticLayer`` (keys and
    values ``[rows, heads, length, dim]`` tensors), else None (sliding windows, other caches)."""
    try:
        from transformers.cache_utils import StaticLayer
    except ImportError:  # a transformers without layered caches
        return None
    layers = getattr(cache, "layers", None)
    if not layers:
        return None
    kinds = (StaticLayer, slot_layer_class())
    ok = all(type(layer) in kinds and isinstance(getattr(layer, "keys", None), torch.Tensor)
             and isinstance(getattr(layer, "values", None), torch.Tensor) and layer.keys.dim() == 4
             for layer in layers)
    return list(layers) if ok else None


class SlotDecoder(StaticDecoder):
    """A :class:`StaticDecoder` whose free slots take new rows (:meth:`add`): ``--decode static``.
    Until a row joins it steps exactly as a static decoder (one shared position);
    from the first join on, each slot keeps its own write position (``write_at``) and the
    positions its row filled (``filled``), and every step is given the 4D mask built from them.

    A row joins only where the cache has room for its prompt and its whole budget
    (:meth:`joinable`); the cache's shape never changes. Not compiled (a compiled step would see
    the write positions and the mask as new inputs of one shape, but that has not been measured
    on a GPU yet: ``compiled`` keeps batch after batch). The same events as the eager decoder
    (rows compute what they would alone: padding and other rows' slots are masked); logits to
    float rounding."""

    def __init__(self, handle, models, capture: list[int] | None = None, keep_on=None, budget: int = 0) -> None:
        super().__init__(handle, models, capture, keep_on, budget=budget, compiled=False)
        self.write_at: torch.Tensor | None = None  # [slots] the next cache position of each slot (per-row mode)
        self.filled: torch.Tensor | None = None  # [slots, length] the positions each slot's row has filled
        self._step_mask: torch.Tensor | None = None
        self.slot_layers: list = []  # the cache's layers, once they write per row (see _per_row)
        self.longest, self.fits = 0, None  # see expect

    def start(self, prompts: list[list[int]], rows: list[int] | None = None) -> torch.Tensor:
        self.write_at = self.filled = None  # a fresh cache: shared positions again
        return super().start(prompts, rows)

    def expect(self, longest: int, fits=None) -> None:
        """Rows of prompts up to ``longest`` tokens may join later: a fresh cache gets room for them
        where ``fits(lengths)`` (the batch rules, each row's prompt + budget) allows that length for
        all of its slots (else room for its own prompts only, and a longer prompt waits for the
        next fresh cache)."""
        self.longest, self.fits = longest, fits

    def _fresh_cache(self, batch: int, width: int):
        if self.longest > width and (self.fits is None or self.fits([self.longest + self.budget] * batch)):
            width = self.longest
        return super()._fresh_cache(batch, width)

    @property
    def can_add(self) -> bool:
        return _plain_static_layers(self.cache) is not None

    def joinable(self, prompts: list[list[int]]) -> int:
        """How many of ``prompts``, from the front, can join now: one per free slot, each with room
        for its prompt, its budget and the token after it (as the cache was sized)."""
        if not self.rows:
            return len(prompts)
        free = len(self.mask) - len(self.slots)
        count = 0
        while count < min(free, len(prompts)) and len(prompts[count]) + self.budget + 1 <= self.length:
            count += 1
        return count

    def _per_row(self) -> None:
        """Switch the filled cache to per-row positions (from the shared cursor's layout)."""
        if self.write_at is not None:
            return
        device = self.mask.device
        slots = len(self.mask)
        self.write_at = torch.full((slots,), self.cursor, dtype=torch.long, device=device)
        self.filled = torch.nn.functional.pad(self.mask.bool(), (0, self.length - self.mask.shape[1]))
        self.slot_layers = _plain_static_layers(self.cache) or []
        for layer in self.slot_layers:
            layer.__class__ = slot_layer_class()

    def add(self, prompts: list[list[int]], rows: list[int]) -> torch.Tensor:
        """Prefill ``prompts`` (original rows ``rows``) in a cache of their own, then copy their
        keys and values into free slots at positions ``0 .. len(prompt) - 1``; returns their
        next-token logits ``[len(prompts), V]``. The caller keeps to :meth:`joinable`."""
        if not self.rows:
            return self.start(prompts, rows)
        if self.joinable(prompts) < len(prompts):
            raise ValueError(f"{len(prompts)} rows cannot join this static cache (see joinable)")
        self._per_row()
        assert self.write_at is not None and self.filled is not None
        other, logits = self._prefill_apart(prompts, rows)
        width = other.mask.shape[1]
        free = sorted(set(range(len(self.mask))) - set(self.slots))[: len(prompts)]
        theirs: Any = other.cache.layers
        with torch.inference_mode():  # the cache's tensors are inference tensors (made in the forward)
            for mine, layer in zip(self.slot_layers, theirs):
                for i, (slot, prompt) in enumerate(zip(free, prompts)):
                    start = width - len(prompt)
                    for held, new in ((mine.keys, layer.keys), (mine.values, layer.values)):
                        held[slot, :, : len(prompt)] = new[i, :, start:].to(held.device, held.dtype)
        for slot, prompt in zip(free, prompts):
            self.filled[slot] = False
            self.filled[slot, : len(prompt)] = True
            self.write_at[slot] = len(prompt)
            self.next_position[slot] = len(prompt)
        self.slots = self.slots + free
        self._adopt(other, rows)
        return logits

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.write_at is None:  # no row has joined this cache: the shared position
            return super().feed(tokens)
        assert self.filled is not None
        device, slots, k = self.mask.device, len(self.mask), tokens.shape[1]
        full = torch.full((slots, k), self.models.pad_id, dtype=tokens.dtype)
        full[self.slots] = tokens.cpu()
        live = torch.zeros(slots, dtype=torch.bool, device=device)
        live[self.slots] = True
        # A free slot writes at the end of the cache. A live row's real tokens always fit before the
        # last position (its prompt + budget + 1 fit the cache, and it is fed a generated token only
        # up to its budget); only padding, fed to a row that has ended while others go on, can run
        # past the end: it is written at the last position, which no real token of the row reads.
        at = torch.where(live, self.write_at, torch.full_like(self.write_at, self.length - k))
        write = (at[:, None] + torch.arange(k, device=device)[None, :]).clamp(max=self.length - 1)
        filled = self.filled.clone()
        filled[torch.arange(slots, device=device)[:, None], write] = True
        span = torch.arange(self.length, device=device)
        allowed = filled[:, None, :] & (span[None, None, :] <= write[:, :, None])  # [slots, k, length]
        dtype = getattr(self.handle.anatomy.model, "dtype", torch.float32)
        dtype = dtype if dtype.is_floating_point else torch.float32
        self._step_mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
            ~allowed, torch.finfo(dtype).min)[:, None]
        self.positions = self._within(self.next_position + torch.arange(k, device=device)[None, :])
        for layer in self.slot_layers:
            layer.write_positions = write
        try:
            logits = self._call(full.to(device), k, tokens.numel())
        finally:
            for layer in self.slot_layers:
                layer.write_positions = None
        # a free slot's position stays put (a model with learned positions has only so many)
        self.filled, self.write_at = filled, torch.where(live, (at + k).clamp(max=self.length), self.write_at)
        self.next_position = torch.where(live[:, None], self.next_position + k, self.next_position)
        return logits[self.slots]

    def _attention_mask(self) -> torch.Tensor:
        if self.write_at is not None and self._step_mask is not None:
            return self._step_mask
        return super()._attention_mask()

    def _forward(self, keep: int, real_tokens: int, **inputs) -> torch.Tensor:
        if self.write_at is None:
            return super()._forward(keep, real_tokens, **inputs)
        k = inputs["input_ids"].shape[1]
        inputs["cache_position"] = torch.arange(self.length - k, self.length, device=inputs["input_ids"].device)
        return step_logits(self.handle, keep, real_tokens, **inputs)
