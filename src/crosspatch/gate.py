"""``crosspatch gate``: a run's verdict as an exit code for CI pipelines (docs/ci.md).

Exit codes: ``0`` pass (the verdict is one the policy lets through), ``1`` fail (another
verdict), ``2`` unusable (no such directory, not a run, unfinished, counts that do not add up,
or a sanity control failed). The verdict is recomputed from ``summary.json`` under the given
thresholds, so a stricter policy needs no re-run.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import CorruptRunFileError, RunSchemaError
from .store import check_summary_shape, not_a_run_message
from .verdict import VerdictPolicy, decide


def _unusable(reason: str, **extra) -> dict:
    return {"status": "unusable", "exit_code": 2, "verdict": None, "reason": reason, **extra}


def gate(run_dir: str | Path, policy: dict | None = None) -> dict:
    """Decide pass / fail / unusable for ``run_dir`` under ``policy`` (VerdictPolicy fields)."""
    path = Path(run_dir)
    try:
        rules = VerdictPolicy.from_dict(policy or {})
    except (TypeError, ValueError) as exc:
        return _unusable(f"bad policy: {exc}")
    if not path.is_dir():
        return _unusable(f"{path} is not a directory")
    if not (path / "config.json").exists():
        return _unusable(not_a_run_message(path))
    if not (path / "summary.json").exists():
        return _unusable(f"{path} has no summary.json: the run did not finish (run the same command again to resume)")
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        check_summary_shape(summary, path / "summary.json")
        counts = summary["counts"]
        results = summary["results"]
    except (CorruptRunFileError, RunSchemaError) as exc:
        return _unusable(str(exc))
    except (OSError, ValueError, KeyError, TypeError) as exc:
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
    decision = decide(block, controls, rules, counts)
    passed = decision["verdict"] in rules.pass_verdicts
    return {"status": "pass" if passed else "fail", "exit_code": 0 if passed else 1,
            "verdict": decision["verdict"], "reason": decision["reason"], "boundary": int(boundary),
            "readout": rules.readout, "policy": rules.as_dict(), "numbers": decision["numbers"],
            "run_dir": str(path)}
