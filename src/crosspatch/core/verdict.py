"""The verdict: a pre-stated decision rule over intervals (docs/verdict.md restates it), and a
paragraph generated from the very numbers that decide it.

The rule has two stages, so that a control can never invert a verdict:

1. **Grade the effects** (``grade``), from the headline block alone:

   - ``inconclusive`` — no events (unless the models never disagreed on at least ``min_prompts``
     prompts: then ``no-late-effect``), fewer than ``min_prompts`` prompts, or no intervals;
   - ``no-late-effect`` — both ``E_PT``'s and ``E_IT``'s intervals lie within ``±min_late_effect``;
   - ``inconclusive`` — no late effect is established (both intervals contain zero) but they are
     too wide to rule one out, or the late stack pushes in opposite directions on the two
     upstream states, or the share below cannot be formed (``E_IT``'s interval contains zero);
   - otherwise the **interaction share** ``s = I / E_IT`` (the part of the descendant's late effect
     that needs its own upstream state) decides, on its 95% interval ``[lo, hi]``:
     ``upstream-dependent`` when ``lo > max_interaction_share``; ``portable`` when
     ``hi < portable_interaction_share`` and ``E_PT``'s interval excludes zero with ``E_IT``'s sign;
     ``partly-upstream-dependent`` when the interval lies between the bounds or straddles one
     of them; ``inconclusive`` when it straddles both (too wide to grade: add prompts).

2. **Apply the controls** (``apply_controls``): each Controls row says what its failure means
   (``details.on_failure``): a failed sanity check (status ``fail``) makes any verdict
   ``inconclusive``; a control whose failure is ``inconclusive`` (the label-swap test, readout
   agreement) turns the verdicts it ``weakens`` into ``inconclusive``; every other failure is a
   named caveat in the reason. Adding a control can therefore only keep a verdict or make it
   ``inconclusive`` (a test checks this for every set of controls).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .records import readout_label

VERDICTS = ("portable", "partly-upstream-dependent", "upstream-dependent", "no-late-effect", "inconclusive")
GRADED = ("portable", "partly-upstream-dependent", "upstream-dependent")
INTERACTION_CLAIMS = ("partly-upstream-dependent", "upstream-dependent")  # verdicts that say the interaction exists
NO_EVENT_AGREEMENT = ("agreed_eos", "budget_exhausted")  # no-event reasons that mean "the two models decode alike"
Z_95, Z_80_POWER = 1.959964, 0.841621


@dataclass
class VerdictPolicy:
    """Thresholds of the verdict (and of ``crosspatch gate``)."""

    max_interaction_share: float = 0.5  # I / E_IT interval above this -> upstream-dependent
    portable_interaction_share: float = 0.25  # I / E_IT interval below this (and E_PT reliable) -> portable
    min_late_effect: float = 0.5  # logits: both late-effect intervals inside +-this -> no late effect
    min_prompts: int = 5  # fewer prompt clusters with events -> inconclusive
    readout: str = "common_it"
    pass_verdicts: tuple[str, ...] = ("portable", "no-late-effect")  # what `gate` lets through

    @classmethod
    def from_dict(cls, data: dict) -> "VerdictPolicy":
        if not isinstance(data, dict):
            raise ValueError(f"a policy is a mapping of VerdictPolicy fields, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        if "min_portable_share" in data:
            raise ValueError("policy key min_portable_share was replaced by portable_interaction_share (the "
                             "verdict is graded on the interval of I / E_IT; docs/verdict.md)")
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown policy key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        data = dict(data)
        if "pass_verdicts" in data:
            pv = data["pass_verdicts"]
            if not isinstance(pv, (str, list, tuple)) or not all(isinstance(v, str) for v in ([pv] if isinstance(pv, str) else pv)):
                raise ValueError(f"policy pass_verdicts must be verdict names, not {pv!r}")
            data["pass_verdicts"] = tuple([pv] if isinstance(pv, str) else pv)
            if not data["pass_verdicts"]:
                raise ValueError("policy pass_verdicts names no verdict: every run would fail; name the verdicts that "
                                 f"pass ({', '.join(VERDICTS)})")
            bad = [v for v in data["pass_verdicts"] if v not in VERDICTS]
            if bad:
                raise ValueError(f"unknown verdict(s) {', '.join(bad)} in pass_verdicts; choose from {', '.join(VERDICTS)}")
        for key in ("max_interaction_share", "portable_interaction_share", "min_late_effect"):
            value = data.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"policy {key} must be a finite number >= 0, not {value!r}")
        low = data.get("portable_interaction_share", cls.portable_interaction_share)
        high = data.get("max_interaction_share", cls.max_interaction_share)
        if low > high:
            raise ValueError(f"policy portable_interaction_share ({low}) must not exceed max_interaction_share ({high})")
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


@dataclass
class Verdict:
    """A verdict: the word, the reason (generated from ``numbers``), the numbers that decided it,
    and the policy. ``as_dict()`` is what summary.json stores under ``verdict``."""

    verdict: str
    reason: str
    numbers: dict
    policy: dict
    grade: str | None = None  # the effects' grade before the controls were applied
    weakened_by: list | None = None  # controls that turned the grade into inconclusive

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _excludes_zero(ci) -> bool:
    return ci is not None and None not in ci and (ci[0] > 0 or ci[1] < 0)


def _has_ci(stat: dict) -> bool:
    ci = stat.get("ci")
    return ci is not None and None not in ci


def fmt_stat(stat: dict, percent: bool = False) -> str:
    """``+1.02 [+0.67, +1.37]`` (or ``48% [30%, 66%]``), the way both reports print a number."""
    if stat.get("mean") is None:
        return "n/a"
    f = (lambda v: f"{round(100 * v) + 0:.0f}%") if percent else (lambda v: f"{round(v, 2) + 0.0:+.2f}")  # no -0%, -0.00
    text = f(stat["mean"])
    if _has_ci(stat):
        text += f" [{f(stat['ci'][0])}, {f(stat['ci'][1])}]"
    return text


def _late_share(eff: dict) -> dict:
    """``I / E_IT`` with its interval; for summaries written before it was stored, derived from the
    direct share (``1 − E_PT / E_IT``, the same bootstrap draws)."""
    if "late_interaction_share" in eff:
        return eff["late_interaction_share"]
    direct = eff.get("direct_share") or {}
    if direct.get("mean") is None:
        return {"mean": None, "ci": None, "na_reason": direct.get("na_reason")}
    ci = direct.get("ci")
    return {"mean": 1 - direct["mean"], "ci": None if not ci or None in ci else [1 - ci[1], 1 - ci[0]]}


def _numbers(block: dict) -> dict:
    eff = block["effects"]
    inter = eff["interaction"]
    half = (inter["ci"][1] - inter["ci"][0]) / 2 if _has_ci(inter) else None
    return {"n_events": block.get("n_events", 0), "n_prompts": block.get("n_prompts", 0),
            "E_PT": eff["E_PT"], "E_IT": eff["E_IT"], "interaction": inter,
            "late_interaction_share": _late_share(eff),
            "sign_count": block.get("sign_count"),
            "interaction_half_width": half,
            # the smallest interaction this many prompts would detect at 80% power (two-sided 5%)
            "min_detectable_interaction": None if half is None else half / Z_95 * (Z_95 + Z_80_POWER)}


def _head(numbers: dict) -> str:
    events, prompts = numbers["n_events"], numbers["n_prompts"]
    return (f"On {events} first-divergence event{'' if events == 1 else 's'} from {prompts} "
            f"prompt{'' if prompts == 1 else 's'}, the descendant's "
            f"late layers move logit(t_IT) - logit(t_PT) by {fmt_stat(numbers['E_IT'])} on its own upstream state "
            f"(E_IT) and {fmt_stat(numbers['E_PT'])} on the base's (E_PT); interaction {fmt_stat(numbers['interaction'])}.")


def _where_it_changed(block: dict, bound: float, readout: str = "common_it") -> str:
    """Where a decision the late layers do not change was changed, from the native diagonal shift
    ``D = Y(U_IT,L_IT) - Y(U_PT,L_PT)`` read with the one common readout: with no late effect, D is
    the upstream state's own effect. Beyond ±``bound`` (its whole interval): upstream of the
    boundary; within it, the two stacks barely differ under one readout although the models disagree:
    the difference is small, or lies in the readouts themselves (final norm and output head, which
    the four cells share). Otherwise it says both."""
    shift = (block.get("effects") or {}).get("native_shift") or {}
    ci = shift.get("ci") if _has_ci(shift) else None
    if ci is not None and (ci[0] > bound or ci[1] < -bound):
        return (f"whatever changed it lives upstream of the boundary (the native shift D = Y(U_IT,L_IT) - "
                f"Y(U_PT,L_PT) is {fmt_stat(shift)} under this one readout).")
    if ci is not None and -bound <= ci[0] and ci[1] <= bound:
        return (f"nor does its upstream state under this one readout (the native shift D = Y(U_IT,L_IT) - "
                f"Y(U_PT,L_PT) is {fmt_stat(shift)}, within ±{bound}): read through one head the two models barely "
                "differ here, so what makes them decide apart is small, or lies in their readouts (final norm and "
                f"output head), which the four cells share (compare the "
                f"{readout_label('common_it' if readout == 'common_pt' else 'common_pt')} readout).")
    return (f"whatever changed it lies upstream of the boundary or in the readout (final norm and output head, "
            f"which the four cells share; the native shift D is {fmt_stat(shift) if shift else 'not measured'}).")


def _carries_over(lo: float, hi: float, low: float) -> str:
    """What a portable grade's share interval ``[lo, hi]`` says: the same gain on both upstream
    states (self-contained) only where the interval stays within the portable bound on both sides;
    wholly below zero, the late layers add more on the base's upstream state than on their own."""
    if hi < 0:
        return ("the late layers' gain carries over to base early layers and is larger there than on the "
                "descendant's own upstream state (the interaction is of the opposite sign to E_IT: the descendant's "
                "early layers already do part of what its late layers do, or work against it). Grafted onto base "
                "early layers these late layers would add more than they do in the descendant.")
    if lo < -low:
        return ("the late layers' gain carries over to base early layers; on them it may be larger than on the "
                f"descendant's own upstream state (by up to {-100 * lo:.0f}% of E_IT), so it is not shown to be "
                "self-contained.")
    return "the late layers' gain is self-contained and carries over to base early layers."


