"""Run directories: resumable after a real kill, torn lines repaired, no duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from crosspatch.errors import RunDirectoryError
from crosspatch.runner.pipeline import run
from crosspatch.testing import make_pair, save_tiny_pair

WORDS = ["Rain", "Wind", "Snow", "Sky", "Fog", "Heat", "Humid", "Storm", "Cold", "Gust"]


def many_prompts(n):
    return [{"id": f"q{k:03d}", "prompt": f"{WORDS[k % 10]} in city {k} on day {k % 28}",
             "category": WORDS[k % 10]} for k in range(n)]


def _strip(summary):
    return {k: v for k, v in summary.items() if k != "cost_this_session"}


def assert_same_summary(got, want, tol=1e-5, path="summary"):
    """Equal structure, counts and strings; floats within ``tol`` (resumed runs batch the
    remaining prompts differently, which moves values by float rounding only)."""
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            assert_same_summary(got[k], want[k], tol, f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for k, (a, b) in enumerate(zip(got, want)):
            assert_same_summary(a, b, tol, f"{path}[{k}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        # ratios (shares) amplify rounding where their denominator is small: relative check
        ratio = any(k in path for k in ("share", "ratio", "p_value"))  # a p-value counts sign patterns near the observed value
        limit = 1e-3 * max(1.0, abs(want)) if ratio else tol * max(1.0, abs(want))
        assert abs(got - want) <= limit, f"{path}: {got} vs {want}"
    else:
        assert got == want, f"{path}: {got!r} vs {want!r}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = save_tiny_pair(tmp_path_factory.mktemp("resume"), scale=0.12)
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in many_prompts(160)))
    return root


def _command(saved, out):
    return [sys.executable, "-m", "crosspatch.cli", "run", "--base", str(saved / "base"), "--tuned",
            str(saved / "tuned"), "--prompts", str(saved / "prompts.jsonl"), "--out", str(out),
            "--boundaries", "1,3", "--max-new-tokens", "24", "--batch-size", "2", "--bootstrap", "200", "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_killed_run_resumes_to_the_uninterrupted_result(saved, tmp_path, sig):
    reference = tmp_path / "reference"
    subprocess.run(_command(saved, reference), check=True, capture_output=True)
    out = tmp_path / "killed"
    # a shell may start background jobs with SIGINT ignored; the child gets default handling back
    proc = subprocess.Popen(_command(saved, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    events = out / "events.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if events.exists() and events.stat().st_size > 0:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGINT:  # Ctrl-C says what to do next
        assert proc.returncode == 130 and "run the same command again to resume" in stderr, stderr
    if sig == signal.SIGTERM:  # a scheduler's preemption too (it died silently, exit -15)
        assert proc.returncode == 143 and "terminated (SIGTERM); run the same command again" in stderr, stderr
    assert not (out / "summary.json").exists()
    partial = len(events.read_text().splitlines())
    finished = subprocess.run(_command(saved, out), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    keys = [json.loads(line)["key"] for line in events.read_text().splitlines()]
    assert len(keys) == len(set(keys)), "duplicate event lines after resume"
    ref_keys = [json.loads(line)["key"] for line in (reference / "events.jsonl").read_text().splitlines()]
    assert sorted(keys) == sorted(ref_keys) and len(keys) > partial
    nd = [json.loads(line)["prompt_id"] for line in (out / "no_divergence.jsonl").read_text().splitlines()]
    assert len(nd) == len(set(nd))
    got = json.loads((out / "summary.json").read_text())
    want = json.loads((reference / "summary.json").read_text())
    assert_same_summary(_strip(got), _strip(want))


@pytest.mark.slow
def test_torn_line_and_incomplete_prompt_are_redone(tmp_path):
    pair = make_pair("llama", scale=0.2)
    prompts = many_prompts(8)
    full = run(pair, prompts, boundaries=[1, 2], max_new_tokens=10, bootstrap=100, progress=False, out=tmp_path / "a")
    events = tmp_path / "a" / "events.jsonl"
    lines = events.read_text().splitlines()
    # simulate a kill in the middle of writing: the last prompt loses its second boundary, torn
    events.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    (tmp_path / "a" / "summary.json").unlink()
    again = run(pair, prompts, boundaries=[1, 2], max_new_tokens=10, bootstrap=100, progress=False, out=tmp_path / "a")
    keys = [json.loads(line)["key"] for line in events.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == len(lines)
    assert_same_summary(_strip(again.summary), _strip(full.summary))
    assert again.summary["cost_this_session"]["prompts_processed"] == 1


def test_a_directory_killed_while_its_marker_was_written_is_a_new_run(tmp_path):
    """The marker is the first file of a run directory: a kill while it was written leaves its
    ``.tmp`` alone, which the next run takes for its own; beside anything else it is refused."""
    from crosspatch.errors import RunDirectoryNotEmptyError
    from crosspatch.runner.checks import check_out_dir
    from crosspatch.store import MARKER, RunStore

    out = tmp_path / "run"
    out.mkdir()
    (out / f"{MARKER}.tmp").write_text('{"finger', encoding="utf-8")
    check_out_dir(out)  # the command line's check before loading
    RunStore(out).prepare("abc")
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    other = tmp_path / "other"
    other.mkdir()
    (other / f"{MARKER}.tmp").write_text("", encoding="utf-8")
    (other / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(RunDirectoryNotEmptyError, match="did not write"):
        check_out_dir(other)
    with pytest.raises(RunDirectoryNotEmptyError, match="did not write"):
        RunStore(other).prepare("abc")
    assert (other / "notes.txt").read_text(encoding="utf-8") == "mine"


@pytest.mark.slow
def test_a_run_directory_refuses_other_settings(tmp_path):
    pair = make_pair("llama", scale=0.2)
    run(pair, many_prompts(3), boundary=2, max_new_tokens=6, bootstrap=0, progress=False, out=tmp_path / "r")
    with pytest.raises(RunDirectoryError, match=r"other settings \(boundaries: \[2\] -> \[1\]; headline_boundary: 2 -> 1"):
        run(pair, many_prompts(3), boundary=1, max_new_tokens=6, bootstrap=0, progress=False, out=tmp_path / "r")
    with pytest.raises(RunDirectoryError, match="--no-resume.*--overwrite"):
        run(pair, many_prompts(3), boundary=2, max_new_tokens=6, bootstrap=0, progress=False,
            out=tmp_path / "r", resume=False)
    # --overwrite starts afresh: the other settings replace the old run, nothing of it is mixed in
    fresh = run(pair, many_prompts(3), boundary=1, max_new_tokens=6, bootstrap=0, progress=False,
                out=tmp_path / "r", overwrite=True)
    assert {r.boundary for r in fresh.records} == {1}
    assert all(json.loads(line)["boundary"] == 1 for line in (tmp_path / "r" / "events.jsonl").read_text().splitlines())


def test_a_finished_run_this_process_cannot_write_is_returned_as_it_stands_to_models_in_memory(tmp_path, monkeypatch):
    """``run(pair, ..., out=)`` on a finished run in a directory this process cannot write (a
    read-only share) returns the stored result, as the command line does; an unfinished run or
    another run there is not."""
    from crosspatch.errors import RunSettingsMismatchError
    from tests.test_cli_conventions import read_only

    pair = make_pair("llama", scale=0.2)
    common = dict(boundary=2, max_new_tokens=6, bootstrap=0, progress=False, out=tmp_path / "r")
    first = run(pair, many_prompts(3), **common)
    files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r").iterdir()}
    read_only(monkeypatch, tmp_path / "r")
    again = run(pair, many_prompts(3), **common)
    assert sorted(r.key for r in again.records) == sorted(r.key for r in first.records)
    assert again.summary == json.loads((tmp_path / "r" / "summary.json").read_text())
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r").iterdir()} == files  # nothing written
    with pytest.raises(RunSettingsMismatchError):  # another run there: still refused for that
        run(pair, many_prompts(3), **{**common, "boundary": 1})
    (tmp_path / "r" / "report.html").unlink()  # a run stopped before its reports: the normal path writes them
    run(pair, many_prompts(3), **common)  # (tests run as root, who writes anyway)
    assert (tmp_path / "r" / "report.html").is_file()


@pytest.mark.slow
def test_one_run_spelled_two_ways_resumes(tmp_path):
    """Boundaries, controls, event kinds and analyses enter a run by what they select: the same
    run given with its boundaries in another order or as a fraction, its controls in another
    order, its kinds listed or as ``all``, resumes; another headline boundary is another run."""
    from crosspatch.errors import RunSettingsMismatchError

    pair = make_pair("llama", scale=0.2)  # 4 layers
    common = dict(max_new_tokens=6, bootstrap=0, progress=False, out=tmp_path / "r")
    first = run(pair, many_prompts(3), boundaries=[3, 1], boundary=2, controls="near_ties,label_swap",
                event_kinds="all", **common)
    again = run(pair, many_prompts(3), boundaries=[0.25, 3, 1], boundary=0.5, controls=["label_swap", "near_ties"],
                event_kinds="first_assistant_marker_diff,first_nonformat_diff,first_diff", **common)
    assert [r.key for r in again.records] == [r.key for r in first.records]
    with pytest.raises(RunSettingsMismatchError, match="headline_boundary: 1 -> 3"):
        run(pair, many_prompts(3), boundaries=[1, 3], boundary=3, controls="label_swap,near_ties", **common)


def test_a_run_written_by_an_older_crosspatch_is_neither_resumed_into_nor_returned_as_finished(tmp_path, monkeypatch):
    """A change to what records hold (RESULT_RULES) makes an older crosspatch's run directory
    another run: resuming it would mix records of two rules. Named before any model loads (and
    once loaded); nothing is mixed in; --overwrite recomputes (the CLI's finished-run path:
    tests/test_cli.py)."""
    from crosspatch.errors import RunSettingsMismatchError
    from crosspatch.runner.config import RunConfig
    from crosspatch.runner.resume import refuse_before_loading
    from crosspatch.store import RESULT_RULES

    pair, prompts, out = make_pair("llama", scale=0.2), many_prompts(3), tmp_path / "r"
    options = dict(boundary=2, max_new_tokens=6, bootstrap=0, progress=False, event_kinds="first_diff")
    monkeypatch.setattr("crosspatch.runner.prepare.RESULT_RULES", "2000-01-01")
    old = run(pair, prompts, out=out, **options)
    monkeypatch.undo()
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["fingerprint_inputs"]["result_rules"] == \
        "2000-01-01"
    before = (out / "events.jsonl").read_text(encoding="utf-8")
    config = RunConfig(boundary=2, max_new_tokens=6, bootstrap=0, event_kinds="first_diff")
    with pytest.raises(RunSettingsMismatchError, match=f"older crosspatch.*2000-01-01 -> {RESULT_RULES}"):
        refuse_before_loading(out, prompts, config)
    with pytest.raises(RunSettingsMismatchError, match="older crosspatch"):
        run(pair, prompts, out=out, **options)
    assert (out / "events.jsonl").read_text(encoding="utf-8") == before, "nothing was mixed in"
    again = run(pair, prompts, out=out, overwrite=True, **options)
    assert [r.key for r in again.records] == [r.key for r in old.records]
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["fingerprint_inputs"]["result_rules"] == \
        RESULT_RULES
    run(pair, prompts, out=out, **options)  # this version's run resumes as before


def test_a_workflow_document_of_an_older_crosspatch_is_not_read_back_as_this_versions(tmp_path, monkeypatch):
    from crosspatch.errors import RunSettingsMismatchError
    from crosspatch.workflows.output import fingerprint_of, finished_document

    inputs = {"base": "b", "adapter": "a"}
    monkeypatch.setattr("crosspatch.store.RESULT_RULES", "2000-01-01")
    (tmp_path / "preflight.json").write_text(json.dumps({"fingerprint": fingerprint_of(inputs), "inputs": inputs,
                                                         "passed": True, "checks": []}), encoding="utf-8")
    assert finished_document(tmp_path, "preflight", inputs) is not None
    monkeypatch.undo()
    with pytest.raises(RunSettingsMismatchError, match="another crosspatch"):
        finished_document(tmp_path, "preflight", inputs)


def test_a_workflow_directory_whose_writes_were_cut_short_is_written_again(tmp_path):
    """A workflow writes its pages, then its document (which marks the result done): stopped between
    them (a full disk, a kill), the directory holds its own pages or NAME.tmp files and no result. The
    same command writes it again; a file of anyone else's still makes it refuse the directory."""
    from crosspatch.errors import RunDirectoryNotEmptyError
    from crosspatch.workflows.output import finished_document

    out = tmp_path / "preflight-out"
    out.mkdir()
    for name in ("preflight.md", "preflight.html", "preflight.json.tmp"):
        (out / name).write_text("partial", encoding="utf-8")
    assert finished_document(out, "preflight", {"base": "b"}) is None
    (out / "splice.json.tmp").write_text("partial", encoding="utf-8")  # another workflow's: not this one's
    with pytest.raises(RunDirectoryNotEmptyError, match="holds no preflight result"):
        finished_document(out, "preflight", {"base": "b"})


