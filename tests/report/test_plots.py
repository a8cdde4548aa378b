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


def test_the_heatmap_title_fits_its_drawing():
    """The 2x2 heatmap's title was wider than its SVG and cut at both ends in the report
    ("mean Y per cell, boundary 4 (common-"): measured with the bold sans-serif face a browser
    draws it in, it lies within the drawing."""
    import pytest

    from crosspatch.report.plots import cells_heatmap_svg

    font = pytest.importorskip("PIL.ImageFont")
    try:
        face = font.truetype("DejaVuSans-Bold.ttf", 11)
    except OSError:
        pytest.skip("no DejaVu Sans Bold font to measure with")
    cell = {"mean": 1.0}
    title = "mean Y per cell, boundary 23 (common-IT)"
    svg = cells_heatmap_svg({"cells": dict.fromkeys(("upt_lpt", "upt_lit", "uit_lpt", "uit_lit"), cell)}, title)
    width = float(re.search(r'<svg [^>]*width="([\d.]+)"', svg).group(1))
    x = float(re.search(r'<text x="([\d.]+)"[^>]*font-weight="bold"', svg).group(1))
    half = face.getlength(title) / 2
    assert x - half >= 0 and x + half <= width
