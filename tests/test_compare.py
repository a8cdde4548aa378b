"""Several descendants in one table, cross-descendant patching, lineage over stages, pooling."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from crosspatch.errors import OptionError
from crosspatch.execution import load_models, models_from_modules
from crosspatch.runner.compare import compare, parse_cross, pool_runs
from crosspatch.runner.lineage import lineage
from crosspatch.testing import char_tokenizer, perturb_layers, tiny_model

from .test_store import many_prompts

OPTIONS = dict(boundary=2, max_new_tokens=8, bootstrap=300, progress=False, plan="exact", event_kinds="first_diff")


@pytest.fixture(scope="module")
def family():
    """A base and three descendants with known structure at boundary 2."""
    base = tiny_model("llama")
    return {"base": base, "same": perturb_layers(base, [], 0.0), "late": perturb_layers(base, [2, 3], 2.0, seed=3),
            "early": perturb_layers(base, [0, 1], 0.4, seed=4)}


@pytest.fixture(scope="module")
def compared(family, tmp_path_factory):
    models = models_from_modules(family, char_tokenizer())
    out = tmp_path_factory.mktemp("cmp")
    return compare(models, many_prompts(16), out=out, cross="all", controls="default", **OPTIONS), out


@pytest.mark.slow
def test_compare_gives_each_descendant_its_expected_effects(compared):
    result, out = compared
    rows = result.summary["rows"]
    assert rows["same"]["events"] == 0 and rows["same"]["verdict"] == "no-late-effect"  # identical: never disagree
    late, early = rows["late"]["effects"], rows["early"]["effects"]
    assert late["interaction"]["mean"] == 0.0 and late["E_PT"]["mean"] == late["E_IT"]["mean"] > 0
    assert rows["late"]["verdict"] == "portable"
    assert early["E_PT"]["mean"] == 0.0 and early["E_IT"]["mean"] == 0.0
    assert rows["early"]["verdict"] == "no-late-effect"
    for name in ("compare.json", "report.md", "report.html", "late/report.md", "early/summary.json"):
        assert (out / name).exists(), name


@pytest.mark.slow
def test_cross_matrix_diagonal_equals_each_descendants_own_cells(compared):
    result, _ = compared
    m = result.summary["cross"]
    for role in ("late", "early"):
        block = result.runs[role].summary["results"]["2"]["common_it"]["all"]["cells"]
        assert m[role][role]["mean"] == pytest.approx(block["uit_lit"]["mean"], abs=1e-9)
        assert m["base"][role]["mean"] == pytest.approx(block["upt_lit"]["mean"], abs=1e-9)
    # late and early share nothing above/below the boundary in the same way: the early descendant's
    # upstream through the late descendant's stack is a real, finite number
    assert m["early"]["late"]["mean"] is not None and m["early"]["late"]["n"] == result.summary["rows"]["late"]["events"]


@pytest.mark.slow
def test_compare_results_as_dataframes_hold_the_summarys_numbers(compared):
    """``effects()`` is the compare table and ``cross()`` the cross-descendant matrix, as numbers:
    each row the stored statistic of its descendant (or upstream, late pair)."""
    result, _ = compared
    effects = result.effects()
    assert set(effects["descendant"]) == {"same", "late", "early"}
    for _, row in effects.iterrows():
        stored = result.summary["rows"][row["descendant"]]
        assert row["verdict"] == stored["verdict"] and row["n_events"] == stored["events"]
        stat = stored["effects"][row["effect"]]
        got, want = [row["mean"], row["ci_low"], row["ci_high"]], [stat["mean"], *(stat.get("ci") or [None, None])]
        assert all((w is None and g != g) or g == w for g, w in zip(got, want))  # None: NaN in a float column
    cross = result.cross()
    pairs = {(r.upstream, r.late): r for r in cross.itertuples()}
    assert pairs[("base", "late")].mean == result.summary["cross"]["base"]["late"]["mean"]
    assert ("base", "base") not in pairs  # the base's own cell has no number
    from crosspatch.runner.compare import CompareResult

    uncrossed = CompareResult(runs={}, summary={"rows": {}, "cross": None}, report="").cross()
    assert uncrossed.empty and list(uncrossed.columns) == ["upstream", "late", "mean", "ci_low", "ci_high", "n_events"]


def test_cross_descendant_equals_a_pair_run_when_the_upstream_is_the_base(family):
    # U_base through L_late on late's events is the cell Y(U_PT, L_IT) of the plain pair run
    models = models_from_modules({"base": family["base"], "late": family["late"], "alias": family["base"]},
                                 char_tokenizer())
    result = compare(models, many_prompts(10), cross="alias:late", **OPTIONS)
    cross = result.summary["cross"]["alias"]["late"]["mean"]
    assert cross == pytest.approx(result.summary["cross"]["base"]["late"]["mean"], abs=1e-6)


def test_parse_cross():
    assert parse_cross("all", ("a", "b")) == {"a": ["b"], "b": ["a"]}
    assert parse_cross("a:b", ("a", "b")) == {"b": ["a"]}
    with pytest.raises(ValueError, match="not a descendant"):
        parse_cross("a:z", ("a", "b"))
    with pytest.raises(ValueError, match="at least two descendants"):  # with one there is nothing to cross
        parse_cross("all", ("a",))
    assert parse_cross(None, ("a",)) == {}
    for empty in ("", " ", []):  # were read as "no crossing"
        with pytest.raises(ValueError, match="a non-empty string"):
            parse_cross(empty, ("a", "b"))  # type: ignore[arg-type]


def _interpolated_stages(n=3):
    """stage k = base + k/n x delta: a lineage whose answer is known (monotone)."""
    base = tiny_model("llama")
    final = perturb_layers(base, range(4), 0.4, seed=9)
    stages = {}
    for k in range(1, n + 1):
        stage = perturb_layers(base, [], 0.0)
        with torch.no_grad():
            for p, pb, pf in zip(stage.parameters(), base.parameters(), final.parameters()):
                p.copy_(pb + (k / n) * (pf - pb))
        stages[f"s{k}"] = stage
    return {"base": base, **stages}


@pytest.mark.slow
def test_lineage_on_an_interpolation_is_monotone_and_its_final_stage_equals_a_plain_run(tmp_path):
    from crosspatch.runner.pipeline import run

    modules = _interpolated_stages(3)
    models = models_from_modules(modules, char_tokenizer())
    result = lineage(models, many_prompts(16), out=tmp_path, **OPTIONS)
    by = result.summary["by_stage"]
    shifts = [by[s]["native_shift"]["mean"] for s in ("s1", "s2", "s3")]
    assert shifts[0] < shifts[1] < shifts[2]
    assert by["s3"]["percent_of_final"] == pytest.approx(100.0)
    assert 0 <= by["s1"]["top1_agreement_with_final"] <= by["s3"]["top1_agreement_with_final"] == 1.0
    plain = run(models_from_modules({"base": modules["base"], "s3": modules["s3"]}, char_tokenizer()),
                many_prompts(16), **OPTIONS)
    cells = plain.summary["results"]["2"]["common_it"]["all"]["cells"]
    assert by["s3"]["native_y"]["mean"] == pytest.approx(cells["uit_lit"]["mean"], abs=1e-6)
    for name in ("lineage.json", "lineage.png", "lineage.svg", "report.md", "report.html", "run/summary.json"):
        assert (tmp_path / name).exists(), name
    # lineage.json without what its pages print is named; an interval with one end is drawn as none
    import json

    from crosspatch.cli import app

    document = json.loads((tmp_path / "lineage.json").read_text())
    for damaged, code in (({k: v for k, v in document.items() if k != "note"}, 2),
                          ({**document, "by_stage": {**document["by_stage"], "s1": {
                              **document["by_stage"]["s1"], "E_PT": {"mean": 0.1, "ci": [None, 0.2]}}}}, 0)):
        (tmp_path / "lineage.json").write_text(json.dumps(damaged))
        res = CliRunner().invoke(app, ["report", str(tmp_path)])
        assert res.exit_code == code and (code == 0 or "CorruptRunFileError" in res.output), (res.exception, res.output)


def test_a_lineage_whose_final_stage_is_broken_says_why_no_stage_is_scored(tmp_path):
    """A final checkpoint with NaN weights (a training run that diverged) gives no Base -> Final
    event; the lineage said only "0 Base -> Final events" over a table of n/a. It now gives the
    Base -> Final run's own reason, in lineage.json and both pages."""
    modules = _interpolated_stages(2)
    with torch.no_grad():
        modules["s2"].model.layers[3].mlp.down_proj.weight[0, 0] = float("nan")
    result = lineage(models_from_modules(modules, char_tokenizer()), many_prompts(4), out=tmp_path, **OPTIONS)
    reason = result.summary["no_events_reason"]
    assert result.summary["events"] == 0 and "NaN or infinite logits" in reason
    assert "no stage can be scored. No prompt produced" in (tmp_path / "report.md").read_text()
    assert "no stage can be scored" in (tmp_path / "report.html").read_text()
    assert "no stage can be scored. No prompt produced" in result._repr_html_()  # the notebook's card too
    healthy = lineage(models_from_modules(_interpolated_stages(2), char_tokenizer()), many_prompts(4), **OPTIONS)
    assert "no_events_reason" not in healthy.summary


