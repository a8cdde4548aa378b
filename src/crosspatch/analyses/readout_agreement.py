"""Readout agreement (DESIGN 1.5): does the answer depend on which head reads the cells? The
headline is graded under the common-PT readout as well as the policy's readout (common-IT by
default); the control fails when the two grades differ, and then the verdict is
``inconclusive``. The row's value is the difference of the two interactions with its
prompt-cluster interval (magnitudes, not signs); the share of events whose interactions agree in
sign and the native readouts' interactions are details."""

from __future__ import annotations

import numpy as np

from ..core.records import readout_label
from ..core.registry import AnalysisPlugin, SummaryContext, control_row, register_analysis
from ..core.stats import cluster_mean_ci
from ..core.verdict import GRADED, grade

OTHER = {"common_it": "common_pt", "common_pt": "common_it"}


def summarize(rows: list[dict], ctx: SummaryContext, options) -> dict:
    first = ctx.first
    if len(first) < 2:
        return control_row("readout_agreement", "info", None, "fewer than 2 events", n=len(first))
    policy = ctx.policy
    main, other = policy.readout, OTHER[policy.readout]
    a = np.array([r.effects(main)["interaction"] for r in first])
    b = np.array([r.effects(other)["interaction"] for r in first])
    diff = cluster_mean_ci(a - b, [r.prompt_id for r in first], ctx.bootstrap("control_readout_agreement"))
    blocks = ctx.results.get(str(ctx.headline), {})
    grades = {name: grade(blocks[name]["all"], policy)[0] for name in (main, other) if name in blocks}
    agree = len(set(grades.values())) <= 1
    native = {name: blocks[name]["all"]["effects"]["interaction"]["mean"] for name in ("native_late", "native_upstream")
              if name in blocks}
    ci = diff["ci"]
    text = (f"{readout_label(main)} and {readout_label(other)} give the same grade ({grades.get(main)}); "
            f"interaction difference {diff['mean']:+.2f}" if agree else
            f"the grade depends on the head: {readout_label(main)} says {grades.get(main)}, "
            f"{readout_label(other)} says {grades.get(other)} (interaction difference {diff['mean']:+.2f}"
            + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "") + ")")
    return control_row("readout_agreement", "pass" if agree else "warn", diff["mean"], text,
                       "the same grade under both common readouts", ci, len(first),
                       grades=grades, same_sign_share=float(np.mean(np.sign(a) == np.sign(b))),
                       mean_interaction={main: float(a.mean()), other: float(b.mean()), **native},
                       on_failure="inconclusive", weakens=list(GRADED))


PLUGIN = register_analysis(AnalysisPlugin(
    "readout_agreement", summarize, role="control", default=True, reads_policy=True,
    order=50,
    description="the grade and the interaction under the common-IT and common-PT readouts"))
