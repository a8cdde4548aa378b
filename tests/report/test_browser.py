"""The HTML report in a real browser (headless Chromium): it loads with no console error, its
screenshot is not blank, and the event explorer's filter changes the visible rows."""

from __future__ import annotations

import re

import pytest

from crosspatch.report.browser import find_chromium, load, screenshot

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no chromium binary (the CI script installs Debian's chromium with apt)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    from ..test_store import many_prompts

    out = tmp_path_factory.mktemp("browser") / "r"
    prompts = many_prompts(12)
    prompts[0]["category"] = "<script>alert(1)</script>"
    run(make_pair("llama", scale=0.5), prompts, boundaries=[1, 2], max_new_tokens=8, bootstrap=100,
        progress=False, out=out)
    return out / "report.html"


def _visible_rows(dom: str) -> tuple[int, int]:
    rows = re.findall(r'<tr class="event-row"[^>]*>', dom)
    return sum("hidden" not in r for r in rows), len(rows)


@pytest.mark.slow
def test_report_loads_without_console_errors(report):
    dom, errors = load(report)
    assert errors == []
    shown, total = _visible_rows(dom)
    assert total > 0 and shown == total
    assert re.search(r'id="shown-count">\d+ of \d+ events match, \d+ shown<', dom)  # the script ran


@pytest.mark.slow
def test_explorer_filter_changes_the_visible_rows(report):
    dom, _ = load(report)
    categories = sorted(set(re.findall(r'<tr class="event-row" data-category="([^"]*)"', dom)))
    assert len(categories) > 1
    shown, total = _visible_rows(load(report, f"category={categories[-1]}")[0])
    assert 0 < shown < total
    shown_late, _ = _visible_rows(load(report, "position=10000")[0])
    assert shown_late == 0


def _shown(dom: str) -> list[dict]:
    rows = re.findall(r'<tr class="event-row"([^>]*)>', dom)
    return [dict(re.findall(r'data-([a-z]+)="([^"]*)"', r)) for r in rows if "hidden" not in r]


@pytest.mark.slow
def test_explorer_pages_and_sorts_one_row_per_event(report):
    dom, _ = load(report)
    every = _shown(dom)
    assert len({(r["prompt"], r["position"]) for r in every}) == len(every)  # one row per event
    assert len(every) > 5
    pages = -(-len(every) // 5)
    first = _shown(load(report, "size=5")[0])
    assert len(first) == 5 and f'id="page-info">page 1 of {pages}<' in load(report, "size=5")[0]
    second = _shown(load(report, "size=5&page=2")[0])
    assert len(second) == min(5, len(every) - 5) and not {r["order"] for r in first} & {r["order"] for r in second}
    ranked = _shown(load(report, "sort=interaction&dir=desc&size=500")[0])
    values = [float(r["interaction"]) for r in ranked]
    assert values == sorted(values, reverse=True) and len(ranked) == len(every)
    up = [int(r["position"]) for r in _shown(load(report, "sort=position&dir=asc&size=500")[0])]
    assert up == sorted(up)
    kinds = sorted({k for r in every for k in r["kinds"].split()})
    for kind in kinds:  # an event with several kinds counts under each of them
        assert all(kind in r["kinds"].split() for r in _shown(load(report, f"kind={kind}&size=500")[0]))


def test_screenshot_is_not_blank(report, tmp_path):
    import numpy as np
    from matplotlib.image import imread

    png = screenshot(report, tmp_path / "shot.png", height=900)
    pixels = imread(png)
    assert pixels.shape[0] > 100 and float(np.std(pixels[..., :3])) > 0.02
