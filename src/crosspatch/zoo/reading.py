"""The demo's reading: plain-words findings written from the numbers of a demo summary.

Every sentence is chosen by a rule on the numbers it quotes (a sign, whether an interval
excludes zero, which group is largest), so the reading changes when the zoo or the method does;
nothing here is a fixed claim about the zoo.
"""

from __future__ import annotations

from ..report.markdown import fmt_value


def common_it(s: dict) -> dict:
    """A run summary's common-IT blocks at its first boundary (``all``, ``by_category``, ...)."""
    return s["results"][s["boundaries"][0]]["common_it"]


def _headline(s: dict) -> dict:
    return common_it(s)["all"]


def _stat(block: dict | None, name: str) -> dict | None:
    return None if not block else block["effects"].get(name)


def _mean(stat: dict | None) -> float | None:
    return None if not stat else stat.get("mean")


def sign_word(stat: dict | None) -> str:
    """``positive``/``negative`` when the interval excludes zero, else ``indistinguishable from zero``."""
    if not stat or stat.get("mean") is None:
        return "not estimable"
    ci = stat.get("ci")
    if ci and ci[0] is not None and ci[0] > 0:
        return "positive"
    if ci and ci[1] is not None and ci[1] < 0:
        return "negative"
    return "indistinguishable from zero"


def _groups(s: dict, key: str) -> dict:
    return common_it(s).get(key, {})


def _apart(a: dict | None, b: dict | None) -> int:
    """+1 when ``a``'s interval lies above ``b``'s, -1 below, 0 when they overlap (or are missing)."""
    ca, cb = (a or {}).get("ci"), (b or {}).get("ci")
    if not ca or not cb or None in (*ca, *cb):
        return 0
    return 1 if ca[0] > cb[1] else -1 if ca[1] < cb[0] else 0


def _extremes(groups: dict, effect: str = "interaction", min_events: int = 8) -> tuple | None:
    means = {g: _mean(_stat(b, effect)) for g, b in groups.items() if b["n_events"] >= min_events}
    rows = [(g, groups[g]) for g, m in means.items() if m is not None]
    if len(rows) < 2:
        return None
    rows.sort(key=lambda r: means[r[0]] or 0.0)
    return rows[0], rows[-1]


def instruction_tuning(summary: dict, name: str = "it-full") -> list[str]:
    s = summary["descendants"].get(name)
    if not s:
        return []
    block = _headline(s)
    inter = _stat(block, "interaction")
    word = sign_word(inter)
    lines = [f"**Instruction tuning ({name})**: its late layers move Y by {fmt_value(_stat(block, 'E_IT'))} on its own "
             f"upstream state and {fmt_value(_stat(block, 'E_PT'))} on the base's; the interaction is {word} "
             f"({fmt_value(inter)}, {block['n_events']} events). " + {
                 "positive": "As in the paper, part of the late gain needs the fine-tuned early layers.",
                 "negative": "Unlike the paper's headline, on these events the late layers do more on the base's "
                             "upstream state than on their own: the fine-tuned early layers already carry much of "
                             "the shift, and the late layers add less on top of it.",
             }.get(word, "The late gain does not measurably depend on whose early layers produced the state.")]
    ext = _extremes(_groups(s, "by_style"))
    if ext:
        (lo, lb), (hi, hb) = ext
        signs = {sign_word(_stat(b, "interaction")) for b in _groups(s, "by_style").values() if b["n_events"] >= 8}
        verdict = (f"{signs.pop()} on every style" if len(signs) == 1 and "indistinguishable from zero" not in signs else
                   "its sign depends on what kind of decision the event is, so read the breakdowns, not only the "
                   "headline" if {"positive", "negative"} <= signs else
                   "the styles differ in size, not reliably in sign")
        lines.append(f"By prompt style the interaction runs from {fmt_value(_stat(lb, 'interaction'))} on {lo} prompts "
                     f"to {fmt_value(_stat(hb, 'interaction'))} on {hi} prompts: {verdict}.")
    kinds = _groups(s, "by_token_category")
    ext = _extremes(kinds)
    if ext:
        (lo, lb), (hi, hb) = ext
        lines.append(f"By token category (t_PT -> t_IT) it runs from {fmt_value(_stat(lb, 'interaction'))} on "
                     f"{lo} events (n={lb['n_events']}) to {fmt_value(_stat(hb, 'interaction'))} on {hi} events "
                     f"(n={hb['n_events']}).")
    return lines