def test_a_lineages_pages_name_a_chat_template_that_rendered_its_prompts(tmp_path):
    """Every stage is scored on the prompts as the chat template rendered them; the lineage's pages
    said nothing of it (its run's reports did). lineage.json records it (``settings``), both pages name it."""
    tokenizer = char_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    models = models_from_modules(_interpolated_stages(2), tokenizer)
    result = lineage(models, many_prompts(4), out=tmp_path / "chat", chat_template=True, **OPTIONS)
    said = ["chat template", "every prompt rendered by the tokenizer's chat template"]
    assert result.summary["settings"] == [said]
    assert "- chat template: every prompt rendered by the tokenizer's chat template" in (tmp_path / "chat" / "report.md").read_text()
    assert "chat template: every prompt rendered by the tokenizer&#39;s chat template." in (
        tmp_path / "chat" / "report.html").read_text()
    assert lineage(models, many_prompts(4), **OPTIONS).summary["settings"] == []


def _stages_with_their_own_heads():
    """Interpolated stages whose final also changes its head (lm_head): the final model's readout
    of a stage differs from the stage's own."""
    modules = _interpolated_stages(3)
    with torch.no_grad():
        for k, name in enumerate(("s1", "s2", "s3"), start=1):
            gen = torch.Generator().manual_seed(17)
            head = modules[name].lm_head.weight
            head.add_((k / 3) * 0.5 * torch.randn(head.shape, generator=gen) * head.std())
    return modules


