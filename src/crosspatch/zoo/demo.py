"""``crosspatch demo``: the diagnostic of the zoo's base against every descendant.

Writes one run directory per descendant under ``out/`` plus a combined ``report.md`` and
``summary.json`` with a table per descendant, the breakdown by aspect and in-distribution vs
held-out offices and regions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..inputs.prompts import PromptSet
from ..runner.checks import validate_run_options
from ..runner.pipeline import RunConfig, RunResult, run
from ..store import json_document, write_whole
from . import DEMO_DESCENDANTS, DESCENDANTS, NULLS, load_zoo_pair, verify, zoo_path, zoo_prompts
from .build import ZooSpec
from .demo_report import render_demo_html, render_demo_report
from .demo_sections import PREFLIGHTS, VISION_RUN, run_preflights, run_vision

DEMO_SCHEMA = "crosspatch.demo/1"


@dataclass
class DemoResult:
    out: Path
    runs: dict[str, RunResult]
    summary: dict
    report: str


def run_demo(
    out: str | Path = "runs/demo",
    descendants: tuple[str, ...] | None = None,
    root: Path | None = None,
    boundary: float | int = 0.6,
    max_new_tokens: int = 48,
    bootstrap: int = 2000,
    progress: bool = True,
    log=print,
    quick: bool = False,
    full: bool = False,
) -> DemoResult:
    """Run base vs each descendant on the shipped prompts (raw weather text, as the paper feeds
    both models, and instruction prompts) and write the combined report. Each run scores the
    zoo's nulls (``NULLS``) on its events: the verdict's yardstick.
    ``descendants``: default :data:`DEMO_DESCENDANTS`; ``full``: every descendant (adds the merged
    checkpoint and the seed twin). ``quick``: every fourth prompt and the first-divergence event
    kind only (about 80 s on 2 CPU cores)."""
    descendants = descendants or (DESCENDANTS if full else DEMO_DESCENDANTS)
    root = root or zoo_path()
    out = Path(out)
    check_demo_dir(out, descendants)
    man = verify(root)
    prompts = demo_prompts(root)
    if quick:
        prompts = PromptSet(quick_prompts(prompts), f"{prompts.source}, a quarter of each stratum (--quick)")
    started = time.perf_counter()
    config = RunConfig(boundary=boundary, max_new_tokens=max_new_tokens, bootstrap=bootstrap, back_link="../report.html",
                       group_by=["split", "style", "era"], batch_size=128, consequence=True, consequence_budget=48,
                       event_kinds="first_diff" if quick else RunConfig.event_kinds)
    validate_run_options(config)  # before any model loads
    runs: dict[str, RunResult] = {}
    nulls = tuple(n for n in NULLS if (root / n).exists())
    from dataclasses import replace

    from ..runner.progress import StageClock

    # one counter over the whole demo: a run per descendant, then features, cross, lineage, sweep,
    # the preflights of the broken models and the vision-language pair
    log = StageClock([1.0] * len(descendants) + [0.5, 1.0, 1.5, 1.0, 0.3, 0.5], log)
    for name in descendants:
        log.next()
        own_nulls = [n for n in nulls if n != name]
        log(f"base vs {name}" + (f" (null yardstick: {', '.join(own_nulls)})" if own_nulls else ""))
        pair = load_zoo_pair(name, root, nulls=tuple(own_nulls))
        title = f"crosspatch zoo: base vs {name}"
        own = replace(config, title=title, tuned=name if own_nulls else None, nulls=own_nulls)
        _clear_stale_demo_run(out / name, title, log)
        runs[name] = run(pair, prompts, own, out=out / name, progress=progress)
        pair.release()
    log.next()
    features = run_zoo_features(root, out, runs, log)
    log.next()
    cross = run_cross(root, prompts, config, out / "compare", progress, log)
    log.next()
    lineage_summary = run_lineage(root, prompts, config, out / "lineage", progress, log)
    log.next()
    sweep = run_sweep(root, prompts, config, out / "sweep-it-full", progress, log)
    log.next()
    preflights = run_preflights(root, out, log)
    log.next()
    vision, vision_skipped = run_vision(root, out, config, progress, log)
    summary = {
        "schema_version": DEMO_SCHEMA,
        "zoo": {"path": str(root), "rebuild_command": man.get("rebuild_command"), "evals": man.get("evals")},
        "prompts": len(prompts),
        "prompt_strata": prompt_strata(prompts),
        "quick": quick,
        "seconds": round(time.perf_counter() - started, 1),
        "descendants": {name: r.summary for name, r in runs.items()},
        "lineage": lineage_summary,
        "sweep": sweep,
        "features": features,
        "cross": cross,
        "preflight": preflights,
        "vision": vision,
        "vision_skipped": vision_skipped,  # why, where the pair could not load here
        "late_layers": _late_layers(man),
    }
    out.mkdir(parents=True, exist_ok=True)
    report = render_demo_report(summary)
    write_whole(out / "report.md", report)
    write_whole(out / "report.html", render_demo_html(summary, out))
    write_whole(out / "summary.json", json_document(summary))  # last: the demo is done
    return DemoResult(out, runs, summary, report)


def _late_layers(man: dict) -> list[int] | None:
    """The layers ``it-lora-late`` trains, from the zoo's recorded depth."""
    n = (man.get("spec") or {}).get("num_layers")
    return ZooSpec(num_layers=n).late_layers if isinstance(n, int) else None