def grade(block: dict, policy: VerdictPolicy, counts: dict | None = None) -> tuple[str, str, dict]:
    """Stage 1: ``(verdict, reason, numbers)`` from the effect block alone (module docstring)."""
    numbers = _numbers(block)
    n_prompts = numbers["n_prompts"]
    if n_prompts == 0:
        no_div = (counts or {}).get("no_divergence") or {}
        if counts and counts.get("prompts") and not counts.get("invalid") and \
                sum(no_div.get(r, 0) for r in NO_EVENT_AGREEMENT) == counts["prompts"]:
            if counts["prompts"] < policy.min_prompts:
                return "inconclusive", (
                    f"The descendant decodes exactly like the base on all {counts['prompts']} prompt(s) within the "
                    f"generation budget, but at least {policy.min_prompts} prompts are needed to call the two the same "
                    "on these decisions: add prompts."), numbers
            return "no-late-effect", (
                f"On all {counts['prompts']} prompts the descendant decodes exactly like the base within the "
                "generation budget (no first divergence): nothing it changed reaches these decisions, so there is "
                "no late effect to be fragile. Use prompts from the fine-tune's domain to test it."), numbers
        return "inconclusive", ("No prompt produced a first-divergence event that could be scored: there is "
                                "nothing to decide on."), numbers
    head = _head(numbers)
    if n_prompts < policy.min_prompts:
        return "inconclusive", (f"Only {n_prompts} prompt(s) produced an event (at least {policy.min_prompts} are "
                                "needed for an interval): add prompts. " + head), numbers
    e_pt, e_it, share = numbers["E_PT"], numbers["E_IT"], numbers["late_interaction_share"]
    if not all(_has_ci(s) for s in (e_pt, e_it, numbers["interaction"])):
        return "inconclusive", "No bootstrap intervals (bootstrap disabled or too few prompts). " + head, numbers
    bound = policy.min_late_effect
    if all(-bound <= v <= bound for s in (e_pt, e_it) for v in s["ci"]):
        return "no-late-effect", head + (f" Both late effects lie within ±{bound} logits (their whole intervals): the "
                                         "fine-tune's late layers barely change this decision; "
                                         + _where_it_changed(block, bound, policy.readout)), numbers
    if not (_excludes_zero(e_it["ci"]) or _excludes_zero(e_pt["ci"])):
        return "inconclusive", head + (" Neither late effect differs from zero, but the intervals are too wide to "
                                       f"rule out an effect of {bound} logits: add prompts."), numbers
    if _excludes_zero(e_pt["ci"]) and _excludes_zero(e_it["ci"]) and e_pt["mean"] * e_it["mean"] < 0:
        return "inconclusive", head + (" The late layers push in opposite directions on the two upstream states; "
                                       "neither portable nor upstream-dependent describes that."), numbers
    if not _has_ci(share):
        why = share.get("na_reason") or "E_IT's interval contains zero"
        return "inconclusive", head + (f" The interaction share I / E_IT cannot be formed ({why}): the descendant's "
                                       "own late effect is not established, so its portability cannot be graded."), numbers
    lo, hi = share["ci"]
    low, high = policy.portable_interaction_share, policy.max_interaction_share
    quoted = f"The interaction is {fmt_stat(share, percent=True)} of E_IT"
    bounds = f"(portable below {100 * low:.0f}%, upstream-dependent above {100 * high:.0f}%, on the whole interval)"
    sign = 1.0 if e_it["mean"] >= 0 else -1.0
    pt_reliable = _excludes_zero(e_pt["ci"]) and e_pt["mean"] * sign > 0
    if lo > high:
        lost = ("all of what the late layers add needs the descendant's own upstream state (the share exceeds 100% "
                "on its whole interval: on the base's upstream state they push the other way). Grafting these late "
                "layers (or this adapter) onto base early layers would lose all of their effect and may reverse it"
                if lo > 1 else
                "most of what the late layers add needs the descendant's own upstream state. Grafting these late "
                "layers (or this adapter) onto base early layers would lose most of their effect")
        return "upstream-dependent", head + f" {quoted} {bounds}: {lost}: a fragile fine-tune.", numbers
    if hi < low and pt_reliable:
        return "portable", head + f" {quoted} {bounds}, and E_PT is reliably of E_IT's sign: " + _carries_over(lo, hi, low), \
            numbers
    if hi < low:
        return "inconclusive", head + (f" {quoted} {bounds}, but E_PT's interval does not exclude zero: the portable "
                                       "part is not established."), numbers
    if lo < low and hi > high:
        return "inconclusive", head + (f" {quoted} {bounds}: the interval spans both bounds, too wide to grade. Add "
                                       "prompts (or see min_detectable_interaction)."), numbers
    if lo <= 0:  # straddles the portable bound from zero: a dependent part is possible, not shown
        return "partly-upstream-dependent", head + (
            f" {quoted} {bounds}: most of the late gain carries over to base early layers; a part that needs the "
            f"descendant's own upstream state is not established (the interval reaches zero) but could be as large "
            f"as {100 * hi:.0f}%. Check the breakdowns before grafting these late layers elsewhere."), numbers
    return "partly-upstream-dependent", head + (
        f" {quoted} {bounds}: part of the late gain carries over to base early layers and part needs the "
        "descendant's own upstream state. Check the breakdowns before grafting these late layers elsewhere."), numbers


