"""The executor: runs the passes analyses ask for, deciding order, batching and residency.

An analysis is a *program*: a generator that yields lists of passes (see ``passes.py``) and
receives their results, in the same order, at the ``yield``::

    def blend(ex, events, b):
        u_pt, u_it = yield [Capture("base", seqs, [b]), Capture("tuned", seqs, [b])]
        (final,) = yield [Late("base", b, [0.5 * (x.boundary[b] + y.boundary[b]) for x, y in zip(u_pt, u_it)], seqs)]
        return ex.readout("tuned", torch.stack(final))

Passes yielded together are independent: the executor runs them grouped by role, starting with
the model already in memory, so under ``sequential`` residency each yield costs at most one
load per role, and a program never says which residency it runs under. All work is counted by
the primitives in ``models.execution`` (one place).
"""

from __future__ import annotations

from typing import Any, Callable, Generator, Sequence

import torch

from ..errors import DeviceMemoryError, is_out_of_memory
from ..models.forward import EventStates, capture_forward, late_forward, readout
from ..models.vocab import masked_argmax
from .batching import filled, free_memory, length_batches
from .decoder import pass_overhead
from .modelset import ModelSet
from .modes import DECODE_MODES, decoding
from .passes import Capture, Decode, History, Late, Pass, Search, SearchHistory, SearchOutcome
from .search import first_mismatch, history_interleaved, rollout_states, search_interleaved

# yields lists of passes, receives their results (per pass, per item), returns the analysis' value
Program = Generator[Sequence[Pass], Any, Any]


def pad_stack(rows: list[torch.Tensor]) -> torch.Tensor:
    """``[n_i, d]`` tensors right-padded with zeros into ``[batch, max n, d]``."""
    width = max(r.shape[0] for r in rows)
    out = rows[0].new_zeros((len(rows), width, rows[0].shape[-1]))
    for k, r in enumerate(rows):
        out[k, : r.shape[0]] = r
    return out


def _identity(p: Pass):
    """A hashable identity of a pass (identical ones in one request are computed once): a late pass
    without edits is identified by its upstream tensors' identities, which the request holds
    alive (two analyses passing the search's states through the same stack share the pass)."""
    if isinstance(p, Capture):
        return ("capture", p.role, tuple(map(tuple, p.sequences)), tuple(p.boundaries), p.all_final)
    if isinstance(p, Decode):
        return ("decode", p.role, tuple(map(tuple, p.prompts)), p.max_new_tokens)
    if isinstance(p, Late) and not p.edits:  # the same upstream tensors (objects, not values) through one stack
        return ("late", p.role, p.boundary, tuple(map(id, p.upstream)), tuple(map(tuple, p.sequences)))
    return None


