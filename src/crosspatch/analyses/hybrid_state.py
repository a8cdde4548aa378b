"""Hybrid-state sanity (DESIGN 1.5): diagonal reconstruction (exact), interpolation between the
two upstream states, and matched-magnitude signed-permutation patches. A failed reconstruction
means the patched passes cannot be trusted: the verdict is ``inconclusive``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.analysis import Analysis, EventSet, late_passes
from ..core.cells import event_y
from ..core.divergence import RecordKey
from ..core.registry import AnalysisPlugin, PlanContext, SummaryContext, control_row, register_analysis
from ..execution import Executor, Late, Program
from .common import stable_rng

RECONSTRUCTION_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25, "float16": 0.25}  # logits
INTERPOLATION = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class HybridStateOptions:
    random_draws: int = field(default=3, metadata={"help": "signed-permutation patches per event (seeded draws)"})

    def __post_init__(self) -> None:
        draws = self.random_draws
        if isinstance(draws, bool) or not isinstance(draws, int) or not 1 <= draws <= 100:
            raise ValueError(f"hybrid_state random_draws must be a whole number from 1 to 100, not {draws!r}")


@dataclass
class HybridState(Analysis):
    """Sanity of patched states: diagonal reconstruction (each model's late stack on its own
    boundary state against its natural pass), interpolation ``U = (1-a) U_PT + a U_IT`` through
    ``L_IT``, and ``random_draws`` matched-magnitude signed-permutation patches
    ``U_PT + P(U_IT - U_PT)`` through ``L_IT`` (coordinates permuted and sign-flipped at random:
    same norm per position). All read out with IT's head (common-IT)."""

    boundary: int
    seed: int = 0
    name: str = "control_hybrid_state"
    random_draws: int = 1

    def work_per_event(self, num_layers: int, budget: int, model_config: dict | None = None) -> float:
        """Late passes: three inner interpolation points, both diagonals, and the random draws (the
        interpolation's U_PT end is the 2x2's own pass)."""
        return late_passes(5 + self.random_draws, self.boundary, num_layers)

    def program(self, ex: Executor, evset: EventSet) -> Program:
        if not evset.events:
            return []
        b, base, tuned, seqs = self.boundary, evset.base, evset.tuned, evset.sequences
        u_pt, u_it = yield from evset.states([base, tuned], [b])
        randoms = [[] for _ in range(self.random_draws)]
        for e, x, y in zip(evset.events, u_pt, u_it):
            rng = stable_rng(self.seed, e.prompt_id)
            d = x.boundary[b].shape[-1]
            delta = y.boundary[b] - x.boundary[b]
            for draw in randoms:
                perm = torch.as_tensor(rng.permutation(d))
                signs = torch.as_tensor(rng.choice([-1.0, 1.0], size=d), dtype=x.boundary[b].dtype)
                draw.append(x.boundary[b] + (delta.to(signs.device)[:, perm] * signs).to(x.boundary[b].device))
        passes = [Late(tuned, b, [_mix(x.boundary[b], y.boundary[b], a) for x, y in zip(u_pt, u_it)], seqs)
                  for a in INTERPOLATION]
        passes += [Late(base, b, [x.boundary[b] for x in u_pt], seqs)]
        passes += [Late(tuned, b, draw, seqs) for draw in randoms]
        results = yield passes

        def y_of(finals):
            return event_y(ex.readout(tuned, torch.stack(list(finals))), evset.events)

        n_interp = len(INTERPOLATION)
        interp = [y_of(r) for r in results[:n_interp]]
        recon_pt = y_of(results[n_interp])
        rand = [y_of(r) for r in results[n_interp + 1:]]
        nat_pt, nat_it = y_of(x.final for x in u_pt), y_of(y.final for y in u_it)
        return [{"key": str(RecordKey(e.prompt_id, e.kind, b)), "prompt_id": e.prompt_id, "boundary": b,
                 "reconstruction_error": float(max(abs(recon_pt[k] - nat_pt[k]), abs(interp[-1][k] - nat_it[k]))),
                 "y_interpolation": [float(v[k]) for v in interp], "y_random_patch": float(rand[0][k]),
                 "y_random_patches": [float(v[k]) for v in rand]}
                for k, e in enumerate(evset.events)]


def _mix(u_pt: torch.Tensor, u_it: torch.Tensor, a: float) -> torch.Tensor:
    """``(1 - a) u_pt + a u_it``; at the ends the state itself (the same values, and the same
    tensor, so that the 2x2's pass of ``u_pt`` through ``L_IT`` is shared, not run twice)."""
    if a == 0:
        return u_pt
    if a == 1:
        return u_it
    return (1 - a) * u_pt + a * u_it


def build(options: HybridStateOptions, plan: PlanContext) -> HybridState:
    return HybridState(plan.headline, plan.config.seed, random_draws=options.random_draws)


def summarize(rows: list[dict], ctx: SummaryContext, options) -> dict:
    if not rows:
        return control_row("hybrid_state", "warn", None, "no events", n=0)
    tol = RECONSTRUCTION_TOLERANCE.get(ctx.dtype, 1e-3)
    err = max(r["reconstruction_error"] for r in rows)
    curve = np.mean([r["y_interpolation"] for r in rows], axis=0)
    steps = np.diff(curve)
    monotone = bool(np.all(steps >= -1e-6) or np.all(steps <= 1e-6))
    slope = float(np.polyfit(INTERPOLATION, curve, 1)[0])
    base_y, full_y = curve[0], curve[-1]
    draws = np.array([r.get("y_random_patches") or [r["y_random_patch"]] for r in rows], dtype=float)
    per_draw = draws.mean(axis=0)  # mean over events, one value per draw
    span = full_y - base_y
    ratios = (per_draw - base_y) / span if abs(span) >= 0.1 else None
    status = "fail" if not err <= tol else ("pass" if monotone else "warn")
    text = ("diagonal reconstruction failed: patched passes do not reproduce the natural model" if status == "fail"
            else "exact reconstruction; " + ("monotone interpolation" if monotone else
                                             "the interpolation curve is not monotone"))
    return control_row(
        "hybrid_state", status, err, text, f"max reconstruction error <= {tol:g} logits", None, len(rows),
        interpolation={str(a): float(v) for a, v in zip(INTERPOLATION, curve)}, slope=slope, monotone=monotone,
        random_over_observed=None if ratios is None else float(np.mean(ratios)),
        random_over_observed_sd=None if ratios is None or len(ratios) < 2 else float(np.std(ratios, ddof=1)),
        random_draws=int(draws.shape[1]), on_failure="unusable")


PLUGIN = register_analysis(AnalysisPlugin(
    "hybrid_state", summarize, build=build, options=HybridStateOptions, role="control", default=True,
    order=40,
    description="diagonal reconstruction, interpolation and matched random patches"))