def test_overwrite_removes_what_later_commands_added_and_nothing_it_did_not_write(tmp_path):
    """A preflight or a feature study added to a run is read back into its summary and reports: an
    overwritten run must not show the old run's (a preflight of another pair passed, say)."""
    from crosspatch.store import RunStore

    pair = make_pair("llama", scale=0.2)
    run(pair, many_prompts(3), boundary=2, max_new_tokens=6, bootstrap=0, progress=False, out=tmp_path / "r")
    # JSON lines of the user's own beside the run (no final line end): never read as records,
    # "repaired" (cut at its last line end) by a resume, or removed by --overwrite
    mine = '{"id": "a", "prompt": "Rain"}\n{"id": "b", "prompt": "Snow"}'
    (tmp_path / "r" / "my_prompts.jsonl").write_text(mine, encoding="utf-8")
    resumed = run(pair, many_prompts(3), boundary=2, max_new_tokens=6, bootstrap=0, progress=False, out=tmp_path / "r")
    assert (tmp_path / "r" / "my_prompts.jsonl").read_text(encoding="utf-8") == mine
    assert "my_prompts" not in resumed.analyses and "events.jsonl" in RunStore(tmp_path / "r").records_files()
    assert set(RunStore(tmp_path / "r").records_files()) == {
        p.name for p in (tmp_path / "r").glob("*.jsonl")} - {"my_prompts.jsonl"}
    added = ["preflight.json", "preflight.md", "preflight.html", "consequence_partial.json", "features/mediate.json",
             "features/crosscoder/config.json", "features/activations_heldout/x.safetensors"]
    for name in added:
        (tmp_path / "r" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "r" / name).write_text("{}")
    (tmp_path / "r" / "notes.txt").write_text("mine")
    (tmp_path / "r" / "features" / "mine.txt").write_text("mine too")
    RunStore(tmp_path / "r").clear()
    left = sorted(str(p.relative_to(tmp_path / "r")) for p in (tmp_path / "r").rglob("*"))
    assert left == ["features", "features/mine.txt", "my_prompts.jsonl", "notes.txt"]
    run(pair, many_prompts(3), boundary=2, max_new_tokens=6, bootstrap=0, progress=False, out=tmp_path / "s")
    (tmp_path / "s" / "features").mkdir()
    for name in ("preflight.json", "features/mediate.json"):  # what a preflight and a feature study left there
        (tmp_path / "s" / name).write_text("{}")
    fresh = run(pair, many_prompts(3), boundary=1, max_new_tokens=6, bootstrap=0, progress=False, out=tmp_path / "s",
                overwrite=True)
    assert "preflight" not in fresh.summary and not (tmp_path / "s" / "features").exists()