class Executor:
    """Runs passes on a :class:`ModelSet` in batches of at most ``batch_size`` items of similar
    length and, with ``max_batch_tokens``, at most that many padded tokens per batch (a decoding
    pass counts each prompt with its whole generation budget, the length its KV cache reaches):
    the bound on a batch's working memory, whatever the prompt lengths."""

    continuous_batching = True  # False: each decoding batch waits for its slowest row (the benchmark's "before")

    def __init__(self, models: ModelSet, batch_size: int = 8, max_batch_tokens: int | None = None,
                 decode: str = "eager") -> None:
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, not {decode!r}")
        self.decode, self.decode_used = decode, {}  # the mode asked; the mode the decoders used, and why
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, not {max_batch_tokens}")
        self.models, self.batch_size, self.max_batch_tokens = models, batch_size, max_batch_tokens
        self.max_rows = batch_size  # lowered when a batch runs out of memory (see _each_batch)

    @classmethod
    def for_run(cls, models: ModelSet, options: dict) -> "Executor":
        """An executor batching as the run whose recorded ``options`` (config.json) are given."""
        return cls(models, options.get("batch_size", 8), options.get("max_batch_tokens"), options.get("decode", "eager"))

    # -- programs ---------------------------------------------------------------------------
    def drive(self, program: Program):
        """Run ``program`` to completion; returns its return value."""
        try:
            request = next(program)
            while True:
                request = program.send(self.run(request))
        except StopIteration as stop:
            return stop.value

    def drive_all(self, programs: list[Program]) -> list:
        """Run several independent programs side by side; returns their return values in order.
        At each step the passes all pending programs ask for form one request, so the executor
        groups them by role (fewer model loads under ``sequential``) and computes identical
        passes once."""
        values: list = [None] * len(programs)
        requests: dict[int, Sequence[Pass]] = {}
        for k, program in enumerate(programs):
            try:
                requests[k] = next(program)
            except StopIteration as stop:
                values[k] = stop.value
        while requests:
            order = list(requests)
            flat = [p for k in order for p in requests[k]]
            results = self.run(flat)
            start = 0
            for k in order:
                n = len(requests[k])
                mine, start = results[start : start + n], start + n
                try:
                    requests[k] = programs[k].send(mine)
                except StopIteration as stop:
                    values[k] = stop.value
                    del requests[k]
        return values

    # True: a History stops each row once its consumer is done where both models are usable (False
    # computes every history whole, the behaviour to compare against)
    stop_histories_early = True

    def can_stop_early(self, roll: str, check: str) -> bool:
        """Whether a :class:`History` of these roles stops each row once its consumer is done (both
        models usable at once, and ``stop_histories_early``); otherwise it costs the whole budget,
        and a consumer may as well share the whole history with others."""
        return self.stop_histories_early and self.models.can_hold((roll, check))

    def readout(self, role: str, final_states: torch.Tensor) -> torch.Tensor:
        """fp32 logits of ``role``'s final norm + lm_head on ``final_states`` (``[..., d]``); heads
        are always available, whatever the residency."""
        return readout(self.models.head(role), final_states)

    # -- passes -----------------------------------------------------------------------------
    def run(self, passes: Sequence[Pass]) -> list:
        """Results of independent ``passes``, in order."""
        results: list = [None] * len(passes)
        same: dict[int, int] = {}  # index -> earlier index of an identical pass
        seen: dict = {}
        for k, p in enumerate(passes):
            key = _identity(p)
            if key is not None and key in seen:
                same[k] = seen[key]
            elif key is not None:
                seen[key] = k
        pending = [k for k in range(len(passes)) if k not in same]
        while pending:
            current = self.models.resident_role
            first = next((k for k in pending if passes[k].roles[0] == current), pending[0])
            role = passes[first].roles[0]
            for k in [k for k in pending if passes[k].roles[0] == role]:
                results[k] = self._run_one(passes[k])
                pending.remove(k)
        for k, j in same.items():
            results[k] = results[j]
        return results

    def _run_one(self, p: Pass):
        if isinstance(p, Capture):
            return self._capture(p)
        if isinstance(p, Late):
            return self._late(p)
        budget = p.max_new_tokens + getattr(p, "chunk_size", 1)  # a decoding pass: its decoders' mode
        with decoding(self.decode, budget, self.decode_used):
            if isinstance(p, Decode):
                return self._decode(p)
            if isinstance(p, Search):
                return self._search(p)
            if isinstance(p, History):
                return self._history(p)
        raise TypeError(f"unknown pass {type(p).__name__}")

    def _batches(self, sequences: list[list[int]], generated: int = 0, model=None) -> list[list[int]]:
        """Batches of item indices; ``generated``: tokens each item may still grow by. A pass over
        whole sequences of ``model`` (a full or late-only pass) is cut where padding would cost
        more than another pass (:func:`~crosspatch.execution.batching.pass_overhead_tokens`); a
        decoding pass, whose steps cost about the same whatever the padding, fills its batches."""
        overhead = None if model is None else pass_overhead(model)
        return length_batches(len(sequences), [len(s) + generated for s in sequences], self.batch_size,
                              self.max_batch_tokens, overhead)

    def _each_batch(self, batches: list[list[int]], work: Callable[[list[int]], None], what: str,
                    lengths: list[int]) -> None:
        """``work(batch)`` for every batch, in order. A batch that runs out of memory is split in
        halves and retried, and later batches of this executor stay under the size that failed:
        batching changes memory and speed, never results. A single sequence that does not fit
        is a :class:`DeviceMemoryError` (``what``: the pass, for its message; ``lengths``: each
        item's tokens)."""
        todo = list(reversed(batches))
        while todo:
            batch = todo.pop()
            if len(batch) > self.max_rows:
                todo += reversed([batch[i : i + self.max_rows] for i in range(0, len(batch), self.max_rows)])
                continue
            if _fits(work, batch):
                continue
            if len(batch) == 1:
                raise DeviceMemoryError(
                    f"the {what} ran out of memory on one sequence of {lengths[batch[0]]} tokens, alone in its "
                    "batch. Records already written are kept: free memory (--residency sequential holds one "
                    "model at a time, --device auto spreads it over devices, --dtype bfloat16 halves it) or "
                    "shorten the prompts or --max-new-tokens, then run the same command again to resume.")
            self.max_rows = (len(batch) + 1) // 2
            todo.append(batch)

    def _fits_rows(self, lengths: list[int]) -> bool:
        """Whether rows of these padded lengths may decode together (the batch rules of
        :meth:`_batches`, with the rows an out-of-memory retry left)."""
        return len(lengths) <= self.max_rows and (self.max_batch_tokens is None
                                                  or len(lengths) * max(lengths) <= self.max_batch_tokens)

    def _decoding(self, batches: list[list[int]], work: Callable[[list[int]], None], what: str, lengths: list[int]):
        """``work`` over a decoding pass's items: one queue batching itself, or batch after batch."""
        if self.continuous_batching:
            return self._continuous([k for batch in batches for k in batch], work, what, lengths)
        self._each_batch(batches, work, what, lengths)

    def _continuous(self, queue: list[int], work: Callable[[list[int]], None], what: str, lengths: list[int]) -> None:
        """``work(queue)`` for a queue that batches itself with :meth:`_fits_rows`; when it runs out
        of memory, again with half the rows at a time (one sequence that does not fit alone is a
        :class:`DeviceMemoryError`)."""
        while not _fits(work, queue):
            if self.max_rows == 1:
                longest = max(lengths[k] for k in queue)
                raise DeviceMemoryError(
                    f"the {what} ran out of memory on one sequence of up to {longest} tokens, alone in its batch. "
                    "Records already written are kept: free memory (--residency sequential holds one model at a "
                    "time, --device auto spreads it over devices, --dtype bfloat16 halves it) or shorten the prompts "
                    "or --max-new-tokens, then run the same command again to resume.")
            self.max_rows = (self.max_rows + 1) // 2

    def _capture(self, p: Capture) -> list[EventStates]:
        out: list[EventStates | None] = [None] * len(p.sequences)
        keep = self.models.state_device
        with self.models.use(p.role) as model:
            def work(batch):
                seqs = [p.sequences[k] for k in batch]
                cap = capture_forward(model, seqs, p.boundaries, self.models.pad_id, keep_on=keep)
                for row, k in enumerate(batch):
                    n = len(seqs[row])
                    final = cap.final_states[row, :n] if p.all_final else cap.final_states[row, n - 1]
                    out[k] = EventStates({b: cap.boundary_states[b][row, :n] for b in p.boundaries}, final)

            self._each_batch(self._batches(p.sequences, model=model), work, f"full pass of {p.role}",
                             list(map(len, p.sequences)))
        return filled(out, "full passes")

    def _late(self, p: Late) -> list[torch.Tensor]:
        if len(p.upstream) != len(p.sequences):
            raise ValueError(f"{len(p.upstream)} upstream states for {len(p.sequences)} sequences")
        out: list[torch.Tensor | None] = [None] * len(p.sequences)
        keep = self.models.state_device
        with self.models.use(p.role) as model:
            def work(batch):
                seqs = [p.sequences[k] for k in batch]
                edits = [(e.layer, e.site, (lambda h, fn=e.fn, items=list(batch): fn(h, items))) for e in p.edits]
                final = late_forward(model, p.boundary, pad_stack([p.upstream[k] for k in batch]), seqs,
                                     self.models.pad_id, keep_on=keep, edits=edits)
                for row, k in enumerate(batch):
                    out[k] = final[row, len(seqs[row]) - 1]

            self._each_batch(self._batches(p.sequences, model=model), work, f"late pass of {p.role}",
                             list(map(len, p.sequences)))
        return filled(out, "late passes")

    def _decode(self, p: Decode) -> list[list[int]]:
        out: list[list[int] | None] = [None] * len(p.prompts)
        with self.models.use(p.role) as model:
            def work(batch):
                generated, _ = rollout_states(self.models, model, [p.prompts[k] for k in batch], p.max_new_tokens,
                                              fits=self._fits_rows if self.continuous_batching else None)
                for k, g in zip(batch, generated):
                    out[k] = g

            self._decoding(self._batches(p.prompts, p.max_new_tokens), work, f"decoding of {p.role}",
                           [len(x) + p.max_new_tokens for x in p.prompts])
        return filled(out, "decoding")

    def _history(self, p: History) -> list[tuple[list[int], list[int]]]:
        lengths = [len(x) + p.max_new_tokens for x in p.prompts]
        batches = self._batches(p.prompts, p.max_new_tokens)
        if self.models.can_hold(p.roles):  # both models at once: each row stops once its consumer is done
            out: list[tuple[list[int], list[int]] | None] = [None] * len(p.prompts)
            with self.models.use(p.roll) as roll, self.models.use(p.check) as check:
                def work(batch):
                    done = None if p.done is None else (lambda row, g, c: p.done(batch[row], g, c))  # type: ignore[misc]
                    found = history_interleaved(self.models, roll, check, [p.prompts[k] for k in batch],
                                                p.max_new_tokens, p.chunk_size, done,
                                                fits=self._fits_rows if self.continuous_batching else None)
                    for k, h in zip(batch, found):
                        out[k] = h

                self._decoding(batches, work, f"history of {p.roll} checked by {p.check}", lengths)
            return filled(out, "history")
        # one model at a time: the whole rollout, then one teacher-forced pass of the other
        rollouts = self._decode(Decode(p.roll, p.prompts, p.max_new_tokens))
        caps = self._capture(Capture(p.check, [q + r for q, r in zip(p.prompts, rollouts)], [], all_final=True))
        return list(zip(rollouts, self.teacher_forced_picks(p.check, p.prompts, rollouts, caps)))

    def teacher_forced_picks(self, check: str, prompts: list[list[int]], rollouts: list[list[int]],
                             captures: list[EventStates]) -> list[list[int]]:
        """``check``'s argmax at each rollout position, from its full pass over prompt + rollout
        (``captures``, with every final state)."""
        picks = []
        for q, r, cap in zip(prompts, rollouts, captures):
            finals = cap.final[len(q) - 1 : len(q) - 1 + len(r)]
            picks.append(masked_argmax(self.readout(check, finals), self.models.real_vocab).tolist() if r else [])
        return picks

    def _search(self, p: Search) -> list[SearchOutcome]:
        out: list[SearchOutcome | None] = [None] * len(p.prompts)
        keep = self.models.state_device
        batches = self._batches(p.prompts, p.max_new_tokens)
        lengths = [len(x) + p.max_new_tokens for x in p.prompts]
        if self.models.can_hold(p.roles):  # both models at once: interleaved, stops at the event
            with self.models.use(p.roll) as roll, self.models.use(p.check) as check:
                def search(queue):  # continuous batching: a row that ends makes room for the next prompt
                    done = None if p.history_done is None else (
                        lambda row, g, c: p.history_done(queue[row], g, c))  # type: ignore[misc]
                    found = search_interleaved(self.models, roll, check, [p.prompts[k] for k in queue],
                                               p.max_new_tokens, p.chunk_size, p.capture, keep,
                                               fits=self._fits_rows if self.continuous_batching else None,
                                               keep_history=p.keep_history, history_done=done)
                    for k, o in zip(queue, found):
                        out[k] = o

                self._decoding(batches, search, f"divergence search of {p.roll} and {p.check}", lengths)
            return filled(out, "divergence search")
        # one model at a time: the whole rollout first, then one teacher-forced pass
        rollouts, roll_states, stopped_rollouts = {}, {}, set()
        with self.models.use(p.roll) as rolling:
            def rollout(batch, model=rolling):
                generated, decoder = rollout_states(self.models, model, [p.prompts[k] for k in batch],
                                                    p.max_new_tokens, p.capture, keep,
                                                    fits=self._fits_rows if self.continuous_batching else None)
                stopped_rollouts.update(batch[row] for row in decoder.non_finite)
                for row, (k, g) in enumerate(zip(batch, generated)):
                    rollouts[k] = g
                    if p.capture is not None:
                        roll_states[k] = decoder.row_states(row)

            # nothing may refer to the model once it is released (the next load needs its memory):
            # the decoder lives only inside ``rollout``, and the handle goes with it
            self._decoding(batches, rollout, f"rollout of {p.roll}", lengths)
            del rolling, rollout
        with self.models.use(p.check) as check:
            def verify(batch):
                prompts = [p.prompts[k] for k in batch]
                stopped = {row: p.roll for row, k in enumerate(batch) if k in stopped_rollouts}
                found, culprit, check_states, picks = first_mismatch(self.models, check, prompts,
                                                                     [rollouts[k] for k in batch], p.capture, keep,
                                                                     stopped)
                for row, (k, (i, a, b)) in enumerate(zip(batch, found)):
                    if i is None:
                        out[k] = SearchOutcome(None, rollouts[k][:b], reason=a, non_finite=culprit.get(row))
                        continue
                    states = None
                    if p.capture is not None:
                        n = len(prompts[row]) + i
                        full = roll_states[k]
                        states = {p.roll: EventStates({b: t[:n] for b, t in full.boundary.items()}, full.final[n - 1]),
                                  p.check: check_states(row, n)}
                    # the whole rollout and the check's picks over it: the history, whole, for free, with both
                    # models' states over it (events found on the history need no pass of their own for them)
                    history = None
                    if p.keep_history and picks[row] is not None and row not in stopped:
                        whole = None if p.capture is None else {p.roll: roll_states[k], p.check: check_states(
                            row, len(prompts[row]) + len(rollouts[k]), every_final=True)}
                        history = SearchHistory(rollouts[k], picks[row], whole=True, states=whole)
                    out[k] = SearchOutcome(i, rollouts[k][:i], t_roll=a, t_check=b, states=states, history=history)
                for k in batch:
                    roll_states.pop(k, None)

            self._each_batch(batches, verify, f"teacher-forced check of {p.check}", lengths)
        return filled(out, "divergence search")


def _fits(work: Callable[[list[int]], None], batch: list[int]) -> bool:
    """``work(batch)``; False (memory freed) when it ran out of memory (:func:`is_out_of_memory`)."""
    try:
        work(batch)
        return True
    except Exception as exc:  # noqa: BLE001 - anything else is raised again
        if not is_out_of_memory(exc):
            raise
    free_memory()  # outside the handler: the traceback and the tensors it holds are gone
    return False
