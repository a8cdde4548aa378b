"""What preflight decides and how it reports it: its policy (every threshold, one dataclass), a check
and its status, the result document, and the checks themselves (adapter and merge changes,
generation health, domain fit), each a pure function of the measurements."""

from __future__ import annotations

import math
from pathlib import Path

from .preflight_measures import domain_nll, generation_health
from .preflight_policy import Check, PreflightPolicy


def _precision(dtype: str, merged_path: str | None) -> str:
    """"half" when the load dtype or the merged checkpoint's stored weights are 16-bit."""
    if dtype in ("bfloat16", "float16"):
        return "half"
    if merged_path:
        stored = _stored_dtypes(merged_path)
        if stored & {"F16", "BF16"}:
            return "half"
    return "float32"


def _stored_dtypes(path: str) -> set[str]:
    root = Path(path)
    if not root.is_dir():
        return set()
    from safetensors import safe_open

    found = set()
    for f in sorted(root.glob("*.safetensors"))[:1]:
        with safe_open(str(f), framework="pt") as handle:
            for key in list(handle.keys())[:8]:
                found.add(handle.get_slice(key).get_dtype())
    return found


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else (f"{x:.{digits}g}")
    return str(x)


def _changes_check(name: str, who: str, agreement: dict, changed: int, prompts: int, policy: PreflightPolicy,
                   weights: dict | None) -> Check:
    numbers = {**agreement, "greedy_changed": changed, "prompts": prompts}
    causes: list[str] = []
    moved = agreement["max_abs_logit_diff"] > policy.min_logit_change or changed > 0
    table = None
    rows = weights["modules"] if weights is not None else []
    measurable = [r for r in rows if r["delta_norm"] is not None]  # ΔW read (the additive methods)
    if weights is not None:
        numbers.update(adapted_modules=len(rows), nonzero_delta_modules=sum(r["delta_norm"] > 0 for r in measurable),
                       max_relative_delta=max((r["relative"] or 0.0 for r in measurable), default=0.0),
                       modules_to_save=weights["modules_to_save"], bias=weights.get("bias"))
        table = {"header": ["module", "rank", "scaling", "‖ΔW‖", "‖ΔW‖/‖W‖"],
                 "rows": [[r["module"], _fmt(r["rank"]), _fmt(r["scaling"]), _fmt(r["delta_norm"]), _fmt(r["relative"])]
                          for r in rows]}
        if not rows and not weights["modules_to_save"]:
            causes.append("no module of the model carries the adapter: it was not loaded, or its target_modules "
                          f"({weights.get('target_modules')}) match no module of this architecture")
        elif measurable and all(r["delta_norm"] == 0 for r in measurable):
            if all(r.get("scaling") == 0 for r in measurable):
                causes.append("every adapted module has scaling 0 (lora_alpha = 0): ΔW = 0")
            elif any("b_zero" in r for r in measurable) and all(r.get("b_zero") for r in measurable if "b_zero" in r):
                causes.append("every LoRA B matrix is zero, so ΔW = B·A = 0: the adapter was saved before training "
                              "(or trained with learning rate 0, or with its LoRA layers frozen)")
            else:
                causes.append("every ΔW is zero")
        if weights.get("unmatched_targets"):
            causes.append(f"target_modules {weights['unmatched_targets']} match no module of this architecture")
    base_broken, broken = agreement.get("non_finite_positions", [0, 0])
    if broken:  # logits a run can do nothing with: the descendant is broken, whatever else it changes
        causes = [f"its logits are not finite (NaN or infinite) at {broken} of {agreement['positions']} positions "
                  f"(the base's at {base_broken}): NaN or infinite weights, or an overflow in float16 (try --dtype "
                  "bfloat16 or float32)"] + causes
        summary = f"the {who} is broken: " + "; ".join(causes)
        return Check(name, "fail", summary, causes, numbers, table)
    if base_broken:
        causes.append(f"the base's logits are not finite at {base_broken} of {agreement['positions']} positions "
                      f"(left out of the comparison)")
    if not moved and not causes:
        what = ""  # a merged checkpoint: no ΔW read
        if measurable:
            what = "ΔW is not zero but "  # (measured: every module's zero was named above)
        elif weights is not None:
            what = (f"its weight change is not measured here ({weights.get('method') or 'this PEFT method'} has no "
                    "additive ΔW) and ")
        causes.append(f"{what}no logit moves by more than {policy.min_logit_change} and no greedy output "
                      f"changes: the {who} may be an identity (saved before training), be disabled, or adapt modules "
                      "the prompts do not reach (e.g. a vision tower for text prompts)")
    # moving logits with no ΔW found non-zero is inactive where ΔW was read, not where it cannot be (IA3, OFT)
    unmeasured = bool(rows) and not measurable
    inactive = not moved or (weights is not None and causes and not unmeasured and not numbers.get("nonzero_delta_modules"))
    status = "fail" if inactive else "pass"
    summary = (f"the {who} changes nothing: " + "; ".join(causes)) if inactive else (
        f"the {who} moves the logits by up to {agreement['max_abs_logit_diff']:.3g} (mean KL from the base "
        f"{agreement['mean_kl']:.3g}); its greedy output differs from the base's on {changed} of {prompts} prompts")
    if not inactive and causes:
        status, summary = "warn", summary + "; " + "; ".join(causes)
    return Check(name, status, summary, causes if inactive else [], numbers, table)


