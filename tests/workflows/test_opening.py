"""``crosspatch.open_run`` on the practitioner workflows' directories: a preflight's and a
splice's output open as the results the commands returned, from their JSON alone."""

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
    # commands that read a run (gate, report) name such a directory for what it is
    from typer.testing import CliRunner

    from crosspatch.cli import app

    (tmp_path / "splice" / "crosspatch").mkdir()
    (tmp_path / "splice" / "crosspatch" / "config.json").write_text("{}")  # (the diagnostic's run directory)
    for name, says in (("preflight", "`crosspatch preflight` itself exits 1 when a check fails"),
                       ("splice", f"the run directories inside: {tmp_path / 'splice' / 'crosspatch'}")):
        for command in ("gate", "report"):
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


def test_a_preflight_written_into_a_run_directory_opens_as_the_run(tmp_path):
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    run(make_pair("llama"), [{"id": f"p{k}", "prompt": f"Rain in city {k}"} for k in range(3)], boundary=2,
        max_new_tokens=4, bootstrap=0, progress=False, out=tmp_path / "run")
    (tmp_path / "run" / "preflight.json").write_text(json.dumps(PREFLIGHT))
    assert isinstance(crosspatch.open_run(tmp_path / "run"), RunResult)
