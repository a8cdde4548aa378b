"""Controls (DESIGN 1.5): each a named, switchable part of a run that fills one row of the
"Controls" table (value, interval where meaningful, threshold, status).

Statuses: ``pass`` — the control supports reading the headline as it is; ``warn`` — read it with
the caveat the row states; ``fail`` — a sanity check failed and the run is not usable (the
verdict is ``inconclusive`` and ``crosspatch gate`` exits 2); ``info`` — descriptive, no
expectation. Thresholds are constants below and are written into every row (docs/controls.md).

Controls that need passes are analyses (programs for the executor, any residency and engine) and
write their records to ``control_<name>.jsonl``; the others are computed from the 2x2 records.
All run at the run's headline boundary (``cells.headline_boundary``).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from .analysis import Analysis, EventSet
from .cells import CellRecord, CellsConfig, CrossPatch, event_y
from .divergence import DivergenceEvent
from .execution import Capture, Decode, Executor, Late, Program
from .models.vocab import NON_FINITE, masked_argmax
from .stats import BootstrapConfig, effect_block, label_swap_null

CONTROLS = ("label_swap", "pre_divergence", "pre_late_commitment", "hybrid_state", "readout_agreement",
            "position_subsets", "near_ties", "random_later", "native_history")
DEFAULT_CONTROLS = ("label_swap", "pre_divergence", "pre_late_commitment", "hybrid_state", "readout_agreement",
                    "position_subsets", "near_ties")  # the cheap ones: no extra decoding
PASS_CONTROLS = ("pre_divergence", "pre_late_commitment", "hybrid_state", "random_later", "native_history")

PRE_DIVERGENCE_MAX_SHARE = 0.25  # |I at the earlier prefix| <= this share of I (or of 1 logit)
RECONSTRUCTION_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.25, "float16": 0.25}  # logits
INTERPOLATION = (0.0, 0.25, 0.5, 0.75, 1.0)
READOUT_MIN_SAME_SIGN = 0.8
NEAR_TIE_MAX_SHARE = 0.10
HORIZONS = (4, 8, 16)


def parse_controls(text: str | list[str] | None) -> list[str]:
    """``all``, ``none``, ``default`` (None) or a comma list of control names."""
    if text is None or text == "default":
        return list(DEFAULT_CONTROLS)
    items = [x.strip() for x in (text.split(",") if isinstance(text, str) else text) if x.strip()]
    if items == ["all"]:
        return list(CONTROLS)
    if items in (["none"], []):
        return []
    unknown = [x for x in items if x not in CONTROLS]
    if unknown:
        raise ValueError(f"unknown control(s) {', '.join(unknown)}; choose from {', '.join(CONTROLS)}, all, none")
    return [c for c in CONTROLS if c in items]


def _stable_rng(seed: int, prompt_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(prompt_id.encode())])


def _cell_rows(records: list[CellRecord]) -> list[dict]:
    return [r.to_record() for r in records]


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
        return _cell_rows(scored)


@dataclass
class RandomLater(Analysis):
    """A random later disagreement in the IT rollout (``later_it``) and in the PT rollout
    (``later_pt``) of each event's prompt, scored with the four cells."""

    boundary: int
    budget: int
    seed: int = 0
    cells: CellsConfig = field(default_factory=CellsConfig)
    name: str = "control_random_later"

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
                j = spots[int(_stable_rng(self.seed, e.prompt_id + kind).integers(len(spots)))]
                t_it, t_pt = (rollout[j], picks[j]) if roll == evset.tuned else (picks[j], rollout[j])
                later.append(DivergenceEvent(e.prompt_id, e.category, e.prompt_len, j,
                                             e.prefix_ids[: e.prompt_len] + rollout[:j], t_pt, t_it, kind))
        if not later:
            return []
        scored = yield from CrossPatch([self.boundary], self.cells).program(
            ex, EventSet(later, evset.base, evset.tuned, None))
        return _cell_rows(scored)