def run_zoo_features(root: Path, out: Path, runs: dict, log) -> dict | None:
    """``crosspatch features mediate`` on the it-full run with the zoo's shipped crosscoder (no
    training): quality gate on the demo's held-out events, mediation, rescue, closure."""
    from ..runner.on_finished import run_features
    from .build import CROSSCODER

    if "it-full" not in runs or not (root / CROSSCODER / "config.json").exists():
        return None
    log(f"features: mediation on base vs it-full with the shipped {CROSSCODER}")
    return run_features(out / "it-full", crosscoder_dir=root / CROSSCODER, log=lambda m: None)


def run_sweep(root: Path, prompts, config: RunConfig, out: Path, progress: bool, log) -> dict:
    """``crosspatch sweep`` of it-full: every boundary 1..L-1 (sweep.png in ``out``); returns the
    headline effects per boundary."""
    from dataclasses import replace

    log("layer sweep: base vs it-full at every boundary")
    cfg = replace(config, boundaries="all", consequence=False, controls="none", event_kinds="first_diff",
                  title="crosspatch zoo: layer sweep of it-full")
    _clear_stale_demo_run(out, cfg.title or "", log)
    result = run(load_zoo_pair("it-full", root), prompts, cfg, out=out, progress=progress)
    return {str(b): result.summary["results"][b]["common_it"]["all"] for b in result.summary["boundaries"]}


CROSS = {"tuned": ("it-full", "it-units"), "adapters": ("it-lora-all",)}


def run_cross(root: Path, prompts, config: RunConfig, out: Path, progress: bool, log) -> dict | None:
    """``crosspatch compare --cross all`` on it-full, it-units and the it-lora-all adapter: each
    one's upstream state through each other's late stack (first divergences, no controls)."""
    import shutil
    from dataclasses import replace

    from ..execution import load_models
    from ..runner.compare import compare

    names = CROSS["tuned"] + CROSS["adapters"]
    if not all((root / name).exists() for name in names):
        return None
    log("cross-descendant patching: " + ", ".join(names))
    if (out / "compare.json").exists():
        shutil.rmtree(out)  # the demo owns this directory (as its per-descendant runs)
    models = load_models(str(root / "base"), tuned={n: str(root / n) for n in CROSS["tuned"]},
                         adapters={n: str(root / n) for n in CROSS["adapters"]})
    cfg = replace(config, consequence=False, controls="none", event_kinds="first_diff", group_by=[],
                  title=None)  # compare names each run after its descendant
    result = compare(models, prompts, cfg, out=out, cross="all", progress=progress)
    models.release()
    return {"descendants": result.summary["descendants"], "base": result.summary["base"],
            "cross": result.summary["cross"], "note": result.summary["cross_note"]}


