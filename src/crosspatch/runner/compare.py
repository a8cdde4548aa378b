"""Several descendants of one base (DESIGN 1.6: recipe separation, lineage).

- :func:`compare`: every descendant against the base, each a full run (its own run directory,
  resumable, with controls and verdict) plus one table; optionally cross-descendant patching:
  ``Y(U_X, L_Y)`` — descendant ``X``'s upstream state through descendant ``Y``'s late stack,
  scored on ``Y``'s events (``t_base`` vs ``t_Y``) with ``Y``'s head.
- :func:`lineage`: the support is fixed on the Base -> Final first divergences; every stage
  is scored on that same ``(t_Base, t_Final)`` contrast: its 2x2 against the base, its native
  ``Y``, its percent of the final stage, its top-1 agreement with ``t_Final``, and a label-swap
  null of its interaction.
- :func:`pool_runs`: several base/descendant families pooled family-balanced (mean of
  per-family means, bootstrap within family).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.analysis import Analysis, EventSet, late_passes
from ..core.cells import event_y
from ..core.divergence import RecordKey
from ..core.pooling import pool_family_balanced
from ..core.records import readout_key, readout_label, verdict_readout
from ..core.stats import BootstrapConfig, block_bootstrap
from ..errors import OptionError
from ..execution import Executor, Late, ModelSet, Program
from ..models.options import check_progress
from ..report.collections import cross_cell, render_compare_markdown, write_compare_pages  # noqa: F401 (cross_cell re-exported)
from ..report.markdown import chosen_settings
from ..store import checked, json_document, mark_collection, read_collection_summary, write_whole
from .checks import check_model_set, check_out_dir
from .config import check_switches
from .pipeline import RunConfig, RunResult, run
from .result import interval_columns, read_run

COMPARE_SCHEMA = "crosspatch.compare/1"


@dataclass
class CrossDescendant(Analysis):
    """``Y(U_X, L_tuned)`` for each other descendant ``X`` in ``upstream``, on the run's events
    (the tuned role's contrast), read with the tuned role's head (common-IT)."""

    boundary: int
    upstream: list[str]
    name: str = "cross_descendant"

    def work_per_event(self, num_layers: int, budget: int, model_config: dict | None = None) -> float:
        """Per other descendant: its states (one pass) and one late pass."""
        return len(self.upstream) * (1 + late_passes(1, self.boundary, num_layers))

    def model_roles(self) -> list[str]:
        return list(self.upstream)

    def program(self, ex: Executor, events: EventSet) -> Program:
        others = [r for r in self.upstream if r not in (events.base, events.tuned)]
        if not events.events or not others:
            return []
        b = self.boundary
        states = yield from events.states(others, [b])
        finals = yield [Late(events.tuned, b, [s.boundary[b] for s in per_role], events.sequences) for per_role in states]
        rows = []
        for role, final in zip(others, finals):
            ys = event_y(ex.readout(events.tuned, torch.stack(final)), events.events)
            rows += [{"key": str(RecordKey(e.prompt_id, e.kind, b, role)), "prompt_id": e.prompt_id, "upstream": role, "late": events.tuned,
                      "boundary": b, "y": float(ys[k])} for k, e in enumerate(events.events)]
        return rows


# -- compare ------------------------------------------------------------------------------------
@dataclass
class CompareResult:
    runs: dict[str, RunResult]
    summary: dict
    report: str
    out: Path | None = None

    def effects(self):
        """A DataFrame of every descendant's effects at its headline boundary, in its verdict's
        readout (common-IT unless a policy says common-PT; the ``readout`` column), one row per
        (descendant, effect) with its 95% interval, the descendant's verdict and counts (the compare
        table, as numbers)."""
        import pandas as pd

        return pd.DataFrame([{"descendant": role, "verdict": row["verdict"], "readout": row.get("readout", "common_it"),
                              "effect": name, **interval_columns(stat),
                              "n_events": row["events"], "n_prompts": row["prompts"]}
                             for role, row in self.summary["rows"].items() for name, stat in row["effects"].items()])

    def cross(self):
        """The cross-descendant table (``cross=``) as a DataFrame: one row per (upstream, late)
        with the mean Y and its 95% interval (``summary["cross_note"]`` says how to read it);
        empty when nothing was crossed."""
        import pandas as pd

        return pd.DataFrame([{"upstream": up, "late": late, **interval_columns(stat), "n_events": stat.get("n")}
                             for up, row in (self.summary.get("cross") or {}).items()
                             for late, stat in row.items() if stat is not None],
                            columns=["upstream", "late", "mean", "ci_low", "ci_high", "n_events"])

    def _repr_html_(self) -> str:
        """What a notebook shows: one row per descendant (verdict and headline numbers)."""
        from ..report.notebook import compare_card

        return compare_card(self.summary, self.out)

    def __repr__(self) -> str:
        verdicts = ", ".join(f"{role}: {row['verdict']}" for role, row in self.summary.get("rows", {}).items())
        where = f", out={str(self.out)!r}" if self.out else ""
        return f"CompareResult(base={self.summary.get('base')!r}, {verdicts or 'no descendants'}{where})"


def open_compare(path: Path) -> CompareResult:
    """A finished compare's output directory read back (``crosspatch.open_run``): its table and
    each descendant's run, from the stored files alone."""
    summary = read_collection_summary(path, "compare")
    runs = {role: read_run(path / role) for role in summary["descendants"]}
    return CompareResult(runs, summary, render_compare_markdown(summary), path)


