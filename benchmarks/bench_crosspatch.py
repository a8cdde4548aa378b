"""Benchmark crosspatch against the paper's own pipeline, nnsight and the forward-pass floor.

    pip install -e '.[bench]'
    python benchmarks/bench_crosspatch.py --suite cpu     # this machine (CPU)
    python benchmarks/bench_crosspatch.py --suite gpu     # a CUDA machine (bf16)

Each suite writes ``docs/benchmarks/<suite>.json`` and re-renders ``docs/benchmarks.md`` from
every suite result present (so CPU and GPU tables made on different machines sit together).
Every method runs in a fresh subprocess (peak memory is its own) on the same workload; all are
timed after loading, and the fastest of ``--repeats`` runs is reported. Methods (see
``baselines.py``): crosspatch (``run`` with the 2x2 alone: no controls, no bootstrap),
paper-style, nnsight, and the lower bound on crosspatch's own events. Work is counted in
forward-pass equivalents (FE): token-layers executed / sum over events of prefix x layers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workloads import workload_paths  # noqa: E402

DOC = HERE.parent / "docs" / "benchmarks.md"
RESULTS = HERE.parent / "docs" / "benchmarks"


# ----------------------------------------------------------------------------- one method, in a child


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory allocated, or this process's peak RSS (VmHWM: unlike ru_maxrss it is not
    inherited from the parent across exec)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def boundaries_of(args, layers: int) -> list[int]:
    from crosspatch.core.cells import resolve_boundary

    return list(range(1, layers)) if args.sweep else [resolve_boundary(0.6, layers)]


def load_prompt_list(args) -> list:
    from crosspatch.inputs.prompts import load_prompts

    prompts = load_prompts(workload_paths(args.workload, args.root)["prompts"])
    step = max(1, len(prompts) // args.prompts)
    return prompts[::step][: args.prompts]


def warm_code_paths() -> None:
    """One run on a tiny random pair: imports, kernels and allocator pools that every process pays
    once, so that "model work" (peak minus the memory before loading) is the models' and the
    run's alone."""
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    pair = make_pair("llama")
    run(pair, [{"id": "w", "prompt": "warm up"}], boundary=2, max_new_tokens=4, bootstrap=0, progress=False)
    pair.release()


def unique_head_bytes(pair) -> int:
    """Bytes of the readout heads a sequential set keeps resident (shared heads counted once)."""
    heads = getattr(pair, "heads", {})
    modules = {id(m): m for h in heads.values() for m in (h.anatomy.final_norm, h.anatomy.lm_head)}
    return sum(p.numel() * p.element_size() for m in modules.values() for p in m.parameters())


def kv_cache_bound_bytes(base: str, dtype: str, prompt_ids: list[list[int]], max_new_tokens: int,
                         batch_size: int, max_batch_tokens: int | None) -> int:
    """One model's largest KV cache over the run's decoding batches (the executor's own batching
    of prompt + budget tokens)."""
    from crosspatch.execution import kv_bytes_per_token, largest_batch_tokens
    from crosspatch.models.config_dicts import local_config
    from crosspatch.models.loading import DTYPES

    tokens = largest_batch_tokens([len(p) + max_new_tokens for p in prompt_ids], batch_size, max_batch_tokens)
    return tokens * kv_bytes_per_token(local_config(base), DTYPES[dtype].itemsize)


