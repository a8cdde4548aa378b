"""What every analysis shares: the events of a chunk, the states the search already computed,
and the :class:`Analysis` contract.

An analysis is a small dataclass with a ``name`` and a ``program(executor, events)``: a
generator that yields lists of passes (``crosspatch.execution.passes``) and returns a list of
records (dicts, or dataclasses with ``to_record``). It never looks at residency, devices or
engines: the same program runs with all models resident, one at a time, on adapters, in Ray
actors or in a shard (docs/architecture.md has a worked example).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from ..execution import Capture, Decode, Executor, History, HistoryWish, Program, SearchHistory
from ..models.forward import EventStates
from ..models.vocab import NON_FINITE
from .divergence import DivergenceEvent


def _cut_at_non_finite(histories: list) -> list[tuple[list[int], list[int]]]:
    """Each ``(rollout, picks)`` cut before the first pick that is not a token (NaN/inf logits)."""
    cut = [next((j for j, t in enumerate(c) if t == NON_FINITE), len(c)) for _, c in histories]
    return [(r[:j], c[:j]) for (r, c), j in zip(histories, cut)]


@dataclass
class EventSet:
    """The events of one chunk, scored for the descendant ``tuned`` against ``base``.
    ``natural[event.key][role]``: the states the divergence search recorded (minimal plan), or
    None (then :meth:`states` asks for full passes). ``searched[event.key]``: the history the
    search decoded past the event (:class:`~crosspatch.execution.SearchHistory`), of the roles and
    budget ``searched_as`` = ``(roll, check, budget)``; :meth:`history` takes it where it serves."""

    events: list[DivergenceEvent]
    base: str
    tuned: str
    natural: dict[str, dict[str, EventStates]] | None = None
    searched: dict[str, SearchHistory] = field(default_factory=dict, repr=False)
    searched_as: tuple[str, str, int] | None = None
    _histories: dict = field(default_factory=dict, repr=False)

    def split(self, fraction: float = 0.5) -> tuple["EventSet", "EventSet"]:
        """A train and a held-out part of these events, split by prompt with a stable hash of its
        id (the same prompt always falls on the same side, whatever the chunk or the run); each
        part keeps the states and histories the search recorded."""
        train, held = [], []
        for e in self.events:
            (train if (zlib.crc32(e.prompt_id.encode()) % 1000) / 1000 < fraction else held).append(e)
        return (self.subset(train), self.subset(held))

    def subset(self, events: list[DivergenceEvent]) -> "EventSet":
        """These ``events`` (some of this set's) with what the search recorded for them."""
        return EventSet(events, self.base, self.tuned, self.natural, self.searched, self.searched_as)

    @property
    def sequences(self) -> list[list[int]]:
        return [e.prefix_ids for e in self.events]

    @property
    def prompts(self) -> list[list[int]]:
        """Each event's prompt ids."""
        return [e.prefix_ids[: e.prompt_len] for e in self.events]

    def history(self, ex: Executor, roll: str, check: str, budget: int, done=None) -> Program:
        """Per event, ``(rollout, picks)``: ``roll``'s greedy continuation of the event's prompt
        (at most ``budget`` tokens) and ``check``'s argmax at each of its positions (teacher-forced
        on the same history), both cut before the first position where ``check``'s logits are NaN
        or infinite (no pick of its own there). ``done(k, rollout, picks)``: the consumer has what
        it needs from event ``k``'s partial history, which may then end there (a history the
        consumer reads to its end needs no ``done``; where the executor cannot stop rows early,
        the whole history is computed once and serves every consumer). ``yield from`` inside a
        program."""
        whole = (roll, check, budget, None)
        if whole in self._histories:
            return self._histories[whole]
        if self.searched and self.searched_as == (roll, check, budget):
            return (yield from self._history_from_search(ex, roll, check, budget, done))
        if done is not None and ex.can_stop_early(roll, check):  # decoded in chunks, each row ends once done
            key = (roll, check, budget, "partial")
            if key not in self._histories:
                (found,) = yield [History(roll, check, self.prompts, budget, done)]
                self._histories[key] = _cut_at_non_finite(found)
            return self._histories[key]
        prompts = self.prompts  # the whole budget: the rollout, then one teacher-forced pass of the other
        (rollouts,) = yield [Decode(roll, prompts, budget)]
        (caps,) = yield [Capture(check, [p + r for p, r in zip(prompts, rollouts)], [], all_final=True)]
        picks = ex.teacher_forced_picks(check, prompts, rollouts, caps)
        self._histories[whole] = _cut_at_non_finite(list(zip(rollouts, picks)))
        return self._histories[whole]

    def _history_from_search(self, ex: Executor, roll: str, check: str, budget: int, done) -> Program:
        """:meth:`history` from the histories the search kept: each event's serves where it is
        whole or ``done`` holds on it; the others are decoded (no search history of their own)."""
        key = (roll, check, budget, "searched", done)  # (a consumer's own done: another's may need more)
        if key in self._histories:
            return self._histories[key]
        found: dict[int, tuple[list[int], list[int]]] = {}
        for k, e in enumerate(self.events):
            h = self.searched.get(e.key)
            if h is not None and (h.whole or (done is not None and done(k, h.rollout, h.picks))):
                found[k] = (h.rollout, h.picks)
        missing = [k for k in range(len(self.events)) if k not in found]
        if missing:
            # (without the search's histories, not :meth:`subset`: these events have none that serve)
            rest = EventSet([self.events[k] for k in missing], self.base, self.tuned, self.natural)
            decoded = yield from rest.history(
                ex, roll, check, budget, None if done is None else (lambda j, g, c: done(missing[j], g, c)))
            found.update(zip(missing, decoded))
        self._histories[key] = [found[k] for k in range(len(self.events))]
        return self._histories[key]

    def states(self, roles: list[str], boundaries: list[int]) -> Program:
        """Each role's states over every event prefix (``yield from`` inside a program): taken
        from the search where it recorded them, else one full pass per role."""
        natural = self.natural or {}
        have = all(r in natural.get(e.key, {}) and all(b in natural[e.key][r].boundary for b in boundaries)
                   for e in self.events for r in roles)
        if have or not self.events:  # (no events: every role's list is empty)
            return [[natural[e.key][r] for e in self.events] for r in roles]
        return (yield [Capture(r, self.sequences, boundaries) for r in roles])


def image_parts(events: list[DivergenceEvent], media, contiguous: bool = True) -> list[list[int]]:
    """Positions of ``events`` in parts that hold no two prompts with the same tokens and
    different images (``media``: the set's registry; :func:`~crosspatch.models.media.media_chunks`,
    parts of any size; ``contiguous``: of consecutive events)."""
    from ..models.media import media_chunks

    return media_chunks([e.prompt_id for e in events], max(len(events), 1), media, contiguous)


def drive_apart(ex: Executor, evset: EventSet, program_of, contiguous: bool = True) -> list[tuple[list[int], Any]]:
    """``program_of(part)`` (a program on an :class:`EventSet` ``part`` of ``evset``) driven once
    per part whose image prompts the passes can tell apart: prompts with the same tokens and
    different images go to different parts, each run looking up its own images alone
    (:func:`~crosspatch.models.media.media_chunks`; one part, ``evset`` itself, without such
    prompts). Returns ``(positions of the part's events in evset, value)`` per part, in order
    (``contiguous``: parts of consecutive events, so values concatenate in event order)."""
    events, media = evset.events, ex.models.media
    parts = image_parts(events, media, contiguous)
    out: list[tuple[list[int], Any]] = []
    for positions in parts:
        with media.only(events[k].prompt_id for k in positions):
            part = evset if len(parts) == 1 else evset.subset([events[k] for k in positions])
            out.append((positions, ex.drive(program_of(part))))
    return out


class Analysis:
    """Base of analyses: a ``name`` (its records go to ``<name>.jsonl``) and a program."""

    name: str = "analysis"
    scores_cells: bool = False
    """True for an analysis that scores further events with the 2x2 itself (event kinds): the
    records of :meth:`cell_records` join the run's 2x2 records (``events.jsonl``, written before
    the first divergence's, which mark a prompt complete) instead of a records file of its own."""

    def program(self, ex: Executor, events: EventSet) -> Program:
        raise NotImplementedError

    def cell_records(self, value, first_records: list) -> list:
        """With ``scores_cells``: the 2x2 records this analysis adds, from its program's ``value``
        and the chunk's first-divergence records."""
        return list(value)

    def history_wish(self, models) -> HistoryWish | None:
        """The history this analysis will ask of :meth:`EventSet.history` with the search's roles
        (see :class:`HistoryWish`; ``models``: the run's :class:`ModelSet`, e.g. for its tokenizer),
        or None."""
        return None

    def tokens_past_prompt(self) -> int:
        """How far past a prompt this analysis decodes (0: no further than the divergence search),
        for the check that prompts + decoding fit the model's positions."""
        return 0

    def work_per_event(self, num_layers: int, budget: int, model_config: dict | None = None) -> float | None:
        """At most how many forward-pass equivalents (FE) per event this analysis adds to the
        divergence search's and the 2x2's, for the dry run's estimate of a run's work: one FE is
        one forward of one model over a prompt and the run's generation ``budget`` (a sequence
        running further counts more: :func:`decoded_past`), a late-only pass from boundary ``b``
        ``(num_layers - b) / num_layers`` (:func:`late_passes`); ``model_config``: the base's
        config.json where known. None: not stated (the dry run names the analysis)."""
        return None

    def model_roles(self) -> list[str]:
        """The other descendant roles of the model set this analysis reads besides the run's base
        and descendant (and its nulls, which the run's configuration names): the run's fingerprint
        holds their models, so that another model in one of them is another run, while a model set
        that merely holds more descendants (a compare given one more) is the same run."""
        return []


def late_passes(count: float, boundaries, num_layers: int) -> float:
    """The forward-pass equivalents of ``count`` late-only passes from each of ``boundaries`` (an
    int: one boundary) of a model of ``num_layers`` layers: ``count * sum((L - b) / L)``."""
    bounds = [boundaries] if isinstance(boundaries, int) else list(boundaries)
    return count * sum((num_layers - b) / num_layers for b in bounds)


def decoded_past(tokens: int, budget: int) -> float:
    """The forward-pass equivalents of one sequence running ``tokens`` past its prompt, counted in
    prompts + ``budget`` (what one FE spans): ``(p + tokens) / (p + budget) <= max(1, tokens / budget)``."""
    return max(1.0, tokens / max(budget, 1))


class GatheredAnalysis(Analysis):
    """An analysis whose measurement needs something decided from all its events at once (a
    ranking of features, principal directions): two passes over chunks of events.

    ``gather(ex, events)`` runs on each chunk and returns its part (per-event rows, never sums, so
    that the decision does not depend on how the events were chunked); ``decide(parts)`` runs once,
    on the parts in event order, and returns a plan; ``measure(ex, events, plan)`` runs on each
    chunk and returns its part; ``combine(plan, parts)`` returns the result. ``program`` composes
    the four on one chunk, so a gathered analysis is also an ordinary one; the runner
    (``runner.gathered``) spreads both passes over the run's engine, and the result is the same
    for any chunking (a test)."""

    def gather(self, ex: Executor, events: EventSet) -> Program:
        raise NotImplementedError

    def decide(self, parts: list):
        raise NotImplementedError

    def measure(self, ex: Executor, events: EventSet, plan) -> Program:
        raise NotImplementedError

    def combine(self, plan, parts: list):
        raise NotImplementedError

    def program(self, ex: Executor, events: EventSet) -> Program:
        part = yield from self.gather(ex, events)
        plan = self.decide([part])
        measured = yield from self.measure(ex, events, plan)
        return self.combine(plan, [measured])
