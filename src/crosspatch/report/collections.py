"""The pages of a compare's and a lineage's output directory, rendered from their stored
``compare.json`` / ``lineage.json`` alone (no model code, no torch): what the commands write, and
what ``crosspatch report`` renders again."""

from __future__ import annotations

from pathlib import Path

from ..core.records import CELLS, readout_label, verdict_readout
from ..store import write_whole
from .markdown import WHY_NO_INTERVALS, _table, fmt_effect, fmt_percent, fmt_value, has_intervals, md_escape
from .mdtext import page_environment
from .plots import legend, matplotlib_label, save_figure

__all__ = ["LINEAGE_COLUMNS", "compare_intervals", "compare_readout", "cross_cell", "lineage_no_events", "lineage_rows",
           "plot_lineage", "render_compare_html", "render_compare_markdown", "render_lineage_html",
           "render_lineage_markdown", "write_compare_pages", "write_lineage_pages"]


def cross_cell(stat: dict | None) -> str:
    """One cell of the cross-descendant matrix: mean [95% CI] (n=...), or n/a."""
    if stat is None or stat.get("mean") is None:
        return "n/a" if stat is None else f"n/a (n={stat.get('n', 0)})"
    return f"{fmt_value(stat)} (n={stat['n']})"


def compare_intervals(summary: dict) -> str:
    """What a compare's rows are printed with: 95% prompt-cluster intervals, or none (no bootstrap
    resamples), said so that no page claims intervals it does not show."""
    blocks = [{"effects": r.get("effects") or {}, "cells": r.get("cells") or {}} for r in summary["rows"].values()]
    return "95% prompt-cluster intervals" if has_intervals(*blocks) else f"no intervals ({WHY_NO_INTERVALS})"


def compare_readout(summary: dict) -> str:
    """The readout a compare's rows are read in: each its verdict's (common-IT unless a policy
    says common-PT)."""
    readouts = {verdict_readout(r) for r in summary["rows"].values()}
    if len(readouts) > 1:
        return "each descendant in its verdict's readout"
    return f"{readout_label(readouts.pop())} readout" if readouts else "common-IT readout"


def _settings(summary: dict) -> list:
    """The settings a compare or lineage chose that change what its pages show (``[name, what]``
    pairs; none in an older compare.json or lineage.json)."""
    settings = summary.get("settings")
    return [s for s in settings if isinstance(s, (list, tuple)) and len(s) == 2] if isinstance(settings, list) else []


def _settings_markdown(summary: dict) -> list[str]:
    settings = [f"- {md_escape(str(name))}: {md_escape(str(what))}" for name, what in _settings(summary)]
    return settings + ([""] if settings else [])


def _settings_sentences(summary: dict) -> str:
    return "".join(f" {name}: {what}." for name, what in _settings(summary))


def render_compare_markdown(summary: dict) -> str:
    lines = ["# crosspatch compare", "", f"Base against {len(summary['rows'])} descendant(s); headline boundary, "
             f"{compare_readout(summary)}, {compare_intervals(summary)}.", ""]
    lines += _settings_markdown(summary)
    rows = []
    for role, r in summary["rows"].items():
        block = {"effects": r["effects"]}
        rows.append([md_escape(role), r["verdict"], str(r["events"])]
                    + [fmt_value(r["cells"][c]) for c in CELLS]
                    + [fmt_effect(block, k) for k in ("E_PT", "E_IT", "interaction", "direct_share")])
    lines += _table(["descendant", "verdict", "events", "Y(U_PT,L_PT)", "Y(U_PT,L_IT)", "Y(U_IT,L_PT)", "Y(U_IT,L_IT)",
                     "E_PT", "E_IT", "interaction", "direct share"], rows) + [""]
    for role, r in summary["rows"].items():
        lines += [f"- **{md_escape(role)}**: {md_escape(r['reason'])}"]
    lines.append("")
    if summary.get("warnings"):  # the model set's (a descendant that computes the base, tokenizers, ...)
        lines += ["## Warnings", ""] + [f"- {md_escape(w)}" for w in summary["warnings"]] + [""]
    if summary.get("cross"):
        roles = list(summary["cross"])
        lines += ["## Cross-descendant patching", "", summary["cross_note"] + ".", ""]
        body = []
        for x in roles:
            body.append([f"U_{md_escape(x)}"] + [cross_cell(summary["cross"][x][y]) for y in roles])
        lines += _table(["upstream \\ late"] + [f"L_{md_escape(y)}" for y in roles], body) + [""]
    return "\n".join(lines)


def render_compare_html(summary: dict) -> str:
    env = page_environment()
    tables = [(f"Descendants ({compare_intervals(summary)})",
               ["descendant", "verdict", "events", "E_PT", "E_IT", "interaction", "direct share"],
               [[role, r["verdict"], str(r["events"])] + [fmt_effect({"effects": r["effects"]}, k)
                                                          for k in ("E_PT", "E_IT", "interaction", "direct_share")]
                for role, r in summary["rows"].items()])]
    if summary.get("cross"):
        roles = list(summary["cross"])
        tables.append(("Cross-descendant patching: Y(U_X, L_Y)", ["upstream \\ late"] + [f"L_{y}" for y in roles],
                       [[f"U_{x}"] + [cross_cell(summary["cross"][x][y]) for y in roles] for x in roles]))
    reading = [f"{role}: {r['reason']}" for role, r in summary["rows"].items()]  # one paragraph each
    if summary.get("cross"):
        reading.append(f"Cross-descendant patching: {summary['cross_note']}.")
    return env.get_template("tables.html.j2").render(
        title="crosspatch compare", intro=f"Base against {len(summary['rows'])} descendant(s); headline boundary, "
                                          f"{compare_readout(summary)}, {compare_intervals(summary)}."
                                          + _settings_sentences(summary),
        reading=reading, warnings=summary.get("warnings") or [], tables=tables,
        links=[f"{role}/report.html" for role in summary["rows"]])


