"""Event kinds beyond the first divergence (DESIGN 1.2, ``tokens.py`` for the rule).

On the rollout model's greedy history of each prompt (checked token by token by the other
model), ``first_nonformat_diff`` and ``first_assistant_marker_diff`` are found with
:func:`~crosspatch.core.tokens.find_event_kinds` and scored with the same 2x2 as the first
divergence. The first divergence itself always comes from the search. A kind that falls on the
first divergence reuses its records (relabelled, not recomputed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..core.analysis import Analysis, EventSet
from ..core.cells import CellRecord, CellsConfig, CrossPatch
from ..core.divergence import DivergenceEvent, event_key
from ..core.records import copied_fields
from ..core.registry import AnalysisPlugin, PlanContext, SummaryContext, name_items, register_analysis
from ..core.tokens import EVENT_KINDS, TokenDescriber, find_event_kinds
from ..execution import Executor, HistoryWish, Program


def parse_event_kinds(text: str | list[str] | None) -> list[str]:
    """``all`` / None -> every kind; else a comma list (``first_diff`` is always included)."""
    if text is None or text == "all" or text == ["all"]:
        return list(EVENT_KINDS)
    items = name_items(text, "event kinds")
    if not items:
        raise ValueError(f"event kinds {text!r} name no kind: give 'all' or a comma list of {', '.join(EVENT_KINDS)} "
                         "(first_diff is always scored)")
    unknown = [x for x in items if x not in EVENT_KINDS]
    if unknown:
        raise ValueError(f"unknown event kind(s) {', '.join(unknown)}; choose from {', '.join(EVENT_KINDS)} or all")
    return ["first_diff"] + [k for k in EVENT_KINDS[1:] if k in items]


def requested_event_kinds(text: str | list[str] | None) -> list[str]:
    """The event kinds a finished run asked for (its recorded ``options["event_kinds"]``); none
    for a value recorded before the kinds were checked that no longer parses."""
    try:
        return parse_event_kinds(text)
    except ValueError:
        return []


@dataclass
class EventKinds(Analysis):
    """Scores the extra ``kinds`` of each first-divergence event at ``boundaries``; its records are
    2x2 records (``scores_cells``), stored with the first divergence's."""

    boundaries: list[int]
    kinds: list[str]
    budget: int
    rollout_model: str = "IT"
    cells: CellsConfig = field(default_factory=CellsConfig)
    name: str = "event_kinds"
    scores_cells = True

    def work_per_event(self, num_layers: int, budget: int, model_config: dict | None = None) -> float:
        """Each extra kind's event scored as the 2x2 scores one (its history is the search's, decoded to
        the budget at most)."""
        extra = [k for k in self.kinds if k != "first_diff"]
        return len(extra) * CrossPatch(self.boundaries, self.cells).work_per_event(num_layers, budget)

    def program(self, ex: Executor, evset: EventSet) -> Program:
        """Returns ``(records, twins)``: records of the kinds that fall elsewhere, and
        ``(kind, first-divergence event key)`` for kinds that fall on the first divergence
        (see :func:`relabel`)."""
        extra = [k for k in self.kinds if k != "first_diff"]
        if not extra or not evset.events:
            return [], []
        roll, check = (evset.tuned, evset.base) if self.rollout_model == "IT" else (evset.base, evset.tuned)
        describe = TokenDescriber(ex.models.tokenizer, self.cells.token_classes)
        prompt_ends = [ev.prefix_ids[ev.prompt_len - 1] for ev in evset.events]

        def done(k: int, rollout: list[int], picks: list[int]) -> bool:
            return _settled(describe, extra, prompt_ends[k], rollout, picks)

        histories = yield from evset.history(ex, roll, check, self.budget, done)
        fresh: list[DivergenceEvent] = []
        twins: list[tuple[str, str]] = []
        recorded: dict[str, dict] = {}  # fresh event key -> both models' states, where the search's history holds them
        for ev, (rollout, picks) in zip(evset.events, histories):
            found = find_event_kinds(rollout, picks, describe, describe.text, ev.prefix_ids[ev.prompt_len - 1],
                                     describe.continues)
            for kind in extra:
                j = found.get(kind)
                if j is None:
                    continue
                t_roll, t_check = rollout[j], picks[j]
                t_it, t_pt = (t_roll, t_check) if roll == evset.tuned else (t_check, t_roll)
                if j == ev.position and (t_pt, t_it) == (ev.t_pt, ev.t_it):
                    twins.append((kind, ev.key))
                    continue
                fresh.append(DivergenceEvent(ev.prompt_id, ev.category, ev.prompt_len, j,
                                             ev.prefix_ids[: ev.prompt_len] + rollout[:j], t_pt, t_it, kind))
                searched = evset.searched.get(ev.key)
                if searched is not None and searched.rollout[:j] == rollout[:j]:
                    states = searched.prefix_states(ev.prompt_len, j, self.boundaries)
                    if states is not None:
                        recorded[fresh[-1].key] = states
        # the states of the events found on a history the search recorded whole (one model at a time): no
        # full pass of either model, as for the first divergence itself (else both models' full passes)
        natural = recorded if len(recorded) == len(fresh) else None
        scored = yield from CrossPatch(self.boundaries, self.cells).program(
            ex, EventSet(fresh, evset.base, evset.tuned, natural))
        return scored, twins

    def history_wish(self, models) -> HistoryWish | None:
        """The history :meth:`program` reads, for the search to decode on the way: to where every
        extra kind is settled."""
        extra = [k for k in self.kinds if k != "first_diff"]
        if not extra:
            return None
        describe = TokenDescriber(models.tokenizer, self.cells.token_classes)
        return HistoryWish(self.budget, lambda prompt, rollout, picks: _settled(describe, extra, prompt[-1], rollout,
                                                                                picks))

    def cell_records(self, value, first_records: list[CellRecord]) -> list[CellRecord]:
        """The records of kinds that fall elsewhere, then copies of the first divergence's records
        for kinds that fall on it."""
        kind_records, twins = value
        return kind_records + relabel(first_records, twins)