def parse_cross(spec: str | None, descendants: tuple[str, ...]) -> dict[str, list[str]]:
    """``all`` or ``A:D,B:D`` -> {late-stack role: [upstream roles]}; anything else is an
    :class:`OptionError` (checked before any model loads, from the role names alone)."""
    if spec is None:
        return {}
    if not isinstance(spec, str) or not spec.strip():
        raise OptionError(f"--cross takes 'all' or UPSTREAM:LATE pairs (a non-empty string), not {spec!r}")
    if len(descendants) < 2:
        raise OptionError(f"--cross patches one descendant's late stack onto another's upstream state: it needs at "
                          f"least two descendants, not {len(descendants)} ({', '.join(descendants)})")
    if spec.strip() == "all":
        return {d: [x for x in descendants if x != d] for d in descendants}
    out: dict[str, list[str]] = {}
    for item in spec.split(","):
        try:
            up, late = (x.strip() for x in item.split(":"))
        except ValueError:
            raise OptionError(f"--cross takes 'all' or UPSTREAM:LATE pairs, not {item!r}") from None
        for role in (up, late):
            if role not in descendants:
                raise OptionError(f"--cross {item}: {role!r} is not a descendant ({', '.join(descendants)})")
        if up == late:
            raise OptionError(f"--cross {item}: the two roles must differ")
        out.setdefault(late, []).append(up)
    return out


def _mean(pairs, boot: BootstrapConfig, name: str) -> dict:
    """Mean of ``(prompt id, value)`` pairs (non-finite values dropped) with its prompt-cluster
    interval: ``{"mean", "ci", "n"}``."""
    from ..core.stats import cluster_mean_ci

    kept = [(p, v) for p, v in pairs if v is not None and np.isfinite(v)]
    return cluster_mean_ci(np.array([v for _, v in kept], dtype=float), [p for p, _ in kept],
                           block_bootstrap(boot, name))


