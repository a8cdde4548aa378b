"""The command line end to end on a tiny saved pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crosspatch.cli import app
from crosspatch.testing import save_tiny_pair

from .conftest import PROMPTS


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
    root = save_tiny_pair(tmp_path_factory.mktemp("pair"), scale=0.3)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return root


@pytest.mark.slow
def test_run_writes_the_run_directory_and_report_rerenders(saved_pair, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "run", "--base", str(saved_pair / "base"), "--tuned", str(saved_pair / "tuned"),
        "--prompts", str(saved_pair / "prompts.jsonl"), "--out", str(out), "--max-new-tokens", "12",
        "--boundary", "0.5", "--bootstrap", "300", "--quiet", "--analysis-option", "label_swap.resamples=500",
        "--analysis-option", "hybrid_state.random_draws=2",
    ])
    assert res.exit_code == 0, res.output
    for name in ("config.json", "events.jsonl", "summary.json", "report.md", "report.html", "events.parquet"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["schema_version"] == "crosspatch.config/1"
    assert config["environment"]["torch"] and config["environment"]["transformers"]
    assert config["models"]["base"]["weights"]["model.safetensors"]  # sha256 recorded
    assert config["options"]["boundary"] == 0.5 and config["resolved_boundaries"] == [2]
    assert config["options"]["analysis_options"] == {"label_swap": {"resamples": 500}, "hybrid_state": {"random_draws": 2}}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema_version"] == "crosspatch.summary/1"
    counts = summary["counts"]
    assert counts["prompts"] == len(PROMPTS)
    assert counts["events"] + counts["invalid"] + sum(counts["no_divergence"].values()) == len(PROMPTS)
    lines = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "first_diff" for r in lines) == counts["events"] + counts["invalid"]
    assert {r["kind"] for r in lines} <= {"first_diff", "first_nonformat_diff", "first_assistant_marker_diff"}
    assert "interaction" in res.output  # the rich summary table
    original = (out / "report.md").read_text()
    (out / "report.md").unlink()
    res = CliRunner().invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "report.md").read_text() == original


def test_the_same_command_on_a_finished_run_loads_no_model(saved_pair, tmp_path, monkeypatch):
    import crosspatch

    out = tmp_path / "run"
    args = ["run", "--base", str(saved_pair / "base"), "--tuned", str(saved_pair / "tuned"), "--prompts",
            str(saved_pair / "prompts.jsonl"), "--out", str(out), "--max-new-tokens", "8", "--boundary", "2",
            "--bootstrap", "0", "--controls", "none", "--event-kinds", "first_diff", "--quiet"]
    assert CliRunner().invoke(app, args).exit_code == 0
    summary = (out / "summary.json").read_text()

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(crosspatch, "load_models", no_loading)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "nothing to do (no model loaded)" in res.output and "interaction" in res.output
    assert (out / "summary.json").read_text() == summary  # nothing rewritten
    # options of speed alone (batch, decoding, residency, engine) change how a run computes, not what it stores
    for faster in (["--batch-size", "3"], ["--max-batch-tokens", "999"], ["--decode", "static"],
                   ["--residency", "sequential"], ["--engine", "local"]):
        res = CliRunner().invoke(app, args + faster)
        assert res.exit_code == 0 and "nothing to do (no model loaded)" in res.output, (faster, res.output)
    assert (out / "summary.json").read_text() == summary
    # a finished run in a directory this process cannot write (a read-only share) is returned as it stands; a
    # command that would write there (another setting) is refused for that, before any model loads
    import os

    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **k: not (Path(path) == out and mode & os.W_OK)
                        and writable(path, mode, **k))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "nothing to do (no model loaded)" in res.output, res.output
    res = CliRunner().invoke(app, args + ["--seed", "1"])
    assert res.exit_code == 2 and "RunWriteError" in res.output and "cannot write in" in res.output, res.output
    monkeypatch.setattr(os, "access", writable)
    # another setting, or a prompt file with more prompts: the run in --out is another run, refused with the
    # changes listed before any model loads (as the run would refuse it once they had loaded); nothing written
    more = tmp_path / "more.jsonl"
    more.write_text((saved_pair / "prompts.jsonl").read_text() + json.dumps({"id": "extra", "prompt": "Rain in"}) + "\n")
    import shutil

    from safetensors.torch import load_file, save_file

    other = shutil.copytree(saved_pair / "tuned", tmp_path / "other-tune")  # another fine-tune of the base
    weights = load_file(other / "model.safetensors")
    weights = {k: v * 1.01 if k.endswith("q_proj.weight") else v for k, v in weights.items()}
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    for changed, change in ((args + ["--seed", "1"], "options.seed: 0 -> 1"),
                            ([str(other) if a == str(saved_pair / "tuned") else a for a in args],
                             f"models.tuned.weights: another model's ({other})"),
                            ([a if a != "8" else "9" for a in args], "options.max_new_tokens: 8 -> 9"),
                            ([a if a != "2" else "3" for a in args], "boundaries: [2] -> [3]"),
                            (args + ["--shard", "0/2"], 'shard: not given -> "0/2"'),
                            ([more.as_posix() if a == str(saved_pair / "prompts.jsonl") else a for a in args],
                             "prompts: sha256")):
        res = CliRunner().invoke(app, changed)
        assert res.exit_code == 2 and "RunSettingsMismatchError" in res.output and change in res.output, res.output
        assert "(no model was loaded)" in res.output
        assert (out / "summary.json").read_text() == summary
    # the same command on a finished run of an older crosspatch (other result rules): its result is not
    # returned as this version's, nor resumed into; named before loading
    config_path = out / "config.json"
    stored = config_path.read_text()
    older = json.loads(stored)
    older["fingerprint_inputs"]["result_rules"] = "2000-01-01"
    config_path.write_text(json.dumps(older))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "written by an older crosspatch" in res.output, res.output
    assert "(no model was loaded)" in res.output and "--overwrite" in res.output
    config_path.write_text(stored)
    res = CliRunner().invoke(app, args + ["--no-resume"])  # refused as the run would refuse it, before loading
    assert res.exit_code == 2 and "RunDirectoryError" in res.output and "without --no-resume" in res.output
    # an interrupted run of the same settings is not refused: its models load and it resumes (a last line cut
    # off by the interruption included: the resume cuts it)
    (out / "summary.json").unlink()
    with open(out / "events.jsonl", "a") as torn:
        torn.write('{"prompt_id": "cut')
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, AssertionError) and "a model was loaded" in str(res.exception)
    # a damaged line inside a records file is named before the models load, not after the run's work
    lines = (out / "events.jsonl").read_text().splitlines(keepends=True)
    (out / "events.jsonl").write_text(lines[0] + "{damaged\n" + "".join(lines[1:]))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "CorruptRunFileError" in res.output and "events.jsonl:2" in res.output, res.output
    # --overwrite replaces the other run without asking (its models load)
    res = CliRunner().invoke(app, args + ["--seed", "1", "--overwrite"])
    assert isinstance(res.exception, AssertionError) and "a model was loaded" in str(res.exception)


def test_a_resumed_run_says_once_how_many_prompts_were_already_done(saved_pair, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--base", str(saved_pair / "base"), "--tuned", str(saved_pair / "tuned"), "--prompts",
            str(saved_pair / "prompts.jsonl"), "--out", str(out), "--max-new-tokens", "8", "--boundary", "2",
            "--bootstrap", "0", "--controls", "none", "--event-kinds", "first_diff"]
    assert CliRunner().invoke(app, args + ["--quiet"]).exit_code == 0
    for quiet in ([], ["--quiet"]):
        (out / "summary.json").unlink()  # as if interrupted before the end: every prompt is done
        res = CliRunner().invoke(app, args + quiet)
        assert res.exit_code == 0, res.output
        assert res.output.count("resumed:") == 1 and "already done" in res.output, res.output


def test_without_out_each_pair_writes_its_own_directory(saved_pair, tmp_path, monkeypatch):
    """The default --out is named after the models (runs/BASE__DESCENDANT, a sweep's with
    -sweep): a second pair runs beside the first instead of being refused as 'other settings',
    and the same command again finds its own run."""
    import shutil

    shutil.copytree(saved_pair / "tuned", tmp_path / "other tune")
    monkeypatch.chdir(tmp_path)
    common = ["--prompts", str(saved_pair / "prompts.jsonl"), "--max-new-tokens", "6", "--boundary", "2",
              "--bootstrap", "0", "--controls", "none", "--event-kinds", "first_diff", "--quiet"]
    base = ["--base", str(saved_pair / "base")]
    for command, tuned, expected in (("run", saved_pair / "tuned", "base__tuned"),
                                     ("run", tmp_path / "other tune", "base__other-tune"),
                                     ("sweep", saved_pair / "tuned", "base__tuned-sweep"),
                                     ("run", saved_pair / "tuned", "base__tuned")):  # again: the same run
        res = CliRunner().invoke(app, [command, *base, "--tuned", str(tuned), *common])
        assert res.exit_code == 0, res.output
        assert f"run directory: runs/{expected} " in " ".join(res.output.split()), res.output
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["base__other-tune", "base__tuned",
                                                                      "base__tuned-sweep"]


def test_default_output_directories_are_named_after_the_models():
    from pathlib import Path

    from crosspatch.cli.targets import default_out

    assert default_out("meta-llama/Llama-3.1-8B", ["meta-llama/Llama-3.1-8B-Instruct"]) \
        == Path("runs/Llama-3.1-8B__Llama-3.1-8B-Instruct")
    assert default_out("./models/base/", ["out/checkpoint-500"], "sweep") == Path("runs/base__checkpoint-500-sweep")
    assert default_out("base", ["sft", "my lora (v2)"], "compare") == Path("runs/base__sft+my-lora-v2-compare")
    long = default_out("base", [f"adapter-{k}" for k in range(40)], "compare")
    assert len(long.name) <= 113 and long.name.startswith("base__adapter-0+adapter-1")
    assert long != default_out("base", [f"adapter-{k}" for k in range(41)], "compare")  # the digest tells them apart
    for command, default in (("splice", "runs/BASE__DESCENDANT-splice"), ("merge-check", "runs/CONFIG-merge-check"),
                             ("compare", "runs/BASE__D1+D2...-compare"), ("lineage", "runs/BASE__FINAL-lineage")):
        shown = " ".join(CliRunner().invoke(app, [command, "--help"], terminal_width=200).output.split())
        assert f"(default: {default}" in shown, command


def test_bad_prompt_file_is_a_clear_error(saved_pair, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n')
    res = CliRunner().invoke(app, ["run", "--base", str(saved_pair / "base"), "--tuned",
                                   str(saved_pair / "tuned"), "--prompts", str(bad), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "PromptFileError" in res.output and "bad.jsonl:1: field 'prompt' is missing" in res.output


def test_square_brackets_in_paths_and_ids_are_printed_as_given_not_read_as_console_markup(saved_pair, tmp_path):
    # rich read '[exp1]' as a style (the line said "run directory: .../runs/") and '[/]' as a tag (MarkupError)
    bad = tmp_path / "[bold]" / "p.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"id": "[/]", "prompt": "Rain"}\n{"id": "[/]", "prompt": "Snow"}\n')
    res = CliRunner().invoke(app, ["run", "--base", str(saved_pair / "base"), "--tuned", str(saved_pair / "tuned"),
                                   "--prompts", str(bad), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "[bold]/p.jsonl:2: field 'id' '[/]' repeats" in res.output, res.output
    out = tmp_path / "runs" / "[exp1]"
    res = CliRunner().invoke(app, ["run", "--base", str(saved_pair / "base"), "--tuned", str(saved_pair / "tuned"),
                                   "--prompts", str(saved_pair / "prompts.jsonl"), "--out", str(out), "--max-new-tokens",
                                   "4", "--bootstrap", "0", "--controls", "none", "--event-kinds", "first_diff"])
    assert res.exit_code == 0, res.output
    assert f"run directory: {out} (report.md" in " ".join(res.output.split()), res.output


def test_control_characters_of_ids_and_paths_print_as_symbols_never_as_terminal_commands(saved_pair, tmp_path):
    """A prompt id holding an ANSI escape ("\\x1b[2J" clears the screen) or a carriage return
    reached the terminal raw in errors, warnings and tables: they print as symbols (␛, ␍)."""
    from io import StringIO

    from rich.table import Table
    from rich.text import Text

    from crosspatch.runner.progress import safe_console

    bad = tmp_path / "p.jsonl"
    bad.write_text(2 * (json.dumps({"id": "\x1b[2Ja\r", "prompt": "Rain"}) + "\n"))
    res = CliRunner().invoke(app, ["run", "--base", str(saved_pair / "base"), "--tuned", str(saved_pair / "tuned"),
                                   "--prompts", str(bad), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "field 'id'" in res.output and "\x1b" not in res.output, res.output
    assert "\\x1b[2Ja\\r" in res.output or "␛[2Ja␍" in res.output  # (repr'd in the message, or shown as symbols)
    table = Table("id")
    table.add_row("\x1b[31mred\x07")
    for console_options in ({}, {"force_terminal": True, "color_system": "standard"}):  # rich's own styles kept
        out = StringIO()
        console = safe_console(file=out, width=80, **console_options)
        console.print(Text.assemble(("warning ", "yellow"), "id \x1b[31mx\x9b"), soft_wrap=True)
        console.print(table)
        text = out.getvalue()
        assert "\x1b[31m" not in text and "id ␛[31mx�" in text and "␛[31m" in text.split("│")[1], repr(text)
        assert ("\x1b[33m" in text) == bool(console_options)  # the warning's own colour
    # a cell was laid out with the control characters' width (none), then shown with the symbols':
    # its last characters were cut ("␛[31mre…"); it is laid out as shown, whole
    table = Table("descendant", "events", title="compare \x07")
    table.add_row("it\x1b[2Jfull", "12")
    out = StringIO()
    safe_console(file=out, width=80).print(table)
    assert "it␛[2Jfull │ 12" in out.getvalue() and "compare ␇" in out.getvalue(), out.getvalue()


def test_a_run_records_and_reports_where_its_prompts_were_read_from(tmp_path):
    """The prompt file's path is the run's provenance (config.json and both reports), never its
    identity: the same prompts read from another file, or given in Python, are the same run."""
    from crosspatch.inputs.prompts import as_prompts, load_prompts
    from crosspatch.report.mdtext import md_escape
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    path = tmp_path / "probe set.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS[:3]))
    prompts = load_prompts(path)
    assert as_prompts(prompts) is prompts and prompts.source == str(path)
    pair = make_pair("llama")
    options = dict(boundary=2, max_new_tokens=4, bootstrap=0, progress=False, controls="none", event_kinds="first_diff")
    from_file = run(pair, prompts, out=tmp_path / "a", **options)
    in_python = run(pair, [dict(p) for p in PROMPTS[:3]], out=tmp_path / "b", **options)
    assert from_file.config["prompts"]["source"] == str(path) and "source" not in in_python.config["prompts"]
    assert from_file.config["run_fingerprint"] == in_python.config["run_fingerprint"]
    digest = from_file.config["prompts"]["sha256"][:12]
    assert f"- prompt set: {md_escape(str(path))} (sha256 {digest}…)" in (tmp_path / "a" / "report.md").read_text()
    assert f"prompt set: <code>{path}</code> (sha256 {digest}…)" in (tmp_path / "a" / "report.html").read_text()
    assert "prompt set" not in (tmp_path / "b" / "report.md").read_text()


def test_both_reports_name_a_verdict_policy_and_a_chat_template_the_run_chose(tmp_path):
    """A verdict decided under a policy of one's own (another bound, other verdicts let through,
    the common-PT readout) read in the reports like a default one: neither named the policy, that
    the prompts were rendered by a chat template, nor word lists of the run's own (FORMAT words,
    assistant markers). Both now do; a default run names none."""
    from crosspatch.report.markdown import chosen_settings
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    pair = make_pair("llama")
    options = dict(boundary=2, max_new_tokens=4, bootstrap=0, progress=False, controls="none", event_kinds="first_diff")
    run(pair, PROMPTS[:3], out=tmp_path / "r", policy={"max_interaction_share": 0.4, "readout": "common_pt",
                                                        "pass_verdicts": ["portable", "no-late-effect"]}, **options)
    said = "policy: max_interaction_share 0.4; readout common_pt (the rest as default)"
    assert f"- {said}" in (tmp_path / "r" / "report.md").read_text()
    assert said in (tmp_path / "r" / "report.html").read_text()
    # the verdict's readout is named as every page names it (report.md, report.html and a notebook's card said "common-pt")
    from crosspatch import open_run

    card = open_run(tmp_path / "r")._repr_html_()
    for page in ((tmp_path / "r" / "report.md").read_text(), (tmp_path / "r" / "report.html").read_text(), card):
        assert "common-PT readout)" in page and "common-pt" not in page
    run(pair, PROMPTS[:3], out=tmp_path / "default", **options)
    assert "policy:" not in (tmp_path / "default" / "report.md").read_text()
    assert chosen_settings({"chat_template": True, "policy": {}, "format_tokens": ["a", "the"]}) == [
        ("chat template", "every prompt rendered by the tokenizer's chat template"),
        ("format words", "2 of the run's own, in place of crosspatch's (a, the)")]


def test_report_on_a_non_run_directory(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "RunDirectoryError" in res.output


@pytest.mark.slow
def test_html_report_is_self_contained_and_escapes_model_text(tmp_path):
    """Hostile text in token text, prompt ids, categories, prompts and model paths never becomes
    markup; the page needs no network."""
    from crosspatch.runner.pipeline import rerender, run
    from crosspatch.testing import make_pair

    script, img = "<script>alert(1)</script>", '<img src=x onerror="alert(2)">'
    prompts = [dict(p, id=f"{p['id']}{img}", category=f"{script}{p['category']}") for p in PROMPTS[:3]]
    prompts[0]["prompt"] = script + prompts[0]["prompt"]
    result = run(make_pair("llama"), prompts, boundaries=[1, 2], max_new_tokens=6, bootstrap=100,
                 progress=False, out=tmp_path / "r", title="<b>title</b>")
    assert result.records
    rows = [json.loads(line) for line in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    for r in rows:
        r["t_it_text"], r["t_pt_text"] = script, img
    (tmp_path / "r" / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    config["models"]["base"]["path"] = f"/models/{script}"
    config["prompts"]["source"] = f"/data/{img}.jsonl"
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    rerender(tmp_path / "r")
    html = (tmp_path / "r" / "report.html").read_text()
    assert script not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html and "&lt;img src=x onerror=" in html
    assert html.count("<script>") == 1  # the explorer's own script, nothing else
    assert "<b>title</b>" not in html and "&lt;b&gt;title&lt;/b&gt;" in html
    assert "<svg" in html  # plots are inline, no external file
    assert 'src="http' not in html and "<link" not in html and "`" not in html.split("<script>")[0]



def test_control_characters_in_ids_tokens_and_paths_show_as_symbols_in_both_reports(tmp_path):
    """An ANSI escape in a prompt id, a token or a path reached report.md (``cat report.md``
    recoloured or cleared the terminal) and report.html raw (its plots' labels too): both show it
    as a symbol (␛), as do a notebook's card and the console."""
    from crosspatch.runner.pipeline import rerender, run
    from crosspatch.testing import make_pair

    prompts = [dict(p, id=f"{p['id']}\x1b[2J", category=f"\x1b[31m{p['category']}") for p in PROMPTS[:3]]
    run(make_pair("llama"), prompts, boundary=2, max_new_tokens=6, bootstrap=0, progress=False, out=tmp_path / "r")
    rows = [json.loads(line) for line in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    for r in rows:
        r["t_it_text"], r["t_pt_text"] = "\x1b]0;title\x07", "\x9b1m"
    (tmp_path / "r" / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    config["models"]["base"]["path"] = "/models/\x1b[5mbase"
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    rerender(tmp_path / "r")
    for page in ("report.md", "report.html"):
        text = (tmp_path / "r" / page).read_text(encoding="utf-8")
        assert not any(ch in text for ch in "\x1b\x07\x9b"), page
        shown = text.replace("\\[", "[")  # (Markdown escapes the bracket)
        assert "␛[2J" in shown and "␛[5mbase" in shown and "␛[31m" in shown, page
    from crosspatch.report.notebook import escape  # what a notebook's card shows of any text

    assert escape("\x1b[2J<b>\x9b") == "␛[2J&lt;b&gt;\ufffd"



def test_help_is_fast_plain_and_complete():
    import os
    import subprocess
    import sys
    import time

    env = dict(os.environ, COLUMNS="80")
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", "from crosspatch.cli import main; main()", "--help"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0
    assert time.perf_counter() - start < 10  # the measured time is ~0.2 s; torch is not imported
    res = subprocess.run([sys.executable, "-c", "import crosspatch.cli, sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True)
    assert res.stdout.strip() == "False"
    for command in ("run", "sweep", "compare", "lineage"):
        out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80"}).output
        assert "crosspatch[ray]" in out  # not swallowed by markup
        assert "--allow-special-token-mismatch" in out and "--dry-run" in out and "--controls" in out
    import inspect

    from crosspatch.cli import run_cmd

    for p in inspect.signature(run_cmd).parameters.values():
        assert getattr(p.default, "help", None), f"--{p.name} has no help"


def test_the_readme_names_every_command():
    import re
    from pathlib import Path

    import typer.main

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    listed = readme[readme.index("Subcommands:"):readme.index("## Trust and act")]
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        subs = getattr(command, "commands", None)
        for full in ([f"{name} {s}" for s in subs] if subs else [name]):
            words = full.split()
            assert re.search(rf"`{re.escape(words[0])}(`| [^`]*{re.escape(words[-1])})", listed), full


def test_every_command_shows_plain_metavars():
    import typer.main

    group = typer.main.get_command(app)

    def commands(cmd, path):
        subs = getattr(cmd, "commands", None)
        if not subs:
            yield path
            return
        for name, sub in subs.items():
            yield from commands(sub, path + [name])

    paths = list(commands(group, []))
    assert len(paths) > 15
    for path in paths:
        out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"}).output
        usage = out.splitlines()[0]
        assert "{" not in usage and "<list[" not in out and "<list" not in out, (path, usage)
    usage = CliRunner().invoke(app, ["pool", "--help"]).output.splitlines()[0]
    assert usage.endswith("pool [OPTIONS] RUN_DIR...")


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    res = CliRunner().invoke(app, ["run", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--prompts",
                                   str(prompts), "--out", str(tmp_path / "out"), "--boundaries", "1,3", "--dry-run",
                                   "--residency", "sequential", "--max-batch-tokens", "4096"])
    assert res.exit_code == 0, res.output
    for text in ("residency: sequential", "boundaries: 1, 3 of 4 layers", "prompts: 6", "estimated work",
                 "(per token: search 2.0, cells 2.0, pre_divergence", "hybrid_state",
                 "state cache", "at most 4,096 padded tokens", "KV cache of the largest decoding batch", "sweep.png",
                 "no weight was loaded and nothing was written"):
        assert text in res.output, text
    assert not (tmp_path / "out").exists()
    assert "repeat another prompt's tokens" not in res.output and "engine:" not in res.output
    res = CliRunner().invoke(app, ["run", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--prompts",
                                   str(prompts), "--out", str(tmp_path / "out"), "--dry-run", "--engine", "ray",
                                   "--workers", "3"])  # what the Ray cluster must hold (each worker loads a copy)
    assert "engine: ray, 1 worker(s), each loading its own copy of the models (both) on the CPU: the Ray cluster " \
        "needs 1 CPUs (--workers 3, but these prompts make 1 chunk(s) of work)" in res.output, res.output
    res = CliRunner().invoke(app, ["run", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--prompts",
                                   str(prompts), "--out", str(tmp_path / "out"), "--dry-run", "--engine", "ray",
                                   "--workers", "3", "--batch-size", "1"])  # chunks of 4 prompts: 2 chunks
    assert "engine: ray, 2 worker(s)" in res.output and "the Ray cluster needs 2 CPUs (--workers 3" in res.output
    # prompts that repeat another's tokens are named before a long run spends time on them again
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS + [dict(PROMPTS[0], id="again")]))
    for controls, after in (("default", "(the repeated_prompts control warns after the run)"), ("none", "")):
        res = CliRunner().invoke(app, ["run", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--prompts",
                                       str(prompts), "--out", str(tmp_path / "out"), "--dry-run", "--controls", controls])
        assert res.exit_code == 0 and (f"warning: 1 prompt(s) repeat another prompt's tokens (again = {PROMPTS[0]['id']})"
                                       in res.output), res.output
        assert ("repeated_prompts control" in res.output) == bool(after)


def test_dry_run_of_a_compare_or_lineage_sizes_named_descendants_and_lists_its_own_files(tmp_path):
    """A compare's descendants given as NAME=PATH were sized as hub ids ("model sizes or free memory
    unknown (hub ids not in the local cache)"), and its plan listed one run's files in --out."""
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    common = ["--prompts", str(prompts), "--max-new-tokens", "4", "--dry-run"]
    res = CliRunner().invoke(app, ["compare", "--base", str(root / "base"), "--tuned", f"sft={root / 'tuned'}",
                                   "--tuned", f"twin={root / 'base'}", "--out", str(tmp_path / "c"), *common])
    output = " ".join(res.output.split())
    assert res.exit_code == 0 and "residency: both (all 3 models" in output and "hub ids" not in output, output
    assert (f"output: {tmp_path / 'c'}/ compare.json, report.md, report.html, a run directory per descendant (sft/, "
            "twin/); each run directory: config.json,") in output, output
    res = CliRunner().invoke(app, ["lineage", str(root / "base"), f"sft={root / 'tuned'}", "--out",
                                   str(tmp_path / "l"), *common])
    output = " ".join(res.output.split())
    assert res.exit_code == 0 and f"output: {tmp_path / 'l'}/ lineage.json" in output and "(run/)" in output, output
    assert not (tmp_path / "c").exists() and not (tmp_path / "l").exists()


def test_dry_run_counts_the_text_the_chat_template_writes(tmp_path):
    """With --chat-template the plan's token count is that of the chats as the descendant's
    template renders them (every turn of a 'messages' row), not of their raw text."""
    import re

    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    config_path = root / "tuned" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    config_path.write_text(json.dumps(config))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "messages": [{"role": "system", "content": "Be brief."},
                                                           {"role": "user", "content": "Rain?"}]}) + "\n")

    def tokens(*extra) -> int:
        res = CliRunner().invoke(app, ["run", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--prompts",
                                       str(prompts), "--out", str(tmp_path / "out"), "--dry-run",
                                       "--max-new-tokens", "10", *extra])
        assert res.exit_code == 0, res.output
        return int(re.search(r"over ([\d,]+) prompt\+budget tokens", res.output).group(1).replace(",", ""))

    assert tokens("--chat-template") == len("system: Be brief.\nuser: Rain?\nassistant:") + 10  # characters
    assert "are chats" in CliRunner().invoke(app, ["run", "--base", str(root / "base"), "--tuned", str(root / "tuned"),
                                                   "--prompts", str(prompts), "--dry-run"]).output
    # a template that refuses a chat is named before any weight loads, nothing written
    config["chat_template"] = "{{ raise_exception('System role not supported') if messages[0]['role'] == 'system' }}"
    config_path.write_text(json.dumps(config))
    res = CliRunner().invoke(app, ["run", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--prompts",
                                   str(prompts), "--out", str(tmp_path / "out"), "--chat-template"])
    assert res.exit_code == 2 and "PromptFileError" in res.output and "System role not supported" in res.output
    assert "residency" not in res.output and not (tmp_path / "out").exists()