def _timed_run(args, pair, prompts, options: dict):
    """``crosspatch.run`` timed after a warm-up on two prompts (CUDA context, kernels and, with
    ``--decode compiled``, the compilation of the first shapes), as every method gets; returns
    (seconds, result, the warm-up's seconds)."""
    from crosspatch.runner.pipeline import run

    start = time.perf_counter()
    run(pair, prompts[:2], **options)
    sync(args.device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    result = run(pair, prompts, **options)
    sync(args.device)
    return time.perf_counter() - start, result, warmup


def _first_divergences(records) -> tuple[dict, dict]:
    """The events and common-IT cells of the first divergences (what every method is compared on)."""
    first = [r for r in records if r.kind == "first_diff"]
    return ({r.prompt_id: (r.position, r.t_pt, r.t_it, r.prefix_ids) for r in first},
            {f"{r.prompt_id}@{r.boundary}": r.cells["common_it"] for r in first})


def _every_kind(records) -> tuple[dict, dict]:
    """Every event kind's events and common-IT cells, keyed ``"<prompt id>/<kind>"`` (what the
    paper-style pipeline scoring every kind is compared on)."""
    return ({f"{r.prompt_id}/{r.kind}": (r.position, r.t_pt, r.t_it, r.prefix_ids) for r in records},
            {f"{r.prompt_id}/{r.kind}@{r.boundary}": r.cells["common_it"] for r in records})


def method_crosspatch(args) -> dict:
    from crosspatch.execution import load_pair

    w = workload_paths(args.workload, args.root)
    if not args.device.startswith("cuda"):
        warm_code_paths()
    before = peak_memory_mb(args.device)
    kind = {"tuned": w["tuned"]} if args.residency != "adapter" else {"adapter": w["adapter"]}
    pair = load_pair(w["base"], residency=args.residency, dtype=args.dtype, device=args.device,
                     hash_weights=False, **kind)
    prompts = load_prompt_list(args)
    cache_mb = kv_mb = 0.0
    if args.residency == "sequential":
        from crosspatch.runner.pipeline import state_cache_bytes

        ids = [pair.tokenizers[pair.roles[0]](p.prompt)["input_ids"] for p in prompts]
        cache_mb = (state_cache_bytes(pair, ids, args.max_new_tokens, 1) or 0) / 2**20
        kv_mb = kv_cache_bound_bytes(w["base"], args.dtype, ids, args.max_new_tokens, args.batch_size,
                                     args.max_batch_tokens) / 2**20
    options = dict(boundary=0.6, boundaries="all" if args.sweep else None, max_new_tokens=args.max_new_tokens,
                   batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens, bootstrap=0, progress=False,
                   controls="none", event_kinds="first_diff", decode=os.environ.get("CROSSPATCH_BENCH_DECODE", "auto"))
    seconds, result, warmup = _timed_run(args, pair, prompts, options)
    cost = result.summary["cost_this_session"]
    events, cells = _first_divergences(result.records)
    return {"seconds": seconds, "events": events, "cells": cells, "fe_per_event": cost["fe_per_event"],
            "peak_mb": peak_memory_mb(args.device), "before_mb": before, "cache_mb": cache_mb, "kv_mb": kv_mb,
            "heads_mb": unique_head_bytes(pair) / 2**20, "max_batch_tokens": args.max_batch_tokens, "num_layers": pair.num_layers,
            "no_divergence": len(result.no_divergence), "warmup_seconds": warmup, "decode": cost.get("decode")}


def method_default(args) -> dict:
    """A default ``crosspatch.run`` (default controls, every event kind, 2000 bootstrap
    resamples, the default batching), timed after loading like the 2x2 alone; events and cells are
    its first divergences. ``default-first-diff``: the same with ``event_kinds="first_diff"`` (no
    history decoded past the first divergence), to show what the event kinds cost."""
    from crosspatch.execution import load_pair

    w = workload_paths(args.workload, args.root)
    if not args.device.startswith("cuda"):
        warm_code_paths()
    pair = load_pair(w["base"], tuned=w["tuned"], dtype=args.dtype, device=args.device, hash_weights=False)
    prompts = load_prompt_list(args)
    with _stage_timers() as stages:
        options = dict(boundary=0.6, max_new_tokens=args.max_new_tokens, progress=False)
        if args.method == "default-first-diff":
            options["event_kinds"] = "first_diff"
        seconds, result, warmup = _timed_run(args, pair, prompts, options)
    events, cells = _first_divergences(result.records)
    kinds = dict(zip(("kind_events", "kind_cells"), _every_kind(result.records))) if args.method == "default" else {}
    stages["other"] = max(0.0, seconds - sum(stages.values()))
    return {"seconds": seconds, "events": events, "cells": cells, **kinds,
            "fe_per_event": result.summary["cost_this_session"]["fe_per_event"], "peak_mb": peak_memory_mb(args.device),
            "no_divergence": len(result.no_divergence), "stages": dict(stages), "warmup_seconds": warmup,
            "decode": result.summary["cost_this_session"].get("decode")}


@contextlib.contextmanager
def _stage_timers():
    """Seconds of the last ``crosspatch.run`` by stage (what a chunk's executor drives, and the
    statistics): ``search`` (the divergence search, with the histories it keeps), ``analyses`` (the
    2x2 and every analysis' passes, side by side), ``statistics`` (the summary: bootstrap,
    controls' summaries, verdict); the caller adds ``other``. Each run starts from zero."""
    from crosspatch.execution import executor as executor_module
    from crosspatch.runner import pipeline

    stages: dict[str, float] = {}
    real = {"drive": executor_module.Executor.drive, "drive_all": executor_module.Executor.drive_all,
            "build_summary": pipeline.build_summary}

    def timed(stage, fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - start
        return wrapper

    real_run = pipeline.run

    def run(*a, **kw):  # each run's stages from zero: the last (timed) run's are what remain
        stages.clear()
        return real_run(*a, **kw)

    executor_module.Executor.drive = timed("search", real["drive"])
    executor_module.Executor.drive_all = timed("analyses", real["drive_all"])
    pipeline.build_summary = timed("statistics", real["build_summary"])
    pipeline.run = run
    try:
        yield stages
    finally:
        executor_module.Executor.drive, executor_module.Executor.drive_all = real["drive"], real["drive_all"]
        pipeline.build_summary, pipeline.run = real["build_summary"], real_run


def method_process(args) -> dict:
    """The same default run as one ``crosspatch run`` command, timed from the start of the process
    to its exit: imports, loading, hashing, compute, statistics and both reports (the fixed cost a
    user waits for beside the compute)."""
    import tempfile

    w = workload_paths(args.workload, args.root)
    prompts = load_prompt_list(args)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "prompts.jsonl"
        file.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt}) + "\n" for p in prompts))
        cmd = [sys.executable, "-m", "crosspatch", "run", "--base", w["base"], "--tuned", w["tuned"], "--prompts",
               str(file), "--out", str(Path(tmp) / "run"), "--boundary", "0.6", "--max-new-tokens",
               str(args.max_new_tokens), "--dtype", args.dtype, "--device", args.device, "--quiet"]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"crosspatch run failed:\n{done.stderr[-4000:]}")
        lines = [json.loads(x) for x in (Path(tmp) / "run" / "events.jsonl").read_text().splitlines()]
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    # what any Hugging Face pipeline pays before its first forward: Python, torch, and transformers
    # with the model's modelling code (resolved as AutoModelForCausalLM does), in a fresh process
    floor = ("import torch, transformers; from transformers import AutoConfig; "
             "from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING; "
             f"MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained({w['base']!r}))]")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", floor], check=True, capture_output=True)
    import_seconds = time.perf_counter() - start
    first = [r for r in lines if r["kind"] == "first_diff"]
    return {"seconds": seconds,
            "events": {r["prompt_id"]: (r["position"], r["t_pt"], r["t_it"], r["prefix_ids"]) for r in first},
            "cells": {f"{r['prompt_id']}@{r['boundary']}": r["cells"]["common_it"] for r in first},
            "fe_per_event": summary["cost_this_session"]["fe_per_event"],
            "compute_seconds": summary["cost_this_session"]["seconds"], "import_floor_seconds": import_seconds,
            "peak_mb": None,  # another process's
            "no_divergence": sum(summary["counts"]["no_divergence"].values())}


