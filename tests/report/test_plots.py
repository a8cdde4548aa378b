"""Plots drawn from a stored summary."""

from __future__ import annotations

import re

from crosspatch.report.plots import plot_sweep, sweep_svg


def _sweep_summary(boundaries=(1, 2, 3, 4, 5)) -> dict:
    effect = {"mean": 1.0, "ci": [0.5, 1.5]}
    block = {"all": {"effects": {"E_PT": effect, "E_IT": effect, "interaction": effect}}}
    return {"boundaries": list(boundaries), "num_layers": 6,
            "results": {str(b): {"common_it": block} for b in boundaries}}


def test_the_sweep_in_the_html_and_in_its_files_marks_whole_layers_only(tmp_path):
    """Boundaries are layers: the HTML's sweep had ticks at 1.5, 2.5, ... (only the PNG/SVG
    files asked for whole numbers); one drawing serves both now."""
    inline = sweep_svg(_sweep_summary())
    plot_sweep(_sweep_summary(), tmp_path)
    for svg in (inline, (tmp_path / "sweep.svg").read_text()):
        assert "boundary layer b (of 6)" in svg
        assert not re.search(r"<!-- \d+\.5 -->", svg)  # matplotlib names each tick label in a comment
        assert re.search(r"<!-- 3 -->", svg)