@pytest.mark.slow
def test_lineage_reads_every_stage_with_the_final_models_head_too(tmp_path):
    from crosspatch.core.records import RecordKey

    modules = _stages_with_their_own_heads()
    result = lineage(models_from_modules(modules, char_tokenizer()), many_prompts(16), out=tmp_path, **OPTIONS)
    rows = result.run.analyses["lineage"]
    final = {RecordKey.parse(r["key"]).event: r for r in rows if r["stage"] == "s3"}
    for r in final.values():  # the final stage read with its own head is its final readout
        assert r["cells_final_readout"] == pytest.approx(r["cells"], abs=1e-6)
    for r in rows:  # the base's own state through the base's late stack, read with the final's head
        same = final[RecordKey.parse(r["key"]).event]
        assert r["cells_final_readout"]["upt_lpt"] == pytest.approx(same["cells"]["upt_lpt"], abs=1e-5)
    s1 = [r for r in rows if r["stage"] == "s1"]
    assert max(abs(r["cells"]["upt_lpt"] - r["cells_final_readout"]["upt_lpt"]) for r in s1) > 1e-3


@pytest.mark.slow
def test_lineage_reports_each_stage_share_of_final_two_ways(tmp_path):
    """The authors' share (the stage's interaction over the final's, every cell read with the final
    model's head) beside the native-shift share, each recomputed here from the stored rows, or n/a
    with the reason when the final's own effect cannot carry a ratio."""
    import numpy as np

    from crosspatch.core.cells import CELLS, cell_effects

    modules = _stages_with_their_own_heads()
    result = lineage(models_from_modules(modules, char_tokenizer()), many_prompts(16), out=tmp_path, **OPTIONS)
    by, rows = result.summary["by_stage"], result.run.analyses["lineage"]

    def effect(stage, field, name):
        y = {c: np.mean([r[field][c] for r in rows if r["stage"] == stage]) for c in CELLS}
        return y["uit_lit"] - y["upt_lpt"] if name == "native_shift" else cell_effects(y)[name]

    for stage in ("s1", "s2", "s3"):
        for share, field, name in (("share_of_final_interaction", "cells_final_readout", "interaction"),
                                   ("share_of_final_shift", "cells", "native_shift")):
            stat = by[stage][share]
            assert stat["n"] == sum(r["stage"] == stage for r in rows)
            if stat["mean"] is None:
                assert name in stat["na_reason"]
            else:
                assert stat["mean"] == pytest.approx(100 * effect(stage, field, name) / effect("s3", field, name))
                assert stat["ci"][0] <= stat["mean"] <= stat["ci"][1]
        assert by[stage]["percent_of_final"] == by[stage]["share_of_final_shift"]["mean"]
        assert by[stage]["interaction_final_readout"]["mean"] == pytest.approx(
            effect(stage, "cells_final_readout", "interaction"))
    assert by["s3"]["share_of_final_shift"]["mean"] == pytest.approx(100.0)
    report = (tmp_path / "report.md").read_text()
    assert "share of final (interaction, authors')" in report and "share of final (shift)" in report
    import html

    assert "share of final (interaction, authors')" in html.unescape((tmp_path / "report.html").read_text())
    table = result.effects()  # the same numbers as a DataFrame, stages in training order
    assert list(dict.fromkeys(table["stage"])) == result.summary["stages"]
    row = table[(table["stage"] == "s1") & (table["quantity"] == "share_of_final_shift")].iloc[0]
    assert row["mean"] == by["s1"]["share_of_final_shift"]["mean"] and row["n_events"] == by["s1"]["events"]
    assert "label_swap" not in set(table["quantity"])  # a test's record, not a statistic with an interval


