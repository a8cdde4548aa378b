"""Self-contained HTML report (one file, plots inline as SVG, no network), rendered from a
stored run alone. Jinja2 autoescaping is on: every model and prompt text (tokens, prompts, ids,
categories, paths) is escaped; plots draw text as paths. The event explorer is plain inline
JavaScript that only reads ``textContent`` and ``data-*`` attributes (never ``innerHTML``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.records import READOUTS, cell_effects, readout_label, verdict_readout
from .markdown import (
    _EFFECT_LABELS,
    WHY_NO_INTERVALS_SHORT,
    _fmt_number,
    chosen_settings,
    counts_lines,
    fmt_effect,
    fmt_value,
    has_intervals,
    model_shown,
    prompt_source,
    reading_lines,
    scored_descendant,
)
from .mdtext import page_environment


def _names(value):
    """A recorded selection as the report prints it: a list of names comma-joined, a word as is."""
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def _plain(text: str) -> str:
    """Markdown-only niceties (backticks, bold) removed for HTML."""
    return str(text).replace("`", "").replace("**", "")


def _section(result: dict, boundary: str, breakdown_plots: bool = True, readout: str = "common_it") -> dict:
    """One boundary's tables and plots in ``readout`` (the verdict's): its cells, effects plot and
    breakdowns (the per-group forest plots only where ``breakdown_plots``: a sweep draws them at
    its headline boundary, the others keep their tables and the sweep curves)."""
    from .plots import cells_heatmap_svg, forest_svg

    head = result[readout]["all"]
    groups, forests = [], []
    effects = "effects with 95% CIs" if has_intervals(head) else f"effects (no intervals: {WHY_NO_INTERVALS_SHORT})"
    named = readout_label(readout)
    for key, block in result[readout].items():
        if key.startswith("by_") and block:
            label = key[3:]
            groups.append({"title": f"By {label.replace('_', ' ')} ({named})", "label": label.replace("_", " "), "rows": [
                [name, str(b["n_events"]), fmt_effect(b, "E_PT"), fmt_effect(b, "E_IT"), fmt_effect(b, "interaction")]
                for name, b in block.items()]})
            if key != "by_position" and breakdown_plots:
                rows = [(name, b) for name, b in block.items() if b["n_events"]][:30]
                if rows:
                    forests.append(forest_svg(rows, f"by {label.replace('_', ' ')} ({named}): {effects}"))
    return {
        "boundary": boundary,
        "cells": {c: fmt_value(v) for c, v in head["cells"].items()},
        "readouts": [readout_label(r) for r in READOUTS],
        "effects": [[_plain(label)] + [fmt_effect(result[r]["all"], key) for r in READOUTS]
                    for key, label in _EFFECT_LABELS.items()],
        "groups": groups,
        "heatmap": cells_heatmap_svg(head, f"mean Y per cell, boundary {boundary} ({named})"),
        "forest_all": forest_svg([("all events", head)], f"boundary {boundary} ({named}): {effects}"),
        "forests": forests,
    }


def _event(r, readout: str = "common_it") -> dict:
    y = {name: r.cells[name] for name in READOUTS}
    inter = cell_effects(y[readout])["interaction"]
    return {"prompt_id": r.prompt_id, "category": r.category or "", "kind": r.kind, "position": r.position,
            "t_pt_text": json.dumps(r.t_pt_text)[1:-1], "t_it_text": json.dumps(r.t_it_text)[1:-1],
            "t_pt_category": r.t_pt_category or "", "t_it_category": r.t_it_category or "",
            "interaction": inter, "cells": y, "margin_pt": r.margin_pt, "margin_it": r.margin_it,
            "near_tie": r.near_tie, "valid": r.valid, "prompt_text": r.prompt_text or "",
            "continuation_text": r.continuation_text or ""}


def explorer_events(records, readout: str = "common_it") -> list[dict]:
    """One row per event (a prompt's divergence: position and token pair) with every event kind
    that falls on it, in the records' order; its interaction read in ``readout`` (the verdict's)."""
    from ..core.tokens import ordered_kinds

    events: dict[tuple, dict] = {}
    for r in records:
        key = (r.prompt_id, r.position, r.t_pt, r.t_it)
        if key not in events:
            events[key] = {**_event(r, readout), "kinds": []}
        events[key]["kinds"].append(r.kind)
    for e in events.values():
        e["kinds"] = ordered_kinds(e["kinds"])
    return list(events.values())


def render_html(run_dir: str | Path, max_events: int = 2000, back_link: str | None = None) -> str:
    """The HTML text of a run directory's report."""
    from ..store import RunStore
    from .plots import histogram_svg, sweep_svg
    from .sections import sections_html

    store = RunStore(run_dir)
    config, summary = store.config(), store.summary()
    models = config.get("models", {})
    tuned, kind = scored_descendant(config)
    head_b = str((summary.get("verdict") or {}).get("boundary", summary["boundaries"][0]))
    records = [r for r in store.load_records() if str(r.boundary) == head_b]
    readout = verdict_readout(summary.get("verdict"))  # (the sweep, the histogram and the explorer read the verdict's)
    all_events = explorer_events(records, readout)
    events = all_events[:max_events]
    firsts = [cell_effects(r.cells[readout])["interaction"] for r in records if r.kind == "first_diff" and r.valid]
    opts, load = config.get("options", {}), config.get("load_options", {})
    vocab = summary.get("real_vocabulary") or config.get("real_vocabulary")
    env = page_environment()
    return env.get_template("report.html.j2").render(
        title=config.get("title") or "crosspatch run",
        back_link=back_link or config.get("back_link"),
        base=model_shown(models.get("base")),
        tuned=tuned, kind=kind, prompt_source=prompt_source(config),
        boundaries=summary["boundaries"], num_layers=summary.get("num_layers"),
        setup=[("dtype", load.get("dtype", "float32")), ("device", load.get("device", "cpu")),
               ("residency", config.get("residency", "?")), ("plan", opts.get("plan")),
               ("max new tokens", opts.get("max_new_tokens")), ("rollout model", opts.get("rollout_model")),
               ("bootstrap", f"{opts.get('bootstrap')} resamples, seed {opts.get('seed')}"),
               ("event kinds", _names(opts.get("event_kinds"))), ("controls", _names(opts.get("controls"))),
               *chosen_settings(opts)],
        counts=[_plain(line[2:]) for line in counts_lines(summary["counts"])]
        + ([f"--until-ci-width {summary['until_ci_width']['target']}: {summary['until_ci_width']['message']}"]
           if summary.get("until_ci_width") else []),
        reading=_plain(" ".join(reading_lines(summary["results"][summary["boundaries"][0]]))),
        verdict=summary.get("verdict"),
        controls=[{**c, "value_text": _fmt_number(c.get("value")),
                   "ci_text": f"[{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]" if c.get("ci") and None not in c["ci"] else ""}
                  for c in summary.get("controls", [])],
        sweep_svg=sweep_svg(summary, readout) if len(summary["boundaries"]) > 1 else None,
        histogram=histogram_svg(firsts, f"per-event interaction at boundary {head_b} (first divergence, "
                                        f"{readout_label(readout)})")
        if firsts else None,
        sections=[_section(summary["results"][b], b, breakdown_plots=b == head_b, readout=readout)
                  for b in summary["boundaries"]],
        head_boundary=head_b, verdict_readout=readout, events=events, total_events=len(all_events),
        categories=sorted({e["category"] for e in events}), kinds=sorted({k for e in events for k in e["kinds"]}),
        warnings=summary.get("warnings", []),
        analysis_sections=sections_html(summary),
        vocab=vocab,
        no_divergence=summary.get("no_divergence_prompts", [])[:200],
    )