def apply_controls(verdict: str, reason: str, controls: list[dict]) -> tuple[str, str, list[str]]:
    """Stage 2: the controls can only keep the verdict or make it ``inconclusive`` (module
    docstring). Returns ``(verdict, reason, controls that weakened it)``."""
    failed = [c for c in controls if c.get("status") == "fail"]
    if failed:
        names = ", ".join(c["control"] for c in failed)
        return "inconclusive", (f"Sanity control(s) failed: {names}; the patched passes cannot be trusted, so no "
                                f"verdict is given (the effects alone would say {verdict}). " + reason), \
            [c["control"] for c in failed]
    weakening, caveats = [], []
    for c in controls:
        if c.get("status") != "warn":
            continue
        details = c.get("details") or {}
        if details.get("on_failure") == "inconclusive" and verdict in details.get("weakens", GRADED):
            weakening.append(c)
        elif details.get("on_failure") in ("warning", None) and verdict != "inconclusive":
            caveats.append(c)
    if weakening and verdict != "inconclusive":
        why = "; ".join(f"{c['control'].replace('_', '-')}: {c['summary']}" for c in weakening)
        return "inconclusive", (f"The effects alone would say {verdict}, but {why}. " + reason), \
            [c["control"] for c in weakening]
    if caveats:
        reason += " Caveats: " + "; ".join(f"{c['control'].replace('_', '-')}: {c['summary']}" for c in caveats) + "."
    return verdict, reason, []