def test_a_share_of_the_final_has_a_joint_interval_and_is_na_without_a_final_effect():
    import numpy as np

    from crosspatch.core.cells import cell_effects
    from crosspatch.core.stats import BootstrapConfig, share_of_reference

    rng = np.random.default_rng(0)
    prompts = [f"p{k}" for k in range(40)]
    final = rng.normal(size=(40, 4)) + np.array([0.0, 1.0, 0.0, 4.0])  # interaction about +3
    stage = 0.5 * final + 0.2 * rng.normal(size=(40, 4))
    share = share_of_reference(stage, final, prompts, "interaction", BootstrapConfig(2000, seed=1))

    def inter(m):
        return cell_effects({c: m[:, k].mean() for k, c in enumerate(("upt_lpt", "upt_lit", "uit_lpt", "uit_lit"))})[
            "interaction"]

    assert share["mean"] == pytest.approx(100 * inter(stage) / inter(final))
    draws = [rng.integers(0, 40, 40) for _ in range(2000)]  # an independent loop bootstrap over prompts
    ratios = [100 * inter(stage[d]) / inter(final[d]) for d in draws]
    assert share["ci"] == pytest.approx(list(np.percentile(ratios, [2.5, 97.5])), abs=4.0)
    flat = np.zeros((40, 4))  # the final has no interaction: no share of it can be stated
    none = share_of_reference(stage, flat, prompts, "interaction", BootstrapConfig(200))
    assert none["mean"] is None and "interaction" in none["na_reason"] and none["n"] == 40


def test_pooling_runs_weights_families_equally(compared):
    _, out = compared
    pooled = pool_runs({"late": out / "late", "early": out / "early"}, bootstrap=200)
    assert pooled["n_pairs"] == 2


def test_pooling_families_in_directories_of_one_name_keeps_both(compared, tmp_path):
    import shutil

    _, out = compared
    for family in ("late", "early"):  # fam-late/run and fam-early/run: named by path, neither dropped
        shutil.copytree(out / family, tmp_path / f"fam-{family}" / "run")
    pooled = pool_runs([tmp_path / "fam-late" / "run", tmp_path / "fam-early" / "run"], bootstrap=200)
    assert pooled["n_pairs"] == 2 and len(pooled["families"]) == 2
    for odd in (None, str(out / "late"), [out / "late"], {"": out / "late", "b": out / "early"}):
        with pytest.raises(OptionError):
            pool_runs(odd, bootstrap=200)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="readout must be one of common_it, common_pt, not 'common-XY'"):
        pool_runs([out / "late", out / "early"], readout="common-XY")
    # a readout named as the pages print it is the same readout
    assert pool_runs([out / "late", out / "early"], readout="common-PT", bootstrap=0)["readout"] == "common_pt"


def test_a_pool_reads_the_readout_its_runs_verdicts_read(compared, tmp_path):
    """``pool`` pooled common-IT whatever its runs' verdicts read, and did not say so. It pools
    the readout the verdicts read (runs under a ``readout: common_pt`` policy: common-PT), records
    and names it; runs that read different ones need the readout given."""
    import json
    import shutil

    _, out = compared
    assert pool_runs([out / "late", out / "early"], bootstrap=0)["readout"] == "common_it"
    for family in ("late", "early"):  # their verdicts as a common-PT policy decides them
        shutil.copytree(out / family, tmp_path / family)
        summary = json.loads((tmp_path / family / "summary.json").read_text())
        summary["verdict"]["readout"] = "common_pt"
        (tmp_path / family / "summary.json").write_text(json.dumps(summary))
    pooled = pool_runs([tmp_path / "late", tmp_path / "early"], bootstrap=0)
    asked = pool_runs([out / "late", out / "early"], readout="common_pt", bootstrap=0)
    assert pooled["readout"] == "common_pt" and pooled["effects"] == asked["effects"]
    with pytest.raises(OptionError, match="read different readouts.*late: common-PT, early: common-IT"):
        pool_runs([tmp_path / "late", out / "early"], bootstrap=0)
    assert pool_runs([tmp_path / "late", out / "early"], readout="common_it", bootstrap=0)["readout"] == "common_it"


