"""Effects, prompt-cluster bootstrap, breakdowns and pooling (DESIGN 1.4).

Every quantity is a function of the four cell means, so one bootstrap of the cell means (events
of one prompt resampled together) gives consistent intervals for all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .records import CELLS, READOUTS, CellRecord, cell_effects

EFFECTS = (
    "E_PT", "E_IT", "interaction", "native_shift", "direct_share", "matched_portable_ratio",
    "interaction_share", "late_interaction_share", "odds_interaction",
)
# readouts derived from the two common ones, summarised for the headline only: each late stack read
# with its own head (native_late), and each upstream row read with its own model's head (native_upstream)
NATIVE_READOUTS = {
    "native_late": {"upt_lpt": "common_pt", "uit_lpt": "common_pt", "upt_lit": "common_it", "uit_lit": "common_it"},
    "native_upstream": {"upt_lpt": "common_pt", "upt_lit": "common_pt", "uit_lpt": "common_it", "uit_lit": "common_it"},
}
ALL_READOUTS = READOUTS + tuple(NATIVE_READOUTS)
POSITION_BUCKETS = {"all": 0, ">=3": 3, ">=5": 5}
# ratio -> (numerator, denominator)
RATIOS = {"direct_share": ("E_PT", "E_IT"), "matched_portable_ratio": ("E_IT", "E_PT"),
          "interaction_share": ("interaction", "native_shift"), "late_interaction_share": ("interaction", "E_IT")}
SIGNED_RATIOS = {"late_interaction_share"}  # meaningful with either sign (negative: E_PT exceeds E_IT)
MIN_CLUSTERS_FOR_CI = 5  # fewer prompt clusters: no interval (the n is shown instead)
RATIO_MIN_DENOMINATOR = 0.1  # logits: a ratio over a smaller denominator is not reported


@dataclass
class BootstrapConfig:
    n_resamples: int = 2000
    seed: int = 0
    confidence: float = 0.95


def stable_seed(seed: int, name: str) -> int:
    """A seed for the block ``name`` derived from the run's ``seed`` by a stable hash: each block's
    bootstrap draws its own resamples (blocks with the same number of prompts do not share their
    interval errors) and the draws are the same in every process and run."""
    digest = hashlib.sha256(f"{int(seed)}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def block_bootstrap(boot: BootstrapConfig, name: str) -> BootstrapConfig:
    """``boot`` with the seed of block ``name`` (:func:`stable_seed`)."""
    return dataclasses.replace(boot, seed=stable_seed(boot.seed, name))


def cluster_sums(values: np.ndarray, clusters: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt cluster (sorted by name), the sum of its events' ``values`` (``[n]`` or
    ``[n, k]``) and its event count: what the cluster bootstrap resamples."""
    values = np.asarray(values, dtype=float)
    names, index = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.zeros((len(names),) + values.shape[1:])
    np.add.at(sums, index, values)
    return sums, np.bincount(index, minlength=len(names)).astype(float)


