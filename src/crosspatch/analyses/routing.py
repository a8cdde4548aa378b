"""Mixture-of-experts routing at the boundary: did the fine-tune change which experts read the
event? For each event, the router of layer ``b`` (the first late layer) is read in each model's
natural pass (its late stack on its own boundary state): the top-k experts of both models at the
last prefix position, their overlap, and the Jensen-Shannon divergence of the two routing
distributions. Dense models produce no records."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.analysis import Analysis, EventSet, late_passes
from ..core.divergence import RecordKey
from ..core.registry import AnalysisPlugin, Section, Table, register_analysis
from ..execution import Edit, Executor, Late, Program


def _js(p: torch.Tensor, q: torch.Tensor) -> float:
    m = 0.5 * (p + q)
    kl = lambda a, b: float((a * (a.clamp_min(1e-12).log() - b.clamp_min(1e-12).log())).sum())  # noqa: E731
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


# config.json keys that name a mixture-of-experts model's experts (Mixtral, Qwen-MoE, OLMoE, DeepSeek, GPT-OSS)
MOE_CONFIG_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


@dataclass
class RouterShift(Analysis):
    """Router logits of layer ``boundary`` in both models at each event (MoE models only)."""

    boundary: int
    top_k: int = 2
    name: str = "routing"

    def work_per_event(self, num_layers: int, budget: int, model_config: dict | None = None) -> float:
        """Two late passes on mixture-of-experts models (none where the config names no experts)."""
        moe = model_config is None or any(model_config.get(key) for key in MOE_CONFIG_KEYS)
        return late_passes(2, self.boundary, num_layers) if moe else 0.0

    def program(self, ex: Executor, events: EventSet) -> Program:
        b = self.boundary
        sites = {role: ex.models.facts[role].get("routers", {}).get(b) for role in (events.base, events.tuned)}
        if not events.events or None in sites.values():
            return []
        lengths = [len(s) for s in events.sequences]
        captured = {events.base: {}, events.tuned: {}}

        def recorder(role):
            def fn(h, items):
                width = h.shape[0] // len(items)
                for row, k in enumerate(items):
                    captured[role][k] = h[row * width + lengths[k] - 1].detach().float().cpu()
                return h
            return fn

        u_pt, u_it = yield from events.states([events.base, events.tuned], [b])
        yield [Late(events.base, b, [s.boundary[b] for s in u_pt], events.sequences,
                    [Edit(b, sites[events.base], recorder(events.base))]),
               Late(events.tuned, b, [s.boundary[b] for s in u_it], events.sequences,
                    [Edit(b, sites[events.tuned], recorder(events.tuned))])]
        rows = []
        for k, e in enumerate(events.events):
            lp, li = captured[events.base][k], captured[events.tuned][k]
            top_pt = torch.topk(lp, min(self.top_k, lp.numel())).indices.tolist()
            top_it = torch.topk(li, min(self.top_k, li.numel())).indices.tolist()
            rows.append({"key": str(RecordKey(e.prompt_id, e.kind, b)), "prompt_id": e.prompt_id, "boundary": b, "experts_pt": top_pt,
                         "experts_it": top_it, "top_k_overlap": len(set(top_pt) & set(top_it)) / len(top_pt),
                         "js_divergence": _js(lp.softmax(-1), li.softmax(-1))})
        return rows


def routing_summary(rows: list[dict]) -> dict | None:
    if not rows:
        return None
    n = len(rows)
    return {"n_events": n, "boundary": rows[0]["boundary"],
            "mean_js_divergence": sum(r["js_divergence"] for r in rows) / n,
            "mean_top_k_overlap": sum(r["top_k_overlap"] for r in rows) / n,
            "same_top_k_share": sum(r["experts_pt"] == r["experts_it"] for r in rows) / n}


def _summarize(rows: list[dict], ctx, options) -> dict | None:
    return routing_summary(rows)


def render_routing(block: dict) -> Section | None:
    if not block:
        return None
    return Section("Expert routing at the boundary (mixture of experts)",
                   [f"Router distributions of the two models at the last prefix position of {block['n_events']} "
                    f"event(s), layer {block['boundary']}."],
                   [Table(["mean JS divergence", "mean top-k overlap", "same top-k share"],
                          [[f"{block['mean_js_divergence']:.3f}", f"{block['mean_top_k_overlap']:.2f}",
                            f"{block['same_top_k_share']:.2f}"]])])


def _build(options, plan):
    return RouterShift(plan.headline)  # runs no pass on dense models


PLUGIN = register_analysis(AnalysisPlugin(
    "routing", _summarize, build=_build, render=render_routing, default=True,
    order=200,
    description="router shift of mixture-of-experts models at the boundary"))
