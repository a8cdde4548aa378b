"""Self-contained HTML report (one file, plot embedded), rendered from a stored run alone.
Jinja2 autoescaping is on: every model text (tokens, prompt ids, paths) is escaped."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from ..cells import READOUTS
from .markdown import _EFFECT_LABELS, _fmt_number, counts_lines, fmt_effect, fmt_value, reading_lines


def _section(result: dict, boundary: str) -> dict:
    head = result["common_it"]["all"]
    groups = []
    for key, block in result["common_it"].items():
        if key.startswith("by_") and block:
            label = key[3:]
            groups.append({"title": f"By {label} (common-IT)", "label": label, "rows": [
                [name, str(b["n_events"]), fmt_effect(b, "E_PT"), fmt_effect(b, "E_IT"), fmt_effect(b, "interaction")]
                for name, b in block.items()]})
    return {
        "boundary": boundary,
        "cells": {c: fmt_value(v) for c, v in head["cells"].items()},
        "readouts": [r.replace("_", "-") for r in READOUTS],
        "effects": [[label] + [fmt_effect(result[r]["all"], key) for r in READOUTS]
                    for key, label in _EFFECT_LABELS.items()],
        "groups": groups,
    }


def render_html(run_dir: str | Path, max_events: int = 200) -> str:
    """The HTML text of a run directory's report."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from ..store import RunStore

    store = RunStore(run_dir)
    config, summary = store.config(), store.summary()
    models = config.get("models", {})
    first = summary["boundaries"][0]
    events = []
    for r in store.load_records():
        if str(r.boundary) != first or r.kind != "first_diff" or len(events) >= max_events:
            continue
        y = r.cells["common_it"]
        events.append({"prompt_id": r.prompt_id, "category": r.category or "", "position": r.position,
                       "t_pt_text": json.dumps(r.t_pt_text)[1:-1], "t_it_text": json.dumps(r.t_it_text)[1:-1],
                       "interaction": (y["uit_lit"] - y["uit_lpt"]) - (y["upt_lit"] - y["upt_lpt"])})
    sweep = Path(run_dir) / "sweep.png"
    opts = config.get("options", {})
    env = Environment(loader=PackageLoader("crosspatch.report", "templates"), autoescape=select_autoescape(["j2", "html"]))
    return env.get_template("report.html.j2").render(
        title=config.get("title") or "crosspatch run",
        base=models.get("base", {}).get("path", "?"),
        tuned=models.get("tuned", {}).get("path") or models.get("adapter", {}).get("path", "?"),
        kind="PEFT adapter" if "adapter" in models else "descendant",
        boundaries=summary["boundaries"], num_layers=summary.get("num_layers"),
        options_line=(f"max new tokens {opts.get('max_new_tokens')}, rollout model {opts.get('rollout_model')}, "
                      f"bootstrap {opts.get('bootstrap')} resamples, seed {opts.get('seed')}"),
        counts=[line[2:] for line in counts_lines(summary["counts"])],
        reading=" ".join(reading_lines(summary["results"][first])),
        verdict=summary.get("verdict"),
        controls=[{**c, "value_text": _fmt_number(c.get("value")),
                   "ci_text": f"[{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]" if c.get("ci") and None not in c["ci"] else ""}
                  for c in summary.get("controls", [])],
        sweep_png=base64.b64encode(sweep.read_bytes()).decode() if len(summary["boundaries"]) > 1 and sweep.exists() else None,
        sections=[_section(summary["results"][b], b) for b in summary["boundaries"]],
        events=events, warnings=summary.get("warnings", []),
        no_divergence=summary.get("no_divergence_prompts", [])[:200],
    )
