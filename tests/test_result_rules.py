"""``crosspatch.store.RESULT_RULES`` names the rules by which crosspatch turns the same models,
prompts and options into records; it is part of every run's fingerprint, so a run directory an
older crosspatch wrote is neither resumed into nor passed off as finished (tests/test_store.py).
That guard holds only if every change to what is recorded changes RESULT_RULES too: this test
keeps the records of one fixed tiny run (every event kind, the default controls' records) and
fails when they change while RESULT_RULES stays the same.

After a change that alters records on purpose, set RESULT_RULES to the date of the change and
write the reference again: ``python tests/test_result_rules.py --write``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from crosspatch.runner.pipeline import run
from crosspatch.store import RESULT_RULES
from crosspatch.testing import make_pair

REFERENCE = Path(__file__).with_name("result_rules_reference.json")
CELL_TOLERANCE = 1e-4  # float rounding of another CPU; a change of rules moves far more or moves events
MIN_MARGIN = 1e-3  # the reference's events are decided by more than this: far beyond another CPU's rounding
WORDS = ["Rain", "Wind", "Snow", "Sky", "Fog", "Heat", "Humid", "Storm", "Cold", "Gust"]


def reference_run() -> dict:
    """The records of the fixed run: 2x2 records of every event kind, the no-divergence outcomes
    and the default controls' records, as plain JSON values."""
    prompts = [{"id": f"q{k:02d}", "prompt": f"{WORDS[k % 10]} in city {k} on day {k % 28}:",
                "category": WORDS[k % 10]} for k in range(12)]
    result = run(make_pair("llama", scale=0.3), prompts, boundary=2, max_new_tokens=16, bootstrap=0, progress=False)
    records = [{"key": r.key, "kind": r.kind, "position": r.position, "t_pt": r.t_pt, "t_it": r.t_it,
                "margins": [r.margin_pt, r.margin_it], "cells": r.cells} for r in result.records]
    no_divergence = sorted((vars(n) for n in result.no_divergence), key=lambda n: str(n.get("prompt_id")))
    analyses = {name: [{k: v for k, v in row.items() if isinstance(v, (int, float, str, list, dict))} for row in rows]
                for name, rows in sorted(result.analyses.items())}
    return json.loads(json.dumps({"result_rules": RESULT_RULES, "records": records, "no_divergence": no_divergence,
                                  "analyses": analyses}, default=str))


def differences(got, want, path: str = "") -> list[str]:
    """Where ``got`` differs from ``want``: numbers beyond CELL_TOLERANCE, anything else unequal."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return [f"{path}: keys {sorted(set(got) ^ set(want))} differ"]
        return [d for k in want for d in differences(got[k], want[k], f"{path}.{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{path}: {len(got)} items, the reference has {len(want)}"]
        return [d for k, (a, b) in enumerate(zip(got, want)) for d in differences(a, b, f"{path}[{k}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        same = (math.isnan(got) and math.isnan(want)) or abs(got - want) <= CELL_TOLERANCE
        return [] if same else [f"{path}: {got!r}, the reference has {want!r}"]
    return [] if got == want else [f"{path}: {got!r}, the reference has {want!r}"]


def test_the_reference_decides_its_events_by_a_clear_margin():
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    assert {r["kind"] for r in reference["records"]} == {"first_diff", "first_nonformat_diff",
                                                         "first_assistant_marker_diff"}
    assert all(reference["analyses"][name] for name in ("control_hybrid_state", "control_pre_divergence"))
    assert min(m for r in reference["records"] for m in r["margins"]) > MIN_MARGIN


def test_records_change_only_with_the_result_rules():
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    assert reference["result_rules"] == RESULT_RULES, (
        f"RESULT_RULES is now {RESULT_RULES!r} but the reference was written under {reference['result_rules']!r}: "
        "write it again (python tests/test_result_rules.py --write)")
    changed = differences(reference_run(), reference)
    assert not changed, (
        "the records of the same models, prompts and options changed while RESULT_RULES stayed "
        f"{RESULT_RULES!r}: runs written before this change would be resumed into and mixed with the new records. "
        "If the change is meant, set crosspatch.store.RESULT_RULES to today's date and write the reference again "
        "(python tests/test_result_rules.py --write). First differences: " + "; ".join(changed[:5]))


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_result_rules.py --write")
    REFERENCE.write_text(json.dumps(reference_run(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {REFERENCE} (result rules {RESULT_RULES})")
