"""A model decoding a left-padded batch with its own KV cache (:class:`CachedDecoder`): what the
divergence search, the rollouts and the histories step with."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..models.checks import position_limit
from ..models.forward import EventStates, ModelHandle, StateRecorder, cache_keyword, step_logits
from ..models.vocab import NON_FINITE, masked_argmax
from . import caches
from .batching import fitting_rows, joining_rows, length_batches, pass_overhead_tokens

__all__ = ["CachedDecoder", "first_rows", "greedy_chunk", "join_pair", "pass_overhead"]


def pass_overhead(handle: ModelHandle) -> int:
    """:func:`~crosspatch.execution.batching.pass_overhead_tokens` of ``handle``'s model (its
    device and the parameters of one layer)."""
    layer = handle.anatomy.layers[0]
    return pass_overhead_tokens(handle.input_device, sum(p.numel() for p in layer.parameters()))


class CachedDecoder:
    """One model stepping through a left-padded batch with its own KV cache.

    ``start`` consumes the prompts; ``feed`` appends tokens ``[live rows, k]`` and returns the
    logits after each of them; ``select`` drops finished rows from the cache so they cost
    nothing more; ``add`` starts more prompts beside the live rows (continuous batching). With
    ``capture`` boundaries, the states of every consumed position are kept per row
    (``event_states``), so no separate full pass is needed later. Rows are named by the caller
    (``rows``: original indices), whatever their place in the batch."""

    prefill_in_groups = True  # start consumes prompts of very different lengths in groups (see start)

    def __init__(self, handle: ModelHandle, models, capture: list[int] | None = None, keep_on=None) -> None:
        self.handle, self.models, self.keep_on = handle, models, keep_on
        self.capture: list[int] = capture if capture is not None else []  # boundaries whose states are kept
        self.cache = caches.new_dynamic_cache(handle)
        self.kw = cache_keyword(handle)
        # the last position a token may take: padding fed to a row that has ended while others go on
        # can run past the model's positions (a model with learned ones has no embedding there)
        self.last_position = (position_limit(handle.anatomy.model) or 0) - 1
        self.recorder = StateRecorder(handle.anatomy, capture, keep_on) if capture is not None else None
        self.non_finite: set[int] = set()  # original rows whose decoding stopped at NaN/inf logits
        self.rows: list[int] = []
        self.kept: dict[int, dict] = {}
        self.offsets: dict[int, int] = {}
        # original rows whose further states nobody reads (the search's rows decoding on past
        # their event for a history): their kept states stop growing, and a call over such rows
        # alone records nothing
        self.unrecorded: set[int] = set()

    def _batch_rows(self) -> list[int]:
        """The batch index of each live row (in ``self.rows`` order)."""
        return list(range(len(self.rows)))

    def _fresh_cache(self, batch: int, width: int):
        return caches.new_dynamic_cache(self.handle)

    def _forward(self, keep: int, real_tokens: int, **inputs) -> torch.Tensor:
        return step_logits(self.handle, keep, real_tokens, **inputs)

    def _attention_mask(self) -> torch.Tensor:
        """The 2D padding mask given to the model: over the tokens fed so far."""
        return self.mask

    def _outlives(self, t: torch.Tensor) -> torch.Tensor:
        """``t``, an output of the last step, as kept past the next step (here: itself)."""
        return t

    def _call(self, ids, keep: int, real_tokens: int) -> torch.Tensor:
        recorder = self.recorder if self.recorder is not None and not self.unrecorded.issuperset(self.rows) else None
        with recorder or contextlib.nullcontext():
            logits = self._forward(keep, real_tokens, input_ids=ids, attention_mask=self._attention_mask(),
                                   position_ids=self.positions, use_cache=True, **{self.kw: self.cache})
        if recorder is not None:
            final = self._outlives(recorder.final.pop())
            bounds = {b: self._outlives(recorder.boundary[b].pop()) for b in self.capture}
            for k, row in zip(self._batch_rows(), self.rows):
                if row in self.unrecorded:
                    continue
                self.kept[row]["final"].append(final[k])
                for b in self.capture:
                    self.kept[row][b].append(bounds[b][k])
        return logits

    def start(self, prompts: list[list[int]], rows: list[int] | None = None) -> torch.Tensor:
        """Consume the prompts (original rows ``rows``, default 0..n-1) in a fresh cache; returns
        next-token logits ``[batch, V]``. States kept for earlier rows stay.

        Prompts of very different lengths are consumed in groups of similar length where padding
        them to the longest would cost more than another pass (the executor's rule,
        :func:`~crosspatch.execution.batching.length_batches`), then joined as :meth:`add` joins
        rows, in the order given: each row computes what it would alone, as in one pass."""
        rows = list(range(len(prompts))) if rows is None else list(rows)
        groups = length_batches(len(prompts), [len(p) for p in prompts], len(prompts), None,
                                pass_overhead(self.handle)) if self.prefill_in_groups else []
        if len(groups) < 2 or caches.known_unjoinable(self.cache):  # this model's caches: their layers' kinds
            return self._start_all(prompts, rows)
        logits = [self._start_all([prompts[k] for k in groups[0]], [rows[k] for k in groups[0]])]
        if not self.can_add:  # found out only once filled (transformers 4): one pass after all
            return self._start_all(prompts, rows)
        for group in groups[1:]:
            logits.append(self.add([prompts[k] for k in group], [rows[k] for k in group]))
        place = {k: i for i, k in enumerate(k for group in groups for k in group)}
        order = [place[k] for k in range(len(prompts))]
        self.select(order)  # back to the order given
        return torch.cat(logits)[torch.tensor(order, dtype=torch.long, device=logits[0].device)]

    def _start_all(self, prompts: list[list[int]], rows: list[int]) -> torch.Tensor:
        """:meth:`start` in one pass."""
        pad, device = self.models.pad_id, self.handle.input_device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        self.cache = self._fresh_cache(len(prompts), width)
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
        return caches.joinable(self.cache)

    def expect(self, longest: int, fits=None) -> None:
        """Prompts up to ``longest`` tokens may join later (a growing cache makes room as they come:
        nothing to do; a static one sizes itself for them)."""

    def joinable(self, prompts: list[list[int]]) -> int:
        """How many of ``prompts``, from the front, :meth:`add` can join now (a growing cache: all)."""
        return len(prompts)

    def add(self, prompts: list[list[int]], rows: list[int]) -> torch.Tensor:
        """Start ``prompts`` (original rows ``rows``) beside the live rows: they are consumed in
        a cache of their own, then both caches are left-padded to one length and joined (padding
        is masked, so each row computes what it would alone). Returns the new rows' next-token
        logits ``[len(prompts), V]``."""
        if not self.rows:
            return self.start(prompts, rows)
        other, logits = self._prefill_apart(prompts, rows)
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
        self._adopt(other, rows)
        return logits

    def _prefill_apart(self, prompts: list[list[int]], rows: list[int]) -> tuple["CachedDecoder", torch.Tensor]:
        """``prompts`` (original rows ``rows``) consumed by an eager decoder of their own (recording
        what this one records), and their next-token logits: what :meth:`add` then joins."""
        other = CachedDecoder(self.handle, self.models, self.capture if self.recorder is not None else None,
                              self.keep_on)
        return other, other._start_all(prompts, list(rows))

    def _adopt(self, other: "CachedDecoder", rows: list[int]) -> None:
        """Take ``rows``, joined from ``other`` (see :meth:`_prefill_apart`), as live rows, with the
        states ``other`` kept of their prompts."""
        self.rows = self.rows + list(rows)
        self.kept.update(other.kept)
        self.offsets.update(other.offsets)

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` ``[live rows, k]``; returns logits ``[live rows, k, V]``."""
        k = tokens.shape[1]
        device = self.mask.device
        self.mask = torch.cat([self.mask, torch.ones((tokens.shape[0], k), dtype=torch.long, device=device)], 1)
        self.positions = self._within(self.next_position + torch.arange(k, device=device)[None, :])
        self.next_position = self.next_position + k
        return self._call(tokens.to(device), k, tokens.numel())

    def _within(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions`` with any past the model's last one (only padding gets there: a row's prompt
        and budget fit) moved to it."""
        return positions.clamp(max=self.last_position) if self.last_position >= 0 else positions

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
        self._drop_unused_positions()

    def _drop_unused_positions(self) -> None:
        """Drop the cache's leading positions that are padding for every live row (once they are
        at least 32 and an eighth of its length: each drop copies the cache at the next step). In
        a run longer than one batch, rows that :meth:`add` joins are padded to the cache's length,
        which grows at every step: without this the cache would span every step since the batch
        started, not the live rows' prompts and budgets (what the batch rules count on)."""
        width = self.mask.shape[1]
        used = self.mask.any(0)
        unused = int(used.int().argmax()) if width else 0  # the first position some live row uses
        if unused < max(32, width // 8) or not caches.joinable(self.cache):
            return
        caches.drop_leading_positions(self.cache, unused)
        self.mask = self.mask[:, unused:]

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


def greedy_chunk(decoder: CachedDecoder, logits: torch.Tensor, live: list[int], generated: list[list[int]],
                 budget: int, steps: int, models) -> tuple[dict[int, list[int]], set[int], torch.Tensor]:
    """Up to ``steps`` greedy tokens of every live row (``logits``: their next-token logits),
    each row stopping at its EOS, the budget (counting ``generated[row]``) or logits that are NaN
    or infinite (the row is then in ``stopped``, without a token there). Returns each row's new
    tokens, the stopped rows and the logits after the last token fed (rows that no longer grow
    are fed padding, so the batch keeps one shape)."""
    real, eos, pad = models.real_vocab, models.eos_ids, models.pad_id
    chunk: dict[int, list[int]] = {r: [] for r in live}
    stopped: set[int] = set()

    def extending(r: int) -> bool:
        return r not in stopped and len(generated[r]) + len(chunk[r]) < budget and not (chunk[r] and chunk[r][-1] in eos)

    for _ in range(steps):
        growing = [extending(r) for r in live]
        for r, pick, grow in zip(live, masked_argmax(logits, real).tolist(), growing):
            if grow and pick == NON_FINITE:
                stopped.add(r)
            elif grow:
                chunk[r].append(pick)
        if not any(extending(r) for r in live):
            break
        feed = [[chunk[r][-1] if grow and r not in stopped else pad] for r, grow in zip(live, growing)]
        logits = decoder.feed(torch.tensor(feed))[:, 0]
    return chunk, stopped, logits


def first_rows(queue: list[int], prompts: list[list[int]], budget: int, fits, decoders) -> list[int]:
    """The rows that start a queue of ``prompts`` (taken off the front of ``queue``): as many as
    ``fits``, the batch rules, allows (all without it); where more wait, each decoder is told
    the longest prompt that may join later (:meth:`CachedDecoder.expect`)."""
    first = fitting_rows(queue, prompts, budget, fits, [])
    if first < len(queue):
        for decoder in decoders:
            decoder.expect(max(len(prompts[r]) for r in queue), fits)
    live, queue[:first] = queue[:first], []
    return live


def join_pair(dec_r: CachedDecoder, dec_c: CachedDecoder, queue: list[int], prompts: list[list[int]], budget: int,
              fits, live: list[int], logits_r: torch.Tensor, picks: list[list[int]], real):
    """The next prompts of ``queue`` that may join (:func:`~crosspatch.execution.batching.joining_rows`)
    join ``live`` in the rolling decoder ``dec_r`` and the checking decoder ``dec_c`` (a fresh
    cache where none is live); each new row's ``picks`` start with the checking model's first
    pick. Returns the live rows and the rolling model's next-token logits."""
    take = joining_rows(queue, prompts, budget, fits, live, (dec_r, dec_c))
    if not take:
        return live, logits_r
    new, queue[:take] = queue[:take], []
    new_logits = dec_r.add([prompts[r] for r in new], new)
    for r, t in zip(new, masked_argmax(dec_c.add([prompts[r] for r in new], new), real).tolist()):
        picks[r] = [int(t)]
    return live + new, torch.cat([logits_r, new_logits.to(logits_r.device)]) if live else new_logits