def eras_and_splits(summary: dict, name: str = "it-full") -> list[str]:
    s = summary["descendants"].get(name)
    if not s:
        return []
    lines = []
    eras = _groups(s, "by_era")
    if "older" in eras and "newer" in eras:
        old, new = eras["older"], eras["newer"]
        e_old, e_new = _mean(_stat(old, "E_IT")), _mean(_stat(new, "E_IT"))
        more = ("no mean to compare" if e_new is None or e_old is None
                else "smaller" if e_new < e_old else "larger")
        lines.append(f"**House style**: on prompts in the newer style, which instruction tuning never showed, {name}'s "
                     f"late effect on its own upstream state is {fmt_value(_stat(new, 'E_IT'))} against "
                     f"{fmt_value(_stat(old, 'E_IT'))} on the older style it was tuned on ({more}); interaction "
                     f"{fmt_value(_stat(new, 'interaction'))} vs {fmt_value(_stat(old, 'interaction'))}.")
    splits = _groups(s, "by_split")
    a = splits.get("in_distribution")
    offices, regions = splits.get("held_out_office"), splits.get("held_out_region")
    if a and (offices or regions):
        parts = []
        if offices:
            parts.append(f"on held-out offices (US sites instruction tuning never saw) interaction "
                         f"{fmt_value(_stat(offices, 'interaction'))}")
        if regions:
            parts.append(f"on held-out regions (sites abroad, other climates) {fmt_value(_stat(regions, 'interaction'))}")
        lines.append(f"**Held-out sites**: {'; '.join(parts)}; against {fmt_value(_stat(a, 'interaction'))} on the "
                     "training offices.")
    return lines


def contrasts(summary: dict, late_layers: list[int] | None) -> list[str]:
    d = summary["descendants"]
    lines = []
    full, units = d.get("it-full"), d.get("it-units")
    if full and units:
        fs, us = _stat(_headline(full), "direct_share"), _stat(_headline(units), "direct_share")
        if _mean(fs) is not None and _mean(us) is not None:
            apart = _apart(us, fs)
            comparison = ("more portable to the base's early layers than instruction tuning's, as the paper found for "
                          "a math fine-tune" if apart > 0 else
                          "less portable than instruction tuning's, unlike the paper's math fine-tune" if apart < 0 else
                          "about as portable as instruction tuning's (the intervals overlap)")
            lines.append(f"**Narrow domain (it-units)**: verdict {units['verdict']['verdict']}, direct share "
                         f"{fmt_value(us, percent=True)} against it-full's {fmt_value(fs, percent=True)}: its late "
                         f"effect is {comparison}.")
    late = d.get("it-lora-late")
    if late and late_layers:
        b = int(late["boundaries"][0])
        inter = _stat(_headline(late), "interaction")
        inter_mean = _mean(inter)
        if min(late_layers) >= b and inter_mean is not None:
            exact = abs(inter_mean) < 1e-3
            lines.append(f"**Late-only LoRA (it-lora-late)** trains layers {late_layers[0]}-{late_layers[-1]}, all at or "
                         f"above the boundary {b}: its upstream state is the base's, so the interaction must be zero; it "
                         f"is {_mean(inter):.1e} ({'the check holds' if exact else 'THE CHECK FAILS'}).")
    merged, adapter = d.get("it-merged"), d.get("it-lora-all")
    if merged and adapter:
        a, m = _mean(_stat(_headline(adapter), "interaction")), _mean(_stat(_headline(merged), "interaction"))
        if a is not None and m is not None:
            lines.append(f"**Adapter vs merged**: the LoRA adapter gives interaction {a:+.2f} and its merged checkpoint "
                         f"{m:+.2f} ({'the same diagnosis' if abs(a - m) < 0.1 else 'they differ: check the merge'}; "
                         "the merged weights are rounded to float16).")
    fragile = d.get("it-lora-fragile")
    if fragile:
        block, verdict = _headline(fragile), fragile["verdict"]
        intended = verdict["verdict"] == "upstream-dependent"
        lines.append(f"**Fragile adapter (it-lora-fragile)**, built so that its late LoRA reads what only its early LoRA "
                     f"writes: E_PT {fmt_value(_stat(block, 'E_PT'))} on the base's upstream state against E_IT "
                     f"{fmt_value(_stat(block, 'E_IT'))} on its own{_share_text(verdict)}: verdict {verdict['verdict']} "
                     f"({'as constructed: its late gain largely disappears on base upstream state' if intended else 'NOT the verdict it was built for'}).")
    twin, full = d.get("it-full-seed2"), d.get("it-full")
    if twin and full:
        ti, fi = _stat(_headline(twin), "interaction"), _stat(_headline(full), "interaction")
        if _mean(ti) is not None and _mean(fi) is not None:
            apart = _apart(ti, fi)
            lines.append(f"**Seed twin (it-full-seed2)**, it-full's recipe with another seed: interaction "
                         f"{fmt_value(ti)} against it-full's {fmt_value(fi)}, verdicts {twin['verdict']['verdict']} and "
                         f"{full['verdict']['verdict']} ({'the intervals overlap: the diagnosis is stable across seeds' if apart == 0 else 'the intervals are apart: seeds move this diagnosis, read single runs with care'}).")
    beyond, within = [], []
    for name, summary_of in d.items():
        row = next((c for c in summary_of.get("controls") or [] if c.get("control") == "null_calibration"), None)
        if row and row.get("status") != "info":
            (beyond if row["status"] == "pass" else within).append(name)
    if beyond or within:
        lines.append("**Null yardstick** (`lora-generic`, a LoRA on generic text, and `cpt`, harmless fine-tunes of the "
                     "base scored on each run's own events): the interaction lies beyond the nulls' for "
                     f"{', '.join(beyond) or 'no descendant'}; within them for {', '.join(within) or 'none'}"
                     " (an interaction claim within the nulls' becomes inconclusive, docs/verdict.md).")
    cpt = d.get("cpt")
    if cpt:
        block = _headline(cpt)
        lines.append(f"**Continued pretraining (cpt)**, the non-instruction control: {block['n_events']} events, late "
                     f"effect {fmt_value(_stat(block, 'E_IT'))}, interaction {fmt_value(_stat(block, 'interaction'))}, "
                     f"verdict {cpt['verdict']['verdict']}.")
    return lines


