"""Does the divergent token matter? Forced-token continuation scoring (DESIGN 1.6).

For each first-divergence event whose prompt carries a validator (``validators.py``), force
each of four first tokens at the event and let the descendant (and optionally the base)
continue greedily for a budget, then score **the suffix only** — the forced token is part of
the prompt of the continuation, never of the scored text:

- ``t_IT`` and ``t_PT``, the two models' picks;
- ``matched``: the token ranked just below ``t_PT`` by the descendant at the event (as unlikely
  under IT as ``t_PT``, but neither model's pick);
- ``random``: a token drawn from the real vocabulary (seeded per prompt).

Reported per continuation model: pass rates per forced token, the deltas ``t_IT - t_PT`` and
``t_IT - matched`` with prompt-cluster bootstrap intervals, per category, and the correlation of
the per-event interaction with ``pass(t_IT) - pass(t_PT)`` (does the interaction sit on tokens
that matter?).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.analysis import Analysis, EventSet
from ..core.registry import AnalysisPlugin, PlanContext, Section, SummaryContext, Table, register_analysis
from ..core.stats import MIN_CLUSTERS_FOR_CI, BootstrapConfig, cluster_mean_ci
from ..execution import Decode, Executor, Program
from ..report.markdown import WHY_NO_INTERVALS, any_interval
from ..store import write_whole

FORCED = ("t_it", "t_pt", "matched", "random")
CONSEQUENCE_FILE = "consequence.jsonl"


@dataclass
class Consequence(Analysis):
    """Forced-token continuations of the events whose prompt has a validator."""

    validators: dict  # prompt id -> validators.Validator
    budget: int = 32
    with_pt: bool = False  # also continue with the base
    seed: int = 0
    name: str = "consequence"

    def work_per_event(self, num_layers: int, budget: int, model_config: dict | None = None) -> float:
        """Each forced token's continuation (by the descendant, and the base with ``with_pt``) over
        the event's prefix, the token and the budget; the descendant's state where none is kept."""
        models = 2 if self.with_pt else 1
        return 1 + len(FORCED) * models * (1 + (1 + self.budget) / max(budget, 1))

    def program(self, ex: Executor, events: EventSet) -> Program:
        evs = [e for e in events.events if e.prompt_id in self.validators]
        if not evs:
            return []
        sub = EventSet(evs, events.base, events.tuned,
                       {e.key: events.natural[e.key] for e in evs} if events.natural else None)
        (u_it,) = yield from sub.states([events.tuned], [])
        logits = ex.readout(events.tuned, torch.stack([s.final for s in u_it])).cpu().clone()
        real = ex.models.real_vocab.for_rows(logits.shape[-1])
        logits[:, ~real] = float("-inf")
        order = torch.argsort(logits, dim=-1, descending=True)
        real_ids = torch.nonzero(real).flatten().tolist()
        forced = []
        for k, e in enumerate(evs):
            ranked = order[k].tolist()
            r = ranked.index(e.t_pt)
            matched = next(t for t in ranked[r + 1:] if t not in (e.t_it, e.t_pt))
            rng = np.random.default_rng([self.seed, zlib.crc32(e.prompt_id.encode())])
            pool = [t for t in real_ids if t not in (e.t_it, e.t_pt, matched)]
            forced.append({"t_it": e.t_it, "t_pt": e.t_pt, "matched": matched,
                           "random": int(pool[int(rng.integers(len(pool)))])})
        roles = [("IT", events.tuned)] + ([("PT", events.base)] if self.with_pt else [])
        prompts = [e.prefix_ids + [f[name]] for e, f in zip(evs, forced) for name in FORCED]
        continuations = yield [Decode(role, prompts, self.budget) for _, role in roles]
        tok, eos = ex.models.tokenizer, ex.models.eos_ids
        rows = []
        for k, (e, f) in enumerate(zip(evs, forced)):
            validator = self.validators[e.prompt_id]
            row = {"key": f"{e.key}#consequence", "prompt_id": e.prompt_id, "category": e.category,
                   "event_key": e.key, "forced": f, "forced_text": {n: tok.decode([f[n]]) for n in FORCED},
                   "validator": validator.as_record(), "budget": self.budget, "with_pt": self.with_pt,
                   "seed": self.seed, "results": {}}
            for (label, _), conts in zip(roles, continuations):
                res = {}
                for j, name in enumerate(FORCED):
                    ids = conts[k * len(FORCED) + j]
                    suffix = tok.decode(ids, skip_special_tokens=True)
                    # ended: by an end-of-sequence token, not cut at the budget (or at non-finite logits)
                    res[name] = {"pass": bool(validator.check(suffix)), "suffix": suffix[:400],
                                 "ended": bool(ids) and ids[-1] in eos}
                row["results"][label] = res
            rows.append(row)
        return rows


def _correlation(x: np.ndarray, y: np.ndarray, clusters: list[str], boot: BootstrapConfig):
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return {"r": None, "ci": None, "n": int(len(x)), "note": "too few events or no variation"}
    r = float(np.corrcoef(x, y)[0, 1])
    names, index = np.unique(np.asarray(clusters), return_inverse=True)
    if len(names) < MIN_CLUSTERS_FOR_CI or boot.n_resamples <= 0:
        return {"r": r, "ci": None, "n": int(len(x))}
    rng = np.random.default_rng(boot.seed)
    members = [np.flatnonzero(index == k) for k in range(len(names))]
    stats = []
    for _ in range(min(boot.n_resamples, 2000)):
        pick = np.concatenate([members[k] for k in rng.integers(len(names), size=len(names))])
        if x[pick].std() > 0 and y[pick].std() > 0:
            stats.append(np.corrcoef(x[pick], y[pick])[0, 1])
    lo, hi = 50 * (1 - boot.confidence), 100 - 50 * (1 - boot.confidence)
    ci = [float(np.percentile(stats, lo)), float(np.percentile(stats, hi))] if stats else None
    return {"r": r, "ci": ci, "n": int(len(x))}


def consequence_summary(rows: list[dict], interactions: dict[str, float], boot: BootstrapConfig) -> dict:
    """Pass rates, deltas with intervals, per-category rates and the interaction correlation
    (``interactions``: event key -> per-event interaction at the headline boundary)."""
    out = {"n_events": len(rows), "by_model": {}}
    labels = sorted({label for r in rows for label in r["results"]})
    for label in labels:
        rs = [r for r in rows if label in r["results"]]
        clusters = [r["prompt_id"] for r in rs]
        passed = {n: np.array([float(r["results"][label][n]["pass"]) for r in rs]) for n in FORCED}
        block = {"pass_rate": {n: cluster_mean_ci(passed[n], clusters, boot) for n in FORCED},
                 "delta_t_it_minus_t_pt": cluster_mean_ci(passed["t_it"] - passed["t_pt"], clusters, boot),
                 "delta_t_it_minus_matched": cluster_mean_ci(passed["t_it"] - passed["matched"], clusters, boot),
                 "by_category": {}}
        for cat in sorted({r["category"] or "" for r in rs}):
            idx = [k for k, r in enumerate(rs) if (r["category"] or "") == cat]
            block["by_category"][cat] = {"n": len(idx), **{n: float(passed[n][idx].mean()) for n in FORCED}}
        keyed = [(interactions[r["event_key"]], passed["t_it"][k] - passed["t_pt"][k], r["prompt_id"])
                 for k, r in enumerate(rs) if r["event_key"] in interactions]
        if keyed:
            x, y, c = (np.array([k[0] for k in keyed]), np.array([k[1] for k in keyed]), [k[2] for k in keyed])
            block["interaction_vs_delta"] = _correlation(x, y, c, boot)
        else:
            block["interaction_vs_delta"] = {"r": None, "ci": None, "n": 0}
        known = [r["results"][label][n]["ended"] for r in rs for n in FORCED if "ended" in r["results"][label][n]]
        block["unended"] = {"n": sum(not e for e in known), "of": len(known)}  # (records before it: not counted)
        out["by_model"][label] = block
    return out


def check_stored_consequences(rows: list[dict], validators: dict, budget: int, with_pt: bool, seed: int,
                              path) -> None:
    """Continuations already stored (a resumed ``crosspatch consequence``) were scored with these
    settings, else a :class:`RunSettingsMismatchError`: results of two budgets, validators or
    model sets are never mixed in one summary."""
    from ..errors import RunSettingsMismatchError

    asked = {"budget": budget, "with_pt": with_pt, "seed": seed}
    for row in rows:
        validator = validators.get(row.get("prompt_id"))
        have = {name: row.get(name) for name in asked}
        changed = [f"{name} {have[name]!r} -> {asked[name]!r}" for name in asked if have[name] != asked[name]]
        if validator is not None and row.get("validator") != validator.as_record():
            changed.append(f"the validator of prompt {row.get('prompt_id')!r}")
        if changed:
            raise RunSettingsMismatchError(
                f"{path} holds continuations scored with other settings ({'; '.join(changed)}): run with the same "
                "--budget, --with-pt and validators to add to them, or give --overwrite to score afresh")


def validators_of(prompts) -> dict:
    return {p.id: p.validator for p in prompts if getattr(p, "validator", None) is not None}


def check_prompt_set(run_ids: set[str], file_ids: list[str], event_ids: set[str], path, allow_partial: bool) -> list[str]:
    """The prompt file given to a finished run is that run's: ids the run does not have, and run
    events whose prompt the file lacks, are a :class:`PromptSetMismatchError` (counts and the
    first ids), or warnings with ``allow_partial``. Returns the warnings."""
    from ..errors import PromptSetMismatchError

    foreign = sorted(set(file_ids) - run_ids) if run_ids else []
    missing = sorted(event_ids - set(file_ids))
    problems = []
    if foreign:
        problems.append(f"{len(foreign)} prompt id(s) of the file are not prompts of the run "
                        f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''})")
    if missing:
        problems.append(f"{len(missing)} of the run's {len(event_ids)} event prompt(s) are missing from the file "
                        f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): their events cannot be scored")
    if problems and not allow_partial:
        raise PromptSetMismatchError(f"the prompt file is not the run's: {'; '.join(problems)}. Give the run's own "
                                     "prompt file with 'validator' fields added, or pass --allow-partial to score "
                                     "the prompts both share (recorded in the summary)")
    return problems


def check_prompt_texts(config: dict, given: list, path) -> list[str]:
    """The prompts given to a finished run under its ids are the prompts it scored: the file's
    digest (ids, texts, categories, chats, images; not the validators) is compared with the run's,
    in the file's order and in the run's. A file holding every prompt of the run under the same
    ids but another text is a :class:`PromptSetMismatchError` (its validators would judge
    continuations of other prompts); a partial file cannot be compared and says so (returned)."""
    from ..errors import PromptSetMismatchError
    from ..inputs.prompts import prompts_digest

    scored = config.get("prompts") or {}
    recorded = scored.get("sha256")
    if not recorded or prompts_digest(given) == recorded:
        return []
    order, by_id = list(config.get("prompt_ids") or []), {p.id: p for p in given}
    if len(order) == scored.get("count") == len(given) and set(order) == set(by_id):
        if prompts_digest([by_id[i] for i in order]) == recorded:  # the same prompts, rows reordered
            return []
        raise PromptSetMismatchError(
            f"the prompt file holds the ids of the run in {path} but not its prompts: their texts, categories, "
            "chats or images differ from what the run scored (its sha256 of them differs), so their validators "
            "would judge continuations of other prompts. Give the run's own prompt file with 'validator' fields added")
    return ["the file is not the run's whole prompt set, so its prompts' texts could not be checked against the "
            "run's: the shared ids are taken to be the same prompts"]


PARTIAL_FILE = "consequence_partial.json"


def _record_partial(run_dir: Path, partial: list[str]) -> None:
    """``consequence_partial.json``: the warnings of the last ``consequence --allow-partial`` (the
    prompts the file and the run did not share); removed when a later call scores a full file."""
    path = Path(run_dir) / PARTIAL_FILE
    if partial:
        write_whole(path, json.dumps({"partial": partial}, indent=2) + "\n")
    elif path.exists():
        path.unlink()


def _build(options, plan: PlanContext) -> Consequence | None:
    config = plan.config
    if not getattr(config, "consequence", False) or not plan.validators:
        return None
    return Consequence(plan.validators, config.consequence_budget, config.consequence_with_pt, config.seed)


def _summarize(rows: list[dict], ctx: SummaryContext, options) -> dict | None:
    if not rows:
        return None
    inter = {r.event_key: r.effects()["interaction"] for r in ctx.first}
    block = consequence_summary(rows, inter, ctx.bootstrap("consequences"))
    partial_file = ctx.run_dir / PARTIAL_FILE if ctx.run_dir is not None else None
    if partial_file is not None and partial_file.exists():
        block["partial"] = json.loads(partial_file.read_text(encoding="utf-8")).get("partial") or []
    return block


def _rate(stat: dict, signed: bool = False) -> str:
    if stat.get("mean") is None:
        return "n/a"
    text = f"{stat['mean']:+.2f}" if signed else f"{stat['mean']:.2f}"
    ci = stat.get("ci")
    if ci and None not in ci:
        text += f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if signed else f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text + f" (n={stat.get('n', 0)})"


def render_consequences(block: dict) -> Section | None:
    """Pass rates per forced token, the deltas and the interaction correlation, with intervals."""
    if not block or not block.get("by_model"):
        return None
    rows, notes, stats = [], [], []
    for label, b in block["by_model"].items():
        stats += [b["pass_rate"][n] for n in FORCED] + [b["delta_t_it_minus_t_pt"], b["delta_t_it_minus_matched"]]
        unended = b.get("unended") or {}
        if unended.get("n"):
            notes.append(f"Continued by {label}: {unended['n']} of {unended['of']} continuations stopped at the budget "
                         "without an end-of-sequence token: a validator that reads the whole answer (a required "
                         "section, a closing line) fails them whatever token was forced; a larger budget "
                         "(--consequence-budget, consequence --budget) lets them end.")
        corr = b["interaction_vs_delta"]
        corr_text = "n/a" if corr.get("r") is None else f"{corr['r']:+.2f}" + (
            f" [{corr['ci'][0]:+.2f}, {corr['ci'][1]:+.2f}]" if corr.get("ci") else "") + f" (n={corr.get('n', 0)})"
        rows.append([f"continued by {label}"] + [_rate(b["pass_rate"][n]) for n in FORCED]
                    + [_rate(b["delta_t_it_minus_t_pt"], True), _rate(b["delta_t_it_minus_matched"], True), corr_text])
    return Section(
        "Consequences: does the divergent token matter?",
        [f"{block['n_events']} event(s) with a validator; each first token forced, the continuation (suffix only, "
         "the forced token excluded) scored by the prompt's validator. Rates and deltas "
         + ("with 95% prompt-cluster intervals." if any_interval(stats) else f"without intervals ({WHY_NO_INTERVALS})."),
         *notes],
        [Table(["", "pass t_IT", "pass t_PT", "pass matched", "pass random", "t_IT - t_PT", "t_IT - matched",
                "corr(interaction, delta)"], rows)])


PLUGIN = register_analysis(AnalysisPlugin(
    "consequence", _summarize, build=_build, render=render_consequences, default=True, summary_key="consequences",
    order=210,
    description="forced-token continuations scored by the prompts' validators (--consequence)"))
