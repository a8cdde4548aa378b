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


def test_model_text_is_drawn_as_written_in_the_svg_and_never_as_a_formula_by_matplotlib(tmp_path):
    """A category 'cost $5 \\ day' was labelled 'cost \\$5 \\\\ day' in the report's forest plot
    (matplotlib's mathtext escaping applied to a hand-written SVG); a lineage stage named with
    '$...$' was drawn as a formula, and '$\\q$' stopped the plot at saving."""
    import html

    from crosspatch.report.collections import plot_lineage
    from crosspatch.report.plots import forest_svg

    effect = {"mean": 1.0, "ci": [0.5, 1.5]}
    block = {"effects": {"E_PT": effect, "E_IT": effect, "interaction": effect}}
    svg = forest_svg([("cost $5 \\ day", block)], "by category")
    assert html.escape("cost $5 \\ day: E_PT") in svg and "\\$" not in svg
    stat = {"mean": 0.5, "ci": [0.1, 0.9]}
    stages = ["sft $\\q$", "dpo $x$"]
    summary = {"stages": stages, "by_stage": {s: {k: stat for k in ("native_shift", "E_IT", "E_PT", "interaction")}
                                              for s in stages}}
    plot_lineage(summary, tmp_path)
    assert (tmp_path / "lineage.png").stat().st_size > 0