def decide(block: dict, controls: list[dict] | None = None, policy: VerdictPolicy | None = None,
           counts: dict | None = None) -> dict:
    """The verdict of one effect block (``summary.results[b][readout]["all"]`` or a category's)
    given the Controls rows (None: none ran) and the run's counts (to tell "the models never
    disagree" from "nothing could be scored"). Returns :meth:`Verdict.as_dict`."""
    policy = policy or VerdictPolicy()
    graded, reason, numbers = grade(block, policy, counts)
    verdict, reason, weakened = apply_controls(graded, reason, controls or [])
    return Verdict(verdict, reason, numbers, policy.as_dict(), graded, weakened or None).as_dict()


class VerdictView(dict):
    """``result.verdict``: the stored verdict record (a dict, as summary.json holds it) with typed
    attributes: ``.verdict``, ``.grade``, ``.reason``, ``.numbers``, ``.boundary``, ``.readout``,
    ``.share`` (the interaction share ``I/E_IT`` that decided it) and a one-line repr."""

    @property
    def verdict(self) -> str:
        return self.get("verdict", "n/a")

    @property
    def grade(self) -> str | None:
        return self.get("grade")

    @property
    def reason(self) -> str:
        return self.get("reason", "")

    @property
    def numbers(self) -> dict:
        return self.get("numbers", {})

    @property
    def boundary(self) -> int | None:
        return self.get("boundary")

    @property
    def readout(self) -> str | None:
        return self.get("readout")

    @property
    def share(self) -> dict:
        return self.numbers.get("late_interaction_share") or {}

    def __repr__(self) -> str:
        return f"Verdict({self.verdict!r}, I/E_IT {fmt_stat(self.share, percent=True)}, boundary {self.boundary})"
