"""The 2x2 factorial at a boundary (DESIGN 1.3).

The natural pass of each model over the prefixes (recorded by the divergence search, or one
full pass) gives both diagonal cells and both boundary states (for every requested boundary at
once); each cross cell is a late-only pass (layers ``b..L-1``) on the other model's boundary
state. Every cell is read out
with one fixed head: IT's final norm + lm_head (``common_it``) and PT's (``common_pt``).
``Y = logit(t_IT) - logit(t_PT)`` at the last prefix position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..execution import Executor, Late, ModelSet, Program
from ..models.forward import EventStates, readout
from ..models.vocab import masked_argmax, top2_margin
from .analysis import Analysis, EventSet, late_passes
from .divergence import DivergenceEvent, RecordKey
from .records import CELLS, READOUTS, CellRecord, cell_effects  # noqa: F401  (re-exported)
from .tokens import DEFAULT_TOKEN_CLASSES, TokenClasses, TokenDescriber


@dataclass
class CellsConfig:
    batch_size: int = 8
    near_tie_threshold: float = 0.05  # logits; margins below this are flagged
    max_batch_tokens: int | None = None  # padded tokens per batch (Executor); None: rows alone bound it
    token_classes: TokenClasses = DEFAULT_TOKEN_CLASSES  # word lists of token categories and markers


def resolve_boundary(boundary: int | float | str, num_layers: int) -> int:
    """An int is a layer index; a float in (0, 1) is a fraction of depth (rounded). A boundary is
    in 1..L-1: layers ``0..b-1`` are the early stack, ``b..L-1`` the late stack, and both must hold
    a layer (at 0 the "upstream state" would be the embeddings alone)."""
    from ..errors import BoundaryError

    if isinstance(boundary, bool):
        raise BoundaryError("boundary must be an int layer or a fraction of depth")
    if isinstance(boundary, float) and not boundary.is_integer():
        if not 0.0 < boundary < 1.0:
            raise BoundaryError(f"fractional boundary {boundary} must be in (0, 1)")
        b = int(round(boundary * num_layers))
    else:
        try:
            b = int(boundary)
        except (TypeError, ValueError):
            raise BoundaryError(f"boundary {boundary!r} is neither a layer index nor a fraction of depth") from None
    if num_layers < 2:
        raise BoundaryError(f"boundary {boundary}: a model of {num_layers} layer(s) has no boundary (one needs a layer "
                            "on each side)")
    if b == 0:
        raise BoundaryError(f"boundary {boundary} resolves to layer 0, which leaves no early layers (the upstream "
                            f"state would be the embeddings alone): boundaries are 1..{num_layers - 1}, as a sweep "
                            "uses them")
    if not 1 <= b < num_layers:
        raise BoundaryError(f"boundary {boundary} resolves to layer {b}, outside 1..{num_layers - 1}")
    return b


def headline_boundary(boundaries: list[int], num_layers: int, preferred: int | float) -> int:
    """The boundary a run's verdict and controls use: of the run's boundaries, the one nearest to
    ``preferred`` (the run's ``boundary`` option, 0.6 of depth unless given, so that a sweep's
    ``--boundary`` chooses its headline), the lower one on a tie."""
    target = resolve_boundary(preferred, num_layers)
    return min(boundaries, key=lambda b: (abs(b - target), b))


def _y(logits: torch.Tensor, t_it: torch.Tensor, t_pt: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, t_it.to(logits.device)] - logits[rows, t_pt.to(logits.device)]


def event_y(logits: torch.Tensor, events) -> torch.Tensor:
    """``Y = logit(t_IT) - logit(t_PT)`` per event from logits ``[n_events, V]`` (on the CPU)."""
    return _y(logits, torch.tensor([e.t_it for e in events]), torch.tensor([e.t_pt for e in events])).cpu()


def natural_diagnostics(heads, real, nat_pt, nat_it, t_pt, t_it) -> dict:
    """Each model's own top-1/top-2 margin at the event, and whether its argmax is the token the
    search found (a numerical tie otherwise). ``heads`` = (PT head, IT head)."""
    own_pt, own_it = readout(heads[0], nat_pt), readout(heads[1], nat_it)
    agrees = (masked_argmax(own_pt, real).cpu() == t_pt) & (masked_argmax(own_it, real).cpu() == t_it)
    return {"margin_pt": top2_margin(own_pt, real).cpu().tolist(),
            "margin_it": top2_margin(own_it, real).cpu().tolist(), "agrees": agrees.tolist()}


def build_records(heads, tokenizer, evs: list[DivergenceEvent], boundary: int, states: dict[str, torch.Tensor],
                  diagnostics: dict, config: CellsConfig) -> list[CellRecord]:
    """Read the four cells' final states (``states[cell]``: ``[n, d]``) out with both heads
    (``heads`` = (PT head, IT head)) and build one record per event."""
    t_it = torch.tensor([e.t_it for e in evs])
    t_pt = torch.tensor([e.t_pt for e in evs])
    ys = {name: {cell: _y(readout(head, h), t_it, t_pt).cpu().tolist() for cell, h in states.items()}
          for name, head in (("common_it", heads[1]), ("common_pt", heads[0]))}
    records = []
    describe = TokenDescriber(tokenizer, config.token_classes)
    for j, ev in enumerate(evs):
        cells = {r: {c: float(ys[r][c][j]) for c in CELLS} for r in READOUTS}
        finite = all(math.isfinite(v) for r in cells.values() for v in r.values())
        mp, mi = float(diagnostics["margin_pt"][j]), float(diagnostics["margin_it"][j])
        records.append(CellRecord(
            key=str(RecordKey(ev.prompt_id, ev.kind, boundary)), prompt_id=ev.prompt_id, category=ev.category, boundary=boundary,
            position=ev.position, prompt_len=ev.prompt_len, prefix_len=len(ev.prefix_ids),
            t_pt=ev.t_pt, t_it=ev.t_it, t_pt_text=tokenizer.decode([ev.t_pt]), t_it_text=tokenizer.decode([ev.t_it]),
            cells=cells, margin_pt=mp, margin_it=mi, near_tie=min(mp, mi) < config.near_tie_threshold,
            natural_agrees=bool(diagnostics["agrees"][j]), valid=finite,
            invalid_reason=None if finite else "non-finite cell value (NaN/inf)", kind=ev.kind,
            t_pt_category=describe.category(ev.t_pt), t_it_category=describe.category(ev.t_it),
            prompt_text=tokenizer.decode(ev.prefix_ids[: ev.prompt_len], skip_special_tokens=True),
            continuation_text=tokenizer.decode(ev.prefix_ids[ev.prompt_len:]),
            prefix_ids=list(ev.prefix_ids),
        ))
    return records


@dataclass
class CrossPatch(Analysis):
    """The 2x2 (DESIGN 1.3) at each of ``boundaries``: the diagonal cells are the natural passes
    (recorded by the search, or run here), each cross cell one late-only pass on the other
    model's boundary state. Returns one :class:`CellRecord` per (event, boundary), in event
    order."""

    boundaries: list[int]
    config: CellsConfig = field(default_factory=CellsConfig)
    name: str = "cells"

    def work_per_event(self, num_layers: int, budget: int, model_config: dict | None = None) -> float:
        """Its events' states (both models, where no pass recorded them) and two late passes per boundary."""
        return 2 + late_passes(2, self.boundaries, num_layers)

    def program(self, ex: Executor, evset: EventSet) -> Program:
        base, tuned, evs = evset.base, evset.tuned, evset.events
        if not evs:
            return []
        u_pt, u_it = yield from evset.states([base, tuned], self.boundaries)
        late = yield self.cross_passes(evset, {b: [s.boundary[b] for s in u_pt] for b in self.boundaries},
                                       {b: [s.boundary[b] for s in u_it] for b in self.boundaries})
        return self.score(ex, evset, [s.final for s in u_pt], [s.final for s in u_it], late)

    def cross_passes(self, evset: EventSet, upstream_pt: dict[int, list[torch.Tensor]],
                     upstream_it: dict[int, list[torch.Tensor]]) -> list[Late]:
        """The cross cells' late-only passes: the descendant's late stack on the base's boundary
        states (``upstream_pt[b]``, one per event) at each boundary, then the base's on the
        descendant's."""
        seqs = evset.sequences
        return ([Late(evset.tuned, b, upstream_pt[b], seqs) for b in self.boundaries]
                + [Late(evset.base, b, upstream_it[b], seqs) for b in self.boundaries])

    def score(self, ex: Executor, evset: EventSet, final_pt: list[torch.Tensor], final_it: list[torch.Tensor],
              late: list) -> list[CellRecord]:
        """The records of every (event, boundary) from each model's natural final state at the
        event (``final_pt``, ``final_it``: the diagonal cells) and the results of
        :meth:`cross_passes` (``late``)."""
        base, tuned, evs = evset.base, evset.tuned, evset.events
        n_b = len(self.boundaries)
        heads = (ex.models.head(base), ex.models.head(tuned))
        by_event: list[list[CellRecord]] = [[] for _ in evs]
        step = self.config.batch_size
        for start in range(0, len(evs), step):
            part = slice(start, start + step)
            nat_pt = torch.stack(final_pt[part])
            nat_it = torch.stack(final_it[part])
            t_pt = torch.tensor([e.t_pt for e in evs[part]])
            t_it = torch.tensor([e.t_it for e in evs[part]])
            diagnostics = natural_diagnostics(heads, ex.models.real_vocab, nat_pt, nat_it, t_pt, t_it)
            for j, b in enumerate(self.boundaries):
                states = {"upt_lpt": nat_pt, "upt_lit": torch.stack(late[j][part]),
                          "uit_lpt": torch.stack(late[n_b + j][part]), "uit_lit": nat_it}
                recs = build_records(heads, ex.models.tokenizer, evs[part], b, states, diagnostics, self.config)
                for k, rec in enumerate(recs):
                    by_event[start + k].append(rec)
        return [r for recs in by_event for r in recs]


