"""``summary.json`` of a run: counts, warnings, the effect blocks, the Controls table, each
registered analysis' block and the verdict; a pure function of the stored records
(:func:`build_summary`), so a finished run can be summarised again at any time."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..core.cells import CellRecord, headline_boundary
from ..core.divergence import NO_DIVERGENCE_REASONS, NoDivergence
from ..core.plugin_calls import call_plugin, checked_control_row
from ..core.registry import SummaryContext, control_row, enabled_plugins, registered
from ..core.stats import BootstrapConfig, summarize_boundaries
from ..core.verdict import VerdictPolicy, decide
from ..store import SUMMARY_SCHEMA

HEADLINE_EFFECTS = ("E_PT", "E_IT", "interaction")


def effects_at(summary: dict, boundary, readout: str = "common_it") -> dict | None:
    """``{"n_events", "E_PT", "E_IT", "interaction"}`` (each ``{"mean", "ci"}``) of a summary's
    first-divergence block at ``boundary``, None when the summary has none there."""
    block = ((summary.get("results") or {}).get(str(boundary)) or {}).get(readout, {}).get("all")
    if not block:
        return None
    effects = block["effects"]
    return {"n_events": block["n_events"], **{k: effects[k] for k in HEADLINE_EFFECTS if k in effects}}


def as_row(record) -> dict:
    """A stored row of an analysis (a dict, or a record object with ``to_record``)."""
    return record.to_record() if hasattr(record, "to_record") else record


def _counts(first: list[CellRecord], no_div: list[NoDivergence], prompts_count: int) -> dict:
    reasons: dict[str, int] = dict.fromkeys(NO_DIVERGENCE_REASONS, 0)
    for x in no_div:
        reasons[x.reason] = reasons.get(x.reason, 0) + 1
    return {
        "prompts": prompts_count,
        "events": sum(r.valid for r in first),
        "invalid": sum(not r.valid for r in first),
        "near_tie": sum(r.near_tie for r in first),
        "natural_disagree": sum(not r.natural_agrees for r in first),
        "no_divergence": reasons,
    }


def _warnings(config_record: dict, first: list[CellRecord], no_div: list[NoDivergence], counts: dict) -> list[str]:
    warnings = list(config_record.get("pair_warnings", [])) + list(config_record.get("run_warnings", []))
    shard = (config_record.get("options") or {}).get("shard")
    if shard:  # a merged run records none
        warnings.append(f"this run is shard {shard} of a sharded run: its numbers and verdict cover this shard's "
                        "prompts only; merge the shards (crosspatch merge) for the run's result")
    non_finite = [x for x in no_div if x.reason == "non_finite_logits"]
    if non_finite:
        whose = Counter(x.model or "a model" for x in non_finite)
        warnings.append(
            f"{len(non_finite)} prompt(s) have no event because a model's logits were NaN or infinite before the "
            f"two disagreed ({', '.join(f'{m}: {n}' for m, n in whose.items())}): "
            f"{', '.join(x.prompt_id for x in non_finite)[:300]}; in float16 this is usually an overflow "
            "(use --dtype bfloat16 or float32), otherwise a damaged checkpoint"
        )
    if counts["invalid"]:
        bad = ", ".join(r.prompt_id for r in first if not r.valid)[:300]
        warnings.append(f"{counts['invalid']} event(s) had non-finite cells and were excluded: {bad}")
    if counts["near_tie"]:
        warnings.append(
            f"{counts['near_tie']} event(s) are near-ties (a top-1/top-2 margin under "
            f"{config_record['options']['near_tie_threshold']} logits); in low precision the divergence "
            "may move" + ("" if config_record.get("load_options", {}).get("dtype", "float32") == "float32"
                          else ", consider --dtype float32")
        )
    if counts["natural_disagree"]:
        warnings.append(
            f"{counts['natural_disagree']} event(s) where a recomputed forward did not reproduce the "
            "searched token as argmax (numerical tie)"
        )
    return warnings


def plugin_blocks(ctx: SummaryContext, analyses: dict[str, list],
                  only: set[str] | None = None) -> tuple[list[dict], dict[str, dict]]:
    """The Controls rows and every other enabled analysis' block, from each plug-in's records
    (``only``: of the enabled plug-ins, these names alone)."""
    rows, blocks = [], {}
    ran = [name for name, plugin in registered().items() if plugin.records and analyses.get(plugin.records)]
    for plugin in enabled_plugins(ctx.options, ran):  # selected, or with records (run after the fact)
        if only is not None and plugin.name not in only:
            continue
        data = [as_row(r) for r in analyses.get(plugin.records, [])] if plugin.records else []
        options = plugin.make_options((ctx.options.get("analysis_options") or {}).get(plugin.name))
        if plugin.role == "control":
            rows.append(checked_control_row(plugin, call_plugin(plugin.name, "summarize", plugin.summarize, data, ctx,
                                                                options)) if ctx.first
                        else control_row(plugin.name, "info", None, "no events", n=0))
            continue
        block = call_plugin(plugin.name, "summarize", plugin.summarize, data, ctx, options, returns=(dict,),
                            what="a dict (its block of summary.json)")
        if block is not None:
            blocks[plugin.summary_key] = block
    return rows, blocks


def build_summary(
    config_record: dict, records: list[CellRecord], no_div: list[NoDivergence], prompts_count: int,
    boot: BootstrapConfig, session_keys: dict | None = None, analyses: dict[str, list] | None = None,
    run_dir: str | Path | None = None,
) -> dict:
    """Counts, warnings, statistics, controls, analysis blocks and the verdict of a run (a pure
    function of the stored records; ``analyses``: each plug-in's records by records-file stem)."""
    from ..analyses.event_kinds import requested_event_kinds

    boundaries = config_record["resolved_boundaries"]
    first = [r for r in records if r.boundary == boundaries[0] and r.kind == "first_diff"]
    counts = _counts(first, no_div, prompts_count)
    warnings = _warnings(config_record, first, no_div, counts)
    opts = config_record["options"]
    summary = {
        "schema_version": SUMMARY_SCHEMA,
        "num_layers": config_record["num_layers"],
        "boundaries": [str(b) for b in boundaries],
        "counts": counts,
        "results": summarize_boundaries(records, boot, opts.get("group_by") or (), boundaries,
                                        requested_event_kinds(opts.get("event_kinds", "all"))),
        "warnings": warnings,
        "no_divergence_prompts": [{"prompt_id": x.prompt_id, "reason": x.reason,
                                   **({"model": x.model} if x.model else {})} for x in no_div],
        "real_vocabulary": config_record.get("real_vocabulary"),
    }
    headline = headline_boundary(boundaries, config_record["num_layers"], opts["boundary"])
    ctx = SummaryContext(config_record, records, headline, boot, dict(session_keys or {}),
                         Path(run_dir) if run_dir is not None else None, summary["results"])
    rows, blocks = plugin_blocks(ctx, analyses or {})
    summary["controls"] = rows
    summary.update(blocks)
    policy = VerdictPolicy.from_dict(opts.get("policy") or {})
    block = summary["results"][str(headline)][policy.readout]
    summary["verdict"] = {**decide(block["all"], rows, policy, counts), "boundary": headline, "readout": policy.readout}
    non_finite = [x for x in no_div if x.reason == "non_finite_logits"]
    if non_finite and not block["all"].get("n_prompts"):
        summary["verdict"]["reason"] = (
            f"No prompt produced a scorable event, and {len(non_finite)} of {prompts_count} stopped at NaN or "
            "infinite logits before the two models disagreed (see the warnings): check the models' dtype "
            "(float16 overflows) and weights before reading anything else.")
    if prompts_count == 0:  # a shard of a job array that got no prompt
        summary["verdict"]["reason"] = (f"This run holds no prompt (shard {opts.get('shard')} of a prompt set with "
                                        "fewer prompts than shards); merge it with the other shards.")
    summary["verdicts_by_category"] = {name: decide(b, None, policy)["verdict"]
                                       for name, b in block["by_category"].items()}
    for row in rows:
        if row["status"] in ("warn", "fail"):
            warnings.append(f"control {row['control']} ({row['status']}): {row['summary']}")
    if session_keys:
        summary.update(session_keys)
    from ..report.sections import rendered_sections

    summary["sections"] = rendered_sections(summary)  # the reports read them back without the plug-ins
    return summary
