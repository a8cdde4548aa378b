"""The demo's combined report: the answer table first, the headline and matrix tables, the reading of
the zoo's results (``reading.py``), the charts, rendered as Markdown and as a self-contained HTML
page."""

from __future__ import annotations

from pathlib import Path

from ..report.markdown import _table, fmt_effect, fmt_value, md_escape
from .demo_sections import CHART_EVENT_HEADER, PREFLIGHTS, VISION_RUN, chart_event_cells, chart_event_rows
from .reading import common_it, demo_reading


def render_demo_html(summary: dict, out: Path) -> str:
    """The combined report as one self-contained, autoescaped HTML page."""
    from ..report.mdtext import page_environment

    env = page_environment()
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    # the reading is generated Markdown (lists, emphasis, code): rendered, with raw HTML disabled
    md = MarkdownIt("commonmark", {"html": False})
    answer_header, answer_rows = answer_table(summary)
    return env.get_template("tables.html.j2").render(
        title="crosspatch demo: the weather-report zoo", intro=demo_intro(summary),
        # (the chart events are drawn with their charts below, not as the Markdown's file-name table)
        tables=[t for t in demo_tables(summary) if not t[0].startswith(CHART_EVENTS_HEADING)],
        answer=(answer_header, answer_rows),
        reading_html=Markup(md.render("\n\n".join(_as_list_blocks(demo_reading(summary))))),
        links=[f"{name}/report.html" for name in summary["descendants"]]
        + [f"{d}/report.html" for d in ("compare", "sweep-it-full", "lineage", VISION_RUN)
           if (out / d / "report.html").exists()]
        + [f"{d}/preflight.html" for d in PREFLIGHTS if (out / d / "preflight.html").exists()],
        images=demo_images(out),
        chart_events=_chart_events(summary),
    )


def _chart_events(summary: dict) -> dict | None:
    vision = summary.get("vision")
    if not vision or not vision.get("events"):
        return None
    return {"heading": CHART_EVENTS_HEADING, "header": CHART_EVENT_HEADER, "rows": chart_event_rows(vision)}


CHART_EVENTS_HEADING = "The vision-language pair's events beside their charts (first divergences of vl-base vs vl-it)"


def demo_images(out: Path) -> list[tuple[str, str]]:
    """(caption, base64 PNG) of the sweep and lineage plots, embedded so the page stands alone."""
    import base64

    found = [("Layer sweep of it-full: effects at every boundary", out / "sweep-it-full" / "sweep.png"),
             ("Lineage: every training stage on the base -> final events", out / "lineage" / "lineage.png")]
    return [(caption, base64.b64encode(path.read_bytes()).decode()) for caption, path in found if path.exists()]


def headline_rows(summary: dict) -> list[list[str]]:
    rows = []
    for name, s in summary["descendants"].items():
        block = common_it(s)["all"]
        c = block["cells"]
        rows.append([name, str(block["n_events"])]
                    + [fmt_value(c[k]) for k in ("upt_lpt", "upt_lit", "uit_lpt", "uit_lit")]
                    + [fmt_effect(block, k) for k in ("E_PT", "E_IT", "interaction", "direct_share",
                                                      "late_interaction_share")]
                    + [s.get("verdict", {}).get("verdict", "n/a")])
    return rows


HEADLINE = ["descendant", "events", "Y(U_PT,L_PT)", "Y(U_PT,L_IT)", "Y(U_IT,L_PT)", "Y(U_IT,L_IT)",
            "E_PT", "E_IT", "interaction", "direct share", "I/E_IT", "verdict"]


def _matrix_rows(summary: dict, group_key: str) -> list[list[str]]:
    """One row per group (aspect, position), one interaction column per descendant."""
    groups: list[str] = []
    for s in summary["descendants"].values():
        groups += [g for g in common_it(s).get(group_key, {}) if g not in groups]
    rows = []
    for g in groups:
        row = [g]
        for s in summary["descendants"].values():
            block = common_it(s).get(group_key, {}).get(g)
            row.append(f"{fmt_effect(block, 'interaction')} (n={block['n_events']})" if block else "n/a (n=0)")
        rows.append(row)
    return rows


