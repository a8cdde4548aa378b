"""Continuous batching in the divergence search, before and after, on the CPU.

    python benchmarks/continuous_batching.py            # the zoo (128 prompts) and the mid-size pair (32)

Runs the 2x2 alone (no controls, first divergences only) twice per workload in one process:
batch at a time (each search batch waits for its slowest row: ``Executor.continuous_batching =
False``) and continuous (a row that finds its event makes room for the next prompt). Reports
the search's sequential decoding calls per event, the wall time, and whether the events and the
cells are the same. Writes ``docs/benchmarks/continuous-batching.json``; nothing here is part of
the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workloads import SPECS, build_mid, workload_paths, workload_root  # noqa: E402


def measure(workload: str, prompts: int, batch_size: int, root: str) -> dict:
    from crosspatch.execution import Executor, load_pair
    from crosspatch.execution import decoder as decoder_module
    from crosspatch.inputs.prompts import load_prompts
    from crosspatch.runner.pipeline import run

    if workload != "zoo":
        build_mid(workload_root(root, workload), SPECS[workload])
    w = workload_paths(workload, Path(root))
    pair = load_pair(w["base"], tuned=w["tuned"], dtype="float32", device="cpu", hash_weights=False)
    items = load_prompts(w["prompts"])
    items = items[:: max(1, len(items) // prompts)][:prompts]
    calls = {"n": 0}
    feed = decoder_module.CachedDecoder.feed

    def counted(self, tokens):
        calls["n"] += 1
        return feed(self, tokens)

    decoder_module.CachedDecoder.feed = counted  # type: ignore[method-assign]
    options = dict(boundary=0.6, max_new_tokens=64, batch_size=batch_size, bootstrap=0, progress=False,
                   controls="none", event_kinds="first_diff")
    run(pair, items[:2], **options)  # warm-up
    out = {}
    for name, continuous in (("batch at a time", False), ("continuous", True)):
        Executor.continuous_batching = continuous
        best = None
        for _ in range(2):
            calls["n"] = 0
            start = time.perf_counter()
            result = run(pair, items, **options)
            seconds = time.perf_counter() - start
            if best is None or seconds < best["seconds"]:
                first = [r for r in result.records if r.kind == "first_diff"]
                best = {"seconds": round(seconds, 3), "events": len(first), "decoding_calls": calls["n"],
                        "calls_per_event": round(calls["n"] / max(len(first), 1), 2),
                        "_events": {r.prompt_id: (r.position, r.t_pt, r.t_it) for r in first},
                        "_cells": {r.key: r.cells["common_it"] for r in first}}
        out[name] = best
    Executor.continuous_batching = True
    before, after = out["batch at a time"], out["continuous"]
    diff = max((abs(before["_cells"][k][c] - after["_cells"][k][c]) for k in before["_cells"]
                for c in before["_cells"][k]), default=0.0)
    summary = {"workload": workload, "prompts": len(items), "batch_size": batch_size,
               "same_events": before["_events"] == after["_events"], "max_cell_diff": diff,
               **{name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in out.items()}}
    print(json.dumps(summary), flush=True)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/crosspatch-bench")
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "benchmarks" / "continuous-batching.json")
    args = ap.parse_args()
    results = [measure("zoo", 128, 32, args.root), measure("mid", 32, 8, args.root)]
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
