"""A model decoding a left-padded batch with its own KV cache (:class:`CachedDecoder`): what the
divergence search, the rollouts and the histories step with."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..models.forward import EventStates, ModelHandle, StateRecorder, cache_keyword, step_logits

__all__ = ["CachedDecoder"]


def _new_cache(handle: ModelHandle):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=handle.anatomy.model.config)  # pyright: ignore[reportArgumentType] - a PreTrainedModel's config
    except TypeError:  # transformers 4.x
        return DynamicCache()


class CachedDecoder:
    """One model stepping through a left-padded batch with its own KV cache.

    ``start`` consumes the prompts; ``feed`` appends tokens ``[live rows, k]`` and returns the
    logits after each of them; ``select`` drops finished rows from the cache so they cost
    nothing more; ``add`` starts more prompts beside the live rows (continuous batching). With
    ``capture`` boundaries, the states of every consumed position are kept per row
    (``event_states``), so no separate full pass is needed later. Rows are named by the caller
    (``rows``: original indices), whatever their place in the batch."""

    def __init__(self, handle: ModelHandle, models, capture: list[int] | None = None, keep_on=None) -> None:
        self.handle, self.models, self.keep_on = handle, models, keep_on
        self.capture: list[int] = capture if capture is not None else []  # boundaries whose states are kept
        self.cache = _new_cache(handle)
        self.kw = cache_keyword(handle)
        self.recorder = StateRecorder(handle.anatomy, capture, keep_on) if capture is not None else None
        self.non_finite: set[int] = set()  # original rows whose decoding stopped at NaN/inf logits
        self.rows: list[int] = []
        self.kept: dict[int, dict] = {}
        self.offsets: dict[int, int] = {}

    def _call(self, ids, keep: int, real_tokens: int) -> torch.Tensor:
        with self.recorder or contextlib.nullcontext():
            logits = step_logits(self.handle, keep, real_tokens, input_ids=ids, attention_mask=self.mask,
                                 position_ids=self.positions, use_cache=True, **{self.kw: self.cache})
        if self.recorder is not None:
            final = self.recorder.final.pop()
            bounds = {b: self.recorder.boundary[b].pop() for b in self.capture}
            for k, row in enumerate(self.rows):
                self.kept[row]["final"].append(final[k])
                for b in self.capture:
                    self.kept[row][b].append(bounds[b][k])
        return logits

    def start(self, prompts: list[list[int]], rows: list[int] | None = None) -> torch.Tensor:
        """Consume the prompts (original rows ``rows``, default 0..n-1) in a fresh cache; returns
        next-token logits ``[batch, V]``. States kept for earlier rows stay."""
        pad, device = self.models.pad_id, self.handle.input_device
        rows = list(range(len(prompts))) if rows is None else list(rows)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        self.cache = _new_cache(self.handle)
        self.rows = rows
        for row, p in zip(rows, prompts):
            self.offsets[row] = width - len(p)
            self.kept[row] = {"final": [], **{b: [] for b in self.capture}}
        self.mask = mask.to(device)
        self.positions = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        self.next_position: torch.Tensor = self.positions[:, -1:] + 1
        return self._call(ids.to(device), 1, int(mask.sum()))[:, 0]

    @property
    def can_add(self) -> bool:
        """Whether :meth:`add` can join new rows to this cache (plain full-attention layers whose
        keys and values are tensors; sliding windows and recurrent states cannot be padded)."""
        layers = getattr(self.cache, "layers", None)
        return bool(layers) and all(type(layer).__name__ == "DynamicLayer" and getattr(layer, "keys", None) is not None
                                    for layer in layers)

    def add(self, prompts: list[list[int]], rows: list[int]) -> torch.Tensor:
        """Start ``prompts`` (original rows ``rows``) beside the live rows: they are consumed in
        a cache of their own, then both caches are left-padded to one length and joined (padding
        is masked, so each row computes what it would alone). Returns the new rows' next-token
        logits ``[len(prompts), V]``."""
        if not self.rows:
            return self.start(prompts, rows)
        other = CachedDecoder(self.handle, self.models, self.capture if self.recorder is not None else None,
                              self.keep_on)
        logits = other.start(prompts, rows)
        width = max(self.mask.shape[1], other.mask.shape[1])

        def left_pad(t: torch.Tensor, dim: int, to: int) -> torch.Tensor:
            missing = to - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim)

        layers: Any = zip(self.cache.layers, other.cache.layers)  # plain DynamicLayers (can_add)
        for mine, theirs in layers:
            mine.keys = torch.cat([left_pad(mine.keys, 2, width), left_pad(theirs.keys.to(mine.keys.device), 2, width)])
            mine.values = torch.cat([left_pad(mine.values, 2, width),
                                     left_pad(theirs.values.to(mine.values.device), 2, width)])
        self.mask = torch.cat([left_pad(self.mask, 1, width), left_pad(other.mask.to(self.mask.device), 1, width)])
        self.next_position = torch.cat([self.next_position, other.next_position.to(self.next_position.device)])
        self.rows = self.rows + rows
        self.kept.update(other.kept)
        self.offsets.update(other.offsets)
        return logits

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` ``[live rows, k]``; returns logits ``[live rows, k, V]``."""
        k = tokens.shape[1]
        device = self.mask.device
        self.mask = torch.cat([self.mask, torch.ones((tokens.shape[0], k), dtype=torch.long, device=device)], 1)
        self.positions = self.next_position + torch.arange(k, device=device)[None, :]
        self.next_position = self.next_position + k
        return self._call(tokens.to(device), k, tokens.numel())

    def clear(self) -> None:
        """No row is live any more: the next :meth:`add` starts a fresh cache (kept states stay)."""
        self.rows = []

    def select(self, keep: list[int]) -> None:
        """Keep only the rows of the current batch at indices ``keep`` (none: :meth:`clear`)."""
        if not keep:
            return self.clear()
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.next_position = self.mask[idx], self.next_position[idx]
        self.rows = [self.rows[i] for i in keep]

    def row_states(self, row: int) -> EventStates:
        """This model's states over every position consumed for original row ``row`` (boundary
        states and final-norm inputs, both ``[n, d]``; left padding removed)."""
        kept, off = self.kept[row], self.offsets[row]
        seq = {key: torch.cat([t.reshape(-1, t.shape[-1]) for t in parts])[off:] for key, parts in kept.items()}
        return EventStates({b: seq[b] for b in self.capture}, seq["final"])

    def event_states(self, row: int, length: int) -> EventStates:
        """This model's states over the first ``length`` positions of original row ``row``."""
        kept, off = self.kept[row], self.offsets[row]
        seq = {key: torch.cat([t.reshape(-1, t.shape[-1]) for t in parts]) for key, parts in kept.items()}
        return EventStates({b: seq[b][off : off + length] for b in self.capture}, seq["final"][off + length - 1])
