"""Effects, prompt-cluster bootstrap, breakdowns and pooling (DESIGN 1.4).

Every quantity is a function of the four cell means, so one bootstrap of the cell means (events
of one prompt resampled together) gives consistent intervals for all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .cells import CELLS, READOUTS, CellRecord

EFFECTS = (
    "E_PT", "E_IT", "interaction", "native_shift", "direct_share", "matched_portable_ratio",
    "interaction_share", "odds_interaction",
)
POSITION_BUCKETS = {"all": 0, ">=3": 3, ">=5": 5}
# ratio -> (numerator, denominator)
RATIOS = {"direct_share": ("E_PT", "E_IT"), "matched_portable_ratio": ("E_IT", "E_PT"),
          "interaction_share": ("interaction", "native_shift")}
MIN_CLUSTERS_FOR_CI = 5  # fewer prompt clusters: no interval (the n is shown instead)
RATIO_MIN_DENOMINATOR = 0.1  # logits: a ratio over a smaller denominator is not reported


@dataclass
class BootstrapConfig:
    n_resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95


def effects_from_cell_means(m: np.ndarray) -> dict[str, np.ndarray]:
    """All DESIGN 1.4 quantities from cell means ``[..., 4]`` ordered as CELLS."""
    upt_lpt, upt_lit, uit_lpt, uit_lit = (m[..., k] for k in range(4))
    e_pt = upt_lit - upt_lpt
    e_it = uit_lit - uit_lpt
    inter = e_it - e_pt
    shift = uit_lit - upt_lpt
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "E_PT": e_pt,
            "E_IT": e_it,
            "interaction": inter,
            "native_shift": shift,
            "direct_share": e_pt / e_it,
            "matched_portable_ratio": e_it / e_pt,
            "interaction_share": inter / shift,
            "odds_interaction": np.exp(inter),
        }


def resampled_cell_means(rng: np.random.Generator, sums: np.ndarray, counts: np.ndarray, n_resamples: int,
                         chunk: int = 10_000) -> np.ndarray:
    """Cell means ``[n_resamples, 4]`` of a cluster bootstrap: each resample draws the clusters
    (prompts) with replacement; ``sums`` ``[clusters, 4]`` and ``counts`` ``[clusters]`` are each
    cluster's event sums and event count. Drawn ``chunk`` resamples at a time, so memory stays
    bounded whatever the number of clusters (the same draws as one call)."""
    k = len(counts)
    out = np.empty((n_resamples, sums.shape[1]))
    for start in range(0, n_resamples, chunk):
        w = rng.multinomial(k, np.full(k, 1.0 / k), size=min(chunk, n_resamples - start))
        out[start:start + len(w)] = (w @ sums) / (w @ counts)[:, None]
    return out


def _clean(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def effect_block(
    values: np.ndarray, clusters: Sequence[str], boot: BootstrapConfig
) -> dict:
    """Means and percentile CIs of cells and effects. ``values`` is ``[n_events, 4]``."""
    n = len(values)
    block: dict = {"n_events": int(n), "n_prompts": int(len(set(clusters)))}
    if n == 0:
        block["cells"] = {c: {"mean": None, "ci": None} for c in CELLS}
        block["effects"] = {e: {"mean": None, "ci": None} for e in EFFECTS}
        return block
    means = values.mean(axis=0)
    point = effects_from_cell_means(means)
    names, index = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.zeros((len(names), 4))
    np.add.at(sums, index, values)
    counts = np.bincount(index, minlength=len(names)).astype(float)
    ci_cells = ci_effects = None
    if len(names) >= MIN_CLUSTERS_FOR_CI and boot.n_resamples > 0:
        resampled = resampled_cell_means(np.random.default_rng(boot.seed), sums, counts, boot.n_resamples)
        lo, hi = 50 * (1 - boot.confidence), 100 - 50 * (1 - boot.confidence)
        ci_cells = np.percentile(resampled, [lo, hi], axis=0)
        boot_effects = effects_from_cell_means(resampled)
        ci_effects = {}
        for k, v in boot_effects.items():
            v = v[np.isfinite(v)]
            ci_effects[k] = np.percentile(v, [lo, hi]) if len(v) else None
    block["cells"] = {
        c: {"mean": _clean(means[k]),
            "ci": None if ci_cells is None else [_clean(ci_cells[0, k]), _clean(ci_cells[1, k])]}
        for k, c in enumerate(CELLS)
    }
    block["effects"] = {
        e: {"mean": _clean(point[e]),
            "ci": None if ci_effects is None or ci_effects[e] is None
            else [_clean(ci_effects[e][0]), _clean(ci_effects[e][1])]}
        for e in EFFECTS
    }
    if ci_effects is None:
        block["ci_note"] = (f"no interval: {len(names)} prompt cluster(s), fewer than {MIN_CLUSTERS_FOR_CI}"
                            if boot.n_resamples > 0 else "no interval: bootstrap disabled")
    guard_ratios(block["effects"])
    return block


def ratio_unreliable(num: dict, den: dict) -> str | None:
    """Why a ratio of two effects (``{"mean", "ci"}``) must not be reported, or None. Ratios
    explode when the denominator is near zero and mean nothing when the signs differ."""
    d, n = den["mean"], num["mean"]
    if d is None or n is None:
        return "no events"
    if abs(d) < RATIO_MIN_DENOMINATOR:
        return f"denominator {d:+.3f} is within {RATIO_MIN_DENOMINATOR} of zero"
    ci = den.get("ci")
    if ci is not None and None not in ci and ci[0] <= 0 <= ci[1]:
        return f"the denominator's interval [{ci[0]:+.2f}, {ci[1]:+.2f}] contains zero"
    if n * d < 0:
        return "numerator and denominator have opposite signs"
    return None


def guard_ratios(effects: dict) -> None:
    """Replace unreliable ratios by n/a (mean and CI None) with the reason, in place."""
    for ratio, (num, den) in RATIOS.items():
        reason = ratio_unreliable(effects[num], effects[den])
        if reason is not None:
            effects[ratio] = {"mean": None, "ci": None, "na_reason": reason}


def _matrix(records: Sequence[CellRecord], readout: str) -> np.ndarray:
    return np.array([[r.cells[readout][c] for c in CELLS] for r in records], dtype=float).reshape(-1, 4)


def _grouped(recs: Sequence[CellRecord], key, readout: str, boot: BootstrapConfig) -> dict:
    groups: dict[str, list[CellRecord]] = {}
    for r in recs:
        value = key(r)
        if value is not None:
            groups.setdefault(str(value), []).append(r)
    return {
        name: effect_block(_matrix(sub, readout), [r.prompt_id for r in sub], boot)
        for name, sub in sorted(groups.items())
    }


def summarize_records(
    records: Sequence[CellRecord], readout: str, boot: BootstrapConfig, group_by: Sequence[str] = ()
) -> dict:
    """Blocks for one readout (valid records only). The headline (``all``) and the breakdowns by
    category, position, token-category pair and ``group_by`` fields (read from each record's
    ``extra``) use first-divergence events; ``by_event_kind`` has one block per event kind, and
    ``kinds_averaged`` averages each prompt's kinds before pooling (as the paper did)."""
    valid = [r for r in records if r.valid]
    recs = [r for r in valid if r.kind == "first_diff"]
    out = {"all": effect_block(_matrix(recs, readout), [r.prompt_id for r in recs], boot)}
    out["by_category"] = _grouped(recs, lambda r: r.category, readout, boot)
    for name in group_by:
        if f"by_{name}" in out or name in ("position", "token_category", "event_kind"):
            continue  # a built-in breakdown is never replaced by a --group-by field of the same name
        out[f"by_{name}"] = _grouped(recs, lambda r, n=name: r.extra.get(n), readout, boot)
    out["by_position"] = {}
    for name, start in POSITION_BUCKETS.items():
        sub = [r for r in recs if r.position >= start]
        out["by_position"][name] = effect_block(_matrix(sub, readout), [r.prompt_id for r in sub], boot)
    out["by_token_category"] = _grouped(
        recs, lambda r: f"{r.t_pt_category}->{r.t_it_category}" if r.t_pt_category else None, readout, boot)
    kinds = sorted({r.kind for r in valid})
    if kinds != ["first_diff"]:
        out["by_event_kind"] = _grouped(valid, lambda r: r.kind, readout, boot)
        per_prompt: dict[str, list[np.ndarray]] = {}
        for r in valid:
            per_prompt.setdefault(r.prompt_id, []).append(_matrix([r], readout)[0])
        names = sorted(per_prompt)
        averaged = np.array([np.mean(per_prompt[p], axis=0) for p in names]).reshape(-1, 4)
        out["kinds_averaged"] = effect_block(averaged, names, boot)
    return out


