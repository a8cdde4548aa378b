"""Layer sweep: every boundary from one capture, equal to single-boundary runs, plotted."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from crosspatch.cli import app
from crosspatch.core.cells import CELLS, READOUTS
from crosspatch.runner.pipeline import run
from crosspatch.testing import make_pair

from .conftest import PROMPTS


@pytest.mark.slow
def test_sweep_equals_separate_boundary_runs(tmp_path):
    pair = make_pair("qwen2", layers=5, scale=0.2)
    sweep = run(pair, PROMPTS, boundaries="all", max_new_tokens=10, bootstrap=100, progress=False,
                out=tmp_path / "sweep")
    assert sweep.summary["boundaries"] == ["1", "2", "3", "4"]
    for b in (1, 3):
        single = run(pair, PROMPTS, boundary=b, max_new_tokens=10, bootstrap=100, progress=False)
        got = [r for r in sweep.records if r.boundary == b]
        assert len(got) == len(single.records)
        for x, y in zip(got, single.records):
            for n in READOUTS:
                for c in CELLS:
                    assert abs(x.cells[n][c] - y.cells[n][c]) <= 1e-5
    for name in ("sweep.png", "sweep.svg", "report.md"):
        assert (tmp_path / "sweep" / name).exists()
    assert "![layer sweep](sweep.png)" in (tmp_path / "sweep" / "report.md").read_text()


def test_sweep_cost_stays_near_the_lower_bound():
    pair = make_pair("llama", layers=6, scale=0.2)
    result = run(pair, PROMPTS, boundaries="all", max_new_tokens=24, bootstrap=0, progress=False)
    cost = result.summary["cost_this_session"]
    lower_bound = 2 + (6 - 1)  # search (one pass of each model) + late passes over all boundaries
    assert cost["fe_per_event"] is not None
    # no-divergence prompts add work without events; restrict the check to a run where all diverge
    if result.summary["counts"]["events"] == len(PROMPTS):
        assert cost["fe_per_event"] <= 1.3 * lower_bound


@pytest.mark.slow
def test_sweep_command(tmp_path):
    from crosspatch.testing import save_tiny_pair

    save_tiny_pair(tmp_path, scale=0.3)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    res = CliRunner().invoke(app, ["sweep", "--base", str(tmp_path / "base"), "--tuned", str(tmp_path / "tuned"),
                                   "--prompts", str(prompts), "--out", str(tmp_path / "run"),
                                   "--max-new-tokens", "8", "--bootstrap", "100", "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["boundaries"] == ["1", "2", "3"]
    assert (tmp_path / "run" / "sweep.png").stat().st_size > 1000


def test_sweep_headline_is_the_boundary_nearest_to_the_given_boundary(tmp_path):
    pair = make_pair("llama", layers=5, scale=0.2)
    default = run(pair, PROMPTS[:3], boundaries=[1, 2, 3, 4], max_new_tokens=6, bootstrap=0, progress=False)
    assert default.summary["verdict"]["boundary"] == 3  # round(0.6 * 5)
    chosen = run(pair, PROMPTS[:3], boundaries=[1, 2, 4], boundary=1, max_new_tokens=6, bootstrap=0,
                 progress=False, out=tmp_path / "run")
    assert chosen.summary["verdict"]["boundary"] == 1
    hybrid = [json.loads(line) for line in (tmp_path / "run" / "control_hybrid_state.jsonl").read_text().splitlines()]
    assert hybrid and {row["boundary"] for row in hybrid} == {1}
    # between two boundaries: the lower one
    assert run(pair, PROMPTS[:3], boundaries=[2, 4], boundary=3, max_new_tokens=6, bootstrap=0,
               progress=False).summary["verdict"]["boundary"] == 2


def test_a_boundary_beside_boundaries_must_be_valid_too():
    from crosspatch.errors import BoundaryError

    pair = make_pair("llama", layers=5, scale=0.2)
    with pytest.raises(BoundaryError):
        run(pair, PROMPTS[:3], boundaries="all", boundary=9, max_new_tokens=6, bootstrap=0, progress=False)


@pytest.mark.parametrize("boundaries", [3, 0.5, True])
def test_boundaries_given_as_one_number_are_a_boundary_error_saying_how_to_give_one(boundaries):
    """``boundaries=3`` (a number, not a list) was a TypeError from inside the check."""
    from crosspatch.errors import BoundaryError
    from crosspatch.runner.checks import validate_run_options
    from crosspatch.runner.config import RunConfig

    with pytest.raises(BoundaryError, match=r"for one boundary, give boundary="):
        validate_run_options(RunConfig(boundaries=boundaries))


def test_under_a_common_pt_policy_the_sweep_histogram_and_explorer_read_the_verdicts_readout(tmp_path, capsys):
    """A verdict decided on the common-PT readout sat beside a sweep (table, plot), a histogram of
    per-event interactions, an event explorer and each boundary's cells, effects plot and breakdowns
    all read on common-IT. Each follows the verdict's readout and names it; a default run keeps common-IT."""
    import re

    import torch

    from crosspatch.core.records import cell_effects
    from crosspatch.execution import pair_from_models
    from crosspatch.testing import tiny_pair

    base, tuned, tokenizer = tiny_pair("llama", layers=4, scale=0.5)
    with torch.no_grad():  # its own head: the two readouts differ
        tuned.lm_head.weight.add_(torch.randn(tuned.lm_head.weight.shape, generator=torch.Generator().manual_seed(3))
                                  * tuned.lm_head.weight.std())
    pair = pair_from_models(base, tuned, tokenizer)
    options = dict(boundaries="1,2", max_new_tokens=4, bootstrap=0, progress=False, controls="none",
                   event_kinds="first_diff")
    result = run(pair, PROMPTS[:4], out=tmp_path / "pt", policy={"readout": "common_pt"}, **options)
    markdown = (tmp_path / "pt" / "report.md").read_text()
    sweep = markdown.split("## Layer sweep (common-PT)")[1].split("##")[0]
    for b in ("1", "2"):
        means = {readout: result.summary["results"][b][readout]["all"]["effects"]["interaction"]["mean"]
                 for readout in ("common_pt", "common_it")}
        assert f"{means['common_pt']:+.2f}" != f"{means['common_it']:+.2f}"
        shown = re.escape(f"{means['common_pt']:+.2f}")
        assert re.search(rf"^\| {b} \| \d+ \| .* \| {shown} \|$", sweep, re.M), sweep
    page = (tmp_path / "pt" / "report.html").read_text()
    assert "(first divergence, common-PT)" in page and "interaction (common-PT)</th>" in page
    # each boundary's cells (heatmap, table), effects plot and breakdowns too, and the console's sweep table
    assert "Layer sweep (common-PT)</h2>" in page and "mean Y per cell, boundary 2 (common-PT)" in page
    assert "boundary 2 (common-PT): effects" in page and "By category (common-PT)" in page
    assert "per cell, common-PT readout (the verdict's)" in markdown and "# By category (common-PT)" in markdown
    assert "common-IT" not in markdown.split("## Boundary layer 1")[1].split("Warnings")[0].replace(
        "common-IT readout |", "")  # (the effects table's column of the other readout)
    from crosspatch.cli.app import print_summary_table

    print_summary_table(result.summary)
    assert "layer sweep, common-PT readout" in " ".join(capsys.readouterr().out.split())
    head = [r for r in result.records if r.boundary == 2 and r.valid]
    shown = sorted(float(x) for x in re.findall(r'data-interaction="([-0-9.]+)"', page))
    assert shown == pytest.approx(sorted(cell_effects(r.cells["common_pt"])["interaction"] for r in head), abs=1e-6)
    run(pair, PROMPTS[:4], out=tmp_path / "it", **options)
    assert "## Layer sweep (common-IT)" in (tmp_path / "it" / "report.md").read_text()
    assert "interaction (common-IT)</th>" in (tmp_path / "it" / "report.html").read_text()
