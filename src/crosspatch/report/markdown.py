"""Markdown report, rendered from ``config.json`` and ``summary.json`` alone."""

from __future__ import annotations

from ..core.records import READOUTS, readout_label, verdict_readout
from .mdtext import _table, md_escape, md_escape_prose  # noqa: F401  (md_escape* are part of this module's API)
from .sections import sections_markdown

_EFFECT_LABELS = {
    "E_PT": "PT-upstream late effect `E_PT`",
    "E_IT": "IT-upstream late effect `E_IT`",
    "interaction": "interaction `I = E_IT - E_PT`",
    "native_shift": "native diagonal shift `D`",
    "direct_share": "direct (portable) share `E_PT/E_IT`",
    "matched_portable_ratio": "matched/portable ratio `E_IT/E_PT`",
    "interaction_share": "interaction share `I/D`",
    "late_interaction_share": "interaction share of the late effect `I/E_IT` (the verdict's number)",
    "odds_interaction": "odds factor `exp(I)`",
}
_RATIOS = {"direct_share", "interaction_share", "late_interaction_share"}


def fmt_value(stat: dict | None, signed: bool = True, percent: bool = False, fmt=None) -> str:
    """``mean [lo, hi]`` of a statistic, or n/a with its reason; ``fmt`` formats one number
    (default: signed two decimals, or a fraction as a percent with ``percent``)."""
    if not stat or stat.get("mean") is None:
        return f"n/a ({stat['na_reason']})" if stat and stat.get("na_reason") else "n/a"
    if fmt is None:
        # a value that rounds to zero prints unsigned (0%, +0.00), never as -0% or -0.00
        fmt = ((lambda v: f"{round(100 * v) + 0:.0f}%") if percent else
               (lambda v: f"{round(v, 2) + 0.0:+.2f}") if signed else (lambda v: f"{round(v, 2) + 0.0:.2f}"))
    text = fmt(stat["mean"])
    ci = stat.get("ci")
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" [{fmt(ci[0])}, {fmt(ci[1])}]"
    return text


WHY_NO_INTERVALS = "no bootstrap resamples: --bootstrap 0, or too few prompts"  # (what a page says in their place)
WHY_NO_INTERVALS_SHORT = "--bootstrap 0 or too few prompts"  # (in a plot's title)


def any_interval(stats) -> bool:
    """Whether any of these statistics (``{"mean", "ci"}``) has its interval."""
    return any((ci := (stat or {}).get("ci")) and ci[0] is not None and ci[1] is not None for stat in stats)


def has_intervals(*blocks: dict) -> bool:
    """Whether any cell or effect of these result blocks has its interval (none without bootstrap
    resamples: ``--bootstrap 0``, or too few prompts), so that no page claims intervals it does not
    show."""
    return any_interval(stat for block in blocks for part in ("cells", "effects")
                        for stat in (block.get(part) or {}).values())


def interval_words(*blocks: dict) -> str:
    """What the numbers of these blocks are printed with: their 95% prompt-cluster bootstrap
    intervals, or none (said)."""
    return ("with 95% prompt-cluster bootstrap intervals" if has_intervals(*blocks) else
            f"without intervals ({WHY_NO_INTERVALS})")


def fmt_percent(stat: dict | None) -> str:
    """A statistic already in percent (``{"mean", "ci"}``, e.g. a lineage stage's share of the
    final model) as ``29% [21%, 38%]``, or n/a with its reason."""
    return fmt_value(stat, fmt=lambda v: f"{round(v) + 0:.0f}%")


def fmt_effect(block: dict, name: str) -> str:
    stat = block["effects"].get(name)  # (the later effects: absent from a summary an earlier crosspatch wrote)
    if name in _RATIOS:
        return fmt_value(stat, percent=True)
    return fmt_value(stat, signed=name != "odds_interaction")


def cell_table(block: dict) -> list[str]:
    c = block["cells"]
    return _table(
        ["upstream \\ late", "`L_PT`", "`L_IT`"],
        [["`U_PT`", fmt_value(c["upt_lpt"]), fmt_value(c["upt_lit"])],
         ["`U_IT`", fmt_value(c["uit_lpt"]), fmt_value(c["uit_lit"])]],
    )


def effects_table(blocks: dict[str, dict]) -> list[str]:
    names = list(blocks)
    rows = [[label] + [fmt_effect(blocks[n], key) for n in names] for key, label in _EFFECT_LABELS.items()]
    return _table(["quantity"] + [f"{readout_label(n)} readout" for n in names], rows)


