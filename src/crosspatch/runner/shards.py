"""Shards of one run: the prompts a shard takes (``--shard i/n``) and :func:`merge_runs`, which
combines the finished shards into one run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.records import in_run_order
from ..core.stats import BootstrapConfig
from ..errors import RunDirectoryError
from ..inputs.prompts import Prompt
from ..store import EVENTS_FILE, NO_DIV_FILE, RunStore, check_complete, fingerprint, settings_diff
from .checks import parse_shard
from .result import RunResult, write_outputs
from .summary import build_summary


def select_shard(prompts: list[Prompt], shard: str | None) -> list[Prompt]:
    """Prompts of shard ``i/n``: positions i, i+n, i+2n, ... of the prompt list."""
    if shard is None:
        return prompts
    i, n = parse_shard(shard)
    return prompts[i::n]


def unsharded_order(shard_ids: list[list[str]]) -> list[str]:
    """The prompt ids of shards ``0/n .. n-1/n`` (each in its own order) in the order of the
    prompt list they were cut from (:func:`select_shard`: shard ``i`` holds positions i, i+n, ...)."""
    n, total = len(shard_ids), sum(map(len, shard_ids))
    if [len(ids) for ids in shard_ids] != [len(range(i, total, n)) for i in range(n)]:  # not cut that way
        return [p for ids in shard_ids for p in ids]
    return [shard_ids[k % n][k // n] for k in range(total)]


def merge_runs(shard_dirs: list[str | Path], out: str | Path, bootstrap_override: int | None = None,
               overwrite: bool = False) -> RunResult:
    """Combine the run directories of shards ``0/n .. n-1/n`` of one run into ``out`` (a new or
    empty directory; ``overwrite`` replaces a crosspatch run there): events and no-divergence
    outcomes concatenated, statistics and report computed on the union. Every shard must be
    finished and complete (every prompt accounted for)."""
    if isinstance(shard_dirs, (str, Path)) or not isinstance(shard_dirs, (list, tuple)):
        raise RunDirectoryError(f"shard_dirs must be a list of the shards' run directories, not {shard_dirs!r}")
    if not shard_dirs:
        raise RunDirectoryError("give the run directories of the shards to merge")
    if not isinstance(out, (str, Path)) or not str(out).strip():
        raise RunDirectoryError(f"out must be the path of a new directory for the merged run, not {out!r}")
    out_path = Path(out).resolve()
    if any(Path(d).resolve() == out_path for d in shard_dirs):
        raise RunDirectoryError(f"--out {out} is one of the shards; merge into a new directory")
    stores = [RunStore(d) for d in shard_dirs]
    configs = [st.config() for st in stores]
    fps = {c.get("run_fingerprint") for c in configs}
    if len(fps) != 1:
        other = next(i for i, c in enumerate(configs) if c.get("run_fingerprint") != configs[0].get("run_fingerprint"))
        changes = settings_diff(configs[0].get("fingerprint_inputs", {}), configs[other].get("fingerprint_inputs", {}))
        raise RunDirectoryError(f"these run directories are not shards of one run: {shard_dirs[0]} and "
                                f"{shard_dirs[other]} differ in "
                                + ("; ".join(changes[:8]) if changes else "their settings"))
    given = [parse_shard(c["options"]["shard"]) if c["options"].get("shard") else (0, 1) for c in configs]
    shards = sorted(given)
    n = shards[0][1]
    if shards != [(i, n) for i in range(n)]:
        held: dict[str, list[str]] = {}
        for d, (i, m) in zip(shard_dirs, given):
            held.setdefault(f"{i}/{m}", []).append(str(d))
        problems = {
            "given twice": [f"{s} ({' and '.join(ds)})" for s, ds in held.items() if len(ds) > 1],
            "missing": [f"{i}/{n}" for i in range(n) if f"{i}/{n}" not in held],
            f"not of {n} shards": [s for s in held if not s.endswith(f"/{n}")],
        }
        raise RunDirectoryError(f"the shards do not cover 0/{n} .. {n - 1}/{n} exactly once: "
                                + "; ".join(f"{what}: {', '.join(items)}" for what, items in problems.items() if items))
    for st, cfg in zip(stores, configs):
        st.summary()  # every shard must have finished
        if "prompt_ids" in cfg:
            check_complete(cfg["prompt_ids"], st.load_records(), st.load_no_divergence(), cfg["resolved_boundaries"],
                           f"shard {st.path}")
    record: dict[str, Any] = dict(configs[0])
    record["options"] = dict(record["options"], shard=None)
    if bootstrap_override is not None:
        record["options"]["bootstrap"] = bootstrap_override
    record["fingerprint"] = fingerprint({"run": record["run_fingerprint"], "shard": None})
    record["merged_from"] = [str(d) for d in shard_dirs]
    # each shard warns of its own prompts (unknown tokens, over-long sequences): the merged run of all of them
    record["run_warnings"] = list(dict.fromkeys(w for c in configs for w in c.get("run_warnings") or []))
    by_shard = {parse_shard(c["options"]["shard"]) if c["options"].get("shard") else (0, 1): c for c in configs}
    if all("prompt_ids" in c for c in configs):
        record["prompt_ids"] = unsharded_order([by_shard[(i, n)]["prompt_ids"] for i in range(n)])
    ids = record.get("prompt_ids") or []
    records = in_run_order([r for st in stores for r in st.load_records()], ids)
    no_div = in_run_order([x for st in stores for x in st.load_no_divergence()], ids)
    prompts_count = sum(st.summary()["counts"]["prompts"] for st in stores)
    names = sorted({n for st in stores for n in st.records_files()} - {EVENTS_FILE, NO_DIV_FILE})
    analyses = {n[: -len(".jsonl")]: [row for st in stores for row in st.load_rows(n)] for n in names}
    opts = record["options"]
    summary = build_summary(record, records, no_div, prompts_count, BootstrapConfig(opts["bootstrap"], opts["seed"]),
                            analyses=analyses, run_dir=out)
    store = RunStore(out)
    with store.lock():  # one writer per run directory
        store.write_complete(record, records, no_div, overwrite=overwrite)
        for name, rows in analyses.items():
            store.write_rows(f"{name}.jsonl", rows)
        result = RunResult(summary, records, no_div, record, store.path, analyses)
        result._report = write_outputs(store, summary, records, record)
    return result