@dataclass
class NativeHistory(Analysis):
    """Native PT and IT greedy histories of each prompt to ``horizons`` tokens; where the two
    models disagree on the next token, the four cells (kinds ``native_PT_h8``, ...)."""

    boundary: int
    horizons: tuple[int, ...] = HORIZONS
    cells: CellsConfig = field(default_factory=CellsConfig)
    name: str = "control_native_history"

    def tokens_past_prompt(self) -> int:
        return max(self.horizons)

    def program(self, ex: Executor, evset: EventSet) -> Program:
        if not evset.events:
            return []
        b, prompts = self.boundary, evset.prompts
        native = yield [Decode(evset.base, prompts, max(self.horizons)), Decode(evset.tuned, prompts, max(self.horizons))]
        eos = ex.models.eos_ids
        candidates = []
        for label, conts in (("PT", native[0]), ("IT", native[1])):
            for e, p, cont in zip(evset.events, prompts, conts):
                for h in self.horizons:
                    if len(cont) >= h and not any(t in eos for t in cont[:h]):
                        candidates.append((e, f"native_{label}_h{h}", p + cont[:h]))
        if not candidates:
            return []
        seqs = [c[2] for c in candidates]
        cap_pt, cap_it = yield [Capture(evset.base, seqs, [b]), Capture(evset.tuned, seqs, [b])]
        pick_pt = masked_argmax(ex.readout(evset.base, torch.stack([c.final for c in cap_pt])), ex.models.real_vocab)
        pick_it = masked_argmax(ex.readout(evset.tuned, torch.stack([c.final for c in cap_it])), ex.models.real_vocab)
        events, natural = [], {}
        for k, (e, kind, seq) in enumerate(candidates):
            if int(pick_pt[k]) != int(pick_it[k]) and NON_FINITE not in (int(pick_pt[k]), int(pick_it[k])):
                ev = DivergenceEvent(e.prompt_id, e.category, e.prompt_len, len(seq) - e.prompt_len, seq,
                                     int(pick_pt[k]), int(pick_it[k]), kind)
                events.append(ev)
                natural[ev.key] = {evset.base: cap_pt[k], evset.tuned: cap_it[k]}
        if not events:
            return []
        scored = yield from CrossPatch([b], self.cells).program(ex, EventSet(events, evset.base, evset.tuned, natural))
        return _cell_rows(scored)


@dataclass
class PreLateCommitment(Analysis):
    """IT's readout of its own boundary state at the last prefix position (logit lens at ``b``):
    ``lens_margin = logit(t_IT) - logit(t_PT)`` there, per event."""

    boundary: int
    name: str = "control_pre_late_commitment"

    def program(self, ex: Executor, evset: EventSet) -> Program:
        if not evset.events:
            return []
        b = self.boundary
        (u_it,) = yield from evset.states([evset.tuned], [b])
        lens = ex.readout(evset.tuned, torch.stack([s.boundary[b][-1] for s in u_it]))
        return [{"key": f"{e.key}@{b}", "prompt_id": e.prompt_id, "boundary": b,
                 "lens_margin": float(lens[k, e.t_it] - lens[k, e.t_pt])} for k, e in enumerate(evset.events)]


@dataclass
class HybridState(Analysis):
    """Sanity of patched states: diagonal reconstruction (each model's late stack on its own
    boundary state against its natural pass), interpolation ``U = (1-a) U_PT + a U_IT`` through
    ``L_IT``, and a matched-magnitude signed-permutation patch ``U_PT + P(U_IT - U_PT)`` through
    ``L_IT`` (coordinates permuted and sign-flipped at random: same norm per position). All read
    out with IT's head (common-IT)."""

    boundary: int
    seed: int = 0
    name: str = "control_hybrid_state"

    def program(self, ex: Executor, evset: EventSet) -> Program:
        if not evset.events:
            return []
        b, base, tuned, seqs = self.boundary, evset.base, evset.tuned, evset.sequences
        u_pt, u_it = yield from evset.states([base, tuned], [b])
        random = []
        for e, x, y in zip(evset.events, u_pt, u_it):
            rng = _stable_rng(self.seed, e.prompt_id)
            d = x.boundary[b].shape[-1]
            perm = torch.as_tensor(rng.permutation(d))
            signs = torch.as_tensor(rng.choice([-1.0, 1.0], size=d), dtype=x.boundary[b].dtype)
            delta = (y.boundary[b] - x.boundary[b]).to(signs.device)
            random.append(x.boundary[b] + (delta[:, perm] * signs).to(x.boundary[b].device))
        passes = [Late(tuned, b, [(1 - a) * x.boundary[b] + a * y.boundary[b] for x, y in zip(u_pt, u_it)], seqs)
                  for a in INTERPOLATION]
        passes += [Late(base, b, [x.boundary[b] for x in u_pt], seqs), Late(tuned, b, random, seqs)]
        results = yield passes

        def y_of(finals):
            return event_y(ex.readout(tuned, torch.stack(list(finals))), evset.events)

        interp = [y_of(r) for r in results[: len(INTERPOLATION)]]
        recon_pt, rand = y_of(results[-2]), y_of(results[-1])
        nat_pt, nat_it = y_of(x.final for x in u_pt), y_of(y.final for y in u_it)
        return [{"key": f"{e.key}@{b}", "prompt_id": e.prompt_id, "boundary": b,
                 "reconstruction_error": float(max(abs(recon_pt[k] - nat_pt[k]), abs(interp[-1][k] - nat_it[k]))),
                 "y_interpolation": [float(v[k]) for v in interp], "y_random_patch": float(rand[k])}
                for k, e in enumerate(evset.events)]