def breakdown_table(groups: dict[str, dict], label: str) -> list[str]:
    rows = []
    for name, block in groups.items():
        rows.append([md_escape(name), str(block["n_events"]), fmt_effect(block, "E_PT"),
                     fmt_effect(block, "E_IT"), fmt_effect(block, "interaction")])
    return _table([label, "events", "`E_PT`", "`E_IT`", "interaction"], rows)


def no_event_reason(item: dict) -> str:
    """A ``no_divergence_prompts`` entry's reason, with whose logits were not finite."""
    model = item.get("model")
    return f"{item['reason']} ({md_escape(str(model))})" if model else str(item["reason"])


def counts_lines(counts: dict) -> list[str]:
    nd = counts.get("no_divergence", {})
    return [
        f"- prompts: {counts['prompts']}",
        f"- first-divergence events scored: {counts['events']} "
        f"(invalid, excluded: {counts['invalid']}; near-ties: {counts['near_tie']}; "
        f"natural pass disagreeing with the search: {counts['natural_disagree']})",
        f"- prompts with no divergence: {sum(nd.values())} "
        f"(both models ended with the same EOS: {nd.get('agreed_eos', 0)}; "
        f"no disagreement within the token budget: {nd.get('budget_exhausted', 0)}"
        + (f"; NaN or infinite logits before a disagreement: {nd['non_finite_logits']}"
           if nd.get("non_finite_logits") else "") + ")",
    ]


def boundary_section(result: dict, boundary: str, num_layers: int | None, level: str = "##",
                     verdict_readout: str = "common_it") -> list[str]:
    lines = []
    depth = f" of {num_layers}" if num_layers else ""
    lines.append(f"{level} Boundary layer {boundary}{depth}")
    lines.append("")
    head = result[verdict_readout]["all"]  # the cells of the readout the verdict reads
    lines.append(f"Mean `Y = logit(t_IT) - logit(t_PT)` per cell, {readout_label(verdict_readout)} readout (the "
                 f"verdict's), {interval_words(head)}:")
    lines.append("")
    lines += cell_table(head)
    lines.append("")
    lines += effects_table({name: result[name]["all"] for name in READOUTS})
    lines.append("")
    read, label = result[verdict_readout], readout_label(verdict_readout)  # the breakdowns: the verdict's readout too
    by_cat = read["by_category"]
    if by_cat:
        lines.append(f"{level}# By category ({label})")
        lines.append("")
        lines += breakdown_table(by_cat, "category")
        lines.append("")
    for key, groups in read.items():
        if key.startswith("by_") and key not in ("by_category", "by_position") and groups:
            field_name = key[3:]
            lines.append(f"{level}# By {md_escape(field_name)} ({label})")
            lines.append("")
            lines += breakdown_table(groups, md_escape(field_name))
            lines.append("")
    averaged = read.get("kinds_averaged")
    if averaged:
        lines.append(f"Event kinds averaged per prompt before pooling (as the paper did): interaction "
                     f"{fmt_effect(averaged, 'interaction')}, `E_PT` {fmt_effect(averaged, 'E_PT')}, "
                     f"`E_IT` {fmt_effect(averaged, 'E_IT')} ({averaged['n_prompts']} prompts).")
        lines.append("")
    if "by_position" in read:  # (the common readouts' groups: a native readout has none)
        lines.append(f"{level}# By generated position ({label})")
        lines.append("")
        lines += breakdown_table(read["by_position"], "position")
        lines.append("")
    agree = result.get("readout_agreement", {})
    if agree.get("same_sign_fraction") is not None:
        corr = agree["interaction_correlation"]
        lines.append(
            f"Readout agreement: per-event interactions have the same sign under both readouts in "
            f"{100 * agree['same_sign_fraction']:.0f}% of events"
            + (f" (correlation {corr:.2f})." if corr is not None else ".")
        )
        lines.append("")
    return lines


def sweep_section(summary: dict) -> list[str]:
    """Table of the three effects at every boundary in the verdict's readout, and the plot written
    beside the report."""
    readout = verdict_readout(summary.get("verdict"))
    rows = []
    for b in sorted(summary["boundaries"], key=int):
        block = summary["results"][b][readout]["all"]
        rows.append([b, str(block["n_events"]), fmt_effect(block, "E_PT"), fmt_effect(block, "E_IT"),
                     fmt_effect(block, "interaction")])
    return ([f"## Layer sweep ({readout_label(readout)})", "", "![layer sweep](sweep.png)", ""]
            + _table(["boundary", "events", "`E_PT`", "`E_IT`", "interaction"], rows) + [""])