def test_analyses_and_their_options_on_the_command_line(saved_pair, tmp_path):
    """`crosspatch analyses` lists every registered analysis with its options; --analysis and
    --analysis-option name registered ones, typed by their options dataclass; anything else is a
    named error before any model loads."""
    listing = json.loads(CliRunner().invoke(app, ["analyses", "--json"]).stdout)
    by_name = {item["name"]: item for item in listing}
    assert by_name["label_swap"]["role"] == "control" and by_name["label_swap"]["default"] is True
    assert {o["name"]: o["default"] for o in by_name["label_swap"]["options"]} == {"level": 0.01, "resamples": 10000}
    base = ["run", "--base", str(saved_pair / "base"), "--tuned", str(saved_pair / "tuned"), "--prompts",
            str(saved_pair / "prompts.jsonl"), "--out", str(tmp_path / "r"), "--dry-run"]
    assert CliRunner().invoke(app, [*base, "--analysis-option", "label_swap.level=0.05"]).exit_code == 0
    for bad, message in ((["--analysis-option", "label_swap.nope=1"], "unknown option(s) nope"),
                         (["--analysis-option", "label_swap.level=high"], "takes float, not 'high'"),
                         (["--analysis-option", "label_swap"], "NAME.OPTION=VALUE"),
                         (["--analysis-option", "nothing.level=1"], "no analysis named 'nothing'"),
                         (["--analysis", "nothing"], "no analysis named 'nothing'"),
                         (["--decode", "fast"], "decode must be one of auto, eager, static, compiled")):
        res = CliRunner().invoke(app, [*base, *bad])
        assert res.exit_code == 2 and "OptionError" in res.output and message in res.output, (bad, res.output)
    assert not (tmp_path / "r").exists()