def compare(models: ModelSet, prompts, config: RunConfig | None = None, out: str | Path | None = None,
            cross: str | None = None, progress=True, resume: bool = True, overwrite: bool = False,
            **overrides) -> CompareResult:
    """Every descendant of ``models`` against its base (one run directory each under ``out``,
    resumed or replaced as ``run`` does with ``resume`` / ``overwrite``), one table, and the
    cross-descendant matrix when ``cross`` is ``all`` or ``A:D,...``."""
    from ..core.cells import headline_boundary
    from .pipeline import resolve_boundaries

    check_model_set(models, "compare")
    config = RunConfig.with_overrides(config, **overrides)
    check_switches(resume=resume, overwrite=overwrite)
    check_progress(progress)
    plan = parse_cross(cross, models.descendants)
    b = headline_boundary(resolve_boundaries(config, models.num_layers), models.num_layers, config.boundary)
    runs: dict[str, RunResult] = {}
    if out is not None:
        check_out_dir(out, resume=resume, overwrite=overwrite, collection="compare")
        if overwrite:
            _clear_other_members(Path(out), models.descendants)
        mark_collection(out, "compare")
    for role in models.descendants:
        extra = [CrossDescendant(b, plan[role])] if role in plan else []
        cfg = member_config(config, role, out is not None)
        runs[role] = run(models, prompts, cfg, out=Path(out) / role if out is not None else None, progress=progress,
                         analyses=extra, resume=resume, overwrite=overwrite)
    summary = compare_summary(models, runs, plan, BootstrapConfig(config.bootstrap, config.seed))
    if out is not None:
        out = Path(out)
        write_whole(out / "compare.json", json_document(checked("compare.json", summary)))
        report = write_compare_pages(out, summary)  # the Markdown it wrote
    else:
        report = render_compare_markdown(summary)
    return CompareResult(runs, summary, report, Path(out) if out is not None else None)


def member_config(config: RunConfig, role: str, written: bool = True) -> RunConfig:
    """The run configuration of a compare's member ``role`` (its report titled and linked back to
    the compare's page when ``written``)."""
    from dataclasses import replace

    return replace(config, tuned=role, title=config.title or f"crosspatch compare: base vs {role}",
                   back_link=config.back_link or ("../report.html" if written else None))


def finished_compare(out: str | Path, base: str, tuned: dict[str, str], adapters: dict[str, str], options, prompts,
                     config: RunConfig, cross: str | None) -> CompareResult | None:
    """The stored compare in ``out`` when it already holds this very compare, finished: every
    member the finished run of its descendant (:func:`~crosspatch.runner.resume.finished_result`:
    the same models, weights, options and prompts), compare.json naming these descendants and
    holding every cross-descendant cell ``cross`` asks for. None otherwise (the caller loads the
    models and ``compare`` resumes, refuses or replaces as usual). Nothing is loaded or written."""
    from ..errors import CrosspatchError
    from .resume import finished_result

    roles = (*tuned, *adapters)
    try:
        for role in roles:
            if finished_result(Path(out) / role, base, tuned, adapters, options, prompts,
                               member_config(config, role)) is None:
                return None
        summary = read_collection_summary(Path(out), "compare")
        stored = {(x, y) for x, row in (summary.get("cross") or {}).items() for y, cell in (row or {}).items()
                  if isinstance(cell, dict) and (cell.get("n") or 0) > 0 and x != y and summary.get("base") not in (x, y)}
        asked = {(x, y) for y, xs in parse_cross(cross, roles).items() for x in xs}
        if summary.get("descendants") != list(roles) or stored != asked:  # the cross cells asked for, no others
            return None
        return open_compare(Path(out))
    except (CrosspatchError, OSError, KeyError, TypeError, ValueError):
        return None  # anything unusual: the normal path decides, with its named errors


def _clear_other_members(out: Path, keep) -> None:
    """``--overwrite`` of a compare's output: its pages and JSON, and the runs of descendants this
    compare does not have (an earlier compare's), go; the runs it has are replaced by their own
    runs; files crosspatch did not write stay (a member directory emptied is removed)."""
    from ..store import RunStore

    if not out.is_dir():
        return
    for name in ("compare.json", "report.md", "report.html"):
        (out / name).unlink(missing_ok=True)
    for member in out.iterdir():
        if member.is_dir() and member.name not in keep and RunStore(member).is_run():
            RunStore(member).clear()
            if not any(member.iterdir()):
                member.rmdir()