def _first_divergences(ad_out: list[list[int]], m_out: list[list[int]]) -> list[int | None]:
    result = []
    for a, m in zip(ad_out, m_out):
        position = next((i for i, (x, y) in enumerate(zip(a, m)) if x != y), None)
        if position is None and len(a) != len(m):
            position = min(len(a), len(m))
        result.append(position)
    return result


def _merge_check(agreement: dict, divergences: list[dict], tolerances: dict, precision: str,
                 policy: PreflightPolicy) -> Check:
    numbers = {**agreement, "tolerances": tolerances, "precision": precision,
               "divergences": len(divergences), "confident_divergences": sum(d["confident"] for d in divergences)}
    failures = []
    if agreement["max_abs_logit_diff"] > tolerances["max_abs_logit_diff"]:
        failures.append(f"max |Δlogit| {agreement['max_abs_logit_diff']:.3g} > {tolerances['max_abs_logit_diff']:g}")
    if agreement["mean_abs_logit_diff"] > tolerances["mean_abs_logit_diff"]:
        failures.append(f"mean |Δlogit| {agreement['mean_abs_logit_diff']:.3g} > {tolerances['mean_abs_logit_diff']:g}")
    if agreement["mean_kl"] > tolerances["mean_kl"]:
        failures.append(f"mean KL {agreement['mean_kl']:.3g} > {tolerances['mean_kl']:g}")
    if agreement.get("compared_positions", 1) and agreement["top1_agreement"] < tolerances["min_top1_agreement"]:
        failures.append(f"top-1 agreement {agreement['top1_agreement']:.4f} < {tolerances['min_top1_agreement']:g}")
    adapter_broken, merged_broken = agreement.get("non_finite_positions", [0, 0])
    if adapter_broken or merged_broken:
        failures.append(f"logits not finite (NaN or infinite) at {merged_broken} position(s) of the merged checkpoint "
                        f"and {adapter_broken} of the adapter, of {agreement['positions']}")
    if numbers["confident_divergences"] > policy.max_confident_divergences:
        failures.append(f"{numbers['confident_divergences']} confident greedy disagreement(s) (margins beyond rounding)")
    table = {"header": ["prompt", "first divergence", "adapter token", "merged token", "adapter margin",
                        "merged margin", "kind"],
             "rows": [[d["prompt"], str(d["position"]), d["adapter_token"], d["merged_token"], _fmt(d["adapter_margin"]),
                       _fmt(d["merged_margin"]), "confident" if d["confident"] else "rounding"] for d in divergences]}
    if failures:
        summary = ("the merged checkpoint does not compute what the adapter computes (" + "; ".join(failures)
                   + "): a bad merge (merged twice, wrong scaling, wrong base, or a lossy dtype)")
        return Check("adapter-vs-merged", "fail", summary, failures, numbers, table)
    summary = (f"merged agrees with the adapter within {precision} tolerances (max |Δlogit| "
               f"{agreement['max_abs_logit_diff']:.3g}, mean KL {agreement['mean_kl']:.3g}, top-1 "
               f"{agreement['top1_agreement']:.4f}); {len(divergences)} greedy disagreement(s), all rounding")
    return Check("adapter-vs-merged", "pass", summary, [], numbers, table)