def cluster_mean_ci(values: np.ndarray, clusters: Sequence[str], boot: BootstrapConfig) -> dict:
    """Mean of per-event ``values`` with a prompt-cluster percentile interval (the same bootstrap
    as the effect blocks): ``{"mean", "ci", "n"}``; no interval under MIN_CLUSTERS_FOR_CI clusters."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return {"mean": None, "ci": None, "n": 0}
    mean = float(values.mean())
    sums, counts = cluster_sums(values[:, None], clusters)
    if len(counts) < MIN_CLUSTERS_FOR_CI or boot.n_resamples <= 0:
        return {"mean": mean, "ci": None, "n": int(len(values))}
    res = resampled_cell_means(np.random.default_rng(boot.seed), sums, counts, boot.n_resamples)[:, 0]
    lo, hi = np.percentile(res, [50 * (1 - boot.confidence), 100 - 50 * (1 - boot.confidence)])
    return {"mean": mean, "ci": [float(lo), float(hi)], "n": int(len(values))}


def effects_from_cell_means(m: np.ndarray) -> dict[str, np.ndarray]:
    """All DESIGN 1.4 quantities from cell means ``[..., 4]`` ordered as CELLS."""
    y = {c: m[..., k] for k, c in enumerate(CELLS)}
    base = cell_effects(y)
    e_pt, e_it, inter = base["E_PT"], base["E_IT"], base["interaction"]
    shift = y["uit_lit"] - y["upt_lpt"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "E_PT": e_pt,
            "E_IT": e_it,
            "interaction": inter,
            "native_shift": shift,
            "direct_share": e_pt / e_it,
            "matched_portable_ratio": e_it / e_pt,
            "interaction_share": inter / shift,
            "late_interaction_share": inter / e_it,
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
        w = resample_weights(rng, k, min(chunk, n_resamples - start))
        out[start:start + len(w)] = (w @ sums) / (w @ counts)[:, None]
    return out


def resample_weights(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """``[n, k]`` bootstrap weights: how many times each of ``k`` clusters is drawn in each of ``n``
    resamples of ``k`` draws with replacement (a Multinomial(k, 1/k) row each). Drawn as ``n * k``
    uniform cluster indices, one resample after the other, and counted at once: eight times faster
    than numpy's multinomial sampler on a hundred clusters, and a chunk of resamples takes the
    same draws whatever the chunking (one index per draw, in order)."""
    picks = rng.integers(0, k, size=(n, k), dtype=np.int64) + (np.arange(n, dtype=np.int64) * k)[:, None]
    return np.bincount(picks.ravel(), minlength=n * k).reshape(n, k).astype(float)


def finite_percentiles(samples: np.ndarray, q: Sequence[float]) -> list[np.ndarray | None]:
    """Per column of ``samples`` ``[n, k]``, its ``q`` percentiles over the finite values (None
    where none is finite): what ``np.percentile`` gives column by column, in one call for the
    columns that are finite throughout (the usual case)."""
    finite = np.isfinite(samples)
    whole = finite.all(axis=0)
    out: list[np.ndarray | None] = [None] * samples.shape[1]
    if whole.any():
        together = np.percentile(samples[:, whole], q, axis=0)
        for j, k in enumerate(np.flatnonzero(whole)):
            out[k] = together[:, j]
    for k in np.flatnonzero(~whole):
        values = samples[finite[:, k], k]
        out[k] = np.percentile(values, q) if len(values) else None
    return out


def _clean(x) -> float | None:
    """A finite number as a float (numpy scalars and 0-d arrays too), else None (JSON has no NaN)."""
    return float(x) if math.isfinite(float(x)) else None


def effect_block(
    values: np.ndarray, clusters: Sequence[str], boot: BootstrapConfig
) -> dict:
    """Means and percentile CIs of cells and effects. ``values`` is ``[n_events, 4]``."""
    n = len(values)
    block: dict = {"n_events": int(n), "n_prompts": int(len(set(clusters)))}
    if n == 0:
        block["sign_count"] = {"positive": 0, "negative": 0, "prompts": 0}
        block["cells"] = {c: {"mean": None, "ci": None} for c in CELLS}
        block["effects"] = {e: {"mean": None, "ci": None} for e in EFFECTS}
        return block
    means = values.mean(axis=0)
    point = effects_from_cell_means(means)
    sums, counts = cluster_sums(values, clusters)
    n_clusters = len(counts)
    per_prompt = effects_from_cell_means(sums / counts[:, None])["interaction"]
    block["sign_count"] = {"positive": int(np.sum(per_prompt > 0)), "negative": int(np.sum(per_prompt < 0)),
                           "prompts": int(n_clusters)}  # per-prompt mean interactions, k of K positive
    ci_cells = ci_effects = None
    if n_clusters >= MIN_CLUSTERS_FOR_CI and boot.n_resamples > 0:
        resampled = resampled_cell_means(np.random.default_rng(boot.seed), sums, counts, boot.n_resamples)
        lo, hi = 50 * (1 - boot.confidence), 100 - 50 * (1 - boot.confidence)
        boot_effects = effects_from_cell_means(resampled)
        bounds = finite_percentiles(np.column_stack([resampled, *boot_effects.values()]), [lo, hi])
        # a cell's interval over every resample (a non-finite one makes it None, as before)
        nan = np.full(2, np.nan)
        ci_cells = np.stack([b if b is not None and np.isfinite(resampled[:, k]).all() else nan
                             for k, b in enumerate(bounds[:len(CELLS)])], axis=1)
        ci_effects = {k: bounds[len(CELLS) + j] for j, k in enumerate(boot_effects)}
    block["cells"] = {
        c: {"mean": _clean(means[k]),
            "ci": None if ci_cells is None else [_clean(ci_cells[0, k]), _clean(ci_cells[1, k])]}
        for k, c in enumerate(CELLS)
    }
    block["effects"] = {
        e: {"mean": _clean(point[e]),
            "ci": None if (ci := None if ci_effects is None else ci_effects[e]) is None
            else [_clean(ci[0]), _clean(ci[1])]}
        for e in EFFECTS
    }
    if ci_effects is None:
        block["ci_note"] = (f"no interval: {n_clusters} prompt cluster(s), fewer than {MIN_CLUSTERS_FOR_CI}"
                            if boot.n_resamples > 0 else "no interval: bootstrap disabled")
    guard_ratios(block["effects"])
    return block


def share_of_reference(values: np.ndarray, reference: np.ndarray, clusters: Sequence[str], effect: str,
                       boot: BootstrapConfig) -> dict:
    """``effect`` of ``values`` over the same effect of ``reference`` (both ``[n_events, 4]`` cells
    of the same events, e.g. a lineage stage and the final model), in percent, with a joint
    prompt-cluster percentile interval (each resample draws the prompts once for both):
    ``{"mean", "ci", "n"}``, or mean and interval None with ``na_reason`` when the reference's
    effect is near zero or its interval contains zero (:func:`ratio_unreliable`)."""
    values, reference = (np.asarray(v, dtype=float).reshape(-1, 4) for v in (values, reference))
    n = len(values)
    if n == 0:
        return {"mean": None, "ci": None, "n": 0, "na_reason": "no events"}
    both = np.concatenate([values, reference], axis=1)
    sums, counts = cluster_sums(both, clusters)
    means = both.mean(axis=0)
    num, den = (effects_from_cell_means(means[k:k + 4])[effect] for k in (0, 4))
    ci_num = ci_den = ci = None
    if len(counts) >= MIN_CLUSTERS_FOR_CI and boot.n_resamples > 0:
        res = resampled_cell_means(np.random.default_rng(boot.seed), sums, counts, boot.n_resamples)
        r_num, r_den = (effects_from_cell_means(res[:, k:k + 4])[effect] for k in (0, 4))
        lo, hi = 50 * (1 - boot.confidence), 100 - 50 * (1 - boot.confidence)
        ci_num, ci_den = (list(np.percentile(r, [lo, hi])) for r in (r_num, r_den))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = 100 * r_num / r_den
        ratio = ratio[np.isfinite(ratio)]
        ci = [_clean(x) for x in np.percentile(ratio, [lo, hi])] if len(ratio) else None
    reason = ratio_unreliable({"mean": float(num), "ci": ci_num}, {"mean": float(den), "ci": ci_den}, signed=True)
    if reason is not None:
        return {"mean": None, "ci": None, "n": int(n), "na_reason": f"the final's {effect}: {reason}"}
    return {"mean": _clean(100 * num / den), "ci": ci, "n": int(n)}


def ratio_unreliable(num: dict, den: dict, signed: bool = False) -> str | None:
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
    if n * d < 0 and not signed:
        return "numerator and denominator have opposite signs"
    return None


def guard_ratios(effects: dict) -> None:
    """Replace unreliable ratios by n/a (mean and CI None) with the reason, in place."""
    for ratio, (num, den) in RATIOS.items():
        reason = ratio_unreliable(effects[num], effects[den], ratio in SIGNED_RATIOS)
        if reason is not None:
            effects[ratio] = {"mean": None, "ci": None, "na_reason": reason}


def cell_matrix(records: Sequence[CellRecord], readout: str) -> np.ndarray:
    """The four cells of each record under ``readout`` (a common or a native one), ``[n, 4]``."""
    source = NATIVE_READOUTS.get(readout, dict.fromkeys(CELLS, readout))
    return np.array([[r.cells[source[c]][c] for c in CELLS] for r in records], dtype=float).reshape(-1, 4)


def _grouped(recs: Sequence[CellRecord], key, readout: str, boot: BootstrapConfig, name: str = "") -> dict:
    groups: dict[str, list[CellRecord]] = {}
    for r in recs:
        value = key(r)
        if value is not None:
            groups.setdefault(str(value), []).append(r)
    return {
        group: effect_block(cell_matrix(sub, readout), [r.prompt_id for r in sub], block_bootstrap(boot, f"{name}/{group}"))
        for group, sub in sorted(groups.items())
    }


def summarize_records(
    records: Sequence[CellRecord], readout: str, boot: BootstrapConfig, group_by: Sequence[str] = (),
    name: str = "", event_kinds: Sequence[str] = (),
) -> dict:
    """Blocks for one readout (valid records only). The headline (``all``) and the breakdowns by
    category, position, token-category pair and ``group_by`` fields (read from each record's
    ``extra``) use first-divergence events; ``by_event_kind`` has one block per event kind, and
    ``kinds_averaged`` averages each prompt's kinds before pooling (as the paper did). Each block
    bootstraps with its own seed, derived from ``name`` and the block's place (:func:`stable_seed`)."""
    valid = [r for r in records if r.valid]
    recs = [r for r in valid if r.kind == "first_diff"]
    def seeded(part: str) -> BootstrapConfig:
        return block_bootstrap(boot, f"{name}/{part}")

    out = {"all": effect_block(cell_matrix(recs, readout), [r.prompt_id for r in recs], seeded("all"))}
    out["by_category"] = _grouped(recs, lambda r: r.category, readout, boot, f"{name}/by_category")
    for field_name in group_by:
        if f"by_{field_name}" in out or field_name in ("position", "token_category", "event_kind"):
            continue  # a built-in breakdown is never replaced by a --group-by field of the same name
        out[f"by_{field_name}"] = _grouped(recs, lambda r, n=field_name: r.extra.get(n), readout, boot,
                                           f"{name}/by_{field_name}")
    out["by_position"] = {}
    for bucket, start in POSITION_BUCKETS.items():
        sub = [r for r in recs if r.position >= start]
        out["by_position"][bucket] = effect_block(cell_matrix(sub, readout), [r.prompt_id for r in sub],
                                                  seeded(f"by_position/{bucket}"))
    out["by_token_category"] = _grouped(
        recs, lambda r: f"{r.t_pt_category}->{r.t_it_category}" if r.t_pt_category else None, readout, boot,
        f"{name}/by_token_category")
    kinds = sorted({r.kind for r in valid} | set(event_kinds))
    if kinds != ["first_diff"]:
        out["by_event_kind"] = _grouped(valid, lambda r: r.kind, readout, boot, f"{name}/by_event_kind")
        for kind in event_kinds:  # a requested kind without events is reported with n_events 0, not left out
            out["by_event_kind"].setdefault(kind, effect_block(np.zeros((0, 4)), [], boot))
        # kinds that fall on the same event of a prompt (same position and tokens) count once, as the
        # method's authors drop such duplicates before averaging per prompt
        per_prompt: dict[str, dict[tuple, np.ndarray]] = {}
        for r in valid:
            per_prompt.setdefault(r.prompt_id, {}).setdefault((r.position, r.t_pt, r.t_it), cell_matrix([r], readout)[0])
        names = sorted(per_prompt)
        averaged = np.array([np.mean(list(per_prompt[p].values()), axis=0) for p in names]).reshape(-1, 4)
        out["kinds_averaged"] = effect_block(averaged, names, seeded("kinds_averaged"))
    return out