def _split_rows(summary: dict) -> list[list[str]]:
    rows = []
    for name, s in summary["descendants"].items():
        groups = common_it(s).get("by_split", {})
        for split in SPLIT_LABELS:
            block = groups.get(split)
            if block:
                rows.append([name, SPLIT_LABELS[split], str(block["n_events"]),
                             fmt_effect(block, "E_PT"), fmt_effect(block, "E_IT"), fmt_effect(block, "interaction")])
    return rows


SPLIT_LABELS = {"in_distribution": "training offices", "held_out_office": "held-out offices",
                "held_out_region": "held-out regions"}


def _consequence_rows(summary: dict) -> list[list[str]]:
    rows = []
    for name, s in summary["descendants"].items():
        block = (s.get("consequences") or {}).get("by_model", {}).get("IT")
        if not block:
            continue
        rate = block["pass_rate"]
        delta = block["delta_t_it_minus_t_pt"]
        ci = delta.get("ci")
        rows.append([name, str(s["consequences"]["n_events"])]
                    + [fmt_value(rate[k], percent=True) for k in ("t_it", "t_pt", "matched", "random")]
                    + [f"{delta['mean']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")])
    return rows


def _drop(v: dict | None) -> str:
    if not v:
        return "n/a"
    ci = v.get("interaction_drop_ci")
    return (f"{v['interaction_drop']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
            + ("" if v.get("share") is None else f" ({100 * v['share']:.0f}%)"))


def _rescue(g: dict | None) -> str:
    top = (g or {}).get("top")
    if not top or top.get("fraction_of_missing") is None:
        return "n/a"
    return f"{100 * top['fraction_of_missing']:.0f}% of the missing margin"


