"""The dry run's work estimate (``crosspatch.runner.estimate``): a bound on what the run executes,
with every analysis the run plans counted as it states its own passes."""

from __future__ import annotations

import pytest

from crosspatch.inputs.prompts import Prompt
from crosspatch.runner.config import RunConfig
from crosspatch.runner.estimate import estimate_work
from crosspatch.runner.pipeline import chunk_plan, resolve_boundaries, run
from crosspatch.testing import make_pair

PROMPTS = [Prompt(f"p{k}", f"the weather in city {k} is {'warm ' * (k % 3)}and") for k in range(8)]


def _estimate_and_actual(pair, config: RunConfig) -> tuple[float, float, dict]:
    result = run(pair, PROMPTS, config, progress=False)
    layers = pair.num_layers
    tok = pair.tokenizers[pair.roles[0]]
    lengths = [len(tok(p.prompt)["input_ids"]) + config.max_new_tokens for p in PROMPTS]
    estimate = estimate_work(config, lengths, resolve_boundaries(config, layers), layers)
    return estimate.total, result.summary["cost_this_session"]["token_layers_executed"] / layers, estimate.per_token


@pytest.mark.parametrize("options", [
    dict(),  # the default run: default controls, every event kind
    dict(controls="all", max_new_tokens=6),  # native histories run past the budget
    dict(boundaries="all", plan="exact", rollout_model="PT"),
    dict(controls="none", event_kinds="first_diff"),
])
def test_the_estimate_bounds_the_forward_passes_a_run_executes(options):
    pair = make_pair("llama", layers=4, scale=0.3)
    estimate, actual, parts = _estimate_and_actual(pair, RunConfig(**{"max_new_tokens": 24, "bootstrap": 0, **options}))
    assert 0 < actual <= estimate, (actual, estimate, parts)


def test_the_estimate_counts_each_planned_analysis_as_it_states_its_passes():
    config = RunConfig(max_new_tokens=24, boundary=2, analysis_options={"hybrid_state": {"random_draws": 3}})
    parts = estimate_work(config, [30], [2], 4).per_token
    assert parts["search"] == 2 and parts["cells"] == pytest.approx(2 * 2 / 4)
    assert parts["hybrid_state"] == pytest.approx((5 + 3) * 2 / 4)  # interpolation, diagonals, random draws
    assert parts["pre_divergence"] == pytest.approx(4 * 2 / 4)  # the 2x2 of the earlier prefix on the search's states
    assert parts["event_kinds"] == pytest.approx(2 * (2 + 2 * 2 / 4))  # two more kinds, each scored as the 2x2
    assert "routing" in parts and estimate_work(config, [30], [2], 4, model_config={"hidden_size": 8}).per_token.get(
        "routing", 0) == 0  # two late passes on mixture-of-experts models only
    exact = estimate_work(RunConfig(max_new_tokens=24, boundary=2, plan="exact"), [30], [2], 4).per_token
    assert exact["pre_divergence"] == pytest.approx(2 + 2 * 2 / 4)  # the exact plan: both models' full passes too
    fewer = estimate_work(RunConfig(max_new_tokens=24, boundary=2, controls="none", event_kinds="first_diff"), [30], [2], 4)
    assert set(fewer.per_token) == {"search", "cells", "routing"} and fewer.total < estimate_work(config, [30], [2], 4).total
    nulls = estimate_work(RunConfig(max_new_tokens=24, boundary=2, synthetic_nulls=2), [30], [2], 4).per_token
    assert nulls["null_calibration"] == pytest.approx(2 * (1 + 2 * 2 / 4))  # synthetic nulls count before they exist


def test_every_analysis_a_run_can_plan_states_its_work():
    """A built-in analysis that stated no bound would leave the dry run's estimate short."""
    config = RunConfig(max_new_tokens=24, controls="all", consequence=True, nulls=["null_1"])
    plan = chunk_plan(config, [1, 2], 4, (), {"p0": object()})
    names = {a.name for a in plan.analyses}
    assert {"event_kinds", "consequence", "control_native_history", "control_null_calibration"} <= names
    assert [a.name for a in plan.analyses if a.work_per_event(4, 24) is None] == []


def test_a_compares_estimate_counts_every_member_and_its_cross_cells():
    """A compare runs once per descendant (its cross-descendant cells inside each member's run): its
    dry run sums the members' runs; measured against the forward passes the members execute."""
    from crosspatch.execution import models_from_modules
    from crosspatch.runner.compare import CrossDescendant, compare
    from crosspatch.testing import char_tokenizer, tiny_pair

    base, first, _ = tiny_pair("llama", 4, None, 0, 0.3)
    _, second, _ = tiny_pair("llama", 4, None, 1, 0.3)
    models = models_from_modules({"base": base, "a": first, "b": second}, char_tokenizer())
    config = RunConfig(max_new_tokens=16, bootstrap=0)
    result = compare(models, PROMPTS, config, cross="all", progress=False)
    actual = sum(r.summary["cost_this_session"]["token_layers_executed"] for r in result.runs.values()) / 4
    tok = models.tokenizers["base"]
    lengths = [len(tok(p.prompt)["input_ids"]) + 16 for p in PROMPTS]
    headline = resolve_boundaries(config, 4)
    estimate = estimate_work(config, lengths, headline, 4,
                             runs=[[CrossDescendant(headline[0], ["b"])], [CrossDescendant(headline[0], ["a"])]])
    one = estimate_work(config, lengths, headline, 4)
    assert estimate.runs == 2 and estimate.per_token["search"] == 2 * one.per_token["search"]
    assert estimate.per_token["cross_descendant"] == pytest.approx(2 * (1 + 2 / 4))
    assert "2 runs together" in estimate.parts_text()
    assert 0 < actual <= estimate.total