def reading_lines(result: dict) -> list[str]:
    """A plain-language reading of the headline numbers, with the uncertainty stated."""
    eff = result["common_it"]["all"]["effects"]
    inter, e_pt = eff["interaction"], eff["E_PT"]
    if inter["mean"] is None:
        return ["No valid events, so there is nothing to read."]
    ci = inter.get("ci")
    if ci and ci[0] is not None and ci[0] > 0:
        verdict = ("The late stack's gain depends on the descendant's own upstream state: it is smaller "
                   "on base upstream state (positive interaction, interval above zero). A fine-tune "
                   "like this is fragile when grafted onto base early layers.")
    elif ci and ci[1] is not None and ci[1] < 0:
        verdict = ("The late stack's gain is larger on base upstream state than on its own (negative "
                   "interaction, interval below zero).")
    else:
        verdict = ("The interaction's interval includes zero: no evidence that the late stack's gain "
                   "depends on which upstream state it reads; the late effect looks portable.")
    share = (eff.get("direct_share") or {}).get("mean")  # (absent from a summary an earlier crosspatch wrote)
    extra = f" The portable part `E_PT` is {fmt_value(e_pt)}"
    extra += f", {100 * share:.0f}% of `E_IT`." if share is not None else "."
    return [verdict + extra]


def verdict_lines(summary: dict) -> list[str]:
    """The verdict, first thing in the report: the word, then the plain-words reason."""
    v = summary.get("verdict")
    if not v:
        return []
    return [f"**Verdict: {v['verdict']}** (boundary {v['boundary']}, {readout_label(v['readout'])} readout)", "",
            md_escape_prose(v["reason"]), ""]


def _fmt_number(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:+.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:+.2f}"
    return str(value)


def controls_table(rows: list[dict]) -> list[str]:
    """The Controls table: one row per control."""
    if not rows:
        return []
    body = []
    for r in rows:
        ci = r.get("ci")
        ci_text = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci and None not in ci else ""
        body.append([r["control"].replace("_", "-"), r["status"], _fmt_number(r.get("value")), ci_text,
                     str(r.get("n") if r.get("n") is not None else ""), md_escape_prose(r.get("threshold") or ""),
                     md_escape_prose(r.get("summary") or "")])
    return ["## Controls", ""] + _table(["control", "status", "value", "95% CI", "n", "threshold", "reading"], body) + [""]


def model_shown(entry: dict | None) -> str:
    """How a report names one recorded model: as given (``REPO@REVISION``: not the snapshot
    directory it was read from), else its path."""
    entry = entry if isinstance(entry, dict) else {}
    return str(entry.get("given") or entry.get("path", "?"))


def scored_descendant(config: dict) -> tuple[str, str]:
    """(path, "descendant" or "PEFT adapter") of the model a run scores against the base: the
    pair's ``tuned``/``adapter`` entry, or with several descendants loaded (compare, lineage)
    the ``descendants`` entry of the run's role."""
    models = config.get("models", {})
    if "descendants" in models:
        roles = config.get("roles") or []
        role = (config.get("options") or {}).get("tuned") or (roles[1] if len(roles) > 1 else None)
        entry = models["descendants"].get(role, {})
        return model_shown(entry), "PEFT adapter" if entry.get("kind") == "adapter" else "descendant"
    if "adapter" in models:
        return model_shown(models["adapter"]), "PEFT adapter"
    return model_shown(models.get("tuned")), "descendant"


def prompt_source(config: dict) -> tuple[str, str] | None:
    """Where a run's prompts were read from and their digest (``("prompts.jsonl", "sha256
    143b8f1298de…")``), when the run recorded a source (prompts given in Python have none)."""
    prompts = config.get("prompts") or {}
    source, digest = prompts.get("source"), prompts.get("sha256")
    if not isinstance(source, str) or not source:
        return None
    return source, f"sha256 {str(digest)[:12]}…" if digest else "no digest"


