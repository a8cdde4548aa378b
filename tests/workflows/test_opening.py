"""``crosspatch.open_run`` on the practitioner workflows' directories: a preflight's, a splice's
and a merge-check's output open as the results the commands returned, from their JSON alone."""

from __future__ import annotations

import json

import pytest

import crosspatch
from crosspatch.errors import CorruptRunFileError, NotARunDirectoryError
from crosspatch.runner.result import RunResult
from crosspatch.workflows.preflight_policy import PreflightResult
from crosspatch.workflows.splice import SpliceResult

PREFLIGHT = {"passed": False, "inputs": {"base": "b", "adapter": "a"},
             "checks": [{"name": "adapter-active", "status": "fail", "summary": "B = 0", "causes": []}]}
SPLICE = {"prompts": {"count": 2}, "boundaries": {"3": {"chimeras": {
    "tuned early + tuned late": {"validator_pass_rate": None, "same_as_tuned": 1.0}}}}}


def test_a_preflight_or_splice_directory_opens_as_its_result(tmp_path):
    for name, document, kind in (("preflight", PREFLIGHT, PreflightResult), ("splice", SPLICE, SpliceResult)):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.json").write_text(json.dumps(document))
        opened = crosspatch.open_run(tmp_path / name)
        assert isinstance(opened, kind) and opened.document == document and opened.out == tmp_path / name
    assert crosspatch.open_run(tmp_path / "preflight").failed() == ["adapter-active"]
    # gate, which reads a run, names such a directory for what it is (report renders its pages: below)
    from typer.testing import CliRunner

    from crosspatch.cli import app

    (tmp_path / "splice" / "crosspatch").mkdir()
    (tmp_path / "splice" / "crosspatch" / "config.json").write_text("{}")  # (the diagnostic's run directory)
    for name, says in (("preflight", "`crosspatch preflight` itself exits 1 when a check fails"),
                       ("splice", f"the run directories inside: {tmp_path / 'splice' / 'crosspatch'}")):
        for command in ("gate",):
            res = CliRunner().invoke(app, [command, str(tmp_path / name)])
            assert res.exit_code == 2 and f"holds the output of crosspatch {name} ({name}.json), not a run" in res.output
            assert says in " ".join(res.output.split()), res.output
    (tmp_path / "preflight" / "preflight.json").write_text('{"passed": true}')
    with pytest.raises(CorruptRunFileError, match="not a crosspatch preflight document.*checks: Field required"):
        crosspatch.open_run(tmp_path / "preflight")
    for damaged in ({**SPLICE, "prompts": None}, {**SPLICE, "boundaries": {"3": {"chimeras": {"x": {}}}}},
                    {**SPLICE, "boundaries": {**SPLICE["boundaries"], "4": {"chimeras": {}}}}):
        (tmp_path / "splice" / "splice.json").write_text(json.dumps(damaged))
        with pytest.raises(CorruptRunFileError, match="not a crosspatch splice document"):
            crosspatch.open_run(tmp_path / "splice")
    (tmp_path / "splice" / "splice.json").write_text("{oops")
    with pytest.raises(CorruptRunFileError, match=r"splice.json is not valid JSON"):
        crosspatch.open_run(tmp_path / "splice")
    with pytest.raises(NotARunDirectoryError):
        crosspatch.open_run(tmp_path)


MERGE_SPLICE = {"inputs": {"config": "..."}, "method": "passthrough", "kind": "splice", "base": "b",
                "plan": {"early": "b", "late": "t", "boundary": 4, "num_layers": 6},
                "this_chimera": "base early + tuned late", "receives": "the tuned model's layers 4..5 would receive <b>",
                "validator_pass_rate": 0.25, "same_as_tuned": 0.0, "diagnostic": None, "verdict": "portable"}
