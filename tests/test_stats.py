"""Statistics: effect definitions, prompt-cluster bootstrap, breakdowns and pooling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crosspatch.core.cells import CellRecord
from crosspatch.core.pooling import pool_family_balanced
from crosspatch.core.stats import (
    BootstrapConfig,
    effect_block,
    effects_from_cell_means,
    resampled_cell_means,
    summarize_boundaries,
    summarize_records,
)


def rec(pid, cells, category=None, position=0, boundary=2, valid=True):
    y = dict(zip(("upt_lpt", "upt_lit", "uit_lpt", "uit_lit"), cells))
    return CellRecord(key=f"{pid}#{position}@{boundary}", prompt_id=pid, category=category, boundary=boundary,
                      position=position, prompt_len=3, prefix_len=3 + position, t_pt=1, t_it=2,
                      t_pt_text="a", t_it_text="b", cells={"common_it": y, "common_pt": y}, margin_pt=1.0,
                      margin_it=1.0, near_tie=False, natural_agrees=True, valid=valid)


def test_effect_definitions():
    e = effects_from_cell_means(np.array([-1.0, -0.2, 0.5, 2.0]))
    assert e["E_PT"] == pytest.approx(0.8)
    assert e["E_IT"] == pytest.approx(1.5)
    assert e["interaction"] == pytest.approx(0.7)
    assert e["native_shift"] == pytest.approx(3.0)
    assert e["direct_share"] == pytest.approx(0.8 / 1.5)
    assert e["matched_portable_ratio"] == pytest.approx(1.5 / 0.8)
    assert e["interaction_share"] == pytest.approx(0.7 / 3.0)
    assert e["odds_interaction"] == pytest.approx(math.exp(0.7))


def test_bootstrap_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(5)
    values = rng.normal(1.0, 1.0, size=(200, 4))
    clusters = [str(i) for i in range(200)]
    a = effect_block(values, clusters, BootstrapConfig(2000, seed=1))
    b = effect_block(values, clusters, BootstrapConfig(2000, seed=1))
    assert a == b
    lo, hi = a["cells"]["uit_lit"]["ci"]
    assert lo < values[:, 3].mean() < hi
    # a 95% interval of a mean of 200 unit-variance draws is about +-0.14 wide
    assert 0.2 < hi - lo < 0.35


def test_events_of_one_prompt_resample_together():
    # five prompts, each with many identical events: the cluster bootstrap sees only 5 clusters,
    # so its interval is wide; an event-level bootstrap of 250 events would be far narrower.
    values = np.array([[0, 0, 0, 0]] * 100 + [[0, 0, 0, 4]] * 150, dtype=float)
    clusters = [c for c in "ab" for _ in range(50)] + [c for c in "cde" for _ in range(50)]
    block = effect_block(values, clusters, BootstrapConfig(2000, seed=0))
    assert block["n_prompts"] == 5 and block["n_events"] == 250
    lo, hi = block["effects"]["E_IT"]["ci"]
    assert lo <= 1.0 and hi == pytest.approx(4.0) and hi - lo > 2.0


def test_fewer_than_five_prompt_clusters_get_no_interval():
    values = np.array([[0, 0, 0, 0]] * 50 + [[0, 0, 0, 4]] * 50, dtype=float)
    block = effect_block(values, ["a"] * 50 + ["b"] * 50, BootstrapConfig(2000, seed=0))
    assert block["effects"]["E_IT"]["ci"] is None and block["cells"]["uit_lit"]["ci"] is None
    assert "2 prompt cluster(s)" in block["ci_note"]
    assert block["effects"]["E_IT"]["mean"] == pytest.approx(2.0)


@pytest.mark.parametrize("cells, reason", [
    ([0, 0.01, 0, 2], "within 0.1 of zero"),  # E_PT ~ 0: E_IT / E_PT explodes
    ([0, -1, 0, 2], "opposite signs"),  # E_PT < 0 < E_IT: a negative "share" means nothing
])
def test_unstable_ratios_are_reported_as_na_with_the_reason(cells, reason):
    values = np.array([cells] * 20, dtype=float)
    block = effect_block(values, [f"p{i}" for i in range(20)], BootstrapConfig(200))
    ratio = block["effects"]["matched_portable_ratio"]
    assert ratio["mean"] is None and ratio["ci"] is None and reason in ratio["na_reason"]


def test_stable_ratios_are_reported():
    values = np.array([[0, 1, 0, 2]] * 10 + [[0, 1.2, 0, 2.2]] * 10, dtype=float)
    block = effect_block(values, [f"p{i}" for i in range(20)], BootstrapConfig(200))
    assert block["effects"]["direct_share"]["mean"] == pytest.approx(1.1 / 2.1)
    assert block["effects"]["direct_share"]["ci"] is not None


def test_breakdowns_and_invalid_records():
    records = [rec("a", [0, 1, 0, 3], "rain", 0), rec("b", [0, 1, 0, 1], "wind", 4),
               rec("c", [0, 2, 0, 2], "wind", 6), rec("d", [float("nan")] * 4, "rain", 1, valid=False)]
    out = summarize_records(records, "common_it", BootstrapConfig(200))
    assert out["all"]["n_events"] == 3
    assert out["by_category"]["rain"]["effects"]["interaction"]["mean"] == pytest.approx(2.0)
    assert out["by_category"]["wind"]["n_events"] == 2
    assert out["by_position"][">=3"]["n_events"] == 2
    assert out["by_position"][">=5"]["n_events"] == 1
    assert out["by_category"]["rain"]["effects"]["interaction"]["ci"] is None  # one prompt: no CI


def test_family_balanced_pooling_weights_pairs_equally():
    big = [rec(f"x{i}", [0, 1, 0, 1]) for i in range(90)]  # interaction 0
    small = [rec(f"y{i}", [0, 1, 0, 3]) for i in range(10)]  # interaction 2
    pooled = pool_family_balanced({"big": big, "small": small}, "common_it", BootstrapConfig(500))
    assert pooled["effects"]["interaction"]["mean"] == pytest.approx(1.0)  # not 0.2 (event-weighted)
    assert pooled["n_pairs"] == 2


def test_pooling_reports_each_family_and_the_pool_without_it():
    a = [rec(f"a{i}", [0, 1, 0, 1 + (i % 3)]) for i in range(12)]  # interaction 1
    b = [rec(f"b{i}", [0, 1, 0, 3 + (i % 2)]) for i in range(8)]  # interaction 2.5
    c = [rec(f"c{i}", [0, 2, 0, 10 + (i % 2)]) for i in range(6)]  # interaction 8.5: the outlier family
    groups = {"a": a, "b": b, "c": c}
    pooled = pool_family_balanced(groups, "common_it", BootstrapConfig(500))
    assert pooled["effects"]["interaction"]["mean"] == pytest.approx((1 + 2.5 + 8.5) / 3)
    for name, recs in groups.items():
        own = pooled["families"][name]
        assert own["n_events"] == len(recs)
        assert own["effects"]["interaction"]["mean"] == pytest.approx(
            pool_family_balanced({name: recs}, "common_it", BootstrapConfig(0))["effects"]["interaction"]["mean"])
        rest = {k: v for k, v in groups.items() if k != name}
        without = pooled["leave_one_out"][name]
        assert without["n_pairs"] == 2 and without["n_events"] == sum(map(len, rest.values()))
        for effect in ("E_PT", "E_IT", "interaction"):
            assert without["effects"][effect]["mean"] == pytest.approx(
                pool_family_balanced(rest, "common_it", BootstrapConfig(500))["effects"][effect]["mean"])
        lo, hi = without["effects"]["interaction"]["ci"]
        assert lo <= without["effects"]["interaction"]["mean"] <= hi
    assert pooled["leave_one_out"]["c"]["effects"]["interaction"]["mean"] == pytest.approx(1.75)  # without the outlier
    one = pool_family_balanced({"a": a}, "common_it", BootstrapConfig(100))
    assert "leave_one_out" not in one  # nothing to leave out of a single family


def test_a_family_without_a_valid_event_is_left_out_of_the_pool_by_name():
    """A family whose run found no scorable event (broken weights: every event invalid, or none at
    all) has no mean to weigh; it was dropped without a word ("pool of 1 families" for two given)."""
    a = [rec(f"a{i}", [0, 1, 0, 2]) for i in range(6)]
    broken = [rec(f"n{i}", [0, 1, 0, 2], valid=False) for i in range(6)]
    pooled = pool_family_balanced({"a": a, "broken": broken, "empty": []}, "common_it", BootstrapConfig(200))
    assert pooled["n_pairs"] == 1 and pooled["families_without_events"] == ["broken", "empty"]
    assert list(pooled["families"]) == ["a"]
    none = pool_family_balanced({"broken": broken}, "common_it", BootstrapConfig(200))
    assert none["families_without_events"] == ["broken"] and none["effects"]["interaction"]["mean"] is None
    assert "families_without_events" not in pool_family_balanced({"a": a}, "common_it", BootstrapConfig(0))


def test_a_pool_gives_no_interval_where_a_family_has_too_few_prompts_for_one():
    """Each family is resampled within itself: a family of 2 prompts has no interval alone (as a
    run of 2 prompts has none), and neither has any pool that includes it; the note names it."""
    many = [rec(f"m{i}", [0, 1, 0, 1 + (i % 3)]) for i in range(12)]
    few = [rec(f"f{i}", [0, 1, 0, 3 + i]) for i in range(2)]
    more = [rec(f"o{i}", [0, 2, 0, 4 + (i % 2)]) for i in range(7)]
    pooled = pool_family_balanced({"many": many, "few": few, "more": more}, "common_it", BootstrapConfig(300))
    assert pooled["effects"]["interaction"]["ci"] is None and "few (2)" in pooled["ci_note"]
    assert pooled["effects"]["interaction"]["mean"] == pytest.approx((1 + 2.5 + (2 + 3 / 7)) / 3)
    assert pooled["families"]["few"]["effects"]["interaction"]["ci"] is None
    assert pooled["families"]["few"]["n_prompts"] == 2
    assert pooled["families"]["many"]["effects"]["interaction"]["ci"] is not None
    assert pooled["leave_one_out"]["few"]["effects"]["interaction"]["ci"] is not None  # the pool without it
    assert "ci_note" not in pooled["leave_one_out"]["few"]
    assert pooled["leave_one_out"]["many"]["effects"]["interaction"]["ci"] is None
    assert pool_family_balanced({"many": many}, "common_it", BootstrapConfig(0))["ci_note"] == \
        "no interval: bootstrap disabled"


def test_bootstrap_draws_in_bounded_chunks_equal_one_draw():
    rng_values = np.random.default_rng(1)
    sums, counts = rng_values.normal(size=(37, 4)), rng_values.integers(1, 4, size=37).astype(float)
    whole = resampled_cell_means(np.random.default_rng(5), sums, counts, 2500, chunk=10_000)
    chunked = resampled_cell_means(np.random.default_rng(5), sums, counts, 2500, chunk=7)
    assert whole.shape == (2500, 4)
    np.testing.assert_allclose(whole, chunked, rtol=1e-12, atol=1e-15)  # the same draws; BLAS may block differently


def test_bootstrap_weights_are_multinomial_resamples_of_the_clusters():
    from crosspatch.core.stats import resample_weights

    k, n = 40, 20_000
    w = resample_weights(np.random.default_rng(3), k, n)
    assert w.shape == (n, k) and np.all(w >= 0) and np.all(w == np.round(w))
    assert np.all(w.sum(axis=1) == k)  # each resample draws k clusters
    # Multinomial(k, 1/k) marginals: mean 1, variance 1 - 1/k, covariance -1/k
    assert w.mean() == pytest.approx(1.0)
    assert w.var(axis=0).mean() == pytest.approx(1 - 1 / k, rel=0.03)
    assert np.cov(w[:, 0], w[:, 1])[0, 1] == pytest.approx(-1 / k, abs=0.01)
    assert not np.array_equal(w[0], w[1])  # resamples differ
    np.testing.assert_array_equal(resample_weights(np.random.default_rng(3), k, 10), w[:10])  # seeded


def test_kinds_on_the_same_event_count_once_in_the_per_prompt_average():
    from crosspatch.core.records import CellRecord
    from crosspatch.core.stats import BootstrapConfig, summarize_records

    def rec(pid, kind, position, y):
        cells = {"upt_lpt": 0.0, "upt_lit": 0.0, "uit_lpt": 0.0, "uit_lit": y}
        return CellRecord(key=f"{pid}#{kind}@2", prompt_id=pid, category=None, boundary=2, position=position,
                          prompt_len=1, prefix_len=2, t_pt=1, t_it=2, t_pt_text="a", t_it_text="b",
                          cells={"common_it": cells, "common_pt": cells}, margin_pt=1.0, margin_it=1.0,
                          near_tie=False, natural_agrees=True, kind=kind)

    # p0: first_diff and first_nonformat_diff are one event (position 0); a marker event elsewhere
    records = [rec("p0", "first_diff", 0, 1.0), rec("p0", "first_nonformat_diff", 0, 1.0),
               rec("p0", "first_assistant_marker_diff", 3, 4.0)]
    out = summarize_records(records, "common_it", BootstrapConfig(0))
    assert out["kinds_averaged"]["cells"]["uit_lit"]["mean"] == 2.5  # (1 + 4) / 2, not (1 + 1 + 4) / 3


def test_a_requested_event_kind_without_events_is_reported_with_n_zero():
    from crosspatch.analyses.event_kinds import EVENT_KINDS
    from crosspatch.core.records import CellRecord
    from crosspatch.core.stats import BootstrapConfig, summarize_records

    cells = {"upt_lpt": 0.0, "upt_lit": 1.0, "uit_lpt": 0.0, "uit_lit": 2.0}
    record = CellRecord(key="p#first@2", prompt_id="p", category=None, boundary=2, position=0, prompt_len=1,
                        prefix_len=1, t_pt=1, t_it=2, t_pt_text="a", t_it_text="b",
                        cells={"common_it": cells, "common_pt": cells}, margin_pt=1.0, margin_it=1.0,
                        near_tie=False, natural_agrees=True)
    out = summarize_records([record], "common_it", BootstrapConfig(0), event_kinds=list(EVENT_KINDS))
    assert sorted(out["by_event_kind"]) == sorted(EVENT_KINDS)
    assert out["by_event_kind"]["first_assistant_marker_diff"]["n_events"] == 0


def test_percentiles_of_several_columns_at_once_are_those_of_each_column_over_its_finite_values():
    from crosspatch.core.stats import finite_percentiles

    rng = np.random.default_rng(3)
    samples = rng.normal(size=(500, 5))
    samples[::7, 1] = np.inf  # a ratio whose denominator was zero in some resamples
    samples[:, 3] = np.nan  # never finite
    got = finite_percentiles(samples, [2.5, 97.5])
    for k in range(5):
        finite = samples[np.isfinite(samples[:, k]), k]
        if len(finite) == 0:
            assert got[k] is None
        else:
            assert np.array_equal(got[k], np.percentile(finite, [2.5, 97.5]))


def test_readouts_that_agree_event_by_event_get_the_same_intervals():
    # a descendant whose final norm and head are the base's (most adapters): the common-IT and
    # common-PT readouts give every event the same numbers, so the readouts must resample the same
    # prompt clusters and print the same intervals: otherwise a bound near a threshold grades
    # differently under the two heads and the readout-agreement control calls it inconclusive
    rng = np.random.default_rng(3)
    records = [rec(f"p{i}", list(rng.normal([0.0, 0.3, 0.1, 0.4], 1.0))) for i in range(12)]
    blocks = summarize_boundaries(records, BootstrapConfig(500, seed=7))["2"]
    headline = {name: blocks[name]["all"]["effects"] for name in ("common_it", "common_pt", "native_late",
                                                                      "native_upstream")}
    for name in ("common_pt", "native_late", "native_upstream"):
        assert headline[name] == headline["common_it"], name
    assert blocks["common_pt"]["by_category"] == blocks["common_it"]["by_category"]


@pytest.mark.parametrize("clusters", [6, 7, 8, 9])
def test_the_label_swap_null_states_the_smallest_p_value_its_clusters_allow(clusters):
    from crosspatch.core.stats import label_swap_null

    # every prompt's interaction +1 (the strongest evidence k clusters can give): only the pattern and its mirror
    # reach it, so the exact p-value is the smallest any data could give, 2 / 2**k
    records = [rec(f"p{i}", (0.0, 0.0, 0.0, 1.0)) for i in range(clusters)]
    null = label_swap_null(records, level=0.01)
    assert null["exact"] and null["smallest_p"] == null["p_value"] == 2 / 2**clusters
    assert null["rejects_null"] == (clusters >= 8)  # 2/128 = 0.016 >= 0.01 > 2/256


def test_the_label_swap_row_says_when_too_few_prompts_can_never_pass_its_level():
    from crosspatch.analyses.label_swap import LabelSwapOptions, prompts_to_reach, summarize
    from crosspatch.core.registry import SummaryContext

    assert [prompts_to_reach(level) for level in (0.5, 0.1, 0.05, 0.01, 0.001)] == [3, 5, 6, 8, 11]
    row = {}
    for clusters in (7, 8):
        records = [rec(f"p{i}", (0.0, 0.0, 0.0, 1.0 + i)) for i in range(clusters)]
        ctx = SummaryContext(config={}, records=records, headline=2, boot=BootstrapConfig(0))
        row[clusters] = summarize([], ctx, LabelSwapOptions())
    # seven prompts: failed whatever the effects, and the row says so, and how many prompts would do
    assert row[7]["status"] == "warn" and row[7]["details"]["smallest_p"] == 2 / 2**7
    assert "with 7 prompts no sign-flip p-value can fall below 0.0156" in row[7]["summary"]
    assert "needs at least 8 prompts with events" in row[7]["summary"] and row[7]["details"]["prompts_needed"] == 8
    # eight prompts can pass, and do on this evidence
    assert row[8]["status"] == "pass" and "no sign-flip p-value" not in row[8]["summary"]
    # a test that could have passed and did not says nothing of reach
    weak = [rec(f"p{i}", (0.0, 0.0, 0.0, (-1.0) ** i)) for i in range(10)]
    row = summarize([], SummaryContext(config={}, records=weak, headline=2, boot=BootstrapConfig(0)), LabelSwapOptions())
    assert row["status"] == "warn" and "no sign-flip p-value" not in row["summary"]


def test_the_label_swap_test_reads_the_interaction_of_the_readout_the_verdict_reads():
    """Under a policy's ``readout: common_pt`` the verdict claims the common-PT interaction, yet the
    label-swap test (which can weaken that claim) tested the common-IT one."""
    from dataclasses import replace

    from crosspatch.analyses.label_swap import LabelSwapOptions, summarize
    from crosspatch.core.registry import SummaryContext

    records = []
    for i in range(8):
        r = rec(f"p{i}", (0.0, 0.0, 0.0, 0.0))  # no interaction under the descendant's head
        records.append(replace(r, cells={**r.cells, "common_pt": dict(zip(("upt_lpt", "upt_lit", "uit_lpt", "uit_lit"),
                                                                          (0.0, 0.0, 0.0, 1.0 + i)))}))
    rows = {readout: summarize([], SummaryContext(config={"options": {"policy": {"readout": readout}}}, records=records,
                                                  headline=2, boot=BootstrapConfig(0)), LabelSwapOptions())
            for readout in ("common_it", "common_pt")}
    assert rows["common_it"]["value"] == 0.0 and rows["common_it"]["status"] == "warn"
    assert rows["common_pt"]["value"] == pytest.approx(4.5) and rows["common_pt"]["status"] == "pass"