@pytest.mark.slow
def test_disk_full_while_writing_is_named_and_the_run_stays_resumable(tmp_path, monkeypatch):
    import errno

    import crosspatch.store.rundir as store_module
    from crosspatch.errors import RunWriteError

    pair = make_pair("llama", scale=0.2)
    prompts = many_prompts(12)
    options = dict(boundary=2, max_new_tokens=6, bootstrap=0, progress=False, batch_size=2, event_kinds="first_diff")
    real_open, calls = open, {"n": 0}

    def full_disk_open(path, mode="r", *args, **kwargs):
        if "a" in mode and str(path).endswith("events.jsonl"):
            calls["n"] += 1
            if calls["n"] == 2:  # the second chunk's records hit a full disk
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(store_module, "open", full_disk_open, raising=False)
    with pytest.raises(RunWriteError, match="No space left on device.*resume"):
        run(pair, prompts, out=tmp_path / "r", **options)
    monkeypatch.undo()
    resumed = run(pair, prompts, out=tmp_path / "r", **options)
    whole = run(pair, prompts, out=tmp_path / "w", **options)
    assert resumed.summary["cost_this_session"]["prompts_processed"] < len(prompts)  # the first chunk was kept
    assert_same_summary(_strip(resumed.summary), _strip(whole.summary))