def label_swap_null(records: Sequence[CellRecord], readout: str = "common_it", resamples: int = 10000,
                    seed: int = 0, quantile: float = 99.9) -> dict:
    """The label-swap null of the mean interaction: swapping which model is "PT" and which is
    "IT" flips the sign of an event's interaction, so under the null of no interaction each
    prompt cluster's summed interaction is equally likely to carry either sign. Returns the
    observed mean, the null's ``quantile`` percentile of ``|mean|``, and a two-sided p-value."""
    recs = [r for r in records if r.valid and r.kind == "first_diff"]
    if not recs:
        return {"n_events": 0, "n_prompts": 0, "observed": None, "threshold": None, "p_value": None,
                "rejects_null": None}
    inter = effects_from_cell_means(_matrix(recs, readout))["interaction"]
    names, index = np.unique([r.prompt_id for r in recs], return_inverse=True)
    sums = np.zeros(len(names))
    np.add.at(sums, index, inter)
    observed = float(inter.mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(resamples, len(names)))
    null = np.abs(signs @ sums / len(recs))
    threshold = float(np.percentile(null, quantile))
    p_value = float((1 + np.sum(null >= abs(observed) - 1e-12)) / (resamples + 1))
    return {"n_events": len(recs), "n_prompts": int(len(names)), "observed": observed, "threshold": threshold,
            "quantile": quantile, "p_value": p_value, "rejects_null": bool(abs(observed) > threshold)}