def plain_models(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    w = workload_paths(args.workload, args.root)
    dtype = getattr(torch, args.dtype)
    pt = AutoModelForCausalLM.from_pretrained(w["base"], dtype=dtype).to(args.device).eval()
    it = AutoModelForCausalLM.from_pretrained(w["tuned"], dtype=dtype).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(w["base"])
    eos = {tok.eos_token_id} | set(_as_list(pt.generation_config.eos_token_id))
    return pt, it, tok, {e for e in eos if e is not None}


def _as_list(x):
    return [] if x is None else (list(x) if isinstance(x, (list, tuple)) else [x])


def method_baseline(args) -> dict:
    import baselines

    pt, it, tok, eos = plain_models(args)
    L = pt.config.num_hidden_layers
    boundaries = boundaries_of(args, L)
    prompts = {p.id: tok(p.prompt)["input_ids"] for p in load_prompt_list(args)}
    vocab = len(tok)
    found = {k: tuple(v) for k, v in json.loads(Path(args.events).read_text()).items()} if args.events else {}

    def compute(prompts):
        with torch.inference_mode():
            if args.method == "paper":
                return baselines.paper_style(pt, it, prompts, boundaries, args.max_new_tokens, vocab, eos, args.device)
            if args.method == "paper-kinds":
                return baselines.paper_style_kinds(pt, it, tok, prompts, boundaries, args.max_new_tokens, vocab, eos,
                                                   args.device)
            if args.method == "floor":
                return baselines.fair_floor(pt, it, prompts, boundaries, args.max_new_tokens, vocab, eos, args.device,
                                            args.batch_size, tok.pad_token_id if tok.pad_token_id is not None
                                            else sorted(eos)[0], compile_step=args.device.startswith("cuda"))
            if args.method == "nnsight":
                return baselines.nnsight_style(pt, it, prompts, boundaries, args.max_new_tokens, vocab, eos,
                                               args.device, args.batch_size)
            events = {k: v for k, v in found.items() if k in prompts}  # the lower bound, on crosspatch's events
            return (events, *baselines.lower_bound(pt, it, events, boundaries, args.device, args.batch_size))

    # warm-up on 2 prompts, as every method gets; the fair floor on CUDA compiles generate's step for
    # each new shape, so its warm-up is the whole run: the timed run replays, the floor at its best
    compiles = args.method == "floor" and args.device.startswith("cuda")
    start = time.perf_counter()
    compute(prompts if compiles else dict(list(prompts.items())[:2]))
    sync(args.device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    events, cells, work, *kinds = compute(prompts)
    sync(args.device)
    seconds = time.perf_counter() - start
    event_work = sum(len(e[3]) for e in events.values()) * L
    out = {"seconds": seconds, "events": events, "cells": cells, "num_layers": L, "warmup_seconds": warmup,
           "fe_per_event": work / event_work if event_work else None, "peak_mb": peak_memory_mb(args.device)}
    if kinds:
        out["kind_events"], out["kind_cells"] = kinds
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def method_profile(args) -> dict:
    """torch.profiler over one crosspatch run: the top operators and crosspatch functions."""
    import cProfile
    import pstats

    from torch.profiler import ProfilerActivity, profile

    from crosspatch.execution import load_pair
    from crosspatch.runner.pipeline import run

    w = workload_paths(args.workload, args.root)
    pair = load_pair(w["base"], tuned=w["tuned"], dtype=args.dtype, device=args.device, hash_weights=False)
    prompts = load_prompt_list(args)
    options = dict(boundary=0.6, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, bootstrap=0,
                   progress=False, controls="none", event_kinds="first_diff")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        run(pair, prompts, **options)
    key = "self_device_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    ops = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in ops)
    top_ops = [{"op": e.key, "share": getattr(e, key) / total, "calls": e.count} for e in ops[:12]]
    # host-side CUDA runtime calls (allocations, frees, synchronisations, copies, launches): their
    # host time is what a launch-bound decoding step pays beside the kernels
    runtime = sorted((e for e in ops if e.key.startswith("cuda")), key=lambda e: e.self_cpu_time_total, reverse=True)
    runtime_calls = [{"call": e.key, "calls": e.count, "host_ms": e.self_cpu_time_total / 1e3} for e in runtime[:12]]
    prof_py = cProfile.Profile()
    prof_py.enable()
    start = time.perf_counter()
    run(pair, prompts, **options)
    seconds = time.perf_counter() - start
    prof_py.disable()
    stats = pstats.Stats(prof_py)
    rows = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        if "crosspatch" in file or "transformers" in file:
            short = file.split("site-packages/")[-1].split("src/")[-1]
            rows.append({"function": f"{short}:{line} {name}", "cumulative_s": ct, "self_s": tt, "calls": nc})
    rows.sort(key=lambda r: r["cumulative_s"], reverse=True)
    return {"top_ops": top_ops, "runtime_calls": runtime_calls, "functions": rows[:25], "seconds": seconds}


# ----------------------------------------------------------------------------- the parent

SUITES = {
    # name: list of (label, workload, dtype, device, prompts, sweep?, methods, residencies)
    "cpu": [
        ("zoo, fp32", "zoo", "float32", "cpu", 96, ["crosspatch", "lower", "floor", "paper", "nnsight"],
         ["both", "sequential"]),
        # what a user runs: the default command, in-process and as a whole process
        ("zoo, fp32, the default run", "zoo", "float32", "cpu", 96, ["crosspatch", "default", "default-first-diff", "process",
                                                                      "paper", "paper-kinds"], [],
         "no-sweep"),
        ("mid-size pair, fp32", "mid", "float32", "cpu", 32, ["crosspatch", "lower", "floor", "paper", "nnsight"],
         ["both", "sequential", "sequential@1024", "adapter"], "no-sweep-paper"),
        ("mid-size pair, bf16", "mid", "bfloat16", "cpu", 16, ["crosspatch", "lower", "paper"], [], "no-sweep"),
        # the default command where compute, not dispatch, dominates (134M parameters a model)
        ("mid-size pair, fp32, the default run", "mid", "float32", "cpu", 32, ["crosspatch", "default", "paper",
                                                                               "paper-kinds"], [],
         "no-sweep"),
        # where the weights dominate (the regime of the sequential memory target)
        ("large pair (1.4B), bf16", "large", "bfloat16", "cpu", 16, ["crosspatch", "lower"],
         ["sequential", "sequential@2048"], "no-sweep"),
    ],
    "smoke": [  # a minute on a laptop: checks the harness, not a result
        ("zoo, fp32", "zoo", "float32", "cpu", 8, ["crosspatch", "paper", "nnsight", "lower"], ["both"]),
        ("mid-size pair, fp32", "mid", "float32", "cpu", 4, ["crosspatch", "lower", "paper", "nnsight"],
         ["sequential", "adapter"], "no-sweep"),
    ],
    "gpu": [  # the baselines decode at batch size 1: their minutes set the prompt counts
        # auto (static on CUDA) beside eager; measured once and left out to spare a lease's minutes: the
        # compiled mode (2026-12-04, gpu-check-20261204.json: ~85 s of compiling per process), the
        # allocator variant, the sweep and the sequential residency (2026-11-26, gpu-h200.json)
        # (methods in the order a part stopped by its time limit should keep them: the targets' rows first)
        # the default command against the paper-style pipeline where the 5x target is set (the zoo), on the
        # GPU: fp32 as on the CPU, so that the events and cells are those of the CPU table
        ("zoo, fp32, the default run", "zoo", "float32", "cuda", 96, ["crosspatch", "default", "default-first-diff",
                                                                       "paper", "paper-kinds"], [], "no-sweep"),
        ("mid-size pair, bf16", "mid", "bfloat16", "cuda", 96, ["crosspatch", "lower", "floor", "paper", "nnsight",
                                                                 "crosspatch-eager", "default"], [], "no-sweep"),
        ("large pair (1.4B), bf16", "large", "bfloat16", "cuda", 32, ["crosspatch", "lower", "floor", "paper"], [],
         "no-sweep"),
        # a 7B-class pair (Llama-2-7B's shape, random init, built on the GPU): one model resident vs both, measured
        # first; then eager decoding beside auto's static (a static batch keeps computing its finished rows, which a
        # compute-bound model may pay for where a launch-bound one does not)
        ("7B-class pair, bf16", "7b", "bfloat16", "cuda", 32, ["crosspatch", "floor", "lower", "crosspatch-eager"],
         ["sequential", "both"], "no-sweep", "residencies-first"),
    ],
}


# crosspatch under another process environment: an A/B of one hypothesis each (GPU suite)
VARIANTS = {
    # the search's KV caches grow a token per step; if each step's new, slightly larger blocks cost a
    # cudaMalloc (and cudaFree storms when the pool fills), growable segments remove that cost
    "crosspatch-expandable": ("crosspatch", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
    # the decoding modes (--decode; the default, auto, is static on CUDA and eager on the CPU)
    "crosspatch-eager": ("crosspatch", {"CROSSPATCH_BENCH_DECODE": "eager"}),
    "crosspatch-static": ("crosspatch", {"CROSSPATCH_BENCH_DECODE": "static"}),
    "crosspatch-compiled": ("crosspatch", {"CROSSPATCH_BENCH_DECODE": "compiled"}),
}


def spawn(args, method: str, workload: str, dtype: str, device: str, prompts: int, sweep: bool = False,
          residency: str = "both", events: str | None = None, max_batch_tokens: int | None = None) -> dict:
    method, env = VARIANTS.get(method, (method, {}))
    cmd = [sys.executable, __file__, "--method", method, "--workload", workload, "--dtype", dtype, "--device", device,
           "--prompts", str(prompts), "--max-new-tokens", str(args.max_new_tokens), "--batch-size",
           str(args.batch_size), "--root", str(args.root), "--residency", residency]
    if sweep:
        cmd.append("--sweep")
    if max_batch_tokens:
        cmd += ["--max-batch-tokens", str(max_batch_tokens)]
    if events:
        cmd += ["--events", events]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if out.returncode != 0:
        raise SystemExit(f"{method} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_of(args, *a, **k) -> dict:
    runs = [spawn(args, *a, **k) for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["seconds"])
    best["peak_mb"] = max((r["peak_mb"] for r in runs if r["peak_mb"] is not None), default=None)  # None: another process's
    return best


def compare_events(a: dict, b: dict) -> dict:
    same = sum(1 for k in a.keys() & b.keys() if list(a[k][:3]) == list(b[k][:3]))
    return {"same": same, "of": len(a.keys() | b.keys())}


def max_cell_diff(a: dict, b: dict) -> float | None:
    diffs = [abs(a[k][c] - b[k][c]) for k in a.keys() & b.keys() for c in ("upt_lit", "uit_lit")]
    return max(diffs) if diffs else None


def measure(args, label, workload, dtype, device, prompts, methods, residencies, section: dict, save,
            flags=()) -> None:
    """Fill ``section`` method by method, calling ``save()`` after each (a run cut off by a time
    limit keeps what it measured)."""
    print(f"== {label}: {prompts} prompts", flush=True)
    section.update({"label": label, "workload": workload, "dtype": dtype, "device": device, "prompts": prompts,
                    "rows": {}, "sweep": {}, "residency": {}})
    events_file = Path(args.root) / f"events-{workload}-{dtype}-{device}.json"
    events_file.parent.mkdir(parents=True, exist_ok=True)  # a zoo-only part of a suite builds no workload there
    every_kind: dict[str, dict] = {}  # the default run's events of every kind, once measured
    for sweep in (False,) if "no-sweep" in flags else (False, True):
        rows = section["sweep" if sweep else "rows"]
        try:
            cp = best_of(args, "crosspatch", workload, dtype, device, prompts, sweep)
        except SystemExit as exc:
            section.setdefault("errors", {})[f"crosspatch{' sweep' if sweep else ''}"] = str(exc)[-2000:]
            print(exc, flush=True)
            save()
            continue
        events_file.write_text(json.dumps(cp["events"]))
        if not sweep and "residencies-first" in flags:  # (where the memory claim matters more than the methods' rows)
            measure_residencies(args, workload, dtype, device, prompts, residencies, section, save, cp)
        for method in methods:
            if method == "crosspatch":
                r = cp
            elif sweep and (method in ("nnsight", "floor", "default", "default-first-diff", "process", "paper-kinds")
                            or method in VARIANTS or (method == "paper" and "no-sweep-paper" in flags)):
                continue  # the sweep's baselines: paper-style and the lower bound (the default run has no sweep)
            else:
                try:
                    r = best_of(args, method, workload, dtype, device, prompts, sweep,
                                events=str(events_file) if method == "lower" else None)
                except SystemExit as exc:  # recorded, and the rest still runs
                    section.setdefault("errors", {})[f"{method}{' sweep' if sweep else ''}"] = str(exc)[-2000:]
                    print(exc, flush=True)
                    save()
                    continue
            r["event_agreement"] = compare_events(cp["events"], r["events"])
            r["max_cell_diff"] = max_cell_diff(cp["cells"], r["cells"])
            r["n_events"] = len(r["events"])
            if "kind_events" in r:  # every event kind's events: the default run and the pipeline scoring them all
                kinds = every_kind.setdefault("reference", r) if method == "default" else every_kind.get("reference")
                r["n_kind_events"] = len(r["kind_events"])
                if kinds is not None:
                    r["kind_agreement"] = compare_events(kinds["kind_events"], r["kind_events"])
                    r["max_kind_cell_diff"] = max_cell_diff(kinds["kind_cells"], r["kind_cells"])
            positions = sorted(e[0] for e in r["events"].values())
            r["positions"] = positions
            r["distinct_t_pt"] = len({e[1] for e in r["events"].values()})
            rows[method] = {k: v for k, v in r.items() if k not in ("events", "cells", "kind_events", "kind_cells")}
            print(f"  {'sweep ' if sweep else ''}{method:10s} {r['n_events']:4d} events {r['seconds']:8.2f} s "
                  f"{r['n_events'] / r['seconds']:8.2f} ev/s  FE/event {r['fe_per_event'] or 0:.2f}  "
                  f"peak {'-' if r['peak_mb'] is None else format(r['peak_mb'], '.0f')} MB  same events {r['event_agreement']}", flush=True)
            save()
        if not sweep and "residencies-first" not in flags:
            measure_residencies(args, workload, dtype, device, prompts, residencies, section, save, cp)


def measure_residencies(args, workload, dtype, device, prompts, residencies, section, save, both: dict) -> None:
    """``residencies``: names, or ``name@N`` for that residency with a budget of N padded tokens
    per batch (``--max-batch-tokens``). ``both`` without a budget is the 2x2 row already measured
    (``both``: that run, the same command), not a second process loading the pair again."""
    for residency in residencies:
        name, _, budget = residency.partition("@")
        try:
            r = both if residency == "both" else spawn(args, "crosspatch", workload, dtype, device, prompts,
                                                       residency=name, max_batch_tokens=int(budget) if budget else None)
        except SystemExit as exc:
            section.setdefault("errors", {})[f"residency {residency}"] = str(exc)[-2000:]
            print(exc, flush=True)
            save()
            continue
        section["residency"][residency] = {k: v for k, v in r.items() if k not in ("events", "cells")}
        section["residency"][residency]["n_events"] = len(r["events"])
        print(f"  residency {residency:10s} {r['seconds']:.1f} s peak {r['peak_mb']:.0f} MB "
              f"(before loading {r['before_mb']:.0f} MB)", flush=True)
        save()


def build_workload(args, workload: str) -> dict:
    """Build a random-init workload in a child process (keeps this process small)."""
    code = (f"import sys, json; sys.path.insert(0, {str(HERE)!r}); from workloads import *; "
            f"print(json.dumps(build_mid(workload_root({str(args.root)!r}, {workload!r}), spec_of({workload!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"building {workload} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def environment(device: str) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=sorted(SUITES))
    ap.add_argument("--render", action="store_true", help="only re-render docs/benchmarks.md from the stored results")
    ap.add_argument("--method", choices=["crosspatch", "paper", "paper-kinds", "nnsight", "lower", "floor", "profile",
                                         "default", "default-first-diff", "process"])
    ap.add_argument("--workload", default="zoo", choices=["zoo", "mid", "large", "7b"])
    ap.add_argument("--root", default="/tmp/crosspatch-bench", help="where the mid-size pair is written (once)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--residency", default="both")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 128 on a GPU")
    ap.add_argument("--max-batch-tokens", type=int, default=None, help="crosspatch's token budget per batch")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--events", default=None)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per method; the fastest is reported")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default docs/benchmarks/<suite>.json)")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="the suite's code paths on this CPU with tiny random-init models, 4 prompts and one repeat, "
                         "written to /tmp (benchmarks/gpu_check.sh runs the GPU suite so first)")
    ap.add_argument("--only", action="append", default=None, metavar="PART",
                    help="run only the sections whose label contains PART ('profile': the profile), merging them "
                         "into the stored results (for machines that limit a command's time); repeatable")
    args = ap.parse_args()
    if args.cpu_dry_run:
        os.environ["CROSSPATCH_BENCH_TINY"] = "1"  # children inherit it: every random-init workload is tiny
        args.root, args.repeats = f"{args.root}-tiny", 1
        args.out = args.out or Path("/tmp/crosspatch-bench-dry") / f"{args.suite}.json"
    if args.batch_size is None:
        device = SUITES[args.suite][0][3] if args.suite and not args.cpu_dry_run else args.device
        args.batch_size = 128 if device.startswith("cuda") else 32
    if args.method:
        fn = {"crosspatch": method_crosspatch, "profile": method_profile, "default": method_default,
              "default-first-diff": method_default, "process": method_process}.get(args.method, method_baseline)
        print(json.dumps(fn(args)))
        return
    if args.render:
        render()
        return
    if not args.suite:
        ap.error("give --suite, --render or --method")
    device = "cpu" if args.cpu_dry_run else SUITES[args.suite][0][3]
    out = args.out or RESULTS / f"{args.suite}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "repeats": args.repeats}
    result = {"suite": args.suite, "environment": environment(device), "settings": settings, "sections": [],
              "measured": time.strftime("%Y-%m-%d")}
    if args.only and out.exists():  # a part of the suite: the other sections stay as stored
        stored = json.loads(out.read_text())
        if (stored.get("settings"), stored.get("environment")) != (settings, result["environment"]):
            raise SystemExit(f"{out} holds results of other settings or another environment: run the whole suite "
                             "(or give --out elsewhere) rather than mix them")
        result.update({k: v for k, v in stored.items() if k in ("sections", "workloads", "profile", "measured")})
    chosen = [s for s in SUITES[args.suite] if not args.only or any(part in s[0] for part in args.only)]
    if args.cpu_dry_run:  # the same sections on the CPU, small
        chosen = [(label, workload, dtype, "cpu", min(prompts, 4), methods, residencies, *flags)
                  for label, workload, dtype, _, prompts, methods, residencies, *flags in chosen]
    for label, workload, dtype, dev, prompts, methods, residencies, *flags in chosen:
        if workload != "zoo":
            result.setdefault("workloads", {})[workload] = build_workload(args, workload)
        section: dict = {}
        result["sections"] = [s for s in result["sections"] if s.get("label") != label]
        result["sections"].append(section)
        measure(args, label, workload, dtype, dev, prompts, methods, residencies, section,
                lambda: out.write_text(json.dumps(result, indent=1)), flags)
    order = [s[0] for s in SUITES[args.suite]]
    result["sections"].sort(key=lambda s: order.index(s["label"]) if s.get("label") in order else len(order))
    if not args.only or "profile" in args.only:
        print("== profile", flush=True)  # on the suite's device: on a GPU it shows where the search's time goes
        prof = next(s for s in SUITES[args.suite] if s[1] == "mid")
        prof = (*prof[:3], "cpu", 4) if args.cpu_dry_run else prof
        result["profile"] = spawn(args, "profile", "mid", prof[2], prof[3], prof[4])
        result["profile"].update({"dtype": prof[2], "device": prof[3], "prompts": prof[4]})
    out.write_text(json.dumps(result, indent=1))
    if out.parent == RESULTS:
        render()


# ----------------------------------------------------------------------------- the document


def render() -> None:
    from render_benchmarks import render_markdown

    results = [r for r in (json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))) if "suite" in r]  # suites only
    DOC.write_text(render_markdown(results))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
