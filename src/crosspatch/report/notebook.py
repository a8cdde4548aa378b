"""What a run, a compare, a lineage, a preflight, a splice or a merge-check shows when a notebook
displays it (``_repr_html_``): the verdict and its sentence, the headline numbers with their 95% intervals and where the full
report is — from the stored summary alone, every text escaped, formatted as the reports format
it (torch-free, like the rest of :mod:`crosspatch.report`)."""

from __future__ import annotations

import html

from ..core.records import readout_label
from .collections import LINEAGE_COLUMNS, compare_intervals, compare_readout, lineage_no_events, lineage_rows
from .markdown import fmt_effect, has_intervals
from .mdtext import visible_controls

__all__ = ["compare_card", "lineage_card", "preflight_card", "run_card", "sections_card", "splice_card", "splice_table"]


def escape(text) -> str:
    """``text`` HTML-escaped, its control characters shown as symbols (:func:`visible_controls`)."""
    return html.escape(visible_controls(str(text)))


_STYLE = "font-family:system-ui,sans-serif;font-size:13px;line-height:1.4"
_CELL = "text-align:left;white-space:nowrap;padding:1px 12px 1px 0"
_HEADLINE = (("E_PT", "E_PT (late effect on the base's upstream state)"),
             ("E_IT", "E_IT (late effect on the descendant's own)"),
             ("interaction", "interaction E_IT − E_PT"),
             ("late_interaction_share", "I/E_IT (the verdict's number)"),
             ("direct_share", "direct share E_PT/E_IT"))


