"""Pre-divergence prefix (DESIGN 1.5): the future ``(t_PT, t_IT)`` pair scored at an earlier
shared prefix, where the interaction should be near zero. Two named rules (option ``rule``):

- ``random_cut`` (default, the method's authors' rule): events at generated position >= 3 only,
  cut at a random earlier generated position (seeded per prompt);
- ``half``: every event, less its last ``max(1, (position + 1) // 2)`` tokens (into the prompt for
  events at position 0), crosspatch's earlier rule."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.analysis import Analysis, EventSet, late_passes
from ..core.cells import CellsConfig, CrossPatch
from ..core.divergence import DivergenceEvent
from ..core.registry import AnalysisPlugin, PlanContext, SummaryContext, control_row, register_analysis
from ..execution import Executor, Late, Program
from .common import cell_records, cell_rows, interaction_block, mean_interaction, stable_rng

MAX_SHARE = 0.25  # |I at the earlier prefix| <= this share of I (or of 1 logit)
RULES = ("random_cut", "half")
MIN_POSITION = 3  # random_cut: events at generated position >= this


@dataclass
class PreDivergenceOptions:
    rule: str = field(default="random_cut", metadata={"help": "random_cut (events at position >= 3, a random "
                                                              "earlier cut) or half (every event, half its tokens)"})

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"pre_divergence rule must be one of {', '.join(RULES)}, not {self.rule!r}")


@dataclass
class PreDivergence(Analysis):
    """The future ``(t_PT, t_IT)`` pair scored at an earlier shared prefix: the event prefix less
    its last ``max(1, (position + 1) // 2)`` tokens (into the prompt for early events)."""

    boundary: int
    cells: CellsConfig = field(default_factory=CellsConfig)
    name: str = "control_pre_divergence"
    rule: str = "half"
    seed: int = 0
    states_recorded: bool = False  # the search records the events' states (the minimal plan)

    def work_per_event(self, num_layers: int, budget: int, model_config: dict | None = None) -> float:
        """The 2x2 of the earlier prefix (every event at most): four late passes where the search
        records the events' states, else both models' full passes and two late passes."""
        if self.states_recorded:
            return late_passes(4, self.boundary, num_layers)
        return CrossPatch([self.boundary], self.cells).work_per_event(num_layers, budget)

    def _cut(self, e: DivergenceEvent) -> int | None:
        """How many tokens to remove from the event's prefix (None: the event is not used)."""
        if self.rule == "random_cut":
            if e.position < MIN_POSITION:
                return None
            keep = int(stable_rng(self.seed, e.prompt_id + "#pre").integers(e.position))  # generated tokens kept
            return e.position - keep
        return max(1, (e.position + 1) // 2)

    def program(self, ex: Executor, evset: EventSet) -> Program:
        early, sources = [], []
        for e in evset.events:
            cut = self._cut(e)
            if cut is not None and len(e.prefix_ids) - cut >= 1:
                early.append(DivergenceEvent(e.prompt_id, e.category, e.prompt_len, e.position - cut,
                                             e.prefix_ids[:-cut], e.t_pt, e.t_it, "pre_divergence"))
                sources.append(e)
        if not early:
            return []
        early_set = EventSet(early, evset.base, evset.tuned, None)
        cross = CrossPatch([self.boundary], self.cells)
        upstream = self._earlier_upstream(evset, sources, early)
        if upstream is None:  # no states recorded (the exact plan): both models' full passes, then the 2x2
            return cell_rows((yield from cross.program(ex, early_set)))
        # the boundary states are the first positions of the event's, recorded by the search (attention
        # is causal); the diagonal cells are each model's late stack on its own, asked with the cross cells
        b, base, tuned = self.boundary, evset.base, evset.tuned
        results = yield ([Late(r, b, upstream[r], early_set.sequences) for r in (base, tuned)]
                         + cross.cross_passes(early_set, {b: upstream[base]}, {b: upstream[tuned]}))
        return cell_rows(cross.score(ex, early_set, results[0], results[1], results[2:]))

    def _earlier_upstream(self, evset: EventSet, sources: list[DivergenceEvent],
                          early: list[DivergenceEvent]) -> dict[str, list] | None:
        """Both models' boundary states over each earlier prefix, the first positions of its event's
        as the search recorded them; None where it recorded none (the exact plan)."""
        b, roles, natural = self.boundary, (evset.base, evset.tuned), evset.natural or {}
        if not all(e.key in natural and all(r in natural[e.key] and b in natural[e.key][r].boundary for r in roles)
                   for e in sources):
            return None
        return {r: [natural[e.key][r].boundary[b][: len(x.prefix_ids)] for e, x in zip(sources, early)] for r in roles}


def build(options: PreDivergenceOptions, plan: PlanContext) -> PreDivergence:
    return PreDivergence(plan.headline, plan.cells, rule=options.rule, seed=plan.config.seed,
                         states_recorded=plan.config.plan == "minimal")


def summarize(rows: list[dict], ctx: SummaryContext, options) -> dict:
    i_first = mean_interaction(ctx.first)
    block = interaction_block(cell_records(rows), ctx.bootstrap("control_pre_divergence"))
    value = block["mean"]
    share = (value / i_first) if value is not None and i_first is not None and abs(i_first) >= 0.1 else None
    limit = MAX_SHARE * max(abs(i_first or 0.0), 1.0)
    ok = value is not None and abs(value) <= limit
    text = ("near zero at the earlier prefix, as expected" if ok else
            "no earlier prefix could be scored" if value is None else
            "the pair is already separated before the divergence: the interaction is not specific to it")
    return control_row("pre_divergence", "pass" if ok else "warn", value, text + f" (rule {options.rule})",
                       f"|I_pre| <= {limit:.3f}", block["ci"], block["n"], share_of_first=share, rule=options.rule)


PLUGIN = register_analysis(AnalysisPlugin(
    "pre_divergence", summarize, build=build, options=PreDivergenceOptions, role="control", default=True,
    order=20,
    description="the event's token pair scored at an earlier shared prefix"))