def chosen_settings(opts: dict) -> list[tuple[str, str]]:
    """The settings a run chose that change what its verdict reads, named in both reports' setup:
    a verdict policy other than the default (only the fields it changes), the chat template (the
    prompts as the tokenizer's chat template renders them) and word lists of one's own (FORMAT
    words, assistant markers: they decide the token categories and the later event kinds). Empty
    for a default run."""
    from ..core.verdict import VerdictPolicy

    chosen = []
    if opts.get("chat_template"):
        chosen.append(("chat template", "every prompt rendered by the tokenizer's chat template"))
    try:
        given = VerdictPolicy.from_dict(opts.get("policy") or {}).as_dict()
    except (ValueError, TypeError):  # (a policy the run refused would not be here; an older one read as stored)
        given = {}
    for key, what in (("format_tokens", "format words"), ("marker_words", "assistant-marker words")):
        if isinstance(words := opts.get(key), list):
            shown = ", ".join(map(str, words[:8])) + (", ..." if len(words) > 8 else "")
            chosen.append((what, f"{len(words)} of the run's own, in place of crosspatch's ({shown})"))
    default = VerdictPolicy().as_dict()
    changed = [f"{key} {', '.join(map(str, value)) if isinstance(value, list) else value}"
               for key, value in given.items() if value != default.get(key)]
    if changed:
        chosen.append(("policy", "; ".join(changed) + " (the rest as default)"))
    return chosen


def render_markdown(config: dict, summary: dict) -> str:
    """The full report. Deterministic: the same stored files give the same text."""
    models = config.get("models", {})
    num_layers = summary.get("num_layers")
    title = config.get("title") or "crosspatch run"
    lines = [f"# {md_escape(title)}", ""]
    lines += verdict_lines(summary)
    base = model_shown(models.get("base"))
    tuned, kind = scored_descendant(config)
    # escaped text, not a code span: inside one a backslash escape prints (my\\_model) and
    # model text would stand there raw
    lines += [f"- base (PT): {md_escape(base)}", f"- {kind} (IT): {md_escape(tuned)}"]
    source = prompt_source(config)
    if source:
        lines.append(f"- prompt set: {md_escape(source[0])} ({source[1]})")
    opts = config.get("options", {})
    lines.append(
        f"- boundary: {', '.join(summary['boundaries'])} of {num_layers} layers; max new tokens "
        f"{opts.get('max_new_tokens')}; dtype {config.get('load_options', {}).get('dtype', opts.get('dtype'))}; "
        f"rollout model {opts.get('rollout_model')}; bootstrap {opts.get('bootstrap')} resamples, seed {opts.get('seed')}"
    )
    lines += [f"- {name}: {md_escape_prose(text)}" for name, text in chosen_settings(opts)]
    lines.append("")
    lines += counts_lines(summary["counts"])
    if summary.get("until_ci_width"):
        lines.append(f"- --until-ci-width {summary['until_ci_width']['target']}: "
                     + md_escape_prose(summary["until_ci_width"]["message"]))
    lines.append("")
    first = summary["boundaries"][0]
    if not summary.get("verdict"):
        lines.append("## Reading")
        lines.append("")
        lines += reading_lines(summary["results"][first])
        lines.append("")
    lines += controls_table(summary.get("controls", []))
    lines += sections_markdown(summary)
    if len(summary["boundaries"]) > 1:
        lines += sweep_section(summary)
    for b in summary["boundaries"]:
        lines += boundary_section(summary["results"][b], b, num_layers,
                                  verdict_readout=verdict_readout(summary.get("verdict")))
    warnings = summary.get("warnings", [])
    lines.append("## Warnings")
    lines.append("")
    lines += [f"- {md_escape(w)}" for w in warnings] or ["- none"]
    lines.append("")
    nd = summary.get("no_divergence_prompts", [])
    if nd:
        lines.append("## Prompts without a divergence")
        lines.append("")
        shown = nd[:50]
        lines += [f"- {md_escape(x['prompt_id'])}: {no_event_reason(x)}" for x in shown]
        if len(nd) > len(shown):
            lines.append(f"- ... and {len(nd) - len(shown)} more (see no_divergence.jsonl)")
        lines.append("")
    vocab = summary.get("real_vocabulary")
    if vocab:
        lines.append("## Real vocabulary")
        lines.append("")
        counts = ", ".join(f"{k}: {v}" for k, v in vocab["masked_counts"].items() if v)
        lines.append(f"{vocab['real_ids']} of {vocab['total_ids']} ids eligible for argmax; masked: {counts or 'none'}.")
        lines.append("")
    return "\n".join(lines)