def _table(header: list[str], rows: list[list[str]], prose_last: bool = False) -> str:
    """An HTML table of escaped text; numbers never wrap (``prose_last``: the last column is
    sentences, which do)."""
    def style(k: int) -> str:
        return _CELL.replace("white-space:nowrap", "white-space:normal;max-width:50em") if prose_last and k == len(
            header) - 1 else _CELL

    head = "".join(f"<th style='{style(k)}'>{escape(h)}</th>" for k, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td style='{style(k)}'>{escape(str(c))}</td>" for k, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _where(path, page: str) -> str:
    return "" if path is None else f"<p>Full report: <code>{escape(str(path))}/{page}</code></p>"


def _settings(settings) -> str:
    """The settings chosen that change what the numbers read (``[name, what]`` pairs, as the reports'
    setup names them: a policy, a chat template, word lists of one's own); nothing for defaults."""
    named = [f"{escape(str(item[0]))}: {escape(str(item[1]))}" for item in settings or ()
             if isinstance(item, (list, tuple)) and len(item) == 2]
    return "" if not named else "<p style='max-width:60em'>Settings: " + "; ".join(named) + "</p>"


def run_card(summary: dict, run_dir=None, settings=()) -> str:
    """A run's verdict, reason, headline effects and counts as a block of HTML; ``settings``: the
    run's chosen settings (:func:`crosspatch.report.markdown.chosen_settings`), named below."""
    verdict, counts = summary.get("verdict") or {}, summary.get("counts") or {}
    boundary, readout = verdict.get("boundary"), verdict.get("readout", "common_it")
    head = (f"<b>crosspatch run</b>: <b>{escape(str(verdict.get('verdict', 'no verdict yet')))}</b>"
            + (f" at boundary {escape(str(boundary))} ({escape(readout_label(readout))} readout)" if boundary else "")
            + f"; {counts.get('prompts', 0)} prompts, {counts.get('events', 0)} events")
    block = (summary.get("results", {}).get(str(boundary), {}).get(readout) or {}).get("all")
    table = "" if not block else _table(["quantity", "mean [95% CI]" if has_intervals(block) else "mean (no intervals)"], [
        [label, fmt_effect(block, name)] for name, label in _HEADLINE if name in block["effects"]])
    reason = escape(verdict.get("reason", ""))
    return (f"<div style='{_STYLE}'><p>{head}</p>{table}<p style='max-width:60em'>{reason}</p>{_settings(settings)}"
            f"{_where(run_dir, 'report.html')}</div>")


def compare_card(summary: dict, out=None) -> str:
    """A compare's descendants, one row each: verdict, headline effects and events."""
    rows = [[role, r["verdict"]] + [fmt_effect(r, name) if name in r["effects"] else "n/a"
                                    for name in ("late_interaction_share", "interaction", "E_PT", "E_IT")]
            + [str(r["events"])] for role, r in summary.get("rows", {}).items()]
    head = (f"<b>crosspatch compare</b>: {escape(str(summary.get('base')))} against {len(rows)} descendant(s); "
            f"headline boundary, {compare_readout(summary)}, {compare_intervals(summary)}")
    table = _table(["descendant", "verdict", "I/E_IT", "interaction", "E_PT", "E_IT", "events"], rows)
    return f"<div style='{_STYLE}'><p>{head}</p>{table}{_settings(summary.get('settings'))}{_where(out, 'report.html')}</div>"


def lineage_card(summary: dict, out=None) -> str:
    """A lineage's stages, one row each, as its report's table."""
    head = (f"<b>crosspatch lineage</b>: {len(summary.get('stages', []))} stage(s) on "
            f"{summary.get('events', 0)} Base -&gt; Final events at boundary {escape(str(summary.get('boundary')))}"
            + (f": {escape(why)}" if (why := lineage_no_events(summary)) else ""))
    table = _table(list(LINEAGE_COLUMNS), lineage_rows(summary)) if summary.get("stages") else ""
    return f"<div style='{_STYLE}'><p>{head}</p>{table}{_settings(summary.get('settings'))}{_where(out, 'report.html')}</div>"


def preflight_card(document: dict, out=None) -> str:
    """A preflight's pass or fail and one row per check (status and finding)."""
    rows = [[c["name"], c["status"], c.get("summary", "")] for c in document.get("checks", [])]
    head = f"<b>crosspatch preflight</b>: <b>{'PASS' if document.get('passed') else 'FAIL'}</b>"
    table = _table(["check", "status", "finding"], rows, prose_last=True)
    return f"<div style='{_STYLE}'><p>{head}</p>{table}{_where(out, 'preflight.html')}</div>"


def splice_table(document: dict) -> tuple[list[str], list[list[str]]]:
    """A splice's header and rows: per boundary, each chimera's validator pass rate / share of
    continuations the same as the tuned model's (what ``crosspatch splice`` prints and a notebook
    shows)."""
    boundaries = document.get("boundaries", {})
    names = list(next(iter(boundaries.values()))["chimeras"]) if boundaries else []
    rows = []
    for b, block in boundaries.items():
        cells = []
        for name in names:
            chimera = block["chimeras"][name]
            rate = chimera.get("validator_pass_rate")
            cells.append(f"{'—' if rate is None else f'{rate:.0%}'} / {chimera['same_as_tuned']:.0%}")
        rows.append([str(b), *cells])
    return ["boundary", *names], rows


def splice_card(document: dict, out=None) -> str:
    """A splice's :func:`splice_table` as a block of HTML."""
    head = (f"<b>crosspatch splice</b>: {document.get('prompts', {}).get('count', 0)} prompts; per chimera the "
            "validator pass rate / continuations the same as the tuned model's")
    return f"<div style='{_STYLE}'><p>{head}</p>{_table(*splice_table(document))}{_where(out, 'splice.html')}</div>"


def sections_card(head: str, sections, out=None, page: str = "report.html") -> str:
    """A page's sections (:class:`~crosspatch.core.registry.Section`: title, paragraphs, tables)
    under ``head`` as a block of HTML, every text escaped."""
    parts = [f"<p><b>{escape(head)}</b></p>"]
    for section in sections:
        parts.append(f"<p><b>{escape(section.title)}</b></p>")
        parts += [f"<p style='max-width:60em'>{escape(text)}</p>" for text in section.paragraphs]
        parts += [_table(table.header, table.rows, prose_last=table.header[-1:] == ["finding"])
                  for table in section.tables]
    return f"<div style='{_STYLE}'>{''.join(parts)}{_where(out, page)}</div>"