EXACT_SIGN_FLIP_MAX_CLUSTERS = 14  # up to 2**14 sign patterns are enumerated; more are drawn


def label_swap_null(records: Sequence[CellRecord], readout: str = "common_it", resamples: int = 10000,
                    seed: int = 0, level: float = 0.01) -> dict:
    """The label-swap null of the mean interaction, a calibrated two-sided test at ``level``:
    swapping which model is "PT" and which is "IT" flips the sign of an event's interaction, so
    under the null of no interaction each prompt cluster's summed interaction is equally likely to
    carry either sign. Every sign pattern is enumerated for up to EXACT_SIGN_FLIP_MAX_CLUSTERS
    clusters (an exact p-value), else ``resamples`` patterns are drawn (p = (1 + hits) / (1 + draws)).
    Returns the observed mean, the p-value, the null's ``1 - level`` quantile of ``|mean|``, whether
    the test rejects the null (p < level) and ``smallest_p``, the least p-value any data could give
    with these clusters (2 / 2**k exact: a pattern and its mirror; 1 / (draws + 1) drawn)."""
    recs = [r for r in records if r.valid and r.kind == "first_diff"]
    if not recs:
        return {"n_events": 0, "n_prompts": 0, "observed": None, "threshold": None, "p_value": None,
                "rejects_null": None, "level": level, "exact": None, "smallest_p": None}
    inter = effects_from_cell_means(cell_matrix(recs, readout))["interaction"]
    names, index = np.unique([r.prompt_id for r in recs], return_inverse=True)
    sums = np.zeros(len(names))
    np.add.at(sums, index, inter)
    observed = float(inter.mean())
    k = len(names)
    exact = k <= EXACT_SIGN_FLIP_MAX_CLUSTERS
    if exact:
        patterns = ((np.arange(2**k)[:, None] >> np.arange(k)) & 1) * 2.0 - 1.0
    else:
        patterns = np.random.default_rng(seed).choice([-1.0, 1.0], size=(resamples, k))
    null = np.abs(patterns @ sums / len(recs))
    # relative tolerance: sums of the same clusters in another order (merged shards) must not move ties
    hits = int(np.sum(null >= abs(observed) * (1 - 1e-9) - 1e-12))
    p_value = hits / len(null) if exact else (1 + hits) / (len(null) + 1)
    threshold = float(np.quantile(null, 1 - level))
    return {"n_events": len(recs), "n_prompts": int(k), "observed": observed, "threshold": threshold,
            "level": level, "p_value": float(p_value), "rejects_null": bool(p_value < level), "exact": exact,
            "smallest_p": min(1.0, 2.0 / 2**k) if exact else 1.0 / (len(null) + 1)}