def test_run_reads_a_prompt_set_by_its_own_column_names(saved_pair, tmp_path):
    """``--fields`` names the columns that stand for the prompt fields: the same run as with the
    fields' own names (the prompt set is the same, so is the run's fingerprint)."""
    import json

    rows = [json.loads(line) for line in (saved_pair / "prompts.jsonl").read_text().splitlines() if line.strip()]
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text("".join(json.dumps({"uid": r["id"], "question": r["prompt"]}) + "\n" for r in rows))
    common = ["--base", str(saved_pair / "base"), "--tuned", str(saved_pair / "tuned"), "--max-new-tokens", "6",
              "--boundary", "2", "--bootstrap", "0", "--quiet", "--controls", "none", "--event-kinds", "first_diff"]
    plain = [{k: r[k] for k in ("id", "prompt")} for r in rows]
    (tmp_path / "plain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in plain))
    runs = []
    for name, extra in (("plain", ["--prompts", str(tmp_path / "plain.jsonl")]),
                        ("renamed", ["--prompts", str(renamed), "--fields", "id=uid,prompt=question"])):
        res = CliRunner().invoke(app, ["run", *common, *extra, "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        runs.append(json.loads((tmp_path / name / "config.json").read_text()))
    assert runs[0]["run_fingerprint"] == runs[1]["run_fingerprint"]
    res = CliRunner().invoke(app, ["run", *common, "--prompts", str(renamed), "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "field 'id' is missing" in res.output


def test_prompts_the_tokenizers_split_apart_are_named_before_any_weight_loads(saved_pair, tmp_path, monkeypatch):
    """A descendant whose tokenizer reads the prompts otherwise (here: it adds no BOS) was named only
    once both models had loaded (minutes, for a large pair); it is named from the tokenizers alone."""
    import shutil

    import crosspatch

    tuned = tmp_path / "no-bos"
    shutil.copytree(saved_pair / "tuned", tuned)
    tokenizer = json.loads((tuned / "tokenizer.json").read_text())
    tokenizer["post_processor"] = None
    (tuned / "tokenizer.json").write_text(json.dumps(tokenizer))
    monkeypatch.setattr(crosspatch, "load_models", lambda *a, **k: pytest.fail("a model was loaded"))
    for command in (["run", "--tuned", str(tuned)], ["compare", "--tuned", str(saved_pair / "tuned"), "--tuned", str(tuned)],
                    ["lineage", str(tuned)]):
        head, rest = command[:1], command[1:]
        base = ["--base", str(saved_pair / "base")] if head != ["lineage"] else [str(saved_pair / "base")]
        args = [*head, *base, *rest, "--prompts", str(saved_pair / "prompts.jsonl"), "--out", str(tmp_path / head[0]),
                "--quiet"]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2 and "error PromptTokenizationMismatchError" in res.output, res.output
        assert "first difference at index 0" in res.output


@pytest.mark.parametrize("options, error, says", [
    (["--max-new-tokens", "250"], "PromptTooLongError", "exceed the model's 256 positions"),
    (["--group-by", "region"], "GroupByFieldError", "no prompt has a field 'region'")])
def test_what_the_prompts_make_impossible_is_named_before_any_weight_loads(saved_pair, tmp_path, monkeypatch,
                                                                            options, error, says):
    """Prompt + --max-new-tokens past the base's positions (its config.json says how many), or a
    --group-by field no prompt has: named from the prompts, tokenizers and config alone, on a dry
    run too, and before a run loads its models (the run checks the lengths again with what its
    controls decode further)."""
    import crosspatch

    monkeypatch.setattr(crosspatch, "load_models", lambda *a, **k: pytest.fail("a model was loaded"))
    args = ["run", "--base", str(saved_pair / "base"), "--tuned", str(saved_pair / "tuned"), "--prompts",
            str(saved_pair / "prompts.jsonl"), "--out", str(tmp_path / "run"), "--quiet", *options]
    for extra in ([], ["--dry-run"]):
        res = CliRunner().invoke(app, args + extra)
        assert res.exit_code == 2 and f"error {error}" in res.output, res.output
        assert says in res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_terminal_that_cannot_encode_the_text_gets_question_marks_not_a_crash(tmp_path):
    """Under an ASCII or Latin-1 locale (or PYTHONIOENCODING=ascii in a CI job), the verdict's dash
    made a finished `crosspatch run` end in a UnicodeEncodeError traceback, and `gate` exit 1 (a
    'fail' to CI) whatever the verdict. Such text is written as '?': the same exit code as on a
    UTF-8 terminal, no traceback."""
    import os
    import subprocess
    import sys

    import crosspatch
    from crosspatch.testing import make_pair

    crosspatch.run(make_pair("llama"), [dict(p) for p in PROMPTS], out=tmp_path / "run", boundary=2, max_new_tokens=8,
                   bootstrap=200, progress=False)
    codes = {}
    for encoding in ("utf-8", "ascii"):
        res = subprocess.run([sys.executable, "-m", "crosspatch", "gate", str(tmp_path / "run")], capture_output=True,
                             env=dict(os.environ, PYTHONIOENCODING=encoding))
        assert b"Traceback" not in res.stderr and b"UnicodeEncodeError" not in res.stderr, res.stderr.decode()[-400:]
        codes[encoding] = res.returncode
        if encoding == "ascii":
            assert b" ? " in res.stdout  # the verdict's dash
    assert codes["ascii"] == codes["utf-8"] in (0, 1)
