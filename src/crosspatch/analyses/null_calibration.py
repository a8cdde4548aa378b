"""Null calibration (docs/verdict.md): how large an interaction does a harmless fine-tune of the
same base produce on the same events? Each null descendant (a trained null: ``--null DIR``, a seed
twin or a generic-text fine-tune; or a synthetic null: ``--synthetic-null N``) is scored on the
run's first-divergence events with the same ``(t_PT, t_IT)`` contrast: its 2x2 against the base,
read with its own head (and with the base's, for a verdict that reads the common-PT readout: the
observed interaction and the nulls' are then read with the base's head). The control compares
the observed interaction with the nulls' on two counts: paired by event, the interval of
``I − I_null`` must lie beyond zero on the interaction's side for every null (prompt sampling);
and with two or more nulls, ``I`` must lie beyond the one-sided 95% prediction bound of a
further null, ``mean + t(K−1) · sd · sqrt(1 + 1/K)`` of the K null interactions (the spread
between harmless fine-tunes; one null has no spread to measure, a weaker yardstick that the row
says). Otherwise the verdicts that claim an interaction become ``inconclusive``. Without a null
it is an ``info`` row saying the verdict has no yardstick."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.analysis import Analysis, EventSet, late_passes
from ..core.cells import CELLS, cell_effects, cells_against_base
from ..core.divergence import RecordKey
from ..core.registry import AnalysisPlugin, PlanContext, SummaryContext, control_row, register_analysis
from ..core.stats import cluster_mean_ci
from ..core.verdict import INTERACTION_CLAIMS
from ..execution import Executor, Program

# one-sided 95% quantiles of Student's t by degrees of freedom (larger df: the normal's 1.645)
T_95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812,
        12: 1.782, 15: 1.753, 20: 1.725, 30: 1.697, 60: 1.671}


def t_95(df: int) -> float:
    """The one-sided 95% quantile of Student's t with ``df`` degrees of freedom (conservative
    between tabulated values)."""
    known = [d for d in sorted(T_95) if d <= df]
    return T_95[known[-1]] if known else T_95[1] if df >= 1 else float("inf")


@dataclass
class NullScores(Analysis):
    """Each null role's four cells against the base on the run's events (the run's contrast),
    read with the null's own head (``cells``) and with the base's (``cells_common_pt``)."""

    boundary: int
    nulls: list[str]
    name: str = "control_null_calibration"

    def work_per_event(self, num_layers: int, budget: int, model_config: dict | None = None) -> float:
        """Per null: its states (one pass) and two late passes."""
        return len(self.nulls) * (1 + late_passes(2, self.boundary, num_layers))

    def program(self, ex: Executor, events: EventSet) -> Program:
        if not events.events or not self.nulls:
            return []
        b = self.boundary
        scored = yield from cells_against_base(ex, events, b, list(self.nulls), also_read_with=events.base)
        rows = []
        for role, (ys, _, with_base) in scored.items():
            for j, e in enumerate(events.events):
                rows.append({"key": str(RecordKey(e.prompt_id, e.kind, b, role)), "event_key": e.key,
                             "prompt_id": e.prompt_id, "null": role, "boundary": b,
                             "cells": {c: float(ys[c][j]) for c in CELLS},
                             "cells_common_pt": {c: float(with_base[c][j]) for c in CELLS}})
        return rows


def build(options, plan: PlanContext) -> NullScores | None:
    nulls = list(getattr(plan.config, "nulls", None) or [])
    return NullScores(plan.headline, nulls) if nulls else None


def _non_finite_note(dropped: dict[str, int], unusable: list[str], events: int) -> str:
    """`` (null-2: cells not finite on 6 of 6 event(s); ...)``: the nulls whose events were left out
    for cells that are not finite, and those left with none (no yardstick); '' when none was."""
    if not dropped:
        return ""
    counts = "; ".join(f"{n}: cells not finite on {k} of {events} event(s)" for n, k in dropped.items())
    return (f" ({counts}: NaN or infinite logits, from broken weights or a float16 overflow; those events are left "
            "out" + (f", and {', '.join(unusable)} give(s) no yardstick" if unusable else "") + ")")


def summarize(rows: list[dict], ctx: SummaryContext, options) -> dict:
    nulls = sorted({r["null"] for r in rows})
    if not nulls:
        return control_row("null_calibration", "info", None,
                           "no null descendant: nothing says how large an interaction a harmless fine-tune of this "
                           "base produces (give --null DIR, or --synthetic-null N for a weaker yardstick)", n=0)
    # the verdict's own interaction, in the readout it reads; the nulls' in the same one (with the base's head
    # under common-PT; a null's rows recorded before they held that reading are read with its own head, and said)
    readout = ctx.readout
    key = "cells_common_pt" if readout == "common_pt" else "cells"
    own_head = sorted({r["null"] for r in rows if key not in r})
    rows = [{**r, "cells": r["cells"] if r["null"] in own_head else r[key]} for r in rows]
    observed = {r.event_key: r.effects(readout)["interaction"] for r in ctx.first}
    i_obs = float(np.mean(list(observed.values()))) if observed else 0.0
    sign = 1.0 if i_obs >= 0 else -1.0
    by_null, beyond, unusable, dropped = {}, [], [], {}
    for null in nulls:
        mine = [r for r in rows if r["null"] == null and r["event_key"] in observed]
        # a null's cells that are not finite (NaN or infinite logits: broken weights, a float16 overflow) measure
        # nothing: left out, counted, and a null with no finite event is no yardstick at all
        finite = [r for r in mine if all(np.isfinite(r["cells"][c]) for c in CELLS)]
        if len(finite) < len(mine):
            dropped[null] = len(mine) - len(finite)
        if not finite:
            unusable.append(null)
            by_null[null] = {"interaction": None, "difference": {"mean": None, "ci": None, "n": 0}, "ratio": None,
                             "beyond": False, "non_finite_events": len(mine)}
            beyond.append(False)
            continue
        paired = [(observed[r["event_key"]], cell_effects(r["cells"])["interaction"], r["prompt_id"]) for r in finite]
        diff = cluster_mean_ci(np.array([o - n for o, n, _ in paired]), [p for _, _, p in paired],
                               ctx.bootstrap(f"control_null_calibration/{null}"))
        i_null = float(np.mean([n for _, n, _ in paired]))
        ok = diff["ci"] is not None and (diff["ci"][0] > 0 if sign > 0 else diff["ci"][1] < 0)
        by_null[null] = {"interaction": i_null, "difference": diff,
                         "ratio": (i_obs / i_null) if i_null != 0.0 else None, "beyond": ok,
                         "non_finite_events": dropped.get(null, 0)}
        beyond.append(ok)
    broken = _non_finite_note(dropped, unusable, len(observed)) + (
        f" ({', '.join(own_head)} read with its own head: recorded before the nulls held the base's reading)"
        if own_head else "")
    if len(unusable) == len(nulls):
        return control_row("null_calibration", "warn", None,
                           f"no null gives a yardstick for the interaction {i_obs:+.2f}{broken}: fix or replace the "
                           "null(s)", "I − I_null interval beyond zero for every null", None, len(observed),
                           by_null=by_null, p_value=None, prediction_bound=None, on_failure="inconclusive",
                           weakens=list(INTERACTION_CLAIMS))
    null_values = [abs(v["interaction"]) for v in by_null.values() if v["interaction"] is not None]
    p_value = (1 + sum(v >= abs(i_obs) for v in null_values)) / (len(null_values) + 1)
    signed = np.array([sign * v["interaction"] for v in by_null.values() if v["interaction"] is not None])
    bound = None
    if len(signed) >= 2:  # a further harmless fine-tune's interaction stays below this (one-sided 95%)
        bound = float(signed.mean() + t_95(len(signed) - 1) * signed.std(ddof=1) * np.sqrt(1 + 1 / len(signed)))
        beyond.append(sign * i_obs > bound)
    largest = max((n for n in nulls if n not in unusable), key=lambda n: abs(by_null[n]["interaction"]))
    worst = by_null[largest]
    ci = worst["difference"]["ci"]
    text = (f"the interaction {i_obs:+.2f} against {len(nulls)} null(s) (largest {largest}: "
            f"{worst['interaction']:+.2f}; difference {worst['difference']['mean']:+.2f}"
            + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "") + ")"
            + ("" if bound is None else f"; prediction bound of a further null {sign * bound:+.2f}")
            + (": beyond every null" if all(beyond) else ": not beyond the null yardstick")
            + ("" if len(nulls) > 1 else " (one null: no spread between nulls measured, a weaker yardstick)")
            + broken)
    return control_row("null_calibration", "pass" if all(beyond) else "warn", worst["difference"]["mean"], text,
                       "I − I_null interval beyond zero for every null", ci, len(observed),
                       by_null=by_null, p_value=p_value, prediction_bound=None if bound is None else sign * bound,
                       on_failure="inconclusive",
                       weakens=list(INTERACTION_CLAIMS))


PLUGIN = register_analysis(AnalysisPlugin(
    "null_calibration", summarize, build=build, role="control", default=True, reads_policy=True,
    order=120,
    description="the interaction against null descendants of the same base (--null, --synthetic-null)"))
