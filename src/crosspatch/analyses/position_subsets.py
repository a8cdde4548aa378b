"""Position subsets (DESIGN 1.4): the interaction on events at generated position >= 3 and >= 5."""

from __future__ import annotations

import math

from ..core.registry import AnalysisPlugin, SummaryContext, control_row, register_analysis
from .common import mean_interaction


def summarize(rows: list[dict], ctx: SummaryContext, options) -> dict:
    first = ctx.first
    i_first = mean_interaction(first)
    vals = {f">={k}": {"n": len(v), "interaction": mean_interaction(v)}
            for k, v in ((k, [r for r in first if r.position >= k]) for k in (3, 5))}
    late = vals[">=3"]
    if late["n"] == 0:
        status, text = "warn", "no event at generated position >= 3: the events are all early"
    elif late["interaction"] is not None and i_first is not None and late["n"] >= 5 \
            and math.copysign(1, late["interaction"]) != math.copysign(1, i_first) and abs(i_first) >= 0.1:
        status, text = "warn", "the interaction changes sign on later events"
    else:
        status, text = "info", "interaction on events at later positions"
    return control_row("position_subsets", status, late["interaction"], text, None, None, late["n"], subsets=vals)


PLUGIN = register_analysis(AnalysisPlugin(
    "position_subsets", summarize, role="control", default=True,
    order=60,
    description="the interaction on events at later generated positions"))
