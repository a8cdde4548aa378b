"""Random later disagreement (DESIGN 1.5): a random later disagreement in the IT rollout and in
the PT rollout of each event's prompt, scored with the four cells and reported per rollout side."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.analysis import Analysis, EventSet
from ..core.cells import CellsConfig, CrossPatch
from ..core.divergence import DivergenceEvent
from ..core.registry import AnalysisPlugin, PlanContext, SummaryContext, control_row, register_analysis
from ..execution import Executor, HistoryWish, Program
from .common import cell_records, cell_rows, interaction_block, mean_interaction, stable_rng

SIDES = {"later_it": "IT rollout", "later_pt": "PT rollout"}


@dataclass
class RandomLater(Analysis):
    """A random later disagreement in the IT rollout (``later_it``) and in the PT rollout
    (``later_pt``) of each event's prompt, scored with the four cells."""

    boundary: int
    budget: int
    seed: int = 0
    cells: CellsConfig = field(default_factory=CellsConfig)
    name: str = "control_random_later"

    def work_per_event(self, num_layers: int, budget: int, model_config: dict | None = None) -> float:
        """The other rollout's whole history (decoded and checked), then up to one later event per
        rollout scored as the 2x2 scores one."""
        return 2 + 2 * CrossPatch([self.boundary], self.cells).work_per_event(num_layers, budget)

    def program(self, ex: Executor, evset: EventSet) -> Program:
        if not evset.events:
            return []
        later = []
        for roll, check, kind in ((evset.tuned, evset.base, "later_it"), (evset.base, evset.tuned, "later_pt")):
            histories = yield from evset.history(ex, roll, check, self.budget)
            for e, (rollout, picks) in zip(evset.events, histories):
                spots = [j for j in range(e.position + 1, min(len(rollout), len(picks))) if rollout[j] != picks[j]]
                if not spots:
                    continue
                j = spots[int(stable_rng(self.seed, e.prompt_id + kind).integers(len(spots)))]
                t_it, t_pt = (rollout[j], picks[j]) if roll == evset.tuned else (picks[j], rollout[j])
                later.append(DivergenceEvent(e.prompt_id, e.category, e.prompt_len, j,
                                             e.prefix_ids[: e.prompt_len] + rollout[:j], t_pt, t_it, kind))
        if not later:
            return []
        scored = yield from CrossPatch([self.boundary], self.cells).program(
            ex, EventSet(later, evset.base, evset.tuned, None))
        return cell_rows(scored)

    def history_wish(self, models) -> HistoryWish:
        """Both rollouts whole: the one of the search's roles, the search decodes on the way (the
        other side is decoded apart)."""
        return HistoryWish(self.budget)


def build(options, plan: PlanContext) -> RandomLater:
    return RandomLater(plan.headline, plan.config.max_new_tokens, plan.config.seed, plan.cells)


def summarize(rows: list[dict], ctx: SummaryContext, options) -> dict:
    recs = cell_records(rows)
    i_first = mean_interaction(ctx.first)
    block = interaction_block(recs, ctx.bootstrap("control_random_later"))
    value = block["mean"]
    share = (value / i_first) if value is not None and i_first is not None and abs(i_first) >= 0.1 else None
    by_side = {}
    for kind in SIDES:
        side = interaction_block([r for r in recs if r.kind == kind], ctx.bootstrap(f"control_random_later/{kind}"))
        by_side[kind] = {"n": side["n"], "interaction": side["mean"], "ci": side["ci"],
                         "share_of_first": (side["mean"] / i_first) if side["mean"] is not None and i_first is not None
                         and abs(i_first) >= 0.1 else None}
    sides = "; ".join(f"{SIDES[k]} {v['interaction']:+.2f} (n={v['n']})" for k, v in by_side.items()
                      if v["interaction"] is not None)
    return control_row("random_later", "info", value, "interaction at a random later disagreement"
                       + (f": {100 * share:.0f}% of the first-divergence interaction" if share is not None else "")
                       + (f"; by rollout: {sides}" if sides else ""),
                       None, block["ci"], block["n"], share_of_first=share,
                       by_rollout={k: v["interaction"] for k, v in by_side.items()}, by_side=by_side)


PLUGIN = register_analysis(AnalysisPlugin(
    "random_later", summarize, build=build, role="control",
    order=100,
    description="random later disagreements in the PT and IT rollouts"))
