"""docs/benchmarks.md is rendered, never edited by hand: every table comes from the stored results
(docs/benchmarks/*.json) and every paragraph from docs/benchmarks/findings.md, so a number on the
page is one the benchmark measured, and the next render loses nothing written beside them."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_page_is_the_rendering_of_the_stored_results_and_findings(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from render_benchmarks import render_markdown

    stored = (json.loads(p.read_text()) for p in sorted((ROOT / "docs" / "benchmarks").glob("*.json")))
    rendered = render_markdown([r for r in stored if "suite" in r])
    assert rendered == (ROOT / "docs" / "benchmarks.md").read_text(), (
        "docs/benchmarks.md is not the rendering of the stored results: write findings in "
        "docs/benchmarks/findings.md, then `python benchmarks/bench_crosspatch.py --render`")