def test_a_report_cut_short_by_a_full_disk_is_never_left_torn_and_the_same_command_writes_it(saved, tmp_path,
                                                                                                  monkeypatch):
    """Every file of a run is written whole or not at all: a disk that fills while report.html is
    written leaves no half page (which a browser would show as the report) and no temporary
    file; the run is not taken as finished, so the same command again writes its reports."""
    import errno
    from pathlib import Path

    from typer.testing import CliRunner

    from crosspatch.cli import app

    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in many_prompts(6)), encoding="utf-8")
    out = tmp_path / "run"
    args = ["run", "--base", str(saved / "base"), "--tuned", str(saved / "tuned"), "--prompts",
            str(tmp_path / "p.jsonl"), "--out", str(out), "--max-new-tokens", "6", "--bootstrap", "100", "--quiet"]
    real_write_text = Path.write_text

    def disk_fills_halfway(self, data, *a, **k):
        if self.name.startswith("report.html"):
            real_write_text(self, data[: len(data) // 2], *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, data, *a, **k)

    monkeypatch.setattr(Path, "write_text", disk_fills_halfway)
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code == 2 and "RunWriteError" in failed.output and "report.html" in failed.output
    assert not (out / "report.html").exists() and not list(out.glob("*.tmp"))
    monkeypatch.undo()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (out / "report.html").read_text(encoding="utf-8").rstrip().endswith("</html>")


def test_group_by_never_replaces_a_built_in_breakdown():
    pair = make_pair("llama", scale=0.2)
    prompts = [dict(p, split="a" if k % 2 else "b") for k, p in enumerate(many_prompts(8))]
    result = run(pair, prompts, boundary=2, max_new_tokens=6, bootstrap=0, progress=False,
                 group_by=["category", "split"], event_kinds="first_diff")
    block = result.summary["results"]["2"]["common_it"]
    cats = {p["category"] for p in prompts}
    assert set(block["by_category"]) <= cats and block["by_category"]  # still keyed by category
    assert set(block["by_split"]) <= {"a", "b"}
    assert any("--group-by category" in w for w in result.summary["warnings"])


def test_a_group_by_field_whose_groups_are_too_small_for_intervals_warns_before_the_run():
    """A field with about a value per prompt (an id, a city) breaks the run down into groups of one
    or two prompts: a table of points without intervals, named before any model runs."""
    from crosspatch.inputs.prompts import as_prompts
    from crosspatch.runner.checks import check_group_by

    prompts = as_prompts([dict(p, city=f"c{k // 2}", split="ab"[k % 2]) for k, p in enumerate(many_prompts(20))])
    warned = check_group_by(["city", "split"], prompts)
    assert len(warned) == 1 and "--group-by city: 10 value(s) among 20 prompt(s); 20 of them" in warned[0]
    assert check_group_by(["city"], as_prompts([dict(p, city="c0") for p in many_prompts(20)])) == []


def test_group_by_id_or_prompt_is_refused_as_one_prompt_per_group_not_as_a_field_no_prompt_has():
    """``--group-by id`` said "no prompt has a field 'id' (fields present: none besides id, ...)",
    contradicting itself: a prompt's id and text are its own, so each group would be one prompt."""
    from crosspatch.errors import GroupByFieldError
    from crosspatch.inputs.prompts import as_prompts
    from crosspatch.runner.checks import check_group_by

    prompts = as_prompts(many_prompts(6))
    for name in ("id", "prompt"):
        with pytest.raises(GroupByFieldError, match=f"--group-by {name}: every prompt's .* is its own"):
            check_group_by([name], prompts)


def test_a_group_by_field_of_numbers_and_text_is_stored_as_text(tmp_path):
    """A ``--group-by`` field whose values mix numbers and text (``1`` and ``"hard"``) warns before
    the run and is written to the Parquet table as text, instead of failing to write the table
    after every event was computed."""
    import pandas as pd

    pair = make_pair("llama", scale=0.2)
    prompts = [dict(p, difficulty=(k if k % 2 else "hard")) for k, p in enumerate(many_prompts(6))]
    result = run(pair, prompts, boundary=2, max_new_tokens=6, bootstrap=0, progress=False, group_by=["difficulty"],
                 event_kinds="first_diff", controls="none", out=tmp_path / "r")
    assert any("--group-by difficulty" in w and "as text" in w for w in result.summary["warnings"])
    table = pd.read_parquet(tmp_path / "r" / "events.parquet")
    assert len(table) == len(result.records) and table["difficulty"].map(type).eq(str).all()
    assert set(table["difficulty"]) <= {"hard", "1", "3", "5"}
    assert set(result.summary["results"]["2"]["common_it"]["by_difficulty"]) <= {"hard", "1", "3", "5"}


@pytest.mark.slow
def test_a_run_whose_config_was_lost_never_adopts_another_models_records(tmp_path):
    from crosspatch.errors import RunSettingsMismatchError

    prompts = many_prompts(4)
    run(make_pair("llama", scale=0.2), prompts, boundary=2, max_new_tokens=6, bootstrap=0, progress=False,
        out=tmp_path / "r", event_kinds="first_diff")
    (tmp_path / "r" / "config.json").unlink()
    (tmp_path / "r" / "summary.json").unlink()
    other = make_pair("llama", scale=0.2, seed=5)  # another model: another fingerprint
    with pytest.raises(RunSettingsMismatchError):
        run(other, prompts, boundary=2, max_new_tokens=6, bootstrap=0, progress=False, out=tmp_path / "r",
            event_kinds="first_diff")
    # the same model finds its own run again (the marker holds its fingerprint) and finishes it
    again = run(make_pair("llama", scale=0.2), prompts, boundary=2, max_new_tokens=6, bootstrap=0, progress=False,
                out=tmp_path / "r", event_kinds="first_diff")
    assert again.summary["cost_this_session"]["prompts_processed"] == 0


@pytest.mark.slow
def test_a_run_directory_in_use_by_another_process_is_refused_then_free_when_it_ends(tmp_path):
    from crosspatch.store import RunStore

    out = tmp_path / "run"
    pair, prompts = make_pair("llama"), many_prompts(3)
    # another process holds the directory as a running crosspatch run would (RunStore.lock)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from crosspatch.store import RunStore\n"
         "with RunStore(sys.argv[1]).lock():\n    print('held', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryError, match="in use by another crosspatch process"):
            run(pair, prompts, out=out, max_new_tokens=4, bootstrap=0, progress=False)
        assert not any(out.iterdir()), "the refused run wrote nothing"
    finally:
        holder.kill()
        holder.wait(timeout=30)
    result = run(pair, prompts, out=out, max_new_tokens=4, bootstrap=0, progress=False)  # a killed holder leaves no lock
    assert (out / "summary.json").exists() and len(result.records) + len(result.no_divergence) >= 3
    with RunStore(out).lock():  # released when the run returned
        pass


def test_a_file_system_without_locks_still_runs(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    result = run(make_pair("llama"), many_prompts(2), out=tmp_path / "run", max_new_tokens=4, bootstrap=0,
                 progress=False)
    assert (tmp_path / "run" / "summary.json").exists() and result.summary["counts"]["prompts"] == 2


@pytest.mark.parametrize("out", ["", "  ", 123, None])
def test_a_run_directory_is_a_non_empty_path(out):
    """In Python, ``out=""`` would be the working directory and a number no path at all."""
    from crosspatch.errors import RunDirectoryError
    from crosspatch.store import RunStore

    with pytest.raises(RunDirectoryError, match="is a path"):
        RunStore(out)


def test_a_damaged_summary_says_the_runs_command_recomputes_it_and_the_command_does(tmp_path):
    """summary.json is derived from the records: a damaged one is named with the way back (the run's
    command again; `crosspatch report` only renders it), and that command recomputes it from the
    stored records without redoing a prompt."""
    from crosspatch.errors import CorruptRunFileError
    from crosspatch.runner.result import rerender_run

    options = dict(boundary=2, max_new_tokens=4, bootstrap=0, progress=False, controls="none", event_kinds="first_diff",
                   out=tmp_path / "r")
    first = run(make_pair("llama"), many_prompts(3), **options)
    summary = tmp_path / "r" / "summary.json"
    for damage in ('{"counts', '{"schema_version": "%s"}' % first.summary["schema_version"]):
        summary.write_text(damage)
        with pytest.raises(CorruptRunFileError, match=r"the run's command again recomputes it .*`crosspatch report` "
                                                      r"only renders it"):
            rerender_run(tmp_path / "r")
        again = run(make_pair("llama"), many_prompts(3), **options)
        assert again.summary["cost_this_session"]["prompts_processed"] == 0
        assert again.summary["results"] == first.summary["results"]


def test_a_damaged_analysis_records_file_is_named_before_the_run_redoes_a_prompt(tmp_path):
    """A damaged line in an analysis' records is named before a resume redoes any prompt (the run
    reads them at its start), and the command line's check before the models load finds it too; a
    last line cut off by an interruption is no damage to that check (the resume cuts it)."""
    from crosspatch.errors import CorruptRunFileError
    from crosspatch.runner.config import RunConfig
    from crosspatch.runner.resume import refuse_before_loading
    from crosspatch.store import RunStore

    options = dict(boundary=2, max_new_tokens=4, bootstrap=0, progress=False, controls=["hybrid_state"],
                   event_kinds="first_diff", out=tmp_path / "r")
    run(make_pair("llama"), many_prompts(4), **options)
    (tmp_path / "r" / "summary.json").unlink()
    control = tmp_path / "r" / "control_hybrid_state.jsonl"
    lines = control.read_text().splitlines(keepends=True)
    control.write_text(lines[0] + "{damaged\n" + "".join(lines[1:]))
    (tmp_path / "r" / "no_divergence.jsonl").unlink(missing_ok=True)  # prompts left to redo
    events = "".join((tmp_path / "r" / "events.jsonl").read_text().splitlines(keepends=True)[:1])
    (tmp_path / "r" / "events.jsonl").write_text(events)
    with pytest.raises(CorruptRunFileError, match="control_hybrid_state.jsonl:2: .*a line inside the file is damaged"):
        run(make_pair("llama"), many_prompts(4), **options)
    assert (tmp_path / "r" / "events.jsonl").read_text() == events
    config = RunConfig(boundary=2, max_new_tokens=4, bootstrap=0, controls=["hybrid_state"], event_kinds="first_diff")
    with pytest.raises(CorruptRunFileError, match="control_hybrid_state.jsonl:2: .*a line inside the file is damaged"):
        refuse_before_loading(tmp_path / "r", many_prompts(4), config)
    control.write_text(lines[0] + '{"key": "cu')
    refuse_before_loading(tmp_path / "r", many_prompts(4), config)
    RunStore(tmp_path / "r").check_records(torn_tails=True)
    with pytest.raises(CorruptRunFileError, match="the last line was cut off"):
        RunStore(tmp_path / "r").check_records()
    # a whole line of the wrong shape: a key that is a list (readers de-duplicate by key)
    tagged = json.loads(lines[0])
    control.write_text(json.dumps({**tagged, "key": ["p0"]}) + "\n" + "".join(lines[1:]))
    with pytest.raises(CorruptRunFileError, match=r"control_hybrid_state.jsonl:1: a record whose key is not a value"):
        RunStore(tmp_path / "r").load_rows("control_hybrid_state.jsonl")
    # a value of the wrong type that only the analysis' summary reads: named, pointing at the stored records
    from crosspatch.errors import AnalysisPluginError

    control.write_text(json.dumps({**tagged, "reconstruction_error": "small"}) + "\n" + "".join(lines[1:]))
    with pytest.raises(AnalysisPluginError, match="hybrid_state.*summarize.*stored records may be damaged"):
        run(make_pair("llama"), many_prompts(4), **options)


def test_a_damaged_line_inside_events_jsonl_is_not_blamed_on_an_interruption(tmp_path):
    from crosspatch.errors import CorruptRunFileError
    from crosspatch.runner.pipeline import run
    from crosspatch.store import RunStore, settings_diff
    from crosspatch.testing import make_pair

    run(make_pair("llama"), many_prompts(4), boundary=2, max_new_tokens=4, bootstrap=0, progress=False,
        controls="none", event_kinds="first_diff", out=tmp_path / "r")
    events = tmp_path / "r" / "events.jsonl"
    lines = events.read_text().splitlines(keepends=True)
    events.write_text(lines[0] + "{broken\n" + "".join(lines[1:]))
    with pytest.raises(CorruptRunFileError, match="a line inside the file is damaged") as info:
        RunStore(tmp_path / "r").load_records()
    assert "events.jsonl:2" in str(info.value)
    assert settings_diff({"boundaries": None}, {"boundaries": [2, 4]}) == ["boundaries: not given -> [2, 4]"]
    assert settings_diff({"files": {"config.json": "a" * 64}}, {"files": {"config.json": "b" * 64}}) == [
        "files.config.json: sha256 aaaaaaaaaaaa… -> sha256 bbbbbbbbbbbb…"]  # a digest shortened, not cut at 80
    # a model given on one side only is "given", not its record cut mid-JSON; a long value ends in "…"
    assert settings_diff({"adapter": None}, {"adapter": {"weights": {"a.safetensors": "c" * 64}}}) == [
        "adapter: not given -> given"]
    long = json.dumps(["x"] * 40)  # 200 characters
    assert settings_diff({"words": ["x"] * 40}, {"words": ["y"]}) == [f'words: {long[:79]}… -> ["y"]']


@pytest.mark.slow
def test_a_run_begun_in_python_resumes_on_the_command_line_and_one_begun_there_in_python(tmp_path):
    """The command line names the descendant it scores (``tuned``); Python left it unsaid for a
    set's only descendant: one run either way, whichever began it (runs recorded before both
    were named the same resume too)."""
    from typer.testing import CliRunner

    from crosspatch.cli import app
    from crosspatch.execution import load_pair
    from crosspatch.store.identity import fingerprint

    root = save_tiny_pair(tmp_path / "m")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in many_prompts(6)))
    settings = dict(boundary=2, max_new_tokens=6, bootstrap=0, controls="none", progress=False)
    cli = ["run", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--prompts", str(prompts),
           "--boundary", "2", "--max-new-tokens", "6", "--bootstrap", "0", "--controls", "none", "--quiet", "--out"]
    python_run = run(load_pair(str(root / "base"), tuned=str(root / "tuned")), str(prompts), out=tmp_path / "py",
                     **settings)
    (tmp_path / "py" / "summary.json").unlink()  # as if stopped before its summary: the command resumes it
    resumed = CliRunner().invoke(app, [*cli, str(tmp_path / "py")])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((tmp_path / "py" / "summary.json").read_text())["counts"] == python_run.summary["counts"]
    assert CliRunner().invoke(app, [*cli, str(tmp_path / "cli")]).exit_code == 0
    (tmp_path / "cli" / "summary.json").unlink()
    again = run(load_pair(str(root / "base"), tuned=str(root / "tuned")), str(prompts), out=tmp_path / "cli", **settings)
    assert again.summary["counts"] == python_run.summary["counts"]
    # a run begun in Python by an earlier crosspatch recorded the descendant as unsaid (None)
    config = json.loads((tmp_path / "py" / "config.json").read_text())
    config["options"]["tuned"] = config["fingerprint_inputs"]["options"]["tuned"] = None
    config["run_fingerprint"] = fingerprint(config["fingerprint_inputs"])
    config["fingerprint"] = fingerprint({"run": config["run_fingerprint"], "shard": None})
    (tmp_path / "py" / "config.json").write_text(json.dumps(config))
    (tmp_path / "py" / ".crosspatch-run").write_text(json.dumps({"fingerprint": config["fingerprint"]}) + "\n")
    for records in (tmp_path / "py").glob("*.jsonl"):  # its records carry that name
        records.write_text("".join(json.dumps({**json.loads(line), "run": config["fingerprint"]}) + "\n"
                                   for line in records.read_text().splitlines()))
    (tmp_path / "py" / "summary.json").unlink()
    resumed = CliRunner().invoke(app, [*cli, str(tmp_path / "py")])
    assert resumed.exit_code == 0, resumed.output
    now = json.loads((tmp_path / "py" / "config.json").read_text())["fingerprint"]
    assert {json.loads(line)["run"] for line in (tmp_path / "py" / "events.jsonl").read_text().splitlines()} == {now}
    assert json.loads((tmp_path / "py" / "summary.json").read_text())["counts"] == python_run.summary["counts"]