MERGE_WEIGHTS = {"inputs": {"config": "..."}, "method": "ties", "kind": "weights", "base": "b", "parents": ["t", "u"],
                 "preflight": {"passed": True, "checks": [{"name": "merged-changes", "status": "pass", "summary": "ok"}]},
                 "diagnostic": {"merge": {"verdict": "portable", "boundary": 2, "model": None}}}


def test_a_merge_check_directory_opens_as_the_dict_the_command_returned(tmp_path):
    """merge_check returned a plain dict and open_run named its directory "not a run": both are a
    MergeCheckResult now, the document itself (a dict) with a notebook card of its page's
    sections, every text escaped; a damaged document, or one lacking its kind's keys, is named."""
    from crosspatch.workflows.merge_result import MergeCheckResult

    for name, document, says in (("mc1", MERGE_SPLICE, "passthrough: base early + tuned late at layer 4"),
                                 ("mc2", MERGE_WEIGHTS, "ties: preflight pass, the merge's verdict portable")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "merge-check.json").write_text(json.dumps(document))
        opened = crosspatch.open_run(tmp_path / name)
        assert isinstance(opened, MergeCheckResult) and opened == document and opened.out == tmp_path / name
        assert says in repr(opened) and opened.kind == document["kind"]
        card = opened._repr_html_()
        assert f"{tmp_path / name}/merge-check.html" in card and "<b>crosspatch merge-check" in card
    assert "would receive &lt;b&gt;" in crosspatch.open_run(tmp_path / "mc1")._repr_html_()
    for damaged in ({k: v for k, v in MERGE_SPLICE.items() if k != "plan"}, {**MERGE_WEIGHTS, "kind": "other"},
                    {**MERGE_WEIGHTS, "preflight": {"passed": True}}, {**MERGE_WEIGHTS, "diagnostic": {"merge": 5}},
                    {**MERGE_WEIGHTS, "diagnostic": None}):
        (tmp_path / "mc1" / "merge-check.json").write_text(json.dumps(damaged))
        with pytest.raises(CorruptRunFileError, match="not a crosspatch merge-check document"):
            crosspatch.open_run(tmp_path / "mc1")


def test_a_damaged_finished_document_is_named_when_the_same_command_reads_it_back(tmp_path):
    """The same command again reads its finished document back: one damaged with its fingerprint
    intact (checks of null) surfaced a TypeError as the result was printed."""
    from crosspatch.workflows.output import fingerprint_of, finished_document

    inputs = {"base": "b", "adapter": "a"}
    (tmp_path / "pf").mkdir()
    (tmp_path / "pf" / "preflight.json").write_text(json.dumps({**PREFLIGHT, "inputs": inputs,
                                                                "fingerprint": fingerprint_of(inputs)}))
    assert finished_document(tmp_path / "pf", "preflight", inputs)["checks"] == PREFLIGHT["checks"]
    (tmp_path / "pf" / "preflight.json").write_text(json.dumps({**PREFLIGHT, "inputs": inputs, "checks": None,
                                                                "fingerprint": fingerprint_of(inputs)}))
    with pytest.raises(CorruptRunFileError, match="not a crosspatch preflight document.*checks"):
        finished_document(tmp_path / "pf", "preflight", inputs)


def test_a_preflight_written_into_a_run_directory_opens_as_the_run(tmp_path):
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    run(make_pair("llama"), [{"id": f"p{k}", "prompt": f"Rain in city {k}"} for k in range(3)], boundary=2,
        max_new_tokens=4, bootstrap=0, progress=False, out=tmp_path / "run")
    (tmp_path / "run" / "preflight.json").write_text(json.dumps(PREFLIGHT))
    assert isinstance(crosspatch.open_run(tmp_path / "run"), RunResult)


