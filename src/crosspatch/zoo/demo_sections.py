"""Two sections of the demo beside the text descendants' diagnostic: ``crosspatch preflight`` on
the zoo's two broken models (it must catch both), and the vision-language pair's diagnostic on
image prompts, with the chart beside each of a few events."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from ..runner.pipeline import RunConfig, run
from .faults import BROKEN_MERGE, NOOP_ADAPTER
from .vision import CHART_PROMPTS, VISION_BASE, VISION_MODELS, VISION_TUNED

PREFLIGHTS = {  # directory under the demo's out -> (adapter, merged checkpoint, what is wrong with it)
    "preflight-noop-adapter": (NOOP_ADAPTER, None, "an adapter that changes nothing (every LoRA B matrix zero)"),
    "preflight-broken-merge": ("it-lora-all", BROKEN_MERGE, "the adapter merged twice (W + 2 dW)"),
}
PREFLIGHT_PROMPTS = 12  # spread over the instruction prompts
PREFLIGHT_TOKENS = 48  # room for a whole report (shorter budgets cut reports before their EOS)
VISION_RUN = "vision"
SHOWN_CHART_EVENTS = 5  # one per chart aspect where the run has one


def run_preflights(root: Path, out: Path, log) -> dict | None:
    """``crosspatch preflight`` of each broken model against the base (the domain-learning check on
    the zoo's domain text); returns per model the checks' states and the failed checks' causes."""
    import json

    from ..workflows.preflight import preflight

    if not all((root / name).exists() for name in (NOOP_ADAPTER, BROKEN_MERGE, "it-lora-all")):
        return None
    prompts = [json.loads(line) for line in (root / "prompts" / "all.jsonl").read_text(encoding="utf-8").splitlines()]
    prompts = prompts[:: max(1, len(prompts) // PREFLIGHT_PROMPTS)][:PREFLIGHT_PROMPTS]
    found = {}
    for folder, (adapter, merged, wrong) in PREFLIGHTS.items():
        target = out / folder
        log(f"preflight: {adapter}" + (f" and {merged}" if merged else "") + f" ({wrong})")
        if target.exists():
            shutil.rmtree(target)  # the demo owns this directory (as its runs)
        result = preflight(str(root / "base"), adapter=str(root / adapter), merged=merged and str(root / merged),
                           prompts=prompts, domain_text=root / "prompts" / "domain.jsonl", out=target,
                           max_new_tokens=PREFLIGHT_TOKENS)
        found[folder] = {"adapter": adapter, "merged": merged, "what_is_wrong": wrong, "passed": result.passed,
                         "checks": {name: c["status"] for name, c in result.checks.items()},
                         "causes": {name: result.checks[name]["causes"] for name in result.failed()}}
    return found


def run_vision(root: Path, out: Path, config: RunConfig, progress: bool, log) -> tuple[dict | None, str | None]:
    """The diagnostic of ``vl-base`` vs ``vl-it`` on the zoo's chart prompts (first divergences,
    no controls); returns the headline effects and the events shown with their charts, and None;
    or None and why the pair could not load here (said in the log too); or None, None for a zoo
    built without the vision pair."""
    from . import load_zoo_vision_pair, vision_pair_unavailable, zoo_prompts

    if not all((root / name).exists() for name in VISION_MODELS) or \
            not (root / "prompts" / f"{CHART_PROMPTS}.jsonl").exists():
        return None, None
    reason = vision_pair_unavailable()
    if reason is not None:
        log(f"vision-language pair skipped: {reason}")
        return None, reason
    prompts = list(zoo_prompts(CHART_PROMPTS, root))
    log(f"vision-language pair: {VISION_BASE} vs {VISION_TUNED} on {len(prompts)} chart prompts")
    target = out / VISION_RUN
    if target.exists():
        shutil.rmtree(target)  # the demo owns this directory (as its runs)
    cfg = replace(config, consequence=False, controls="none", event_kinds="first_diff", group_by=[], tuned=None,
                  nulls=[], title=f"crosspatch zoo: {VISION_BASE} vs {VISION_TUNED} on weather charts")
    pair = load_zoo_vision_pair(root)
    result = run(pair, prompts, cfg, out=target, progress=progress)
    pair.release()
    boundary = result.summary["boundaries"][0]
    images = {p.id: p.metadata.get("image") for p in prompts}
    shown, aspects = [], set()
    for rec in result.records:
        if rec.valid and rec.category not in aspects and len(shown) < SHOWN_CHART_EVENTS:
            aspects.add(rec.category)
            shown.append({"prompt_id": rec.prompt_id, "aspect": rec.category, "chart": images.get(rec.prompt_id),
                          "position": rec.position, "continuation": rec.continuation_text or "",
                          "t_pt": rec.t_pt_text, "t_it": rec.t_it_text, "cells": rec.cells["common_it"]})
    return {"models": [VISION_BASE, VISION_TUNED], "prompts": len(prompts), "boundary": boundary,
            "counts": result.summary["counts"], "effects": result.summary["results"][boundary]["common_it"]["all"],
            "events": shown}, None


def chart_event_cells(event: dict) -> list[str]:
    """One shown event's text cells, in :data:`CHART_EVENT_HEADER`'s order (model text: escaped by
    whoever renders them)."""
    c = event["cells"]
    return ([event["aspect"], str(event["position"]), event["continuation"], event["t_pt"], event["t_it"]]
            + [f"{c[k]:+.2f}" for k in ("upt_lpt", "upt_lit", "uit_lpt", "uit_lit")])


def chart_event_rows(vision: dict) -> list[dict]:
    """The shown events for the HTML report: the chart as base64 PNG beside the event's cells."""
    import base64

    rows = []
    for e in vision.get("events") or []:
        path = Path(e["chart"]) if e.get("chart") else None
        png = base64.b64encode(path.read_bytes()).decode() if path and path.exists() else None
        rows.append({"png": png, "caption": e["prompt_id"], "cells": chart_event_cells(e)})
    return rows


CHART_EVENT_HEADER = ["aspect", "position", "report so far", "t_PT (vl-base)", "t_IT (vl-it)", "Y(U_PT,L_PT)",
                      "Y(U_PT,L_IT)", "Y(U_IT,L_PT)", "Y(U_IT,L_IT)"]