def readout_agreement(records: Sequence[CellRecord]) -> dict:
    """How common-IT and common-PT readouts agree on per-event interactions."""
    recs = [r for r in records if r.valid and r.kind == "first_diff"]
    if len(recs) < 2:
        return {"n_events": len(recs), "interaction_correlation": None, "same_sign_fraction": None}
    inter = {
        name: effects_from_cell_means(_matrix(recs, name))["interaction"] for name in READOUTS
    }
    a, b = inter["common_it"], inter["common_pt"]
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None
    return {
        "n_events": len(recs),
        "interaction_correlation": corr,
        "same_sign_fraction": float(np.mean(np.sign(a) == np.sign(b))),
    }


def summarize_boundaries(
    records: Iterable[CellRecord], boot: BootstrapConfig, group_by: Sequence[str] = (),
    boundaries: Sequence[int] | None = None,
) -> dict:
    """``{boundary: {readout: blocks, "readout_agreement": ...}}`` for ``boundaries`` (default:
    those present); a boundary without events gets empty blocks, not a missing key."""
    records = list(records)
    out = {}
    for b in sorted(set(boundaries) if boundaries is not None else {r.boundary for r in records}):
        sub = [r for r in records if r.boundary == b]
        out[str(b)] = {name: summarize_records(sub, name, boot, group_by) for name in READOUTS}
        out[str(b)]["readout_agreement"] = readout_agreement(sub)
    return out


def pool_family_balanced(
    groups: dict[str, Sequence[CellRecord]], readout: str, boot: BootstrapConfig
) -> dict:
    """Pool several model pairs as the mean of per-pair means (each pair weighs the same,
    whatever its event count); each pair's prompts are resampled within that pair."""
    groups = {k: [r for r in v if r.valid] for k, v in groups.items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return effect_block(np.zeros((0, 4)), [], boot)
    rng = np.random.default_rng(boot.seed)
    point_means, boot_means = [], []
    for recs in groups.values():
        values = _matrix(recs, readout)
        point_means.append(values.mean(axis=0))
        names, index = np.unique([r.prompt_id for r in recs], return_inverse=True)
        sums = np.zeros((len(names), 4))
        np.add.at(sums, index, values)
        counts = np.bincount(index, minlength=len(names)).astype(float)
        boot_means.append(resampled_cell_means(rng, sums, counts, boot.n_resamples))
    point = effects_from_cell_means(np.mean(point_means, axis=0))
    resampled = np.mean(boot_means, axis=0)
    lo, hi = 50 * (1 - boot.confidence), 100 - 50 * (1 - boot.confidence)
    boot_effects = effects_from_cell_means(resampled)
    block = {
        "n_pairs": len(groups),
        "n_events": int(sum(len(v) for v in groups.values())),
        "effects": {},
    }
    for e in EFFECTS:
        v = boot_effects[e][np.isfinite(boot_effects[e])]
        ci = np.percentile(v, [lo, hi]) if len(v) else None
        block["effects"][e] = {"mean": _clean(point[e]), "ci": None if ci is None else [_clean(ci[0]), _clean(ci[1])]}
    guard_ratios(block["effects"])
    return block
