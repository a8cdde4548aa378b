"""Pre-late commitment (DESIGN 1.5): events whose boundary state does not yet favour ``t_IT``
under IT's readout (logit lens at the boundary), binned by that margin."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.analysis import Analysis, EventSet
from ..core.divergence import RecordKey
from ..core.registry import AnalysisPlugin, PlanContext, SummaryContext, control_row, register_analysis
from ..execution import Executor, Program
from .common import interaction_block, mean_interaction


@dataclass
class PreLateCommitment(Analysis):
    """IT's readout of its own boundary state at the last prefix position (logit lens at ``b``):
    ``lens_margin = logit(t_IT) - logit(t_PT)`` there, per event."""

    boundary: int
    name: str = "control_pre_late_commitment"

    def work_per_event(self, num_layers: int, budget: int, model_config: dict | None = None) -> float:
        """None: it reads the descendant's boundary state that the 2x2 has."""
        return 0.0

    def program(self, ex: Executor, evset: EventSet) -> Program:
        if not evset.events:
            return []
        b = self.boundary
        (u_it,) = yield from evset.states([evset.tuned], [b])
        lens = ex.readout(evset.tuned, torch.stack([s.boundary[b][-1] for s in u_it]))
        return [{"key": str(RecordKey(e.prompt_id, e.kind, b)), "prompt_id": e.prompt_id, "boundary": b,
                 "lens_margin": float(lens[k, e.t_it] - lens[k, e.t_pt])} for k, e in enumerate(evset.events)]


def build(options, plan: PlanContext) -> PreLateCommitment:
    return PreLateCommitment(plan.headline)


def summarize(rows: list[dict], ctx: SummaryContext, options) -> dict:
    first = ctx.first
    margins = {r["key"]: r["lens_margin"] for r in rows}
    paired = [(margins[r.key], r) for r in first if r.key in margins]
    open_ = [r for m, r in paired if m <= 0]
    block = interaction_block(open_, ctx.bootstrap("control_pre_late_commitment"))
    bins = {}
    if paired:
        edges = np.quantile([m for m, _ in paired], [0, 0.25, 0.5, 0.75, 1.0])
        for k in range(4):
            lo, hi = edges[k], edges[k + 1]
            sub = [r for m, r in paired if (lo <= m <= hi if k == 3 else lo <= m < hi)]
            bins[f"[{lo:+.2f}, {hi:+.2f}]"] = {"n": len(sub), "interaction": mean_interaction(sub)}
    text = (f"interaction on the {len(open_)} event(s) whose boundary state does not yet favour t_IT (logit lens)"
            if open_ else "no event was scored by the logit lens" if not paired else
            "every event's boundary state already favours t_IT: the late stack may only amplify")
    return control_row("pre_late_commitment", "info" if open_ else "warn", block["mean"], text, "lens margin <= 0",
                       block["ci"], len(open_), bins=bins, n_scored=len(paired))


PLUGIN = register_analysis(AnalysisPlugin(
    "pre_late_commitment", summarize, build=build, role="control", default=True,
    order=30,
    description="events whose boundary state does not yet favour t_IT (logit lens)"))
