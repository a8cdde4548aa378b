"""Null calibration (docs/verdict.md): null descendants as the verdict's yardstick, trained
(--null DIR) or synthetic (the real weight delta's spectrum in random directions)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from crosspatch.cli import app
from crosspatch.execution import pair_from_models
from crosspatch.execution.nulls import synthetic_null
from crosspatch.runner.pipeline import run
from crosspatch.testing import char_tokenizer, perturb_layers, tiny_model

from .test_store import many_prompts

OPTIONS = dict(boundary=2, max_new_tokens=8, bootstrap=300, progress=False, event_kinds="first_diff")


def test_a_synthetic_null_keeps_the_spectrum_of_each_weight_delta_and_nothing_else():
    base = tiny_model("llama")
    tuned = perturb_layers(base, [0, 1], 0.4, seed=4)
    null = synthetic_null(base, tuned, seed=1)
    again = synthetic_null(base, tuned, seed=1)
    other = synthetic_null(base, tuned, seed=2)
    tuned_p, null_p, base_p = dict(tuned.named_parameters()), dict(null.named_parameters()), dict(base.named_parameters())
    changed = 0
    for name, w in base_p.items():
        real = (tuned_p[name] - w).detach().double()
        fake = (null_p[name] - w).detach().double()
        assert torch.equal(null_p[name], dict(again.named_parameters())[name])  # deterministic in the seed
        if not torch.any(real != 0):
            assert torch.equal(null_p[name], w)
            continue
        changed += 1
        assert torch.allclose(torch.linalg.norm(fake), torch.linalg.norm(real), rtol=1e-4)
        if real.ndim == 2:
            s_real, s_fake = torch.linalg.svdvals(real), torch.linalg.svdvals(fake)
            assert torch.allclose(s_fake, s_real, rtol=1e-3, atol=1e-6)
            assert not torch.allclose(fake, real, atol=1e-4)  # other directions
            assert not torch.equal(null_p[name], dict(other.named_parameters())[name])
    assert changed > 0


def test_a_synthetic_null_of_broken_weights_is_refused_by_name():
    """A descendant with a NaN weight stopped the run with torch's bare LinAlgError (the SVD of a
    NaN change does not converge); it is named, with the weight."""
    from crosspatch.errors import OptionError

    base = tiny_model("llama")
    tuned = perturb_layers(base, [3], 0.5, seed=4)
    with torch.no_grad():
        tuned.model.layers[3].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(OptionError, match=r"descendant's model\.layers\.3\.mlp\.down_proj\.weight holds NaN"):
        synthetic_null(base, tuned, seed=0)


def test_synthetic_nulls_calibrate_the_interaction_and_are_recorded(tmp_path):
    base = tiny_model("llama")
    pair = pair_from_models(base, perturb_layers(base, [0, 1, 2, 3], 0.5, seed=4), char_tokenizer())
    result = run(pair, many_prompts(12), out=tmp_path / "r", synthetic_nulls=2, **OPTIONS)
    row = next(r for r in result.summary["controls"] if r["control"] == "null_calibration")
    assert sorted(row["details"]["by_null"]) == ["null-synthetic-1", "null-synthetic-2"]
    assert row["status"] in ("pass", "warn") and row["n"] == result.summary["counts"]["events"] > 0
    for stat in row["details"]["by_null"].values():
        assert stat["interaction"] is not None and stat["difference"]["n"] == row["n"]
    rows = (tmp_path / "r" / "control_null_calibration.jsonl").read_text().splitlines()
    assert len(rows) == 2 * row["n"]
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["options"]["nulls"] == ["null-synthetic-1", "null-synthetic-2"]
    if row["status"] == "warn":  # not beyond the yardstick: an interaction claim becomes inconclusive
        assert result.verdict["verdict"] in ("portable", "no-late-effect", "inconclusive")


def test_synthetic_nulls_that_cannot_fit_in_memory_are_refused_before_they_are_built(monkeypatch, tmp_path):
    from crosspatch.errors import OptionError
    from crosspatch.execution import nulls

    base = tiny_model("llama")
    pair = pair_from_models(base, perturb_layers(base, [0, 1, 2, 3], 0.5, seed=4), char_tokenizer())
    model_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    monkeypatch.setattr(nulls, "free_bytes_on", lambda device: 10 * model_bytes)  # room for ~9 copies
    built = []
    monkeypatch.setattr(nulls, "synthetic_null", lambda *a: built.append(a))
    with pytest.raises(OptionError, match=r"50 synthetic null\(s\) need .* \(52 copies .* give fewer"):
        run(pair, many_prompts(4), out=tmp_path / "r", synthetic_nulls=50, **OPTIONS)
    assert not built and not (tmp_path / "r").exists()


def test_without_a_null_the_row_says_there_is_no_yardstick():
    base = tiny_model("llama")
    pair = pair_from_models(base, perturb_layers(base, [0, 1, 2, 3], 0.5, seed=4), char_tokenizer())
    result = run(pair, many_prompts(8), **OPTIONS)
    row = next(r for r in result.summary["controls"] if r["control"] == "null_calibration")
    assert row["status"] == "info" and "no null descendant" in row["summary"]


def test_a_null_whose_cells_are_not_finite_is_no_yardstick_and_is_named():
    """A broken null (a NaN weight: every cell NaN) made the row read "largest null-1: +nan;
    difference +nan [+nan, +nan]" and wrote NaN into summary.json. Its non-finite events are left
    out and counted; a null with none left gives no yardstick, named, and the other nulls still
    give theirs; with no usable null at all the row says so and claims of an interaction stay
    unconfirmed (inconclusive), as with a null they are not beyond."""
    from crosspatch.execution.in_memory import models_from_modules

    base = tiny_model("llama")
    tuned = perturb_layers(base, [2, 3], 0.5, seed=4)
    twin = perturb_layers(base, [0, 1, 2, 3], 0.05, seed=9)
    broken = perturb_layers(base, [3], 0.05, seed=5)
    with torch.no_grad():
        broken.model.layers[3].mlp.down_proj.weight[0, 0] = float("nan")
    models = models_from_modules({"base": base, "tuned": tuned, "null-1": twin, "null-2": broken}, char_tokenizer())
    both = run(models, many_prompts(8), tuned="tuned", nulls=["null-1", "null-2"], **OPTIONS)
    row = next(r for r in both.summary["controls"] if r["control"] == "null_calibration")
    by_null = row["details"]["by_null"]
    assert by_null["null-2"]["interaction"] is None and by_null["null-2"]["non_finite_events"] == row["n"] > 0
    assert by_null["null-1"]["interaction"] is not None and "largest null-1" in row["summary"]
    assert "null-2: cells not finite on" in row["summary"] and "null-2 give(s) no yardstick" in row["summary"]
    assert "nan" not in json.dumps(both.summary).lower().replace("nan or infinite", "")
    alone = run(models, many_prompts(8), tuned="tuned", nulls=["null-2"], **OPTIONS)
    row = next(r for r in alone.summary["controls"] if r["control"] == "null_calibration")
    assert row["status"] == "warn" and row["summary"].startswith("no null gives a yardstick")
    assert alone.verdict["verdict"] not in ("partly-upstream-dependent", "upstream-dependent")


def test_under_a_common_pt_policy_the_null_yardstick_reads_the_base_head_for_both_interactions(tmp_path):
    """The null yardstick can make an interaction claim inconclusive, yet under a policy's
    ``readout: common_pt`` it compared the common-IT interaction (and each null read with its own
    head) with a verdict decided on common-PT. The nulls' cells are recorded under both heads, and
    the yardstick reads the verdict's readout: the observed interaction and each null's."""
    from crosspatch.core.records import cell_effects
    from crosspatch.execution.in_memory import models_from_modules

    base = tiny_model("llama")
    tuned, twin = perturb_layers(base, [0, 1, 2, 3], 0.5, seed=4), perturb_layers(base, [0, 1, 2, 3], 0.1, seed=9)
    with torch.no_grad():  # heads of their own: the two readouts differ
        for model, seed in ((tuned, 5), (twin, 6)):
            head = model.lm_head.weight
            head.add_(torch.randn(head.shape, generator=torch.Generator().manual_seed(seed)) * head.std())
    models = models_from_modules({"base": base, "tuned": tuned, "null-1": twin}, char_tokenizer())
    for readout in ("common_pt", "common_it"):
        result = run(models, many_prompts(8), tuned="tuned", nulls=["null-1"], out=tmp_path / readout,
                     policy={"readout": readout}, **OPTIONS)
        row = next(r for r in result.summary["controls"] if r["control"] == "null_calibration")
        first = [r for r in result.records if r.kind == "first_diff" and r.valid]
        observed = sum(r.effects(readout)["interaction"] for r in first) / len(first)
        stored = [json.loads(line) for line in (tmp_path / readout / "control_null_calibration.jsonl").read_text().splitlines()]
        key = "cells_common_pt" if readout == "common_pt" else "cells"
        null = sum(cell_effects(r[key])["interaction"] for r in stored) / len(stored)
        assert row["summary"].startswith(f"the interaction {observed:+.2f} against 1 null(s) (largest null-1: {null:+.2f}")
        assert row["details"]["by_null"]["null-1"]["interaction"] == pytest.approx(null)
    assert f"{observed:+.2f}" != f"{sum(r.effects('common_pt')['interaction'] for r in first) / len(first):+.2f}"
    # a null's rows written before they held the base's reading are read with its own head, and the row says so
    from crosspatch.runner.finished import resummarize
    from crosspatch.store import RunStore

    records = tmp_path / "common_pt" / "control_null_calibration.jsonl"
    older = [{k: v for k, v in json.loads(line).items() if k != "cells_common_pt"} for line in records.read_text().splitlines()]
    records.write_text("".join(json.dumps(r) + "\n" for r in older))
    row = next(r for r in resummarize(RunStore(tmp_path / "common_pt"))["controls"] if r["control"] == "null_calibration")
    assert "null-1 read with its own head: recorded before the nulls held the base's reading" in row["summary"]


@pytest.mark.slow
def test_a_trained_null_is_given_on_the_command_line(tmp_path):
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    twin = save_tiny_pair(tmp_path / "twin", seed=0, scale=0.3)  # same base, another fine-tune
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in many_prompts(8)))
    args = ["run", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--prompts", str(prompts),
            "--out", str(tmp_path / "r"), "--boundary", "2", "--max-new-tokens", "6", "--bootstrap", "200", "--quiet",
            "--null", str(twin / "tuned")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    row = next(r for r in summary["controls"] if r["control"] == "null_calibration")
    assert list(row["details"]["by_null"]) == ["null-1"]
    res = CliRunner().invoke(app, args[:-1] + [str(root / "tuned"), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "is the descendant itself" in res.output


@pytest.mark.slow
def test_the_false_positive_rate_on_synthetic_null_descendants_is_at_most_five_percent():
    """Fifty harmless descendants (synthetic nulls of a tiny fine-tune that changes every layer),
    each scored against the base with two further synthetic nulls of itself as the yardstick: the
    verdict claims an interaction (upstream-dependent or its middle grade) for at most 5% of them,
    while without the null calibration it does for far more (docs/verdict.md; the same run as
    benchmarks/null_fpr.py)."""
    from crosspatch.testing.nulls import null_false_positives

    outcome = null_false_positives(50, prompts=16)
    assert outcome["false_positive_rate"] <= 0.05, outcome
    assert outcome["without_null_calibration"]["false_positive_rate"] > 0.2, outcome
