"""Pooling several families family-balanced (``crosspatch pool``): the mean of the families' effects
with a bootstrap that resamples prompts within each family, and each family left out in turn."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .records import CellRecord
from .stats import (
    EFFECTS,
    MIN_CLUSTERS_FOR_CI,
    BootstrapConfig,
    _clean,
    cell_matrix,
    cluster_sums,
    effect_block,
    effects_from_cell_means,
    guard_ratios,
    resampled_cell_means,
)


def _pooled(names: Sequence[str], point_means: dict, boot_means: dict, clusters: dict[str, int],
            boot: BootstrapConfig) -> dict:
    """``effects`` (mean and percentile CI, unreliable ratios n/a) of the equal-weight mean of the
    named families' cell means and of their bootstrap cell means. Each family is resampled within
    itself, so each needs the prompt clusters a single run needs for an interval
    (``MIN_CLUSTERS_FOR_CI``): with fewer in any, no interval, and ``ci_note`` names them."""
    point = effects_from_cell_means(np.mean([point_means[n] for n in names], axis=0))
    boot_effects = effects_from_cell_means(np.mean([boot_means[n] for n in names], axis=0))
    lo, hi = 50 * (1 - boot.confidence), 100 - 50 * (1 - boot.confidence)
    few = [f"{n} ({clusters[n]})" for n in names if clusters[n] < MIN_CLUSTERS_FOR_CI]
    effects = {}
    for e in EFFECTS:
        v = boot_effects[e][np.isfinite(boot_effects[e])]
        ci = np.percentile(v, [lo, hi]) if len(v) and boot.n_resamples > 0 and not few else None
        effects[e] = {"mean": _clean(point[e]), "ci": None if ci is None else [_clean(ci[0]), _clean(ci[1])]}
    guard_ratios(effects)
    block: dict = {"effects": effects}
    if boot.n_resamples <= 0:
        block["ci_note"] = "no interval: bootstrap disabled"
    elif few:
        block["ci_note"] = (f"no interval: fewer than {MIN_CLUSTERS_FOR_CI} prompt clusters in "
                            f"{', '.join(few)}, each family being resampled within itself")
    return block


def pool_family_balanced(
    groups: dict[str, Sequence[CellRecord]], readout: str, boot: BootstrapConfig
) -> dict:
    """Pool several model pairs as the mean of per-pair means (each pair weighs the same,
    whatever its event count); each pair's prompts are resampled within that pair. With it, per
    family: ``families`` (its own effects) and ``leave_one_out`` (the pool of all the others, on
    the same resamples: how much the pooled answer rests on that one family). A family without a
    valid event has no mean to weigh: it is left out and named in ``families_without_events``."""
    groups = {k: [r for r in v if r.valid] for k, v in groups.items()}
    # a family without a scorable event has no mean to weigh: left out, and named (never silently)
    without = [k for k, v in groups.items() if not v]
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return {**effect_block(np.zeros((0, 4)), [], boot), "families_without_events": without}
    rng = np.random.default_rng(boot.seed)
    point_means, boot_means, clusters = {}, {}, {}
    for name, recs in groups.items():
        values = cell_matrix(recs, readout)
        point_means[name] = values.mean(axis=0)
        sums, counts = cluster_sums(values, [r.prompt_id for r in recs])
        boot_means[name] = resampled_cell_means(rng, sums, counts, max(boot.n_resamples, 1))
        clusters[name] = len(counts)
    names = list(groups)
    block = {
        "n_pairs": len(groups),
        "n_events": int(sum(len(v) for v in groups.values())),
        **_pooled(names, point_means, boot_means, clusters, boot),
        "families": {name: {"n_events": len(groups[name]), "n_prompts": clusters[name],
                            **_pooled([name], point_means, boot_means, clusters, boot)}
                     for name in groups},
    }
    if without:
        block["families_without_events"] = without
    if len(groups) >= 2:
        block["leave_one_out"] = {
            name: {"n_pairs": len(groups) - 1, "n_events": block["n_events"] - len(groups[name]),
                   **_pooled([n for n in names if n != name], point_means, boot_means, clusters, boot)}
            for name in groups}
    return block