def compare_summary(models: ModelSet, runs: dict[str, RunResult], plan: dict[str, list[str]],
                    boot: BootstrapConfig | None = None) -> dict:
    rows = {}
    for role, result in runs.items():
        v = result.summary["verdict"]
        readout = verdict_readout(v)  # (a policy's common_pt too)
        block = result.summary["results"][str(v["boundary"])][readout]["all"]
        rows[role] = {"events": block["n_events"], "prompts": block["n_prompts"], "cells": block["cells"],
                      "effects": {k: block["effects"][k] for k in ("E_PT", "E_IT", "interaction", "direct_share", "late_interaction_share")},
                      "verdict": v["verdict"], "reason": v["reason"], "boundary": v["boundary"], "readout": readout}
    matrix: dict[str, dict[str, dict | None]] | None = None
    if plan:
        roles = list(models.roles)
        matrix = {x: {y: None for y in roles} for x in roles}
        for y, result in runs.items():
            first = [r for r in result.records if r.kind == "first_diff" and r.boundary == rows[y]["boundary"]]
            boot = boot or BootstrapConfig()
            matrix[models.base][y] = _mean(((r.prompt_id, r.cells["common_it"]["upt_lit"]) for r in first), boot,
                                           f"cross/{models.base}/{y}")
            matrix[y][y] = _mean(((r.prompt_id, r.cells["common_it"]["uit_lit"]) for r in first), boot, f"cross/{y}/{y}")
            matrix[y][models.base] = _mean(((r.prompt_id, r.cells["common_it"]["uit_lpt"]) for r in first), boot,
                                           f"cross/{y}/{models.base}")
            for x in plan.get(y, []):
                matrix[x][y] = _mean(((r["prompt_id"], r["y"]) for r in result.analyses.get("cross_descendant", [])
                                      if r["upstream"] == x), boot, f"cross/{x}/{y}")
    first = next(iter(runs.values()), None)  # (every member runs with the compare's one configuration)
    settings = chosen_settings((getattr(first, "config", None) or {}).get("options") or {})
    return {"schema_version": COMPARE_SCHEMA, "base": models.base, "descendants": list(models.descendants),
            "warnings": list(dict.fromkeys(models.warnings)),  # the set's, once (each member's run repeats them)
            "settings": [list(item) for item in settings],  # a policy or chat template chosen: named on the pages
            "rows": rows, "cross": matrix,
            "cross_note": ("Y(U_X, L_Y): upstream X (rows) through late stack Y (columns), on Y's events (t_base vs t_Y) "
                           "with Y's head; the base column uses the upstream descendant's events")}