def cross_descendants(summary: dict, name: str = "it-full") -> list[str]:
    """How much of the gap between base upstream and ``name``'s own upstream state other
    descendants' upstream states recover through ``name``'s late stack."""
    cross = (summary.get("cross") or {}).get("cross") or {}
    base = (summary.get("cross") or {}).get("base")
    if not cross or name not in cross or base not in cross:
        return []
    own, from_base = (cross[name].get(name) or {}).get("mean"), (cross[base].get(name) or {}).get("mean")
    if own is None or from_base is None or abs(own - from_base) < 1e-6:
        return []
    parts = []
    for other in cross:
        y = (cross[other].get(name) or {}).get("mean")
        if other in (name, base) or y is None:
            continue
        parts.append((other, (y - from_base) / (own - from_base)))
    if not parts:
        return []
    shared = all(share >= 0.5 for _, share in parts)
    return [f"**Cross-descendant patching**: through {name}'s late stack, the upstream states of other fine-tunes of "
            f"the same base recover " + ", ".join(f"{100 * share:.0f}% ({other})" for other, share in parts)
            + f" of the gap between the base's upstream state (Y {from_base:+.2f}) and {name}'s own ({own:+.2f}): "
            + ("what the late stack needs from upstream is largely shared by these fine-tunes, not specific to its "
               "own early layers." if shared else
               "part of what the late stack needs is specific to its own early layers.")]


def consequences(summary: dict, name: str = "it-full") -> list[str]:
    s = summary["descendants"].get(name) or {}
    block = ((s.get("consequences") or {}).get("by_model") or {}).get("IT")
    if not block:
        return []
    delta = block["delta_t_it_minus_t_pt"]
    word = sign_word(delta)
    unended = block.get("unended") or {}
    cut = (f" ({unended['n']} of {unended['of']} continuations stopped at the budget before they ended, which a "
           "validator reading the whole answer fails whatever the token)") if unended.get("n") else ""
    return [f"**Consequences**: when {name} continues after its own token the validator passes "
            f"{block['pass_rate']['t_it']['mean']:.0%} of the time, after the base's token "
            f"{block['pass_rate']['t_pt']['mean']:.0%} (difference {fmt_value(delta)}): the divergent token "
            + ("matters for the answer's correctness" if word == "positive" else
               "does not measurably help the answer" if word != "negative" else "hurts the answer") + cut + "."]