def plot_lineage(summary: dict, out: Path) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = summary["stages"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    steps = summary.get("training_steps") or {}
    by_step = all(s in steps for s in stages)
    x = np.array([steps[s] for s in stages]) if by_step else np.arange(len(stages))
    for key, label in (("native_shift", "native shift D"), ("E_IT", "E_IT"), ("E_PT", "E_PT"),
                       ("interaction", "interaction")):
        stats = [summary["by_stage"][s][key] for s in stages]
        means = [np.nan if st["mean"] is None else st["mean"] for st in stats]
        ax.plot(x, means, marker="o", label=label)
        ends = [st.get("ci") if st.get("ci") and None not in st["ci"] else (np.nan, np.nan) for st in stats]
        lo, hi = [end[0] for end in ends], [end[1] for end in ends]
        ax.fill_between(x, lo, hi, alpha=0.15)
    if by_step:
        ax.set_xlabel("training step")
    else:
        ax.set_xticks(x, [matplotlib_label(s) for s in stages])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("logits (t_Final vs t_Base)")
    ax.set_title("lineage: every stage on the Base -> Final contrast")
    legend(ax, fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "lineage.png", dpi=120)
    save_figure(fig, out / "lineage.svg")
    plt.close(fig)


LINEAGE_COLUMNS = ("stage", "n", "native shift D", "share of final (shift)", "interaction (final's head)",
                   "share of final (interaction, authors')", "top-1 = t_Final", "E_PT", "E_IT", "interaction",
                   "label-swap null")


def lineage_rows(summary: dict) -> list[list[str]]:
    """One row per stage under :data:`LINEAGE_COLUMNS` (text, unescaped), for both reports."""
    rows = []
    for s in summary["stages"]:
        r = summary["by_stage"][s]
        agree = "n/a" if r["top1_agreement_with_final"] is None else f"{100 * r['top1_agreement_with_final']:.0f}%"
        swap = r["label_swap"]
        null = "n/a" if swap["p_value"] is None else f"p={swap['p_value']:.3g}"
        share_shift = r.get("share_of_final_shift") or {"mean": r.get("percent_of_final"), "ci": None}
        rows.append([s, str(r["events"]), fmt_value(r["native_shift"]), fmt_percent(share_shift),
                     fmt_value(r.get("interaction_final_readout")), fmt_percent(r.get("share_of_final_interaction")),
                     agree, fmt_value(r["E_PT"]), fmt_value(r["E_IT"]), fmt_value(r["interaction"]), null])
    return rows


def lineage_no_events(summary: dict) -> str:
    """Plain text for a lineage without Base -> Final events: why no stage is scored (the Base -> Final
    run's reason, ``no_events_reason``); '' where it has events. Each page escapes it its own way."""
    reason = summary.get("no_events_reason")
    return f"no stage can be scored. {reason}" if reason else ""


def render_lineage_markdown(summary: dict) -> str:
    lines = ["# crosspatch lineage", "", md_escape(summary["note"]) + ".", "",
             f"{summary['events']} Base -> Final events at boundary {summary['boundary']}"
             + (f": {md_escape(why)}" if (why := lineage_no_events(summary)) else "."), "",
             "![lineage](lineage.png)", "", *_settings_markdown(summary)]
    rows = [[md_escape(row[0]), *row[1:]] for row in lineage_rows(summary)]
    lines += _table(list(LINEAGE_COLUMNS), rows)
    if summary.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {md_escape(w)}" for w in summary["warnings"]]
    return "\n".join(lines + [""])


def render_lineage_html(summary: dict, out: Path) -> str:
    import base64

    env = page_environment()
    png = out / "lineage.png"
    return env.get_template("tables.html.j2").render(
        title="crosspatch lineage", intro=summary["note"] + (
            f". No Base -> Final event: {why}" if (why := lineage_no_events(summary)) else "") + _settings_sentences(summary),
        tables=[("Stages", list(LINEAGE_COLUMNS), lineage_rows(summary))], links=[],
        warnings=summary.get("warnings") or [],
        image=base64.b64encode(png.read_bytes()).decode() if png.exists() else None)


def write_compare_pages(out: Path, summary: dict) -> str:
    """``report.md`` and ``report.html`` of a compare's output directory; returns the Markdown."""
    report = render_compare_markdown(summary)
    write_whole(out / "report.md", report)
    write_whole(out / "report.html", render_compare_html(summary))
    return report


def write_lineage_pages(out: Path, summary: dict) -> str:
    """``lineage.png``/``.svg``, ``report.md`` and ``report.html`` of a lineage's output
    directory; returns the Markdown."""
    plot_lineage(summary, out)
    report = render_lineage_markdown(summary)
    write_whole(out / "report.md", report)
    write_whole(out / "report.html", render_lineage_html(summary, out))
    return report
