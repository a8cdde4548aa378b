"""After the fact: one path (crosspatch.runner.finished) reopens any run directory crosspatch writes — a
pair, a compare member, a lineage run — from the load spec its config.json records."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from crosspatch.cli import app
from crosspatch.testing.contract import PROMPTS, save_tiny_lora

SETTINGS = ["--boundary", "2", "--max-new-tokens", "8", "--bootstrap", "0", "--controls", "none", "--quiet",
            "--event-kinds", "first_diff"]


def _prompt_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


@pytest.mark.slow
def test_consequence_and_features_run_on_a_compare_member_and_a_lineage_run(tmp_path):
    base, adapter, merged = save_tiny_lora(tmp_path / "m")
    prompts = _prompt_file(tmp_path)
    res = CliRunner().invoke(app, ["compare", "--base", str(base), "--tuned", str(merged), "--adapter", str(adapter),
                                   "--prompts", str(prompts), "--out", str(tmp_path / "cmp"), *SETTINGS])
    assert res.exit_code == 0, res.output
    for member in ("merged", "adapter"):
        config = json.loads((tmp_path / "cmp" / member / "config.json").read_text())
        assert config["load_spec"]["base"] == str(base)  # what reopens the member's models
        res = CliRunner().invoke(app, ["consequence", str(tmp_path / "cmp" / member), "--prompts", str(prompts),
                                       "--budget", "3"])
        assert res.exit_code == 0, res.output
        summary = json.loads((tmp_path / "cmp" / member / "summary.json").read_text())
        assert summary["consequences"]["n_events"] == summary["counts"]["events"] > 0
        assert "Consequences" in (tmp_path / "cmp" / member / "report.md").read_text()

    res = CliRunner().invoke(app, ["lineage", str(base), str(merged), "--prompts", str(prompts), "--out",
                                   str(tmp_path / "lin"), *SETTINGS])
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "lin" / "run"
    res = CliRunner().invoke(app, ["features", "train", str(run_dir), "--latents", "16", "--k", "2", "--steps", "5",
                                   "--layers", "1"])
    assert res.exit_code == 0, res.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["features"]["layers"] == [3] and "Sparse final-MLP features" in (run_dir / "report.md").read_text()
    from crosspatch import open_run
    from crosspatch.runner.compare import CompareResult
    from crosspatch.runner.lineage import LineageResult

    compared, lineaged = open_run(tmp_path / "cmp"), open_run(tmp_path / "lin")  # read back as what made them
    assert isinstance(compared, CompareResult) and set(compared.runs) == {"merged", "adapter"}
    assert compared.summary == json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert set(compared.effects()["descendant"]) == {"merged", "adapter"}
    assert isinstance(lineaged, LineageResult) and lineaged.run.summary["features"]["layers"] == [3]
    assert list(dict.fromkeys(lineaged.effects()["stage"])) == lineaged.summary["stages"] == ["merged"]
    for out, pages in ((tmp_path / "cmp", ("report.md", "report.html", "merged/report.md")),
                       (tmp_path / "lin", ("report.md", "report.html", "run/report.md"))):
        before = {page: (out / page).read_text() for page in pages}
        for page in pages:
            (out / page).unlink()
        res = CliRunner().invoke(app, ["report", str(out), "--check"])  # was: "not one run, give one of its runs"
        assert res.exit_code == 0 and "every printed number comes from the stored data" in res.output, res.output
        assert {page: (out / page).read_text() for page in pages} == before  # the same pages, from the stored files


def test_a_finished_run_opens_from_its_directory_alone(tmp_path, monkeypatch):
    """``crosspatch.open_run``: what ``run`` returned, from the stored files, with no model loaded;
    anything else is a named error."""
    from crosspatch import open_run
    from crosspatch.errors import IncompleteRunError, NotARunDirectoryError, RunDirectoryError
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    made = run(make_pair("llama"), PROMPTS, boundaries=[1, 2], max_new_tokens=8, bootstrap=200, progress=False,
               out=tmp_path / "run")
    import crosspatch.execution as execution

    monkeypatch.setattr(execution, "load_models", lambda *a, **k: pytest.fail("a model was loaded"))
    opened = open_run(tmp_path / "run")
    assert opened.summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert opened.config == made.config and opened.run_dir == tmp_path / "run"
    assert [r.key for r in opened.records] == [r.key for r in made.records]  # in the run's one order
    assert [x.prompt_id for x in opened.no_divergence] == [x.prompt_id for x in made.no_divergence]
    assert opened.events.equals(made.events) and opened.events_long.equals(made.events_long)
    assert opened.effects(by="category").equals(made.effects(by="category"))
    assert set(opened.analyses) == {name for name, rows in made.analyses.items() if rows}
    assert opened.verdict.verdict == made.verdict.verdict and opened.report == made.report
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(IncompleteRunError, match="did not finish"):
        open_run(tmp_path / "run")
    with pytest.raises(NotARunDirectoryError):
        open_run(tmp_path)
    with pytest.raises(RunDirectoryError, match="a run directory is a path"):
        open_run(5)  # type: ignore[arg-type]


@pytest.mark.slow
def test_run_on_finished_runs_a_registered_analysis_and_summarises_again(tmp_path):
    from crosspatch.execution import load_pair
    from crosspatch.runner.finished import run_on_finished
    from crosspatch.runner.pipeline import run

    base, _, merged = save_tiny_lora(tmp_path / "m")
    result = run(load_pair(str(base), tuned=str(merged)), PROMPTS, boundary=2, max_new_tokens=8, bootstrap=0,
                 controls="none", progress=False, out=tmp_path / "r")
    assert not any(r["control"] == "pre_late_commitment" for r in result.summary["controls"])
    later = run_on_finished(tmp_path / "r", "pre_late_commitment")
    rows = (tmp_path / "r" / "control_pre_late_commitment.jsonl").read_text().splitlines()
    assert len(rows) == result.summary["counts"]["events"] > 0
    row = next(r for r in later["controls"] if r["control"] == "pre_late_commitment")
    assert row["details"]["n_scored"] == len(rows)  # the control that ran later is in the summary
    assert "pre-late-commitment" in (tmp_path / "r" / "report.md").read_text()
    assert later["counts"] == result.summary["counts"] and later["results"] == result.summary["results"]
    # called again, it scores only the events its file lacks (a call interrupted after its first chunk, here)
    path = tmp_path / "r" / "control_pre_late_commitment.jsonl"
    path.write_text(rows[0] + "\n")
    again = run_on_finished(tmp_path / "r", "pre_late_commitment")
    margins = {json.loads(r)["key"]: json.loads(r)["lens_margin"] for r in rows}

    def stored_margins():
        stored = [json.loads(r) for r in path.read_text().splitlines()]
        assert len(stored) == len(rows)  # each event once
        return {r["key"]: r["lens_margin"] for r in stored}

    assert stored_margins() == pytest.approx(margins, abs=1e-5)  # (another batch composition: float noise)
    assert [r["control"] for r in again["controls"]] == [r["control"] for r in later["controls"]]
    scored = path.read_text()
    run_on_finished(tmp_path / "r", "pre_late_commitment")  # everything scored: nothing appended twice
    assert path.read_text() == scored
    # an analysis that records nothing on these models (routing on dense ones) says so, the run untouched
    from crosspatch.errors import OptionError

    with pytest.raises(OptionError, match="routing.*mixture-of-experts.*recorded nothing on this run's"):
        run_on_finished(tmp_path / "r", "routing")
    assert not (tmp_path / "r" / "routing.jsonl").exists()
    # an analysis that scores more events with the 2x2 belongs to the search: refused, the run untouched
    before = (tmp_path / "r" / "events.jsonl").read_text()
    with pytest.raises(OptionError, match="cannot be added to a finished run.*--event-kinds"):
        run_on_finished(tmp_path / "r", "event_kinds")
    assert (tmp_path / "r" / "events.jsonl").read_text() == before
    assert not (tmp_path / "r" / "event_kinds.jsonl").exists()


@pytest.mark.slow
def test_every_writer_takes_the_run_directory_lock(tmp_path):
    import pytest

    from crosspatch.errors import RunDirectoryError
    from crosspatch.execution import load_pair
    from crosspatch.runner.finished import run_on_finished
    from crosspatch.runner.on_finished import run_features
    from crosspatch.runner.pipeline import merge_runs, rerender_run, run
    from crosspatch.store import RunStore

    base, _, merged = save_tiny_lora(tmp_path / "m")
    pair = load_pair(str(base), tuned=str(merged))
    run(pair, PROMPTS, boundary=2, max_new_tokens=6, bootstrap=0, controls="none", progress=False, out=tmp_path / "r")
    for i in range(2):
        run(pair, PROMPTS, boundary=2, max_new_tokens=6, bootstrap=0, controls="none", progress=False,
            out=tmp_path / f"s{i}", shard=f"{i}/2")
    writers = [lambda: run_features(tmp_path / "r", train_only=True, steps=2, n_latents=8, k=2, log=lambda m: None),
               lambda: run_on_finished(tmp_path / "r", "pre_late_commitment"),
               lambda: rerender_run(tmp_path / "r")]
    with RunStore(tmp_path / "r").lock():  # another process holds the run directory
        for write in writers:
            with pytest.raises(RunDirectoryError, match="in use by another crosspatch process"):
                write()
    with RunStore(tmp_path / "merged").lock():
        with pytest.raises(RunDirectoryError, match="in use"):
            merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    for write in writers:  # released: each goes through
        write()


def test_a_command_on_a_run_named_by_a_mistyped_path_creates_nothing(tmp_path):
    """report, consequence, features and an analysis added afterwards read a run that exists: a
    path that is not one is named (it does not exist, or it is a file) and no directory is left
    behind (the lock used to create the mistyped path, parents included)."""
    from crosspatch.errors import NotARunDirectoryError
    from crosspatch.runner.finished import run_on_finished
    from crosspatch.runner.on_finished import consequence_for_run, run_features
    from crosspatch.runner.pipeline import rerender_run

    prompts = _prompt_file(tmp_path)
    missing = tmp_path / "typo" / "run"
    commands = [lambda p: rerender_run(p), lambda p: run_on_finished(p, "pre_late_commitment"),
                lambda p: run_features(p, train_only=True, log=lambda m: None),
                lambda p: consequence_for_run(p, prompts)]
    for command in commands:
        with pytest.raises(NotARunDirectoryError, match="does not exist"):
            command(missing)
        with pytest.raises(NotARunDirectoryError, match="is a file, not a run directory"):
            command(prompts)
    assert not (tmp_path / "typo").exists()
    assert CliRunner().invoke(app, ["gate", str(missing)]).exit_code == 2
    assert "does not exist" in CliRunner().invoke(app, ["gate", str(missing)]).output


def test_an_analysis_after_a_run_of_models_given_in_memory_says_why_it_cannot_load_them(tmp_path):
    from crosspatch.errors import ModelLoadError
    from crosspatch.execution import pair_from_models
    from crosspatch.runner.finished import run_on_finished
    from crosspatch.runner.on_finished import run_features
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import char_tokenizer, perturb_layers, tiny_model

    base = tiny_model("llama")
    run(pair_from_models(base, perturb_layers(base, range(4), scale=0.2), char_tokenizer()), PROMPTS, boundary=2,
        max_new_tokens=6, bootstrap=0, controls="none", event_kinds="first_diff", progress=False, out=tmp_path / "r")
    for later in (lambda: run_on_finished(tmp_path / "r", "pre_late_commitment"), lambda: run_features(tmp_path / "r")):
        with pytest.raises(ModelLoadError, match="given in memory .* cannot load them again: ask for it in the run"):
            later()


def test_a_run_of_relative_model_paths_reopens_from_any_directory(tmp_path, monkeypatch):
    """A run given relative model paths recorded them as given: `consequence`, `features` or an
    added analysis run from another directory (or a Ray worker with its own) looked for them
    there, found nothing and asked the hub ("--base m/base: not a local directory"). Local paths
    are recorded absolute; a run written before says which relative path and from where."""
    from crosspatch.errors import ModelPathNotFoundError
    from crosspatch.runner.finished import run_on_finished

    save_tiny_lora(tmp_path / "m")
    _prompt_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", "--base", "m/base", "--tuned", "m/merged", "--prompts", "p.jsonl",
                                   "--out", "r", *SETTINGS])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["load_spec"]["base"] == str(tmp_path / "m" / "base")
    assert config["prompts"]["path"] == str(tmp_path / "p.jsonl")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert run_on_finished(tmp_path / "r", "pre_late_commitment") is not None

    config["load_spec"]["base"] = "m/base"  # as a run written before recorded it
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    (tmp_path / "r" / "control_pre_late_commitment.jsonl").unlink()  # (its events scored: nothing would load)
    with pytest.raises(ModelPathNotFoundError, match=r"recorded a model as m/base, a path relative .*"
                                                      r"/elsewhere/m/base is no directory"):
        run_on_finished(tmp_path / "r", "pre_late_commitment")


@pytest.mark.slow
def test_a_command_on_a_run_whose_models_moved_says_where_the_run_recorded_them(tmp_path):
    """consequence (and every analysis added afterwards) loads the run's models from the paths its
    config.json records: a model moved or deleted since is named as the run's, not as a flag this
    command was never given."""
    import shutil

    from crosspatch.errors import ModelPathNotFoundError
    from crosspatch.execution import load_pair
    from crosspatch.runner.finished import run_on_finished
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    run(load_pair(str(root / "base"), tuned=str(root / "tuned")), PROMPTS, boundary=2, max_new_tokens=4, bootstrap=0,
        controls="none", progress=False, out=tmp_path / "r")
    shutil.rmtree(root / "base")
    with pytest.raises(ModelPathNotFoundError, match=r"base: no such directory: this command loads the run's models "
                                                     r"again from where its config.json records them"):
        run_on_finished(tmp_path / "r", "pre_late_commitment")
