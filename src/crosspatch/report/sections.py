"""Report sections of registered analyses (:class:`crosspatch.core.registry.Section`), rendered for
Markdown and for the HTML template. Section text is data: escaped in both renderings."""

from __future__ import annotations

from dataclasses import asdict

from ..core.plugin_calls import call_plugin
from ..core.registry import Section, Table, registered
from .mdtext import _table, md_escape_prose


def rendered_sections(summary: dict) -> list[dict]:
    """The analyses' sections of ``summary``, rendered now by their plug-ins, as plain data
    (stored in summary.json as ``sections``, so that the reports of a finished run are written
    without importing any plug-in, or torch)."""
    return [asdict(s) for s in analysis_sections({k: v for k, v in summary.items() if k != "sections"})]


def analysis_sections(summary: dict) -> list[Section]:
    """The sections of every registered analysis (not control) whose block is in ``summary``,
    in registration order: those stored in the summary (``sections``) when it has them, else
    rendered by the plug-ins."""
    stored = summary.get("sections")
    if stored is not None:
        return [Section(s["title"], list(s.get("paragraphs") or []),
                        [Table(list(t["header"]), [list(r) for r in t["rows"]]) for t in s.get("tables") or []],
                        list(s.get("figures") or [])) for s in stored]
    out = []
    for plugin in registered().values():
        if plugin.role != "analysis" or plugin.render is None:
            continue
        block = summary.get(plugin.summary_key)
        if block:
            section = call_plugin(plugin.name, "render", plugin.render, block, returns=(Section,), what="a Section")
            if section is not None:
                out.append(section)
    return out


def section_markdown(section: Section) -> list[str]:
    """A section as Markdown lines (prose escaped; tables with escaped cells)."""
    lines = [f"## {md_escape_prose(section.title)}", ""]
    for text in section.paragraphs:
        lines += [md_escape_prose(text), ""]
    for table in section.tables:
        lines += _table([md_escape_prose(h) for h in table.header],
                        [[md_escape_prose(str(c)) for c in row] for row in table.rows]) + [""]
    return lines


def sections_markdown(summary: dict) -> list[str]:
    return [line for s in analysis_sections(summary) for line in section_markdown(s)]


def sections_html(summary: dict) -> list[dict]:
    """Sections for the HTML template (which autoescapes every text; figures are SVG the
    plug-in drew from numbers)."""
    return [{"title": s.title, "paragraphs": s.paragraphs,
             "tables": [{"header": t.header, "rows": t.rows} for t in s.tables], "figures": s.figures}
            for s in analysis_sections(summary)]
