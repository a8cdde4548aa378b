"""Pre-divergence prefix (DESIGN 1.5): the future ``(t_PT, t_IT)`` pair scored at an earlier
shared prefix, where the interaction should be near zero."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..analysis import Analysis, EventSet
from ..cells import CellsConfig, CrossPatch
from ..divergence import DivergenceEvent
from ..execution import Executor, Program
from ..registry import AnalysisPlugin, PlanContext, SummaryContext, control_row, register_analysis
from .common import cell_records, cell_rows, interaction_block, mean_interaction

MAX_SHARE = 0.25  # |I at the earlier prefix| <= this share of I (or of 1 logit)


@dataclass
class PreDivergence(Analysis):
    """The future ``(t_PT, t_IT)`` pair scored at an earlier shared prefix: the event prefix less
    its last ``max(1, (position + 1) // 2)`` tokens (into the prompt for early events)."""

    boundary: int
    cells: CellsConfig = field(default_factory=CellsConfig)
    name: str = "control_pre_divergence"

    def program(self, ex: Executor, evset: EventSet) -> Program:
        early = []
        for e in evset.events:
            cut = max(1, (e.position + 1) // 2)
            if len(e.prefix_ids) - cut >= 1:
                early.append(DivergenceEvent(e.prompt_id, e.category, e.prompt_len, e.position - cut,
                                             e.prefix_ids[:-cut], e.t_pt, e.t_it, "pre_divergence"))
        if not early:
            return []
        scored = yield from CrossPatch([self.boundary], self.cells).program(
            ex, EventSet(early, evset.base, evset.tuned, None))
        return cell_rows(scored)


def build(options, plan: PlanContext) -> PreDivergence:
    return PreDivergence(plan.headline, plan.cells)


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
    return control_row("pre_divergence", "pass" if ok else "warn", value, text, f"|I_pre| <= {limit:.3f}",
                       block["ci"], block["n"], share_of_first=share)


PLUGIN = register_analysis(AnalysisPlugin(
    "pre_divergence", summarize, build=build, role="control", default=True,
    description="the event's token pair scored at an earlier shared prefix"))
