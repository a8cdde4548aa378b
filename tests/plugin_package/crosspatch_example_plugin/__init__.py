"""A third-party analysis, outside crosspatch's source tree, registered through the
``crosspatch.analyses`` entry point (see the .dist-info beside it): the rank of ``t_IT`` under the
base's own readout at the event, and the probability the descendant gives it. One file: the
analysis, its options, its summary block and its report section."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from crosspatch.core.analysis import Analysis, EventSet
from crosspatch.core.registry import AnalysisPlugin, Section, Table, register_analysis


@dataclass
class TokenRankOptions:
    top: int = field(default=5, metadata={"help": "t_IT counts as 'near the top' within this rank"})


@dataclass
class TokenRank(Analysis):
    top: int = 5
    name: str = "token_rank"

    def program(self, ex, events: EventSet):
        if not events.events:
            return []
        u_pt, u_it = yield from events.states([events.base, events.tuned], [])
        pt = ex.readout(events.base, torch.stack([s.final for s in u_pt]))
        it = ex.readout(events.tuned, torch.stack([s.final for s in u_it])).softmax(-1)
        rows = []
        for k, e in enumerate(events.events):
            rank = int((pt[k] > pt[k, e.t_it]).sum())
            rows.append({"key": e.key, "prompt_id": e.prompt_id, "rank_pt": rank, "near_top": rank < self.top,
                         "p_it": float(it[k, e.t_it])})
        return rows


def summarize(rows, ctx, options):
    if not rows:
        return None
    ranks = np.array([r["rank_pt"] for r in rows], dtype=float)
    return {"n_events": len(rows), "median_rank_pt": float(np.median(ranks)),
            "near_top_share": float(np.mean([r["near_top"] for r in rows])), "top": options.top}


def render(block):
    return Section("Rank of t_IT under the base", [f"{block['n_events']} event(s); t_IT within the base's top "
                                                   f"{block['top']} on {100 * block['near_top_share']:.0f}%."],
                   [Table(["median rank", "near-top share"],
                          [[f"{block['median_rank_pt']:.1f}", f"{block['near_top_share']:.2f}"]])])


PLUGIN = register_analysis(AnalysisPlugin(
    "token_rank", summarize, build=lambda options, plan: TokenRank(options.top), render=render,
    options=TokenRankOptions, description="rank of t_IT under the base's readout"))