# -- pooling ------------------------------------------------------------------------------------
def pool_runs(run_dirs: dict[str, str | Path] | list[str | Path], readout: str | None = None,
              bootstrap: int = 2000, seed: int = 0) -> dict:
    """Family-balanced pooling of finished runs (one per base/descendant family): the mean of
    per-family means, prompts resampled within each family; at each run's headline boundary.
    ``run_dirs``: at least two, as ``{family name: directory}`` or a list (each family named after
    its directory, or its path where two directories share a name); each directory once.
    The pool records the settings each family's run chose that change what it reads (``settings``:
    family -> ``[name, what]`` pairs, as its reports name them; empty for a default run), so a pool
    of runs made under different policies or prompt renderings says so.
    ``readout``: ``common_it`` or ``common_pt``; None: the one the runs' verdicts read (common-IT
    unless their policy said common-PT; runs whose verdicts read different ones need it given).
    The pool records it (``readout``)."""
    from ..core.cells import READOUTS
    from ..store import RunStore
    from .checks import _int, check_bootstrap, check_given_once

    if isinstance(run_dirs, dict):
        if any(not isinstance(name, str) or not name.strip() for name in run_dirs):
            raise OptionError(f"family names must be non-empty strings, not {list(run_dirs)!r}")
        given = list(run_dirs.values())
    elif isinstance(run_dirs, (list, tuple)):
        given = list(run_dirs)
    else:
        raise OptionError(f"run_dirs must be a list of run directories or a {{family: directory}} dict, not {run_dirs!r}")
    if len(given) < 2:
        raise OptionError("give at least two run directories (one per family) to pool")
    # checked as given: a list naming one directory twice would collapse into one family below
    check_given_once([str(d) for d in given], "run directory", "each family must count once")
    if not isinstance(run_dirs, dict):
        names = [Path(d).name if isinstance(d, (str, Path)) else d for d in given]
        if len(set(map(str, names))) != len(names):  # two families in directories of one name: named by path
            names = [str(d) for d in given]
        run_dirs = dict(zip(map(str, names), given))
    readout = readout_key(readout)  # (as the pages print it, too: common-PT)
    if readout is not None and readout not in READOUTS:
        raise OptionError(f"readout must be one of {', '.join(READOUTS)}, not {readout!r}")
    check_bootstrap(bootstrap)
    _int("seed", seed, 0)
    groups, seen, pairs, read, settings = {}, {}, {}, {}, {}
    for name, d in run_dirs.items():
        store = RunStore(d)
        summary = store.summary()
        read[name] = verdict_readout(summary.get("verdict"))
        config = store.config()
        settings[name] = [list(item) for item in chosen_settings(config.get("options") or {})]
        run_id = config.get("run_fingerprint")
        if run_id is not None and run_id in seen:  # one run (a copy, or two shards of it) must count once
            raise OptionError(f"{d} and {seen[run_id]} hold the same run (or shards of one run): each family must "
                              "count once; merge shards with crosspatch merge first")
        seen[run_id] = d
        pair = _pair_identity(config)
        if pair is not None and pair in pairs:  # two runs of one pair (other options, other prompts)
            raise OptionError(f"{d} and {pairs[pair]} are runs of the same base and descendant (identical weights): "
                              "each family must count once; pool runs of different pairs")
        pairs[pair] = d
        b = summary.get("verdict", {}).get("boundary", int(summary["boundaries"][0]))
        groups[name] = [r for r in store.load_records() if r.boundary == b and r.kind == "first_diff"]
    if readout is None:
        if len(set(read.values())) > 1:
            named = ", ".join(f"{name}: {readout_label(r)}" for name, r in read.items())
            raise OptionError(f"the runs' verdicts read different readouts ({named}): give the readout to pool "
                              "(readout='common_it' or 'common_pt', --readout)")
    chosen: str = readout if readout is not None else next(iter(read.values()))
    return {"readout": chosen, "settings": settings,
            **pool_family_balanced(groups, chosen, BootstrapConfig(bootstrap, seed))}


def _pair_identity(config: dict) -> str | None:
    """The weights' hashes of the models a run scores (the base, then its descendant or adapter: in a
    compare's run directory the one descendant it scores, not every one the compare loaded), as
    one key; None where a model's weights were not hashed (``hash_weights=False``: recorded as
    None per file) or not recorded (a hub id): then two runs of one pair cannot be told apart."""
    from .finished import recorded_models

    models = config.get("models") or {}
    descendants = models.get("descendants") or {}
    scored = (config.get("options") or {}).get("tuned")
    if isinstance(scored, str) and scored in descendants:  # a compare's run of one of the descendants it loaded
        entries = [models.get("base"), descendants[scored]]
    else:
        entries = recorded_models(config)
    weights = [entry.get("weights") if isinstance(entry, dict) else None for entry in entries]
    if len(weights) < 2 or not all(isinstance(w, dict) and w and None not in w.values() for w in weights):
        return None
    return json.dumps(weights, sort_keys=True)


__all__ = ["CompareResult", "CrossDescendant", "compare", "parse_cross", "pool_runs"]


class _CallableModule(type(sys.modules[__name__])):
    """``crosspatch.compare`` is both this module and the function :func:`compare`: importing a
    submodule makes it an attribute of its package, so whichever was looked up first used to win
    (the second ``crosspatch.compare(...)`` call failed with "'module' object is not callable").
    Calling the module calls the function."""

    def __call__(self, *args, **kwargs):
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
