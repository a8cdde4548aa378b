"""``crosspatch gate``: a run's verdict as an exit code for CI pipelines (docs/ci.md).

Exit codes: ``0`` pass (the verdict is one the policy lets through), ``1`` fail (another
verdict), ``2`` unusable (no such directory, not a run, unfinished, one shard of a sharded run,
counts that do not add up, or a sanity control failed). The verdict is recomputed from
``summary.json`` under the policy the run recorded with the given thresholds in place (none
given: the run's own), so a stricter policy needs no re-run; under a policy other than the
run's, the controls whose summary reads the policy (the label-swap test and the null yardstick
read its readout, readout agreement grades under it) are summarised again from the stored records.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.verdict import VerdictPolicy, decide
from ..errors import CorruptRunFileError, RunSchemaError
from ..store import RunStore, check_summary_shape, collection_kind, collection_runs, not_a_run_message


def _unusable(reason: str, **extra) -> dict:
    return {"status": "unusable", "exit_code": 2, "verdict": None, "reason": reason, **extra}


def gate(run_dir: str | Path, policy: dict | str | Path | None = None) -> dict:
    """Decide pass / fail / unusable for ``run_dir`` under the policy its run recorded, with the
    fields ``policy`` gives in place (VerdictPolicy fields, or a YAML/JSON file of them, as
    ``--policy``; None: the run's own policy, the defaults where it recorded none). A
    ``compare`` directory gates every member run (one outcome each under ``members``, the exit
    code of the worst); a ``lineage`` directory gates its run (base vs the final stage). Anything
    that is no run, a ``run_dir`` that is no path included, is ``unusable`` (exit code 2)."""
    if not isinstance(run_dir, (str, Path)) or not str(run_dir).strip():
        return _unusable(f"run_dir must be the path of a run directory, not {run_dir!r}")
    from ..errors import PolicyFileError
    from ..runner.config import policy_given

    try:
        policy = policy_given(policy)
    except PolicyFileError as exc:
        return _unusable(f"bad policy: {exc}")
    kind = collection_kind(run_dir)
    if kind is not None:
        return gate_collection(Path(run_dir), kind, policy)
    return gate_run(run_dir, policy)


def gate_collection(path: Path, kind: str, policy: dict | None = None) -> dict:
    members = collection_runs(path, kind)
    if not members:
        return _unusable(f"{path} is a {kind} directory without any finished run")
    outcomes = {member.name: gate_run(member, policy) for member in members}
    worst = max(outcomes.values(), key=lambda o: o["exit_code"])
    counts = {status: sum(o["status"] == status for o in outcomes.values()) for status in ("pass", "fail", "unusable")}
    reason = (f"{kind} of {len(outcomes)} run(s): " + ", ".join(f"{n} {c}" for n, c in counts.items() if c)
              + ("" if kind == "compare" else " (the lineage's run: base vs its final stage)"))
    return {"status": worst["status"], "exit_code": worst["exit_code"], "verdict": None, "reason": reason,
            "collection": kind, "members": outcomes, "run_dir": str(path)}


def _shard_of(config: dict) -> str | None:
    """``i/n`` where the run whose ``config`` (config.json) this is is one shard of several
    (``--shard``), else None (a merged run records none)."""
    options = config.get("options")
    shard = options.get("shard") if isinstance(options, dict) else None
    # (read here, not with runner.checks.parse_shard: that module imports torch, which the gate does without)
    if not isinstance(shard, str) or "/" not in shard:
        return None
    count = shard.partition("/")[2].strip()
    return shard if count.isdigit() and int(count) > 1 else None


def gate_run(run_dir: str | Path, policy: dict | None = None) -> dict:
    """Decide pass / fail / unusable for one run directory (see :func:`gate`): under the policy the
    run recorded (its ``--policy``; none: the defaults) with the fields ``policy`` gives in place."""
    path = Path(run_dir)
    try:
        VerdictPolicy.from_dict({} if policy is None else policy)  # (a bad policy is named before the run is read)
    except (TypeError, ValueError) as exc:
        return _unusable(f"bad policy: {exc}")
    if not path.is_dir() or not (path / "config.json").exists():
        return _unusable(not_a_run_message(path))
    if not (path / "summary.json").exists():
        return _unusable(f"{path} has no summary.json: the run did not finish (run the same command again to resume)")
    try:  # what the run was asked (a shard's part of a run is no run to gate): a damaged file is no run either
        config = RunStore(path).config()  # (JSON of the shape docs/schemas.md gives, else named)
    except (CorruptRunFileError, RunSchemaError) as exc:
        return _unusable(str(exc))  # (it names the file)
    recorded = config.get("options", {}).get("policy") if isinstance(config.get("options"), dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    try:
        VerdictPolicy.from_dict(recorded)
    except (TypeError, ValueError) as exc:  # (a policy an older crosspatch recorded: a retired field)
        if not policy:
            return _unusable(f"the policy {path / 'config.json'} records is no valid policy now: {exc}; gate it with "
                             "--policy (the given fields over the defaults)")
        recorded = {}
    try:
        rules = VerdictPolicy.from_dict({**recorded, **(policy or {})})
    except (TypeError, ValueError) as exc:  # the given fields do not fit the run's others (bounds crossed)
        return _unusable(f"bad policy: {exc} (the fields given, over the policy the run recorded: {recorded})")
    shard = _shard_of(config)
    if shard is not None:
        return _unusable(f"{path} is shard {shard} of a sharded run: its verdict covers that shard's prompts only; "
                         "merge the shards (crosspatch merge) and gate the merged run")
    if (same := _computes_the_base(config)) is not None:
        return _unusable(f"the run measured no fine-tune: {same}")
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        check_summary_shape(summary, path / "summary.json")
        counts = summary["counts"]
        results = summary["results"]
    except (CorruptRunFileError, RunSchemaError) as exc:
        return _unusable(str(exc))
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        return _unusable(f"{path / 'summary.json'} is unreadable or malformed: {exc}")
    accounted = counts.get("events", 0) + counts.get("invalid", 0) + sum(counts.get("no_divergence", {}).values())
    if accounted != counts.get("prompts"):
        return _unusable(f"counts do not add up: {accounted} prompts accounted for, {counts.get('prompts')} in the run")
    controls = summary.get("controls") or []
    failed = [c["control"] for c in controls if c.get("status") == "fail"]
    if failed:
        return _unusable(f"sanity control(s) failed: {', '.join(failed)}", controls=controls)
    stored = summary.get("verdict") or {}
    boundary = str(stored.get("boundary", summary["boundaries"][0]))
    try:
        block = results[boundary][rules.readout]["all"]
    except KeyError:
        return _unusable(f"summary.json has no results for boundary {boundary} and readout {rules.readout}")
    try:
        controls = controls_under(path, config, summary, rules, int(boundary))
    except (CorruptRunFileError, RunSchemaError) as exc:
        return _unusable(str(exc))
    decision = decide(block, controls, rules, counts)
    passed = decision["verdict"] in rules.pass_verdicts
    return {"status": "pass" if passed else "fail", "exit_code": 0 if passed else 1,
            "verdict": decision["verdict"], "reason": decision["reason"], "boundary": int(boundary),
            "readout": rules.readout, "policy": rules.as_dict(), "numbers": decision["numbers"],
            "run_dir": str(path)}


def controls_under(path: Path, config: dict, summary: dict, rules: VerdictPolicy, headline: int) -> list[dict]:
    """The run's Controls rows as a run under ``rules`` would have them: the stored rows, with
    those of the plug-ins that read the verdict policy (``reads_policy``) summarised again from
    the stored records where ``rules`` is not the run's policy (then, and only then, the plug-ins
    are imported: a gate under the run's own policy reads its JSON files alone, without torch)."""
    controls, options = summary.get("controls") or [], config.get("options") or {}

    def grading(policy: VerdictPolicy) -> dict:  # (which verdicts pass changes no control)
        return {k: v for k, v in policy.as_dict().items() if k != "pass_verdicts"}

    try:
        if grading(VerdictPolicy.from_dict(options.get("policy") or {})) == grading(rules):
            return controls
    except (TypeError, ValueError):  # (a stored policy no longer valid: read as another)
        pass
    from ..core.registry import SummaryContext, registered
    from ..core.stats import BootstrapConfig
    from ..runner.finished import stored_analyses
    from ..runner.summary import plugin_blocks
    from ..store import RunStore

    redo = {c.get("control") for c in controls if getattr(registered().get(c.get("control")), "reads_policy", False)}
    if not redo:
        return controls
    store = RunStore(path)
    ctx = SummaryContext({**config, "options": {**options, "policy": rules.as_dict()}}, store.load_records(), headline,
                         BootstrapConfig(options.get("bootstrap", 2000), options.get("seed", 0)), run_dir=path,
                         results=summary["results"])
    again = {row["control"]: row for row in plugin_blocks(ctx, stored_analyses(store, skip_torn_tail=True), only=redo)[0]}
    return [again[c["control"]] if c.get("control") in again else c for c in controls]


def _computes_the_base(config: dict) -> str | None:
    """Why the run's scored descendant computes exactly the base (config.json's model record:
    ``computes_the_base``, an adapter that changes nothing or a copy of the base), else None."""
    def part(holder, key, kind):  # (a damaged record is no reason to stop here: other checks name it)
        value = holder.get(key) if isinstance(holder, dict) else None
        return value if isinstance(value, kind) else kind()

    models, roles = part(config, "models", dict), part(config, "roles", list)
    role = part(config, "options", dict).get("tuned") or (roles[1] if len(roles) > 1 else None)
    entry = part(models, "descendants", dict).get(role if isinstance(role, str) else None) if "descendants" in models else \
        models.get("tuned") or models.get("adapter")
    why = entry.get("computes_the_base") if isinstance(entry, dict) else None
    return why if isinstance(why, str) else None