def _settled(describe: TokenDescriber, kinds: list[str], prompt_end: int, rollout: list[int], picks: list[int]) -> bool:
    """Every one of ``kinds`` found where the next token already settles it (a marker must end a
    word): the rest of the history cannot change what is found."""
    found = find_event_kinds(rollout, picks, describe, describe.text, prompt_end, describe.continues)
    return all(kind in found and found[kind] < len(rollout) - 1 for kind in kinds)


def relabel(first_records: list[CellRecord], twins: list[tuple[str, str]]) -> list[CellRecord]:
    """Copies of first-divergence records for kinds that fall on the first divergence."""
    by_key: dict[str, list[CellRecord]] = {}
    for r in first_records:
        by_key.setdefault(r.event_key, []).append(r)
    out = []
    for kind, key in twins:
        for r in by_key.get(key, []):
            twin = dataclasses.replace(r, **copied_fields(r))
            twin.kind = kind
            twin.key = twin.key.replace(key, event_key(r.prompt_id, kind), 1)
            out.append(twin)
    return out


def _build(options, context: PlanContext) -> EventKinds | None:
    kinds = parse_event_kinds(context.config.event_kinds)
    if len(kinds) <= 1:
        return None  # the first divergence alone: the 2x2 scores it
    return EventKinds(context.boundaries, kinds, context.config.max_new_tokens, context.config.rollout_model,
                      context.cells)


def _summarize(rows: list[dict], ctx: SummaryContext, options) -> None:
    """No block of its own: its records are 2x2 records, summarised with the run's (``by_event_kind``
    in every effect block, and the event explorer's kinds)."""
    return None


PLUGIN = register_analysis(AnalysisPlugin(
    name="event_kinds", summarize=_summarize, build=_build, default=True, records=None,
    order=230,
    description="the first non-format and the first assistant-marker divergence of each event's history, "
                "scored with the 2x2 (--event-kinds)"))