def control_analyses(names: list[str], boundary: int, budget: int, seed: int, cells: CellsConfig) -> list[Analysis]:
    """The analyses behind the pass-needing controls in ``names``."""
    make = {
        "pre_divergence": lambda: PreDivergence(boundary, cells),
        "pre_late_commitment": lambda: PreLateCommitment(boundary),
        "hybrid_state": lambda: HybridState(boundary, seed),
        "random_later": lambda: RandomLater(boundary, budget, seed, cells),
        "native_history": lambda: NativeHistory(boundary, HORIZONS, cells),
    }
    return [make[n]() for n in names if n in make]


# -- the Controls table --------------------------------------------------------------------
def _mean_interaction(records: list[CellRecord]) -> float | None:
    vals = [r.effects()["interaction"] for r in records if r.valid]
    return float(np.mean(vals)) if vals else None


def _interaction_block(records: list[CellRecord], boot: BootstrapConfig) -> dict:
    recs = [r for r in records if r.valid]
    values = np.array([[r.cells["common_it"][c] for c in ("upt_lpt", "upt_lit", "uit_lpt", "uit_lit")]
                       for r in recs], dtype=float).reshape(-1, 4)
    return effect_block(values, [r.prompt_id for r in recs], boot)["effects"]["interaction"] | {"n": len(recs)}


def _row(name: str, status: str, value, summary: str, threshold: str | None = None, ci=None, n=None, **details) -> dict:
    return {"control": name, "status": status, "value": value, "ci": ci, "n": n, "threshold": threshold,
            "summary": summary, "details": details}