def test_a_pool_names_the_settings_its_families_runs_chose(compared, tmp_path):
    """A pool of runs made under different policies (or one over chat-templated prompts) said
    nothing of it: each family's chosen settings are recorded, and the command names them, with a
    warning where they differ."""
    import json
    import shutil

    from typer.testing import CliRunner

    from crosspatch.cli import app

    _, out = compared
    assert pool_runs([out / "late", out / "early"], bootstrap=0)["settings"] == {"late": [], "early": []}
    shutil.copytree(out / "late", tmp_path / "late")
    config = json.loads((tmp_path / "late" / "config.json").read_text())
    config["options"]["policy"] = {"min_late_effect": 0.125}
    (tmp_path / "late" / "config.json").write_text(json.dumps(config))
    pooled = pool_runs([tmp_path / "late", out / "early"], bootstrap=0)
    assert pooled["settings"] == {"late": [["policy", "min_late_effect 0.125 (the rest as default)"]], "early": []}
    res = CliRunner().invoke(app, ["pool", str(tmp_path / "late"), str(out / "early"), "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "late's run chose: policy: min_late_effect 0.125" in text and "early's run chose: the defaults" in text
    assert "chose different settings" in text


@pytest.mark.slow
def test_compare_and_lineage_commands(tmp_path):
    from crosspatch.cli import app
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    tiny_model("llama", seed=4).save_pretrained(root / "other")
    char_tokenizer().save_pretrained(root / "other")
    prompts = tmp_path / "p.jsonl"
    import json

    prompts.write_text("".join(json.dumps(p) + "\n" for p in many_prompts(8)))
    common = ["--prompts", str(prompts), "--max-new-tokens", "6", "--bootstrap", "0", "--quiet", "--boundary", "2",
              "--event-kinds", "first_diff", "--controls", "none"]
    res = CliRunner().invoke(app, ["compare", "--base", str(root / "base"), "--tuned", str(root / "tuned"),
                                   "--tuned", str(root / "other"), "--cross", "all", "--out", str(tmp_path / "c"), *common])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "compare.json").exists() and "tuned" in res.output and "other" in res.output
    res = CliRunner().invoke(app, ["lineage", str(root / "base"), str(root / "other"), str(root / "tuned"),
                                   "--out", str(tmp_path / "l"), *common])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "l" / "lineage.png").exists()
    # stages named NAME=PATH keep their names and their training order; a name twice is refused
    res = CliRunner().invoke(app, ["lineage", str(root / "base"), f"sft={root / 'other'}", f"dpo={root / 'tuned'}",
                                   "--out", str(tmp_path / "named"), *common])
    assert res.exit_code == 0, res.output
    named = json.loads((tmp_path / "named" / "lineage.json").read_text())
    assert named["stages"] == ["sft", "dpo"] and named["final"] == "dpo"
    res = CliRunner().invoke(app, ["lineage", str(root / "base"), f"sft={root / 'other'}", f"sft={root / 'tuned'}",
                                   "--out", str(tmp_path / "twice"), *common])
    assert res.exit_code == 2 and "stage name 'sft' is given twice" in res.output, res.output
    assert not (tmp_path / "twice").exists()
    models = load_models(str(root / "base"), tuned=[str(root / "tuned"), str(root / "other")])
    assert models.roles == ("base", "tuned", "other")

    # the same command again resumes into its own output; other settings are refused by the
    # descendant's run unless --overwrite; a compare's directory is no lineage's, nor a run's
    again = ["compare", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--tuned", str(root / "other"),
             "--cross", "all", "--out", str(tmp_path / "c"), *common]
    res = CliRunner().invoke(app, again)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, again + ["--max-new-tokens", "5"])
    assert res.exit_code == 2 and "error RunSettingsMismatchError" in res.output, res.output
    assert CliRunner().invoke(app, again + ["--max-new-tokens", "5", "--overwrite"]).exit_code == 0
    res = CliRunner().invoke(app, ["lineage", str(root / "base"), str(root / "other"), str(root / "tuned"),
                                   "--out", str(tmp_path / "l"), *common])
    assert res.exit_code == 0, res.output
    for args in (["lineage", str(root / "base"), str(root / "tuned"), "--out", str(tmp_path / "c"), *common],
                 ["run", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--out", str(tmp_path / "l"),
                  *common]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "holds the output of a crosspatch" in res.output, res.output
    # a compare's output is no run, but report renders it again: its pages and each of its runs' reports
    res = CliRunner().invoke(app, ["report", str(tmp_path / "c")])
    assert res.exit_code == 0 and str(tmp_path / "c" / "tuned" / "report.md") in res.output, res.output
    assert str(tmp_path / "c" / "report.html") in res.output
    res = CliRunner().invoke(app, ["gate", str(tmp_path / "l")])  # a lineage: its run (base vs the final stage)
    assert res.exit_code in (0, 1) and "run: " in res.output and "lineage of 1 run(s)" in res.output, res.output
    from crosspatch.errors import RunDirectoryNotEmptyError

    with pytest.raises(RunDirectoryNotEmptyError, match="holds a crosspatch run, not a compare"):
        compare(models, many_prompts(2), out=tmp_path / "l" / "run", max_new_tokens=2, bootstrap=0, progress=False)
    assert not (tmp_path / "l" / "run" / ".crosspatch-collection").exists()


def test_a_compare_names_a_descendant_that_is_a_copy_of_the_base_in_its_table_pages_and_output(tmp_path):
    # a member's run warns; the compare's own output must too, or its "no-late-effect, 0 events" row reads as a finding
    import json
    import shutil

    from crosspatch.cli import app
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    shutil.copytree(root / "base", root / "copy")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in many_prompts(4)))
    res = CliRunner().invoke(app, ["compare", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--tuned",
                                   str(root / "copy"), "--prompts", str(prompts), "--max-new-tokens", "4", "--bootstrap",
                                   "0", "--quiet", "--boundary", "2", "--event-kinds", "first_diff", "--controls", "none",
                                   "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    said = "'copy': its weight files are the base's, byte for byte"
    assert said in " ".join(res.output.split()), res.output
    stored = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert [w for w in stored["warnings"] if said in w] and not [w for w in stored["warnings"] if "'tuned'" in w]
    assert "## Warnings" in (tmp_path / "c" / "report.md").read_text()
    assert "<h2>Warnings</h2>" in (page := (tmp_path / "c" / "report.html").read_text()) and "&#39;copy&#39;" in page
    res = CliRunner().invoke(app, ["lineage", str(root / "base"), str(root / "copy"), str(root / "tuned"), "--prompts",
                                   str(prompts), "--max-new-tokens", "4", "--bootstrap", "0", "--quiet", "--boundary",
                                   "2", "--event-kinds", "first_diff", "--controls", "none", "--out", str(tmp_path / "l")])
    assert res.exit_code == 0 and said in " ".join(res.output.split()), res.output
    assert [w for w in json.loads((tmp_path / "l" / "lineage.json").read_text())["warnings"] if said in w]
    assert "## Warnings" in (tmp_path / "l" / "report.md").read_text()
    assert "<h2>Warnings</h2>" in (tmp_path / "l" / "report.html").read_text()


@pytest.mark.slow
def test_compare_under_sequential_residency_holds_one_model_at_a_time(family, tmp_path):
    tok = char_tokenizer()
    for name, model in family.items():
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    models = load_models(str(tmp_path / "base"), tuned={r: str(tmp_path / r) for r in ("same", "late", "early")},
                         residency="sequential")
    result = compare(models, many_prompts(8), cross="all", **{**OPTIONS, "bootstrap": 0})
    assert models.peak_live_models == 1  # weak references to every model loaded: never two alive
    resident = compare(models_from_modules(family, tok), many_prompts(8), cross="all", **{**OPTIONS, "bootstrap": 0})
    for role in ("late", "early"):
        got = result.summary["rows"][role]["effects"]["interaction"]["mean"]
        assert got == pytest.approx(resident.summary["rows"][role]["effects"]["interaction"]["mean"], abs=1e-5)


def test_pool_command(compared):
    from crosspatch.cli import app

    _, out = compared
    res = CliRunner().invoke(app, ["pool", str(out / "late"), str(out / "early"), "--bootstrap", "200"])
    assert res.exit_code == 0, res.output
    assert "2 families" in res.output and "interaction" in res.output
    assert "leave-one-out" in res.output and "pool without it" in res.output
    late = pool_runs({"late": out / "late", "early": out / "early"}, bootstrap=200)["leave_one_out"]["early"]
    assert f"{late['effects']['interaction']['mean']:+.2f}" in res.output  # without early, the pool is late alone
    res = CliRunner().invoke(app, ["pool", str(out / "late"), str(out / "early"), "--bootstrap", "200", "--json"])
    import json

    assert set(json.loads(res.output)["leave_one_out"]) == {"late", "early"}
    assert CliRunner().invoke(app, ["pool", str(out / "late")]).exit_code == 2



def test_each_run_page_names_the_descendant_it_scores():
    """A compare or lineage run loads several descendants: its pages name the one its role scores."""
    from crosspatch.report.markdown import scored_descendant

    several = {"models": {"base": {"path": "b"}, "descendants": {"sft": {"path": "s"},
                                                                 "lora": {"path": "l", "kind": "adapter"}}},
               "roles": ["base", "sft", "lora"]}
    assert scored_descendant({**several, "options": {"tuned": "lora"}}) == ("l", "PEFT adapter")
    assert scored_descendant({**several, "options": {"tuned": None}}) == ("s", "descendant")
    assert scored_descendant({"models": {"base": {"path": "b"}, "adapter": {"path": "a"}}}) == ("a", "PEFT adapter")
    assert scored_descendant({"models": {"base": {"path": "b"}, "tuned": {"path": "t"}}}) == ("t", "descendant")


def test_compare_pages_link_back_to_the_combined_page(compared):
    _, out = compared
    for role in ("late", "early"):
        assert '<a href="../report.html">' in (out / role / "report.html").read_text()


@pytest.mark.slow
def test_a_compare_row_without_what_its_pages_print_is_named_not_a_key_error(compared, tmp_path):
    import json
    import shutil

    from crosspatch.cli import app

    _, out = compared
    for field in ("events", "reason"):
        damaged = tmp_path / field
        shutil.copytree(out, damaged)
        document = json.loads((damaged / "compare.json").read_text())
        del document["rows"]["late"][field]
        (damaged / "compare.json").write_text(json.dumps(document))
        res = CliRunner().invoke(app, ["report", str(damaged)])
        assert res.exit_code == 2 and "CorruptRunFileError" in res.output and f"rows.late.{field}" in res.output, field
    damaged = tmp_path / "cross"  # (a part no schema lists: its pages cannot be rendered, and it says so)
    shutil.copytree(out, damaged)
    document = json.loads((damaged / "compare.json").read_text())
    del document["cross_note"]
    (damaged / "compare.json").write_text(json.dumps(document))
    res = CliRunner().invoke(app, ["report", str(damaged)])
    assert res.exit_code == 2 and "cannot be rendered" in res.output and "cross_note" in res.output, res.exception


@pytest.mark.parametrize("tuned", ["", 0, []])
def test_a_tuned_role_that_is_empty_is_refused_not_taken_for_the_first_descendant(tuned):
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    with pytest.raises(OptionError, match="tuned must name a descendant role"):
        run(make_pair("llama"), ["a b c"], tuned=tuned, boundary=2, max_new_tokens=4, bootstrap=0, progress=False)


def test_a_compare_overwritten_with_other_descendants_reports_and_gates_only_its_own(family, tmp_path):
    """compare A,B into a directory, then A,C with --overwrite: the gate and the report cover A
    and C; B's run (an earlier compare's, which made the gate fail) is removed, files of the
    user's own in it stay."""
    from crosspatch.runner.result import rerender_run
    from crosspatch.store import collection_runs
    from crosspatch.workflows.gate import gate

    tok = char_tokenizer()
    first = models_from_modules({k: family[k] for k in ("base", "same", "late")}, tok)
    second = models_from_modules({k: family[k] for k in ("base", "same", "early")}, tok)
    options = {**OPTIONS, "bootstrap": 0, "controls": "none"}
    compare(first, many_prompts(6), out=tmp_path / "c", **options)
    (tmp_path / "c" / "late" / "notes.txt").write_text("mine", encoding="utf-8")
    compare(second, many_prompts(6), out=tmp_path / "c", overwrite=True, **options)
    assert [p.name for p in collection_runs(tmp_path / "c", "compare")] == ["same", "early"]
    assert set(gate(tmp_path / "c")["members"]) == {"same", "early"}
    assert [p.name for p in (tmp_path / "c" / "late").iterdir()] == ["notes.txt"]
    assert {p.parent.name for p in rerender_run(tmp_path / "c").files if p.name == "report.md"} == {"same", "early", "c"}
    # a member removed afterwards is named, never skipped: the gate is unusable, the report refuses
    import shutil

    from crosspatch.errors import NotARunDirectoryError

    shutil.rmtree(tmp_path / "c" / "early")
    outcome = gate(tmp_path / "c")
    assert outcome["exit_code"] == 2 and "does not exist" in outcome["members"]["early"]["reason"]
    with pytest.raises(NotARunDirectoryError, match="early does not exist"):
        rerender_run(tmp_path / "c")


@pytest.mark.slow
def test_a_compare_given_one_more_descendant_resumes_the_others_and_a_cross_plan_is_another_run(tmp_path):
    """A compare member's run is its base and descendant (and the descendants its analyses read):
    the same compare with a further descendant finishes only the new one; asking for the cross
    matrix afterwards is another run of the members (their finished prompts have no cross cells),
    refused rather than resumed with an empty matrix."""
    from crosspatch.errors import RunSettingsMismatchError
    from crosspatch.testing import save_tiny_pair

    for k in (0, 1, 2):  # one base (seed 0), three descendants of it
        save_tiny_pair(tmp_path / f"m{k}", scale=0.3 + 0.1 * k)
    base = str(tmp_path / "m0" / "base")
    stages = {f"d{k}": str(tmp_path / f"m{k}" / "tuned") for k in (0, 1, 2)}
    options = dict(max_new_tokens=4, bootstrap=0, progress=False, controls="none", event_kinds="first_diff", boundary=2)
    first = compare(load_models(base, tuned={k: stages[k] for k in ("d0", "d1")}), many_prompts(4),
                    out=tmp_path / "c", **options)
    more = compare(load_models(base, tuned=stages), many_prompts(4), out=tmp_path / "c", **options)
    for role in ("d0", "d1"):
        assert more.runs[role].summary["cost_this_session"]["prompts_processed"] == 0
        assert more.runs[role].summary["results"] == first.runs[role].summary["results"]
    assert more.runs["d2"].summary["cost_this_session"]["prompts_processed"] == 4
    with pytest.raises(RunSettingsMismatchError, match=r"c/d0 holds a run with other settings \(models.descendants.d1: "
                                                       r"not given -> given.*the run now reads more descendants: a "
                                                       r"compare's --cross"):
        compare(load_models(base, tuned=stages), many_prompts(4), out=tmp_path / "c", cross="all", **options)


def test_a_compare_under_a_common_pt_policy_reads_each_row_in_its_verdicts_readout():
    """With a policy's ``readout: common_pt`` each descendant's verdict grades its common-PT block,
    yet its row in compare.json (and the table, the pages) held the common-IT numbers under
    "common-IT readout": a verdict beside numbers it was not decided on."""
    from types import SimpleNamespace

    from crosspatch.report.collections import compare_readout, render_compare_markdown
    from crosspatch.runner.compare import compare_summary
    from crosspatch.store.schemas import check_document

    def block(e):
        stat = {"mean": e, "ci": [e - 0.1, e + 0.1]}
        return {"n_events": 8, "n_prompts": 8, "cells": {c: stat for c in ("upt_lpt", "upt_lit", "uit_lpt", "uit_lit")},
                "effects": {k: stat for k in ("E_PT", "E_IT", "interaction", "direct_share", "late_interaction_share")}}

    summary = {"verdict": {"verdict": "portable", "reason": "...", "boundary": 2, "readout": "common_pt"},
               "results": {"2": {"common_it": {"all": block(0.25)}, "common_pt": {"all": block(1.75)}}}}
    models = SimpleNamespace(base="base", descendants=["a"], warnings=[])
    config = {"options": {"policy": {"readout": "common_pt"}}}
    document = compare_summary(models, {"a": SimpleNamespace(summary=summary, config=config)}, {})  # pyright: ignore[reportArgumentType]
    row = document["rows"]["a"]
    assert document["settings"] == [["policy", "readout common_pt (the rest as default)"]]  # named on its pages
    assert "- policy: readout common\\_pt (the rest as default)" in render_compare_markdown(document)
    assert row["readout"] == "common_pt" and row["effects"]["E_PT"]["mean"] == 1.75
    assert check_document("compare.json", document) == []
    assert compare_readout(document) == "common-PT readout" and "common-PT readout" in render_compare_markdown(document)
    from crosspatch.runner.compare import CompareResult

    frame = CompareResult({}, document, "").effects()  # pyright: ignore[reportArgumentType]
    assert set(frame.readout) == {"common_pt"} and frame[frame.effect == "E_PT"]["mean"].tolist() == [1.75]
    summary["verdict"]["readout"] = "common_it"
    document = compare_summary(models, {"a": SimpleNamespace(summary=summary)}, {})  # pyright: ignore[reportArgumentType]
    assert document["rows"]["a"]["effects"]["E_PT"]["mean"] == 0.25 and compare_readout(document) == "common-IT readout"