def test_report_renders_a_workflow_directory_again_with_the_runs_inside_it(tmp_path):
    """`crosspatch report` on a preflight's, splice's or merge-check's directory said "not a run":
    their pages are rendered again from the stored document, and so are the runs inside (a
    merge-check's runs/, a splice's diagnostic), `--check` checking those runs' reports; a document
    its pages cannot be rendered from is named."""
    from typer.testing import CliRunner

    from crosspatch.cli import app
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    (tmp_path / "pf").mkdir()
    (tmp_path / "pf" / "preflight.json").write_text(json.dumps(
        {**PREFLIGHT, "inputs": {**PREFLIGHT["inputs"], "merged": None, "max_new_tokens": 8, "dtype": "float32"},
         "prompts": {"count": 2, "source": "p.jsonl"}}))
    res = CliRunner().invoke(app, ["report", str(tmp_path / "pf")])
    assert res.exit_code == 0 and "FAIL: base b, adapter a" in (tmp_path / "pf" / "preflight.md").read_text()
    assert "B = 0" in (tmp_path / "pf" / "preflight.html").read_text()
    (tmp_path / "mc" / "runs").mkdir(parents=True)
    (tmp_path / "mc" / "merge-check.json").write_text(json.dumps(MERGE_WEIGHTS))
    run(make_pair("llama"), [{"id": f"p{k}", "prompt": f"Rain in city {k}"} for k in range(3)], boundary=2,
        max_new_tokens=4, bootstrap=0, progress=False, out=tmp_path / "mc" / "runs" / "merge")
    (tmp_path / "mc" / "runs" / "merge" / "report.md").unlink()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "mc"), "--check"])
    output = " ".join(res.output.split())
    assert res.exit_code == 0 and "every printed number comes from the stored data" in output, output
    assert (tmp_path / "mc" / "runs" / "merge" / "report.md").is_file()
    assert "The merge and its parents" in (tmp_path / "mc" / "merge-check.md").read_text()
    (tmp_path / "pf" / "preflight.json").write_text(json.dumps(PREFLIGHT))  # (no prompts: its page reads them)
    res = CliRunner().invoke(app, ["report", str(tmp_path / "pf")])
    assert res.exit_code == 2 and "CorruptRunFileError" in res.output and "cannot be rendered" in res.output


def test_a_splice_document_its_pages_cannot_be_rendered_from_is_named(tmp_path):
    """A chimera with fewer continuations than the splice has prompts, or an interval of one end, is
    named as the document's damage (a CorruptRunFileError), not an IndexError."""
    from typer.testing import CliRunner

    from crosspatch.cli import app

    output = {"prompt": "p0", "text": "rain", "tokens": 1, "departs_from_tuned": None, "ended": False}
    chimera = {"early": "tuned", "late": "tuned", "validator_pass_rate": None, "validated": 0, "same_as_tuned": 1.0,
               "median_departure": None, "outputs": [output, {**output, "prompt": "p1"}]}
    whole = {**SPLICE, "inputs": {"base": "b", "tuned": "t", "adapter": None, "max_new_tokens": 4, "dtype": "float32"},
             "num_layers": 6, "prompts": {"count": 2, "ids": ["p0", "p1"]},
             "boundaries": {"3": {"chimeras": {"tuned early + tuned late": chimera}}}}
    (tmp_path / "splice").mkdir()
    (tmp_path / "splice" / "splice.json").write_text(json.dumps(whole))
    assert CliRunner().invoke(app, ["report", str(tmp_path / "splice")]).exit_code == 0
    short = {**chimera, "outputs": [output]}
    one_end = {"n_events": 3, "E_PT": {"mean": 0.1, "ci": [0.0]}, "E_IT": {"mean": 0.2, "ci": None},
               "interaction": {"mean": 0.1, "ci": None}}
    for damaged in ({**whole, "boundaries": {"3": {"chimeras": {"tuned early + tuned late": short}}}},
                    {**whole, "diagnostic": {"3": one_end, "verdict": None, "reason": None}}):
        (tmp_path / "splice" / "splice.json").write_text(json.dumps(damaged))
        res = CliRunner().invoke(app, ["report", str(tmp_path / "splice")])
        assert res.exit_code == 2 and "CorruptRunFileError" in res.output, (res.exception, res.output)