def run_lineage(root: Path, prompts, config: RunConfig, out: Path, progress: bool, log) -> dict | None:
    """``crosspatch lineage`` on the zoo's base -> lineage-sft -> lineage-rft -> lineage-dpo."""
    import shutil
    from dataclasses import replace

    from ..execution import load_models
    from ..runner.lineage import lineage
    from .lineage import LINEAGE

    if not all((root / name).exists() for name in LINEAGE):
        return None
    log("lineage: base -> " + " -> ".join(LINEAGE))
    if (out / "lineage.json").exists():
        shutil.rmtree(out)  # the demo owns this directory (as its per-descendant runs)
    models = load_models(str(root / "base"), tuned={name: str(root / name) for name in LINEAGE})
    cfg = replace(config, consequence=False, controls="none", title="crosspatch zoo: lineage")
    return lineage(models, prompts, cfg, out=out, progress=progress).summary


STRATA = ("style", "split", "era")  # what the report compares: prompt style, training offices vs held-out offices and regions, house style


def _stratum(prompt) -> tuple:
    meta = {**prompt.metadata, "category": prompt.category}
    return tuple(str(meta.get(key)) for key in STRATA)


def quick_prompts(prompts: list, every: int = 4) -> list:
    """A quarter of the prompts, sampled within every stratum the report compares (style x
    site split x house style), at least one from each, in the original order."""
    by_stratum: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        by_stratum.setdefault(_stratum(p), []).append(i)
    keep = sorted(i for indices in by_stratum.values() for i in indices[::every])
    return [prompts[i] for i in keep]


def prompt_strata(prompts: list) -> dict[str, dict[str, int]]:
    """How many prompts of each value the demo used, per compared field (the header says it)."""
    counts: dict[str, dict[str, int]] = {key: {} for key in STRATA}
    for p in prompts:
        for key, value in zip(STRATA, _stratum(p)):
            if value != "None":
                counts[key][value] = counts[key].get(value, 0) + 1
    return counts


def demo_prompts(root: Path | None = None) -> PromptSet:
    """The demo's prompts: the raw-text set (observation logs cut before a field, narrative
    openings), the instruction set, the forum questions and the narrow domain's unit tasks, each
    prompt's ``style`` (log, narrative, instruction, question, units) and ``era`` recorded so the
    report breaks the effects down by them. Its ``source`` names the zoo's files (each run's
    config.json and report print it)."""
    root = root or zoo_path()
    splits = ["raw", "all"] + (["question"] if (root / "prompts" / "question.jsonl").exists() else []) + ["units"]
    prompts = []
    for split in splits:
        for p in zoo_prompts(split, root):
            if split == "all":
                p.metadata.setdefault("style", "instruction")
            prompts.append(p)
    return PromptSet(prompts, f"the zoo's prompts ({', '.join(f'{s}.jsonl' for s in splits)})")


def check_demo_dir(out: Path, descendants=DESCENDANTS) -> None:
    """The demo writes (and on a re-run replaces) only its own runs and reports: ``out`` must be
    new, empty, or hold nothing but what an earlier demo wrote there."""
    from ..errors import RunDirectoryNotEmptyError

    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirectoryNotEmptyError(f"--out {out} exists and is not a directory")
    own = set(descendants) | set(DESCENDANTS) | set(PREFLIGHTS) | {
        "compare", "lineage", "sweep-it-full", VISION_RUN, "summary.json", "report.md", "report.html"}
    own |= {f"{name}.tmp" for name in own}  # a write of its own that a kill cut short (write_whole's)
    foreign = sorted(p.name for p in out.iterdir() if p.name not in own)
    summary = out / "summary.json"
    if summary.exists():
        try:
            if json.loads(summary.read_text(encoding="utf-8")).get("schema_version") != DEMO_SCHEMA:
                foreign.append(summary.name)
        except (OSError, ValueError, AttributeError):
            foreign.append(summary.name)
    if foreign:
        raise RunDirectoryNotEmptyError(
            f"--out {out} holds files the demo did not write ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); choose a new or empty directory (the demo replaces only its "
            "own earlier runs)")


def _clear_stale_demo_run(path: Path, title: str, log) -> None:
    """The demo owns its run directories: one left by an earlier demo with other settings (an
    older crosspatch, other options) is replaced, and said so. Anything else is left alone (the
    run then refuses the directory with a named error); files the run did not write stay."""
    from ..store import RunStore

    cfg = path / "config.json"
    if not cfg.exists():
        return
    try:
        old = json.loads(cfg.read_text(encoding="utf-8"))
    except ValueError:
        return
    if old.get("title") == title and (path / "summary.json").exists():
        log(f"replacing the earlier demo run in {path}")
        RunStore(path).clear()