def features(summary: dict) -> list[str]:
    feat = summary.get("features") or {}
    gate, study = feat.get("quality_gate"), feat.get("study") or {}
    med = (study.get("mediation") or {})
    if not gate or not med:
        return []
    ks = sorted(med, key=int)
    top, rnd = med[ks[0]]["top"], med[ks[0]]["matched_random"]
    shares = ", ".join(f"{k} latents {100 * med[k]['top']['share']:.0f}%" for k in ks
                       if med[k]["top"].get("share") is not None)
    small = [k for k in ks if int(k) <= feat.get("n_latents", 256) // 5] or ks[:1]  # at most a fifth of the latents
    best = max((med[k]["top"].get("share") or 0.0) for k in small)
    finding = (f"at most {small[-1]} of {feat.get('n_latents', '?')} latents carry half or more of the interaction"
               if best >= 0.5 else
               f"the top {small[-1]} latents carry part of the interaction, not most of it" if best >= 0.2 else
               "no small feature set carries much of the interaction")
    if top["upstream_dependence"] <= max(0.05, 3 * abs(rnd["upstream_dependence"])):
        finding = "the top-ranked features do no better than random ones"
    return [f"**Features**: the shipped crosscoder {'passes' if gate['passed'] else 'FAILS'} its quality gate on the "
            f"demo's held-out events (mean L0 {gate['mean_l0']:.1f} for k = {gate['target_k']}). Removing the IT "
            f"decoder contribution of the {ks[0]} top-ranked latents changes Y by {0.0 - top['drop_uit_lit']:+.2f} on the "
            f"descendant's upstream state and by {0.0 - top['drop_upt_lit']:+.2f} on the base's ({ks[0]} frequency-matched "
            f"random latents: {0.0 - rnd['drop_uit_lit']:+.2f} and {0.0 - rnd['drop_upt_lit']:+.2f}); share of the held-out "
            f"interaction removed: {shares or 'n/a'}: {finding}."]


def lineage_and_sweep(summary: dict) -> list[str]:
    lines = []
    lin = summary.get("lineage")
    if lin:
        from ..report.markdown import fmt_percent

        by = lin["by_stage"]
        first = lin["stages"][0]
        if by[first].get("percent_of_final") is not None:
            inters = ", ".join(f"{st} {fmt_value(by[st].get('interaction'))}" for st in lin["stages"])
            shares = ", ".join(f"{st} {fmt_percent(by[st].get('share_of_final_shift'))}" for st in lin["stages"][1:])
            text = (f"**Lineage**: the first stage ({first}) already reaches "
                    f"{fmt_percent(by[first].get('share_of_final_shift') or {'mean': by[first]['percent_of_final']})} "
                    f"of the final model's shift on the base -> final events; {shares}. Interaction at each stage: "
                    f"{inters}.")
            authors = by[first].get("share_of_final_interaction") or {}
            if authors.get("mean") is not None:
                text += (" Measured as the method's authors do (the stage's interaction over the final's, both read "
                         "with the final model's head), the stages reach " + ", ".join(
                             f"{st} {fmt_percent(by[st].get('share_of_final_interaction'))}" for st in lin["stages"])
                         + " (the paper: SFT about 29-40% of the final, DPO about 84%).")
            lines.append(text)
    sweep = summary.get("sweep")
    if sweep:
        rows = [(b, m) for b, m in ((b, _mean(block["effects"]["interaction"])) for b, block in sweep.items())
                if m is not None]
        if rows:
            b, v = max(rows, key=lambda r: abs(r[1]))
            lines.append(f"**Layer sweep**: the interaction is largest in size at boundary {b} ({v:+.2f}); across "
                         f"boundaries it spans {min(r[1] for r in rows):+.2f} to {max(r[1] for r in rows):+.2f}, so "
                         "state the boundary with any number you quote.")
    return lines


def _share_text(verdict: dict) -> str:
    share = (verdict.get("numbers") or {}).get("late_interaction_share") or {}
    if share.get("mean") is None:
        return ""
    return f" (I/E_IT {fmt_value(share, percent=True)})"


def advice(summary: dict) -> list[str]:
    """One line per verdict grade, naming the descendants with their interaction share and its
    interval (the numbers the verdict rule decided on, docs/verdict.md)."""
    by_verdict: dict[str, list[str]] = {}
    for name, s in summary["descendants"].items():
        by_verdict.setdefault(s["verdict"]["verdict"], []).append(name + _share_text(s["verdict"]))
    lines = ["**What to do**:"]
    text = {
        "upstream-dependent": "the whole interval of the interaction share lies above the policy's upper bound: the "
                              "late gain needs the tuned early layers; do not transplant or merge these late layers "
                              "onto another base, and gate such adapters with `crosspatch gate`.",
        "partly-upstream-dependent": "the interaction share's interval lies between the bounds or straddles one: "
                                     "part of the late gain carries over to the base's early layers and part needs "
                                     "the tuned ones; grafting keeps only part of the gain, check the breakdowns.",
        "portable": "the whole interval of the interaction share lies below the portable bound and E_PT is reliable: "
                    "the late gain carries over to the base's early layers; late-layer merging or transplanting is "
                    "not ruled out by this diagnostic.",
        "no-late-effect": "no late effect to protect at this boundary.",
        "inconclusive": "inconclusive (the reason says why: too few prompts, a wide interval, or a control that "
                        "failed); add prompts or read the controls before acting.",
    }
    for verdict, sentence in text.items():
        if by_verdict.get(verdict):
            lines.append(f"- {', '.join(by_verdict[verdict])}: {sentence}")
    return lines


WHY = {  # what each zoo descendant's recipe makes of its late layers, and the verdict it was built to show
    "it-lora-fragile": ("its late LoRA was trained to read what only its own early LoRA writes (KL terms kept either "
                        "half alone equal to the base)", "upstream-dependent"),
    "it-lora-late": ("only its last layers were tuned, on the base's own upstream state", "portable"),
    "cpt": ("it only continued pretraining on more raw text: no instruction task to carry", "no-late-effect"),
    "it-full": ("every layer was tuned together, so the late layers learned on tuned early layers", None),
    "it-lora-all": ("a LoRA on every layer, tuned together as it-full", None),
    "it-merged": ("it-lora-all merged into a checkpoint", None),
    "it-units": ("a narrow arithmetic domain, the analogue of the paper's portable math fine-tune", None),
    "it-full-seed2": ("it-full's recipe with another seed", None),
}


def why_each_verdict(summary: dict) -> list[str]:
    """One line per descendant: what its recipe did to its late layers, the numbers the verdict read
    (E_PT against E_IT, the interaction share) and whether it came out as the recipe intends."""
    lines = []
    for name, s in summary["descendants"].items():
        recipe, intended = WHY.get(name, ("", None))
        block = _headline(s)
        verdict = s["verdict"]["verdict"]
        numbers = (f"the late layers move Y by {fmt_value(_stat(block, 'E_IT'))} on its own upstream state and "
                   f"{fmt_value(_stat(block, 'E_PT'))} on the base's{_share_text(s['verdict'])}")
        match = ("" if intended is None else " — as built" if intended == verdict else
                 f" — not the {intended} its recipe aims at")
        lines.append(f"- **{name}** came out {verdict}{match}: {recipe + '; ' if recipe else ''}{numbers}.")
    return (["**Why each verdict**:"] + lines) if lines else []


def preflight_and_vision(summary: dict) -> list[str]:
    """The broken models' preflights (caught or not, and the cause named) and the vision-language
    pair's headline."""
    lines = []
    for p in (summary.get("preflight") or {}).values():
        who = p["adapter"] + (f" with {p['merged']}" if p["merged"] else "")
        if p["passed"]:
            lines.append(f"**Preflight MISSED** {who} ({p['what_is_wrong']}): every check passed.")
        else:
            cause = next((c for causes in p["causes"].values() for c in causes), "")
            lines.append(f"**Preflight caught** {who} ({p['what_is_wrong']}): {', '.join(p['causes'])} failed"
                         + (f" — {cause}" if cause else "") + ".")
    vision = summary.get("vision")
    if vision:
        block = vision["effects"]
        inter = _stat(block, "interaction")
        lines.append(f"**Vision-language pair** ({' vs '.join(vision['models'])}, {block['n_events']} events on chart "
                     f"prompts, the image tokens in the shared prefix): the tuned late layers move Y by "
                     f"{fmt_value(_stat(block, 'E_IT'))} on their own upstream state and "
                     f"{fmt_value(_stat(block, 'E_PT'))} on the base's; the interaction is {sign_word(inter)} "
                     f"({fmt_value(inter)}). The table below shows a few events beside their charts.")
    elif summary.get("vision_skipped"):
        lines.append(f"**Vision-language pair**: skipped here — {summary['vision_skipped']}.")
    return lines


def demo_reading(summary: dict) -> list[str]:
    """The reading, one paragraph (Markdown) per finding, in the report's order (``late_layers``
    of the summary: the layers it-lora-late trains)."""
    return (instruction_tuning(summary) + eras_and_splits(summary) + contrasts(summary, summary.get("late_layers"))
            + cross_descendants(summary) + consequences(summary) + features(summary) + lineage_and_sweep(summary)
            + why_each_verdict(summary) + advice(summary) + preflight_and_vision(summary))