def _health_check(outputs: dict, models, roles: list[str], policy: PreflightPolicy) -> Check:
    rates = {role: generation_health(outputs[role], models.tokenizers[role], models.eos_ids, policy)["rates"] for role in roles}
    limits = {"empty_rate": policy.max_empty_rate, "loop_rate": policy.max_loop_rate,
              "special_leak_rate": policy.max_special_leak_rate}
    failures = [f"{role}: {key.removesuffix('_rate').replace('_', ' ')} on {rates[role][key]:.0%} of prompts "
                f"(base {rates['base'][key]:.0%}, allowed {limit:.0%})"
                for role in roles[1:] for key, limit in limits.items()
                if rates[role][key] > limit and rates[role][key] > rates["base"][key]]
    no_eos = [role for role in roles[1:] if rates[role]["no_eos_rate"] > rates["base"]["no_eos_rate"]]
    table = {"header": ["model", "empty", "repetition loop", "no EOS in budget", "special tokens leak"],
             "rows": [[role] + [f"{rates[role][k]:.0%}" for k in ("empty_rate", "loop_rate", "no_eos_rate",
                                                                   "special_leak_rate")] for role in roles]}
    if failures:
        return Check("generation-health", "fail", "generation is unhealthy: " + "; ".join(failures), failures,
                     {"rates": rates}, table)
    status = "warn" if no_eos else "pass"
    summary = "no descendant generates worse than the base (empty, loops, special tokens)"
    if no_eos:
        summary += f"; {', '.join(no_eos)} reach(es) EOS within the budget less often than the base"
    return Check("generation-health", status, summary, [], {"rates": rates}, table)


def _domain_check(models, roles: list[str], texts: list[str], policy: PreflightPolicy) -> Check:
    tokenizer = models.tokenizer
    sequences = [tokenizer(t, add_special_tokens=True)["input_ids"][:1024] for t in texts]
    sequences = [s for s in sequences if len(s) > 1]
    if not sequences:  # (a tokenizer without BOS and texts of one token each: no next token to predict)
        return Check("domain-learning", "warn", f"nothing measured: none of the {len(texts)} domain text(s) is two "
                     "tokens or longer, so no model predicts a token of it; give longer held-out text",
                     [], {"nll": dict.fromkeys(roles), "tokens": 0, "texts": 0}, None)
    nll = {role: domain_nll(models, role, sequences)[0] for role in roles}
    tokens = sum(len(s) - 1 for s in sequences)
    worse = [role for role in roles[1:] if not nll[role] < nll["base"]]
    table = {"header": ["model", "NLL per token", "vs base"],
             "rows": [[role, f"{nll[role]:.4f}", "—" if role == "base" else f"{nll[role] - nll['base']:+.4f}"]
                      for role in roles]}
    numbers = {"nll": nll, "tokens": tokens, "texts": len(sequences)}
    if worse:
        status = "fail" if policy.require_domain_gain else "warn"
        return Check("domain-learning", status, f"{', '.join(worse)} do(es) not lower the NLL of the domain text "
                     f"below the base's ({nll['base']:.4f}): did the fine-tune learn its domain?", [], numbers, table)
    return Check("domain-learning", "pass", "every descendant lowers the per-token NLL of the domain text "
                 f"(base {nll['base']:.4f})", [], numbers, table)


# -- rendering ---------------------------------------------------------------------------------
