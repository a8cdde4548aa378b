"""Rendering a run directory's reports from what its store holds."""

from __future__ import annotations


def render_reports(store, summary: dict, config: dict) -> str:
    """Plot (several boundaries), report.md and report.html from the stored files
    (``store``: a :class:`~crosspatch.store.RunStore`); returns report.md."""
    from .html import render_html
    from .markdown import render_markdown

    if len(summary["boundaries"]) > 1:
        from ..core.records import verdict_readout
        from .plots import plot_sweep

        plot_sweep(summary, store.path, verdict_readout(summary.get("verdict")))
    text = render_markdown(config, summary)
    store.write_page("report.md", text)
    store.write_page("report.html", render_html(store.path))
    return text
