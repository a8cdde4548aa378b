"""The verdict: one word and a paragraph a practitioner can act on, from the headline effects
and the controls, with thresholds anyone can read and change (``VerdictPolicy``;
docs/verdict.md restates the rule).

Vocabulary:

- ``portable`` — the late effect survives base upstream state: ``E_PT`` is reliably of the same
  sign as ``E_IT`` and at least ``min_portable_share`` of it, and the interaction does not take
  more than ``max_interaction_share`` of ``E_IT``;
- ``upstream-dependent`` ("fragile adapter") — the interaction is reliably of ``E_IT``'s sign
  (interval excludes zero, and beyond the label-swap null when that control ran) and takes more
  than ``max_interaction_share`` of ``E_IT``: most of the late effect needs the tuned upstream;
- ``no-late-effect`` — both the ``E_PT`` and the ``E_IT`` intervals lie within
  ``±min_late_effect`` logits (negligible, whether or not they exclude zero);
- ``inconclusive`` — too few prompts, no intervals, a failed sanity control, intervals too wide
  to tell, or effects of opposite signs.

Rules are applied in this order: inconclusive (data), no-late-effect, inconclusive (too wide),
opposite signs (inconclusive), upstream-dependent, portable, inconclusive (the rest).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

VERDICTS = ("portable", "upstream-dependent", "no-late-effect", "inconclusive")


@dataclass
class VerdictPolicy:
    """Thresholds of the verdict (and of ``crosspatch gate``)."""

    max_interaction_share: float = 0.5  # I / E_IT above this (I reliable) -> upstream-dependent
    min_portable_share: float = 0.3  # E_PT / E_IT at least this -> portable
    min_late_effect: float = 0.5  # logits: both late-effect intervals inside +-this -> no late effect
    min_prompts: int = 5  # fewer prompt clusters with events -> inconclusive
    readout: str = "common_it"
    pass_verdicts: tuple[str, ...] = ("portable", "no-late-effect")  # what `gate` lets through

    @classmethod
    def from_dict(cls, data: dict) -> "VerdictPolicy":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown policy key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        data = dict(data)
        if "pass_verdicts" in data:
            pv = data["pass_verdicts"]
            if not isinstance(pv, (str, list, tuple)) or not all(isinstance(v, str) for v in ([pv] if isinstance(pv, str) else pv)):
                raise ValueError(f"policy pass_verdicts must be verdict names, not {pv!r}")
            data["pass_verdicts"] = tuple([pv] if isinstance(pv, str) else pv)
            bad = [v for v in data["pass_verdicts"] if v not in VERDICTS]
            if bad:
                raise ValueError(f"unknown verdict(s) {', '.join(bad)} in pass_verdicts; choose from {', '.join(VERDICTS)}")
        for key in ("max_interaction_share", "min_portable_share", "min_late_effect"):
            value = data.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"policy {key} must be a finite number >= 0, not {value!r}")
        value = data.get("min_prompts", 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"policy min_prompts must be a whole number >= 1, not {value!r}")
        if data.get("readout", "common_it") not in ("common_it", "common_pt"):
            raise ValueError(f"policy readout must be common_it or common_pt, not {data['readout']!r}")
        return cls(**data)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["pass_verdicts"] = list(self.pass_verdicts)
        return d


def _excludes_zero(ci) -> bool:
    return ci is not None and None not in ci and (ci[0] > 0 or ci[1] < 0)


def _fmt(stat: dict) -> str:
    if stat.get("mean") is None:
        return "n/a"
    ci = stat.get("ci")
    text = f"{stat['mean']:+.2f}"
    if ci and None not in ci:
        text += f" [{ci[0]:+.2f}, {ci[1]:+.2f}]"
    return text


def decide(block: dict, controls: list[dict] | None = None, policy: VerdictPolicy | None = None) -> dict:
    """The verdict of one effect block (``summary.results[b][readout]["all"]`` or a category's)
    given the Controls rows (None: none ran). Returns ``{"verdict", "reason", "numbers"}``."""
    policy = policy or VerdictPolicy()
    controls = controls or []
    eff = block["effects"]
    e_pt, e_it, inter = eff["E_PT"], eff["E_IT"], eff["interaction"]
    n_prompts = block.get("n_prompts", 0)
    numbers = {"n_events": block.get("n_events", 0), "n_prompts": n_prompts,
               "E_PT": e_pt, "E_IT": e_it, "interaction": inter}

    def out(verdict: str, reason: str) -> dict:
        return {"verdict": verdict, "reason": reason, "numbers": numbers, "policy": policy.as_dict()}

    head = (f"On {block.get('n_events', 0)} first-divergence events from {n_prompts} prompts, the descendant's late "
            f"layers move logit(t_IT) - logit(t_PT) by {_fmt(e_it)} on its own upstream state (E_IT) and "
            f"{_fmt(e_pt)} on the base's (E_PT); interaction {_fmt(inter)}.")
    if n_prompts == 0:
        return out("inconclusive", "No prompt produced a first-divergence event: on these prompts the descendant "
                                   "decodes exactly like the base within the generation budget (or every event was "
                                   "invalid), so there is nothing to score. Use prompts on which the two differ, or a "
                                   "larger --max-new-tokens.")
    if n_prompts < policy.min_prompts:
        return out("inconclusive", f"Only {n_prompts} prompt(s) produced an event (at least {policy.min_prompts} "
                                   "are needed for an interval): add prompts. " + head)
    failed = [c["control"] for c in controls if c.get("status") == "fail"]
    if failed:
        return out("inconclusive", f"Sanity control(s) failed: {', '.join(failed)}; the patched passes cannot be "
                                   "trusted, so no verdict is given. " + head)
    if any(s.get("ci") is None or None in (s.get("ci") or [None]) for s in (e_pt, e_it, inter)):
        return out("inconclusive", "No bootstrap intervals (bootstrap disabled or too few prompts). " + head)
    late_present = _excludes_zero(e_it["ci"]) or _excludes_zero(e_pt["ci"])
    bound = policy.min_late_effect
    if all(-bound <= v <= bound for s in (e_pt, e_it) for v in s["ci"]):
        return out("no-late-effect", head + f" Both late effects lie within ±{bound} logits (their whole intervals): "
                   "the fine-tune's late layers barely change this decision; whatever changed it lives upstream of "
                   "the boundary.")
    if not late_present:
        return out("inconclusive", head + " Neither late effect differs from zero, but the intervals are too wide "
                   f"to rule out an effect of {bound} logits: add prompts.")
    sign = 1.0 if e_it["mean"] >= 0 else -1.0
    if _excludes_zero(e_pt["ci"]) and _excludes_zero(e_it["ci"]) and e_pt["mean"] * e_it["mean"] < 0:
        return out("inconclusive", head + " The late layers push in opposite directions on the two upstream states; "
                   "neither portable nor upstream-dependent describes that.")
    swap = next((c for c in controls if c.get("control") == "label_swap"), None)
    beyond_null = swap is None or swap.get("status") == "pass"
    inter_reliable = _excludes_zero(inter["ci"]) and sign * inter["mean"] > 0 and beyond_null
    inter_share = inter["mean"] / e_it["mean"] if abs(e_it["mean"]) >= 1e-9 else None
    direct = e_pt["mean"] / e_it["mean"] if abs(e_it["mean"]) >= 1e-9 else None
    if inter_reliable and inter_share is not None and inter_share > policy.max_interaction_share:
        return out("upstream-dependent", head + f" The interaction is {100 * inter_share:.0f}% of the late effect "
                   f"(threshold {100 * policy.max_interaction_share:.0f}%)" + (" and beyond the label-swap null" if swap else "")
                   + ": most of what the late layers add needs the tuned upstream state. Grafting these late layers "
                   "(or this adapter) onto base early layers would lose most of their effect: a fragile fine-tune.")
    same_sign_pt = _excludes_zero(e_pt["ci"]) and e_pt["mean"] * sign > 0
    if same_sign_pt and direct is not None and direct >= policy.min_portable_share and \
            (inter_share is None or inter_share <= policy.max_interaction_share or not inter_reliable):
        return out("portable", head + f" {100 * direct:.0f}% of the late effect survives on base upstream state "
                   f"(threshold {100 * policy.min_portable_share:.0f}%)" + (
                       "; the interaction is not reliably of the late effect's sign" if not inter_reliable else "")
                   + ": the late layers' gain is self-contained and carries over to base early layers.")
    return out("inconclusive", head + f" The portable share ({'n/a' if direct is None else f'{100 * direct:.0f}%'}) "
               "and the interaction fall between the thresholds, or are not reliable: no verdict.")