def cells_against_base(ex: Executor, events: EventSet, boundary: int, roles: list[str],
                       also_read_with: str | None = None) -> Program:
    """Each role's 2x2 against the base on ``events`` (the events' own ``(t_PT, t_IT)`` contrast),
    read with the role's own head: per role, ``({cell: Y per event}, natural final states)``, and
    with ``also_read_with`` a third item, the same four cells read with that role's head (the
    lineage's common final readout). ``yield from`` inside a program (lineage stages, nulls)."""
    b, base = boundary, events.base
    states = yield from events.states([base] + list(roles), [b])
    u_base, per_role = states[0], states[1:]
    passes = []
    for role, u_r in zip(roles, per_role):
        passes += [Late(role, b, [s.boundary[b] for s in u_base], events.sequences),
                   Late(base, b, [s.boundary[b] for s in u_r], events.sequences)]
    finals = yield passes
    nat_base = torch.stack([s.final for s in u_base])
    out = {}
    for k, (role, u_r) in enumerate(zip(roles, per_role)):
        nat_r = torch.stack([s.final for s in u_r])
        cells = {"upt_lpt": nat_base, "upt_lit": torch.stack(finals[2 * k]),
                 "uit_lpt": torch.stack(finals[2 * k + 1]), "uit_lit": nat_r}
        own = {c: event_y(ex.readout(role, h), events.events) for c, h in cells.items()}
        if also_read_with is None:
            out[role] = (own, nat_r)
        else:
            out[role] = (own, nat_r, {c: event_y(ex.readout(also_read_with, h), events.events) for c, h in cells.items()})
    return out


def score_events(
    models: ModelSet,
    events: list[DivergenceEvent],
    boundaries: list[int],
    config: CellsConfig | None = None,
    natural: dict[str, dict[str, EventStates]] | None = None,
    tuned: str | None = None,
) -> list[CellRecord]:
    """Score every event at every boundary for descendant ``tuned`` (default: the first) against
    the base. Records come back in event order (boundaries in the given order within an event).
    ``natural`` (from the divergence search, keyed by event key, then role) supplies both
    models' boundary and final states; without it one full pass of each model computes them."""
    config = config or CellsConfig()
    evset = EventSet(events, models.base, tuned or models.roles[1], natural)
    ex = Executor(models, config.batch_size, config.max_batch_tokens)
    return ex.drive(CrossPatch(list(boundaries), config).program(ex, evset))
