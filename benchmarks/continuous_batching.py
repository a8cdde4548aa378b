"""Continuous batching in the divergence search, before and after (on the CPU; ``--device cuda
--dtype bfloat16`` is the GPU check's ``batching`` part).

    python benchmarks/continuous_batching.py            # the zoo (96 prompts) and the mid-size pair (32)

Runs the 2x2 alone (no controls, first divergences only) per workload and decoding mode (``eager``:
a growing KV cache, ``static``: a preallocated one, what ``auto`` picks on CUDA) in one process:
batch at a time (each search batch waits for its slowest row: ``Executor.continuous_batching =
False``) and continuous (a row that finds its event makes room for the next prompt: joined to a
growing cache, or taken into the free slot of a static one). Reports
the search's sequential decoding calls per event, its prompt passes (a join is one), the wall
time, and whether the events and the cells are the same; both models resident (the interleaved
search), and on the zoo one model at a time (``--residency sequential``: the rollout decoded whole,
then the other model's teacher-forced pass). Writes ``docs/benchmarks/continuous-batching.json``;
nothing here is part of the test suite.
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

CALLS = {"feed": 0, "prompt": 0}  # decoding steps and prompt passes (each join is one) of every decoder


def _count_calls() -> None:
    """Count each decoder call once, however many classes it passes through (patched once)."""
    from crosspatch.execution import decoder as decoder_module
    from crosspatch.execution import static as static_module

    depth = {"d": 0}

    def counting(method, key):
        def counted(self, *args):
            CALLS[key] += depth["d"] == 0
            depth["d"] += 1
            try:
                return method(self, *args)
            finally:
                depth["d"] -= 1
        counted.counting = True  # type: ignore[attr-defined]
        return counted

    for cls, name, key in ((decoder_module.CachedDecoder, "feed", "feed"), (static_module.SlotDecoder, "feed", "feed"),
                           (decoder_module.CachedDecoder, "_start_all", "prompt")):
        if not getattr(cls.__dict__[name], "counting", False):
            setattr(cls, name, counting(cls.__dict__[name], key))


def measure(workload: str, prompts: int, batch_size: int, root: str, decode: str = "eager", device: str = "cpu",
            dtype: str = "float32", residency: str = "both") -> dict:
    from crosspatch.execution import Executor, load_pair
    from crosspatch.inputs.prompts import load_prompts
    from crosspatch.runner.pipeline import run

    if workload != "zoo":
        build_mid(workload_root(root, workload), SPECS[workload])
    w = workload_paths(workload, Path(root))
    pair = load_pair(w["base"], tuned=w["tuned"], dtype=dtype, device=device, hash_weights=False, residency=residency)
    items = load_prompts(w["prompts"])
    items = items[:: max(1, len(items) // prompts)][:prompts]
    _count_calls()
    options = dict(boundary=0.6, max_new_tokens=64, batch_size=batch_size, bootstrap=0, progress=False,
                   controls="none", event_kinds="first_diff", decode=decode)
    run(pair, items[:2], **options)  # warm-up
    out = {}
    for name, continuous in (("batch at a time", False), ("continuous", True)):
        Executor.continuous_batching = continuous
        best = None
        for _ in range(2):
            CALLS.update(feed=0, prompt=0)
            start = time.perf_counter()
            result = run(pair, items, **options)
            seconds = time.perf_counter() - start
            if best is None or seconds < best["seconds"]:
                first = [r for r in result.records if r.kind == "first_diff"]
                best = {"seconds": round(seconds, 3), "events": len(first), "decoding_calls": CALLS["feed"],
                        "calls_per_event": round(CALLS["feed"] / max(len(first), 1), 2),
                        "prompt_passes": CALLS["prompt"],
                        "_events": {r.prompt_id: (r.position, r.t_pt, r.t_it) for r in first},
                        "_cells": {r.key: r.cells["common_it"] for r in first}}
        out[name] = best
    Executor.continuous_batching = True
    before, after = out["batch at a time"], out["continuous"]
    diff = max((abs(before["_cells"][k][c] - after["_cells"][k][c]) for k in before["_cells"]
                for c in before["_cells"][k]), default=0.0)
    summary = {"workload": workload, "decode": decode, "residency": residency, "device": device, "dtype": dtype,
               "prompts": len(items),
               "batch_size": batch_size,
               "same_events": before["_events"] == after["_events"], "max_cell_diff": diff,
               **{name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in out.items()}}
    print(json.dumps(summary), flush=True)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/crosspatch-bench")
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "benchmarks" / "continuous-batching.json")
    ap.add_argument("--decode", nargs="+", default=["eager", "static"], choices=["eager", "static"])
    ap.add_argument("--device", default="cpu", help="cuda: the GPU check's `batching` part (benchmarks/gpu_check.sh)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--workloads", nargs="+", default=["zoo", "mid"], choices=["zoo", "mid"])
    args = ap.parse_args()
    sizes = {"zoo": (128, 32), "mid": (32, 8)}
    # both models resident (the interleaved search), and one at a time on the zoo (the rollout decoded whole)
    cases = [(w, "both") for w in args.workloads] + [("zoo", "sequential")] * ("zoo" in args.workloads)
    results = [measure(workload, *sizes[workload], args.root, decode, args.device, args.dtype, residency)
               for decode in args.decode for workload, residency in cases]
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