def demo_tables(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(heading, header, rows) of every table of the combined report, in order."""
    from ..runner.compare import cross_cell

    names = list(summary["descendants"])
    tables = [
        ("Cells and effects per descendant", HEADLINE, headline_rows(summary)),
        ("Counts", ["descendant", "events", "agreed EOS", "budget exhausted", "NaN/inf logits", "invalid", "near-ties"],
         [[n, str(s["counts"]["events"]), str(s["counts"]["no_divergence"].get("agreed_eos", 0)),
           str(s["counts"]["no_divergence"].get("budget_exhausted", 0)),
           str(s["counts"]["no_divergence"].get("non_finite_logits", 0)), str(s["counts"]["invalid"]),
           str(s["counts"]["near_tie"])] for n, s in summary["descendants"].items()]),
        ("Interaction by aspect", ["aspect"] + names, _matrix_rows(summary, "by_category")),
        ("Training offices vs held-out offices (US sites never in instruction tuning) vs held-out regions (abroad)",
         ["descendant", "sites", "events", "E_PT", "E_IT", "interaction"],
         _split_rows(summary)),
        ("Interaction by prompt style", ["style"] + names, _matrix_rows(summary, "by_style")),
        ("Interaction by house style (era; the newer style never appears in instruction tuning)", ["era"] + names,
         _matrix_rows(summary, "by_era")),
        ("Interaction by event kind", ["event kind"] + names, _matrix_rows(summary, "by_event_kind")),
        ("Interaction by token category (t_PT -> t_IT)", ["tokens"] + names, _matrix_rows(summary, "by_token_category")),
        ("Consequences: the descendant continues after each forced token; share of continuations its "
         "prompt's validator passes (instruction, question and unit-task prompts)",
         ["descendant", "events", "forced t_IT", "forced t_PT", "rank-matched", "random", "t_IT - t_PT"],
         _consequence_rows(summary)),
        ("By generated position", ["position"] + names, _matrix_rows(summary, "by_position")),
    ]
    cross = summary.get("cross")
    if cross and cross.get("cross"):
        roles = [cross["base"]] + list(cross["descendants"])
        tables.append(("Cross-descendant patching (compare/): mean Y(U_X, L_Y), upstream state of X (rows) through the "
                       "late stack of Y (columns), on Y's first divergences (t_base vs t_Y) read with Y's head",
                       ["upstream \\ late stack"] + roles,
                       [[x] + [cross_cell(cross["cross"][x].get(y)) for y in roles] for x in roles]))
    feat = summary.get("features")
    if feat and (feat.get("study") or {}).get("mediation"):
        gate = feat.get("quality_gate") or {}
        study = feat["study"]
        tables.append((
            f"Features: mediation on it-full with the shipped crosscoder (quality gate "
            f"{'passed' if gate.get('passed') else 'FAILED'}, held-out mean L0 {gate.get('mean_l0', float('nan')):.1f} "
            f"for k = {feat['k']}; {study['n_heldout']} held-out events, latents ranked on {study['n_train']})",
            ["k latents removed", "interaction drop, top-ranked", "matched random", "most active", "rescue (top)"],
            [[k, _drop(g.get("top")), _drop(g.get("matched_random")), _drop(g.get("top_active")),
              _rescue((study.get("rescue") or {}).get(k))] for k, g in study["mediation"].items()]))
    if summary.get("sweep"):
        tables.append(("Layer sweep of it-full: every boundary (sweep-it-full/sweep.png)",
                       ["boundary", "events", "E_PT", "E_IT", "interaction", "direct share"],
                       [[b, str(block["n_events"])] + [fmt_effect(block, k) for k in ("E_PT", "E_IT", "interaction",
                                                                                      "direct_share")]
                        for b, block in summary["sweep"].items()]))
    lin = summary.get("lineage")
    if lin:
        from ..runner.lineage import LINEAGE_COLUMNS, lineage_rows

        shown = [k for k, col in enumerate(LINEAGE_COLUMNS) if col != "label-swap null"]
        tables.append(("Lineage: every stage on the base -> final first divergences (lineage/lineage.png)",
                       [LINEAGE_COLUMNS[k] for k in shown], [[row[k] for k in shown] for row in lineage_rows(lin)]))
    tables += _preflight_and_vision_tables(summary)
    evals = (summary.get("zoo") or {}).get("evals") or {}
    if evals:
        keys = list(dict.fromkeys(k for v in evals.values() for k in v))
        tables.append(("The zoo's own held-out evaluations", ["model"] + keys,
                       [[m] + [f"{v[k]:.3f}" if isinstance(v.get(k), float) else str(v.get(k, "n/a")) for k in keys]
                        for m, v in evals.items()]))
    return [t for t in tables if t[2]]  # (a table with no rows, e.g. event kinds under --quick, is left out)


def _preflight_and_vision_tables(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = []
    pre = summary.get("preflight")
    if pre:
        tables.append(("Preflight on the zoo's broken models (crosspatch preflight; preflight-*/preflight.html)",
                       ["checked", "what is wrong", "preflight", "failed checks", "cause named"],
                       [[p["adapter"] + (f" + {p['merged']}" if p["merged"] else ""), p["what_is_wrong"],
                         "pass" if p["passed"] else "FAIL", ", ".join(p["causes"]) or "none",
                         "; ".join(c for causes in p["causes"].values() for c in causes[:1]) or "n/a"]
                        for p in pre.values()]))
    vision = summary.get("vision")
    if vision:
        block, counts = vision["effects"], vision["counts"]
        c = block["cells"]
        tables.append((f"Vision-language pair: {' vs '.join(vision['models'])} on {vision['prompts']} chart prompts "
                       f"(boundary {vision['boundary']}; vision/report.html)",
                       ["events", "no divergence", "Y(U_PT,L_PT)", "Y(U_PT,L_IT)", "Y(U_IT,L_PT)", "Y(U_IT,L_IT)",
                        "E_PT", "E_IT", "interaction"],
                       [[str(block["n_events"]), str(sum(counts["no_divergence"].values()))]
                        + [fmt_value(c[k]) for k in ("upt_lpt", "upt_lit", "uit_lpt", "uit_lit")]
                        + [fmt_effect(block, k) for k in ("E_PT", "E_IT", "interaction")]]))
        if vision.get("events"):
            tables.append((CHART_EVENTS_HEADING + " (charts in report.html)", ["chart"] + CHART_EVENT_HEADER,
                           [[Path(e["chart"]).name if e.get("chart") else "n/a"] + chart_event_cells(e)
                            for e in vision["events"]]))
    return tables


def demo_intro(summary: dict) -> str:
    first = next(iter(summary["descendants"].values()))
    strata = summary.get("prompt_strata") or {}
    used = "; ".join(f"{key}: " + ", ".join(f"{v} {n}" for v, n in sorted(values.items()))
                     for key, values in strata.items() if values)
    return (f"Base (pretrained on raw weather web text) against each descendant, on {summary['prompts']} prompts"
            + (" (--quick: a quarter, sampled within every style, site split and house style)" if summary.get("quick")
               else "")
            + ": raw weather text as the paper feeds both models (observation logs cut before a field, narrative "
            "openings), instruction prompts (8 aspects; training offices, held-out offices and held-out regions), "
            "forum questions, and "
            "unit-conversion tasks (the narrow domain of it-units), in the older house style instruction tuning used "
            "and the newer one it never saw"
            + (f" (prompts used by {used})" if used else "")
            + f". Boundary layer {first['boundaries'][0]} of "
            f"{first['num_layers']}; common-IT readout; mean Y = logit(t_IT) - logit(t_PT) per cell; 95% "
            "prompt-cluster bootstrap intervals.")


def _as_list_blocks(paragraphs: list[str]) -> list[str]:
    """Consecutive ``- `` lines form one Markdown list (one block), other paragraphs stand alone."""
    blocks: list[str] = []
    for p in paragraphs:
        if p.startswith("- ") and blocks and blocks[-1].split("\n")[-1].startswith(("- ", "**What to do**", "**Why each verdict**")):
            blocks[-1] += "\n" + p
        else:
            blocks.append(p)
    return blocks


def answer_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The one-table answer the combined report opens with: each descendant's verdict, the
    interaction share that decided it and the interaction, with intervals and n."""
    rows = []
    for name, s in summary["descendants"].items():
        block = common_it(s)["all"]
        rows.append([name, s.get("verdict", {}).get("verdict", "n/a"), fmt_effect(block, "late_interaction_share"),
                     fmt_effect(block, "interaction"), str(block["n_events"]), str(block["n_prompts"])])
    return ["descendant", "verdict", "I/E_IT (decides)", "interaction", "events", "prompts"], rows


def render_demo_report(summary: dict) -> str:
    header, rows = answer_table(summary)
    lines = ["# crosspatch demo: the weather-report zoo", "", "## The answer", ""] + _table(header, rows) + [
        "", "Verdicts by the rule of docs/verdict.md (interval of I/E_IT against 25% and 50%).", "",
        demo_intro(summary), "", "## Reading", ""]
    for paragraph in demo_reading(summary):
        if not paragraph.startswith("- ") and lines[-1].startswith("- "):
            lines.append("")  # a paragraph after a list is not the list's last item
        lines += [paragraph] + ([] if paragraph.startswith("- ") else [""])
    lines.append("")
    for heading, header, rows in demo_tables(summary):
        # our labels and numbers print as they are; names that come from data (aspects) are escaped
        # (the chart events' cells hold model text: every cell escaped)
        escaped = len(header) if heading.startswith(CHART_EVENTS_HEADING) else 1
        lines += [f"## {heading}", ""] + _table(header, [[md_escape(x) for x in r[:escaped]] + r[escaped:] for r in rows]) + [""]
    lines += ["", f"Per-descendant reports: `{'/report.md`, `'.join(summary['descendants'])}/report.md`.", ""]
    return "\n".join(lines)