def readout_agreement(records: Sequence[CellRecord]) -> dict:
    """How common-IT and common-PT readouts agree on per-event interactions."""
    recs = [r for r in records if r.valid and r.kind == "first_diff"]
    if len(recs) < 2:
        return {"n_events": len(recs), "interaction_correlation": None, "same_sign_fraction": None}
    inter = {
        name: effects_from_cell_means(cell_matrix(recs, name))["interaction"] for name in READOUTS
    }
    a, b = inter["common_it"], inter["common_pt"]
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None
    return {
        "n_events": len(recs),
        "interaction_correlation": corr,
        "same_sign_fraction": float(np.mean(np.sign(a) == np.sign(b))),
    }


# Every readout of a boundary resamples the same prompt clusters (a paired bootstrap), so two
# readouts that give every event the same numbers (a descendant whose final norm and head are the
# base's: most adapters) get the same intervals and the same grade. The seed keeps the name the
# common-IT blocks always had, so the headline's stored intervals are unchanged.
PAIRED_READOUT_SEED = "common_it"


def summarize_boundaries(
    records: Iterable[CellRecord], boot: BootstrapConfig, group_by: Sequence[str] = (),
    boundaries: Sequence[int] | None = None, event_kinds: Sequence[str] = (),
) -> dict:
    """``{boundary: {readout: blocks, "readout_agreement": ...}}`` for ``boundaries`` (default:
    those present); a boundary without events gets empty blocks, not a missing key. The readouts'
    blocks share their bootstrap resamples (:data:`PAIRED_READOUT_SEED`)."""
    records = list(records)
    out = {}
    for b in sorted(set(boundaries) if boundaries is not None else {r.boundary for r in records}):
        sub = [r for r in records if r.boundary == b]
        paired = f"{b}/{PAIRED_READOUT_SEED}"
        out[str(b)] = {name: summarize_records(sub, name, boot, group_by, paired, event_kinds)
                       for name in READOUTS}
        valid = [r for r in sub if r.valid and r.kind == "first_diff"]
        for name in NATIVE_READOUTS:  # the headline under the two native readouts
            out[str(b)][name] = {"all": effect_block(cell_matrix(valid, name), [r.prompt_id for r in valid],
                                                     block_bootstrap(boot, f"{paired}/all"))}
        out[str(b)]["readout_agreement"] = readout_agreement(sub)
    return out
