"""Which run a directory holds: a run's fingerprint (a hash of the options, boundaries, models
and prompts that change its results), the same under this crosspatch's naming for a run an
earlier one recorded, and what differs between two runs' settings, in words."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .files import _read_jsonl, json_line, json_value, write_whole


def fingerprint(parts: dict) -> str:
    """Stable hash of the options that change results (used to refuse mixing runs)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=json_value).encode()).hexdigest()[:16]


def scored_role_named(options, roles) -> dict:
    """A run's recorded ``options`` with ``tuned`` naming the descendant role it scored (``roles``:
    the run's, base first): runs begun in Python before 2026-12-07 left it unsaid (None) for a set's
    first descendant, which the command line names, and the two are one run."""
    if isinstance(options, dict) and "tuned" in options and options["tuned"] is None and len(roles or []) > 1:
        return options | {"tuned": roles[1]}
    return options


def named_inputs(record: dict) -> dict:
    """A run's ``fingerprint_inputs`` (from its config.json ``record``) under this crosspatch's
    naming (:func:`scored_role_named`)."""
    parts = record.get("fingerprint_inputs") or {}
    options = scored_role_named(parts.get("options"), record.get("roles"))
    return parts if options is parts.get("options") else parts | {"options": options}


def record_fingerprint(record: dict) -> str | None:
    """The fingerprint a run's config.json ``record`` has under this crosspatch's naming
    (:func:`named_inputs`): its own, or the one it would have been written with now."""
    parts = named_inputs(record)
    if not parts or parts is record.get("fingerprint_inputs"):  # (named as now, or no inputs to name)
        return record.get("fingerprint")
    return fingerprint({"run": fingerprint(parts), "shard": (record.get("options") or {}).get("shard")})


def settings_diff(old, new, prefix: str = "") -> list[str]:
    """Human-readable differences between two fingerprint inputs (``key: old -> new``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += settings_diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if prefix == "result_rules" and old != new:
        return [f"written by {'an older' if old is None or str(old) < str(new) else 'another'} crosspatch, whose "
                f"records this version would not reproduce (result rules {old or 'before 2026-12-05'} -> {new}): "
                "its records cannot be mixed with this version's"]
    if old != new:
        def show(value) -> str:
            if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
                return f"sha256 {value[:12]}…"  # a file's digest: enough to tell the two apart
            if value is None:
                return "not given"
            if isinstance(value, dict) and (old is None or new is None):
                return "given"  # a model or option present on one side only: its contents say nothing more
            text = json.dumps(value, default=json_value)
            return text if len(text) <= 80 else text[:79] + "…"
        return [f"{prefix or 'settings'}: {show(old)} -> {show(new)}"]
    return []


def other_settings(path: Path, old: dict | None, config: dict, old_fp: str | None, fp: str | None) -> str:
    """Why the run directory ``path``, holding the run of config.json ``old`` (``old_fp``), does
    not take the run of ``config`` (``fp``): its settings' differences in words."""
    changes = settings_diff(named_inputs(old or {}), config.get("fingerprint_inputs", {}))
    read = any(c.startswith("models.descendants.") and c.endswith(": not given -> given") for c in changes)
    return (f"{path} holds a run with other settings ("
            + ("; ".join(changes[:8]) if changes else f"fingerprint {old_fp} vs {fp}")
            + ("; the run now reads more descendants: a compare's --cross, a lineage's stages or --null" if read else "")
            + "). Use another --out, or --overwrite to replace that run")


def retag_records(path: Path, old: str, new: str | None) -> None:
    """The records file ``path`` with the lines of run ``old`` tagged ``new``: a run an earlier
    crosspatch named otherwise (:func:`record_fingerprint`), resumed under this one's name."""
    rows = [row for _, row in _read_jsonl(path)]
    if any(row.get("run") == old for row in rows):
        write_whole(path, "".join(json_line({**row, "run": new} if row.get("run") == old else row) for row in rows))