def control_rows(names: list[str], first: list[CellRecord], control_records: dict[str, list[dict]],
                 boot: BootstrapConfig, dtype: str, near_tie_threshold: float, seed: int = 0) -> list[dict]:
    """One row per control in ``names`` from the first-divergence records at the headline
    boundary (``first``) and the controls' own records (by analysis name)."""
    first = [r for r in first if r.valid and r.kind == "first_diff"]
    i_first = _mean_interaction(first)
    rows = []
    for name in names:
        rec = control_records.get(f"control_{name}", [])
        if not first:  # nothing a control could check
            rows.append(_row(name, "warn", None, "no events", n=0))
            continue
        if name == "label_swap":
            null = label_swap_null(first, seed=seed)
            if null["observed"] is None:
                rows.append(_row(name, "warn", None, "no events", n=0))
                continue
            sig = null["rejects_null"]
            rows.append(_row(name, "pass" if sig else "warn", null["observed"],
                             ("the interaction is beyond the label-swap null" if sig else
                              "the interaction is within the label-swap null: not distinguishable from zero"),
                             f"|I| > {null['quantile']}th percentile of the null ({null['threshold']:.3f})",
                             n=null["n_events"], p_value=null["p_value"], null_threshold=null["threshold"]))
        elif name in ("pre_divergence", "random_later"):
            recs = [CellRecord.from_record(r) for r in rec]
            block = _interaction_block(recs, boot)
            value = block["mean"]
            share = (value / i_first) if value is not None and i_first is not None and abs(i_first) >= 0.1 else None
            if name == "pre_divergence":
                limit = PRE_DIVERGENCE_MAX_SHARE * max(abs(i_first or 0.0), 1.0)
                ok = value is not None and abs(value) <= limit
                status = "pass" if ok else ("warn" if value is not None else "warn")
                text = ("near zero at the earlier prefix, as expected" if ok else
                        "no earlier prefix could be scored" if value is None else
                        "the pair is already separated before the divergence: the interaction is not specific to it")
                rows.append(_row(name, status, value, text, f"|I_pre| <= {limit:.3f}", block["ci"], block["n"],
                                 share_of_first=share))
            else:
                by_kind = {k: _mean_interaction([r for r in recs if r.kind == k]) for k in ("later_it", "later_pt")}
                rows.append(_row(name, "info", value, "interaction at a random later disagreement"
                                 + (f": {100 * share:.0f}% of the first-divergence interaction" if share is not None else ""),
                                 None, block["ci"], block["n"], share_of_first=share, by_rollout=by_kind))
        elif name == "native_history":
            recs = [CellRecord.from_record(r) for r in rec]
            block = _interaction_block(recs, boot)
            by_h = {}
            for h in HORIZONS:
                sub = [r for r in recs if r.kind.endswith(f"_h{h}")]
                by_h[str(h)] = {"n": len(sub), "interaction": _mean_interaction(sub)}
            rows.append(_row(name, "info", block["mean"], "interaction where native histories lead to a disagreement",
                             None, block["ci"], block["n"], by_horizon=by_h))
        elif name == "pre_late_commitment":
            margins = {r["key"]: r["lens_margin"] for r in rec}
            paired = [(margins[r.key], r) for r in first if r.key in margins]
            open_ = [r for m, r in paired if m <= 0]
            block = _interaction_block(open_, boot)
            bins = {}
            if paired:
                edges = np.quantile([m for m, _ in paired], [0, 0.25, 0.5, 0.75, 1.0])
                for k in range(4):
                    lo, hi = edges[k], edges[k + 1]
                    sub = [r for m, r in paired if (lo <= m <= hi if k == 3 else lo <= m < hi)]
                    bins[f"[{lo:+.2f}, {hi:+.2f}]"] = {"n": len(sub), "interaction": _mean_interaction(sub)}
            status = "info" if open_ else "warn"
            text = (f"interaction on the {len(open_)} event(s) whose boundary state does not yet favour t_IT (logit lens)"
                    if open_ else "no event was scored by the logit lens" if not paired else
                    "every event's boundary state already favours t_IT: the late stack may only amplify")
            rows.append(_row(name, status, block["mean"], text, "lens margin <= 0", block["ci"], len(open_),
                             bins=bins, n_scored=len(paired)))
        elif name == "hybrid_state":
            if not rec:
                rows.append(_row(name, "warn", None, "no events", n=0))
                continue
            tol = RECONSTRUCTION_TOLERANCE.get(dtype, 1e-3)
            err = max(r["reconstruction_error"] for r in rec)
            curve = np.mean([r["y_interpolation"] for r in rec], axis=0)
            steps = np.diff(curve)
            monotone = bool(np.all(steps >= -1e-6) or np.all(steps <= 1e-6))
            slope = float(np.polyfit(INTERPOLATION, curve, 1)[0])
            base_y, full_y = curve[0], curve[-1]
            rand = float(np.mean([r["y_random_patch"] for r in rec]))
            ratio = (rand - base_y) / (full_y - base_y) if abs(full_y - base_y) >= 0.1 else None
            status = "fail" if not err <= tol else ("pass" if monotone else "warn")
            text = ("diagonal reconstruction failed: patched passes do not reproduce the natural model" if status == "fail"
                    else "exact reconstruction; " + ("monotone interpolation" if monotone else
                                                     "the interpolation curve is not monotone"))
            rows.append(_row(name, status, err, text, f"max reconstruction error <= {tol:g} logits", None, len(rec),
                             interpolation={str(a): float(v) for a, v in zip(INTERPOLATION, curve)},
                             slope=slope, monotone=monotone, random_over_observed=ratio))
        elif name == "readout_agreement":
            if len(first) < 2:
                rows.append(_row(name, "warn", None, "fewer than 2 events", n=len(first)))
                continue
            it = np.array([r.effects("common_it")["interaction"] for r in first])
            pt = np.array([r.effects("common_pt")["interaction"] for r in first])
            same = float(np.mean(np.sign(it) == np.sign(pt)))
            rows.append(_row(name, "pass" if same >= READOUT_MIN_SAME_SIGN else "warn", same,
                             "per-event interactions agree in sign under the common-IT and common-PT readouts"
                             if same >= READOUT_MIN_SAME_SIGN else "the two readouts disagree on many events",
                             f"same-sign share >= {READOUT_MIN_SAME_SIGN}", n=len(first),
                             mean_common_it=float(it.mean()), mean_common_pt=float(pt.mean())))
        elif name == "position_subsets":
            sub = {k: [r for r in first if r.position >= k] for k in (3, 5)}
            vals = {f">={k}": {"n": len(v), "interaction": _mean_interaction(v)} for k, v in sub.items()}
            late = vals[">=3"]
            if late["n"] == 0:
                status, text = "warn", "no event at generated position >= 3: the events are all early"
            elif late["interaction"] is not None and i_first is not None and late["n"] >= 5 \
                    and math.copysign(1, late["interaction"]) != math.copysign(1, i_first) and abs(i_first) >= 0.1:
                status, text = "warn", "the interaction changes sign on later events"
            else:
                status, text = "info", "interaction on events at later positions"
            rows.append(_row(name, status, late["interaction"], text, None, None, late["n"], subsets=vals))
        elif name == "near_ties":
            n = len(first)
            ties = sum(r.near_tie for r in first)
            share = ties / n if n else None
            ok = share is not None and share <= NEAR_TIE_MAX_SHARE
            rows.append(_row(name, "pass" if ok else "warn", share,
                             f"{ties} of {n} event(s) have a top-1/top-2 margin under {near_tie_threshold} logits"
                             + ("" if ok else "; consider --dtype float32 or --verify-fp32"),
                             f"share <= {NEAR_TIE_MAX_SHARE}", n=n, near_ties=ties))
    return rows
