"""Every number a report prints comes from the stored data: `crosspatch report --check`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from crosspatch.cli import app
from crosspatch.report.check import check_report, printed_numbers
from crosspatch.runner.pipeline import run
from crosspatch.testing import make_pair

from ..test_store import many_prompts


@pytest.fixture(scope="module")
def checked_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("check") / "run"
    run(make_pair("llama", perturb=[1, 2, 3], scale=1.0), many_prompts(12), boundaries=[1, 2, 3], max_new_tokens=8,
        bootstrap=200, progress=False, out=out, controls="all")
    return out


@pytest.mark.slow
def test_every_number_in_both_reports_comes_from_the_stored_data(checked_run):
    assert check_report(checked_run) == []
    res = CliRunner().invoke(app, ["report", str(checked_run), "--check"])
    assert res.exit_code == 0 and "every printed number comes from the stored data" in res.output


@pytest.mark.slow
def test_a_number_the_data_does_not_hold_is_found(checked_run, tmp_path):
    import shutil

    run_dir = tmp_path / "r"
    shutil.copytree(checked_run, run_dir)
    md = run_dir / "report.md"
    md.write_text(md.read_text() + "\nThe interaction is +7.77 [+7.01, +8.52] logits.\n")
    assert check_report(run_dir) == ["report.md: +7.01", "report.md: +7.77", "report.md: +8.52"]


def test_names_tokens_and_paths_are_not_numbers():
    assert printed_numbers("t_IT top-1 L0 p7 run-3 /tmp/x2 3.5x 2x2") == []
    assert printed_numbers("E_PT +1.02 [+0.67, -1.37], 48%, n=1,234 and 5") == ["+1.02", "+0.67", "-1.37", "48%",
                                                                               "1,234", "5"]


def test_a_check_that_crashes_exits_unusable_not_with_its_finding(monkeypatch, tmp_path):
    """``report --check`` exits 1 for a number the stored data does not back; a crash of crosspatch
    (Python's exit code 1) must not read as that finding: it exits 2 with its traceback."""
    import crosspatch.workflows.rerender as rerender

    def crash(*_args, **_kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(rerender, "rerender_workflow", crash)
    res = CliRunner().invoke(app, ["report", str(tmp_path), "--check"])
    assert res.exit_code == 2 and "Traceback" in res.stderr and "crosspatch report --check failed" in res.stderr
    res = CliRunner().invoke(app, ["report", str(tmp_path)])  # (without --check: a crash as any command's)
    assert isinstance(res.exception, IndexError)
