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

from .analysis import Analysis, EventSet
from .cells import CELLS, CellRecord, cells_against_base, event_y
from .execution import Executor, Late, ModelSet, Program
from .divergence import RecordKey
from .errors import OptionError
from .models.vocab import masked_argmax
from .pipeline import RunConfig, RunResult, run
from .stats import BootstrapConfig, block_bootstrap, effect_block, label_swap_null, pool_family_balanced, share_of_reference
from .store import checked, mark_collection
from .validation import check_out_dir

COMPARE_SCHEMA = "crosspatch.compare/1"
LINEAGE_SCHEMA = "crosspatch.lineage/1"


@dataclass
class CrossDescendant(Analysis):
    """``Y(U_X, L_tuned)`` for each other descendant ``X`` in ``upstream``, on the run's events
    (the tuned role's contrast), read with the tuned role's head (common-IT)."""

    boundary: int
    upstream: list[str]
    name: str = "cross_descendant"

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


@dataclass
class StageScores(Analysis):
    """Each stage's 2x2 against the base on the run's events (Base -> Final contrast), read
    with the stage's own head (``cells``) and with the final stage's head (``cells_final_readout``,
    the authors' common readout for a stage's share), and whether the stage's own top-1 is
    ``t_Final``."""

    boundary: int
    stages: list[str]
    name: str = "lineage"

    def program(self, ex: Executor, events: EventSet) -> Program:
        if not events.events:
            return []
        b = self.boundary
        scored = yield from cells_against_base(ex, events, b, list(self.stages), also_read_with=self.stages[-1])
        rows = []
        for role, (ys, nat_s, ys_final) in scored.items():
            own = masked_argmax(ex.readout(role, nat_s), ex.models.real_vocab).cpu()
            for j, e in enumerate(events.events):
                rows.append({"key": str(RecordKey(e.prompt_id, e.kind, b, role)), "prompt_id": e.prompt_id, "stage": role,
                             "boundary": b, "cells": {c: float(ys[c][j]) for c in CELLS},
                             "cells_final_readout": {c: float(ys_final[c][j]) for c in CELLS},
                             "top1_is_t_final": bool(own[j] == e.t_it)})
        return rows


# -- compare ------------------------------------------------------------------------------------
@dataclass
class CompareResult:
    runs: dict[str, RunResult]
    summary: dict
    report: str
    out: Path | None = None

    def __repr__(self) -> str:
        verdicts = ", ".join(f"{role}: {row['verdict']}" for role, row in self.summary.get("rows", {}).items())
        where = f", out={str(self.out)!r}" if self.out else ""
        return f"CompareResult(base={self.summary.get('base')!r}, {verdicts or 'no descendants'}{where})"


def parse_cross(spec: str | None, descendants: tuple[str, ...]) -> dict[str, list[str]]:
    """``all`` or ``A:D,B:D`` -> {late-stack role: [upstream roles]}; anything else is an
    :class:`OptionError` (checked before any model loads, from the role names alone)."""
    if not spec:
        return {}
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
    from .stats import cluster_mean_ci

    kept = [(p, v) for p, v in pairs if v is not None and np.isfinite(v)]
    return cluster_mean_ci(np.array([v for _, v in kept], dtype=float), [p for p, _ in kept],
                           block_bootstrap(boot, name))


def compare(models: ModelSet, prompts, config: RunConfig | None = None, out: str | Path | None = None,
            cross: str | None = None, progress: bool = True, resume: bool = True, overwrite: bool = False,
            **overrides) -> CompareResult:
    """Every descendant of ``models`` against its base (one run directory each under ``out``,
    resumed or replaced as ``run`` does with ``resume`` / ``overwrite``), one table, and the
    cross-descendant matrix when ``cross`` is ``all`` or ``A:D,...``."""
    from dataclasses import replace

    from .cells import headline_boundary

    from .pipeline import resolve_boundaries

    config = replace(config or RunConfig(), **overrides)
    plan = parse_cross(cross, models.descendants)
    b = headline_boundary(resolve_boundaries(config, models.num_layers), models.num_layers)
    runs: dict[str, RunResult] = {}
    if out is not None:
        check_out_dir(out, resume=resume, overwrite=overwrite, collection="compare")
        mark_collection(out, "compare")
    for role in models.descendants:
        extra = [CrossDescendant(b, plan[role])] if role in plan else []
        cfg = replace(config, tuned=role, title=config.title or f"crosspatch compare: base vs {role}",
                      back_link=config.back_link or ("../report.html" if out is not None else None))
        runs[role] = run(models, prompts, cfg, out=Path(out) / role if out is not None else None, progress=progress,
                         analyses=extra, resume=resume, overwrite=overwrite)
    summary = compare_summary(models, runs, plan, BootstrapConfig(config.bootstrap, config.seed))
    report = render_compare_markdown(summary)
    if out is not None:
        out = Path(out)
        (out / "compare.json").write_text(json.dumps(checked("compare.json", summary), indent=2, default=str) + "\n")
        (out / "report.md").write_text(report)
        (out / "report.html").write_text(render_compare_html(summary))
    return CompareResult(runs, summary, report, Path(out) if out is not None else None)


def compare_summary(models: ModelSet, runs: dict[str, RunResult], plan: dict[str, list[str]],
                    boot: BootstrapConfig | None = None) -> dict:
    rows = {}
    for role, result in runs.items():
        v = result.summary["verdict"]
        block = result.summary["results"][str(v["boundary"])]["common_it"]["all"]
        rows[role] = {"events": block["n_events"], "prompts": block["n_prompts"], "cells": block["cells"],
                      "effects": {k: block["effects"][k] for k in ("E_PT", "E_IT", "interaction", "direct_share", "late_interaction_share")},
                      "verdict": v["verdict"], "reason": v["reason"], "boundary": v["boundary"]}
    matrix = None
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
    return {"schema_version": COMPARE_SCHEMA, "base": models.base, "descendants": list(models.descendants),
            "rows": rows, "cross": matrix,
            "cross_note": ("Y(U_X, L_Y): upstream X (rows) through late stack Y (columns), on Y's events (t_base vs t_Y) "
                           "with Y's head; the base column uses the upstream descendant's events")}


def _fmt(stat) -> str:
    from .report.markdown import fmt_value

    return fmt_value(stat)


def cross_cell(stat: dict | None) -> str:
    """One cell of the cross-descendant matrix: mean [95% CI] (n=...), or n/a."""
    if stat is None or stat.get("mean") is None:
        return "n/a" if stat is None else f"n/a (n={stat.get('n', 0)})"
    return f"{_fmt(stat)} (n={stat['n']})"


def render_compare_markdown(summary: dict) -> str:
    from .report.markdown import _table, fmt_effect, md_escape

    lines = ["# crosspatch compare", "", f"Base against {len(summary['rows'])} descendant(s); headline boundary, "
             "common-IT readout, 95% prompt-cluster intervals.", ""]
    rows = []
    for role, r in summary["rows"].items():
        block = {"effects": r["effects"]}
        rows.append([md_escape(role), r["verdict"], str(r["events"])]
                    + [_fmt(r["cells"][c]) for c in CELLS]
                    + [fmt_effect(block, k) for k in ("E_PT", "E_IT", "interaction", "direct_share")])
    lines += _table(["descendant", "verdict", "events", "Y(U_PT,L_PT)", "Y(U_PT,L_IT)", "Y(U_IT,L_PT)", "Y(U_IT,L_IT)",
                     "E_PT", "E_IT", "interaction", "direct share"], rows) + [""]
    for role, r in summary["rows"].items():
        lines += [f"- **{md_escape(role)}**: {md_escape(r['reason'])}"]
    lines.append("")
    if summary.get("cross"):
        roles = list(summary["cross"])
        lines += ["## Cross-descendant patching", "", summary["cross_note"] + ".", ""]
        body = []
        for x in roles:
            body.append([f"U_{md_escape(x)}"] + [cross_cell(summary["cross"][x][y]) for y in roles])
        lines += _table(["upstream \\ late"] + [f"L_{md_escape(y)}" for y in roles], body) + [""]
    return "\n".join(lines)


def render_compare_html(summary: dict) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    from .report.markdown import fmt_effect

    env = Environment(loader=PackageLoader("crosspatch.report", "templates"), autoescape=select_autoescape(["j2"]))
    tables = [("Descendants (95% prompt-cluster intervals)",
               ["descendant", "verdict", "events", "E_PT", "E_IT", "interaction", "direct share"],
               [[role, r["verdict"], str(r["events"])] + [fmt_effect({"effects": r["effects"]}, k)
                                                          for k in ("E_PT", "E_IT", "interaction", "direct_share")]
                for role, r in summary["rows"].items()])]
    if summary.get("cross"):
        roles = list(summary["cross"])
        tables.append(("Cross-descendant patching: Y(U_X, L_Y)", ["upstream \\ late"] + [f"L_{y}" for y in roles],
                       [[f"U_{x}"] + [cross_cell(summary["cross"][x][y]) for y in roles] for x in roles]))
    return env.get_template("tables.html.j2").render(
        title="crosspatch compare", intro=" ".join(f"{k}: {r['reason']}" for k, r in summary["rows"].items()),
        tables=tables, links=[f"{role}/report.html" for role in summary["rows"]])


# -- lineage ------------------------------------------------------------------------------------
@dataclass
class LineageResult:
    run: RunResult
    summary: dict
    report: str
    out: Path | None = None

    def __repr__(self) -> str:
        where = f", out={str(self.out)!r}" if self.out else ""
        return (f"LineageResult(stages={self.summary.get('stages')}, boundary={self.summary.get('boundary')}, "
                f"events={self.summary.get('events')}{where})")


def lineage(models: ModelSet, prompts, config: RunConfig | None = None, out: str | Path | None = None,
            progress: bool = True, resume: bool = True, overwrite: bool = False, steps: dict[str, int] | None = None,
            **overrides) -> LineageResult:
    """Score every stage of ``models`` (descendant roles in training order, the last one the
    final model) on the Base -> Final first divergences. ``steps``: the training step of each
    stage (trainer checkpoints), recorded and used as the plot's x axis."""
    from dataclasses import replace

    from .cells import headline_boundary
    from .pipeline import resolve_boundaries

    if len(models.descendants) < 1:
        raise OptionError("a lineage needs at least one stage")
    config = replace(config or RunConfig(), **overrides)
    final = models.descendants[-1]
    b = headline_boundary(resolve_boundaries(config, models.num_layers), models.num_layers)
    cfg = replace(config, tuned=final, title=config.title or f"crosspatch lineage: base -> {final}")
    if out is not None:
        check_out_dir(out, resume=resume, overwrite=overwrite, collection="lineage")
        mark_collection(out, "lineage")
    result = run(models, prompts, cfg, out=Path(out) / "run" if out is not None else None, progress=progress,
                 analyses=[StageScores(b, list(models.descendants))], resume=resume, overwrite=overwrite)
    summary = lineage_summary(result, list(models.descendants), b, BootstrapConfig(config.bootstrap, config.seed))
    if steps:
        summary["training_steps"] = {s: int(steps[s]) for s in models.descendants if s in steps}
    report = render_lineage_markdown(summary)
    if out is not None:
        out = Path(out)
        (out / "lineage.json").write_text(json.dumps(checked("lineage.json", summary), indent=2, default=str) + "\n")
        plot_lineage(summary, out)
        (out / "report.md").write_text(report)
        (out / "report.html").write_text(render_lineage_html(summary, out))
    return LineageResult(result, summary, report, Path(out) if out is not None else None)


def lineage_summary(result: RunResult, stages: list[str], boundary: int, boot: BootstrapConfig) -> dict:
    """Each stage's effects on the Base -> Final events, with its share of the final model two
    ways, each with a joint prompt-cluster interval: ``share_of_final_shift`` (the stage's native
    shift over the final's, each read with its own head) and ``share_of_final_interaction`` (the
    method's authors' share: the stage's interaction over the final's, both read with the final
    model's head). ``percent_of_final`` is the first share's point value, kept for old readers."""
    rows = result.analyses.get("lineage", [])
    by_stage: dict[str, dict[str, dict]] = {s: {} for s in stages}
    for r in rows:
        if r["stage"] in by_stage:
            by_stage[r["stage"]][RecordKey.parse(r["key"]).event] = r
    final = stages[-1]
    events = [e for e in by_stage[final] if all(e in by_stage[s] for s in stages)]  # one event order for all
    prompts = [by_stage[final][e]["prompt_id"] for e in events]

    def matrix(stage: str, field: str) -> np.ndarray | None:
        recs = [by_stage[stage][e] for e in events]
        if any(field not in r for r in recs):  # rows of an older crosspatch: no final readout recorded
            return None
        return np.array([[r[field][c] for c in CELLS] for r in recs], dtype=float).reshape(-1, 4)

    final_own, final_common = matrix(final, "cells"), matrix(final, "cells_final_readout")
    out_stages = {}
    for s in stages:
        recs = list(by_stage[s].values())
        values = np.array([[r["cells"][c] for c in CELLS] for r in recs], dtype=float).reshape(-1, 4)
        block = effect_block(values, [r["prompt_id"] for r in recs], boot)
        fake = [CellRecord(key=r["key"], prompt_id=r["prompt_id"], category=None, boundary=boundary, position=0,
                           prompt_len=0, prefix_len=0, t_pt=0, t_it=0, t_pt_text="", t_it_text="",
                           cells={"common_it": r["cells"], "common_pt": r["cells"]}, margin_pt=0.0, margin_it=0.0,
                           near_tie=False, natural_agrees=True) for r in recs]
        share_boot = block_bootstrap(boot, f"lineage-share/{s}")
        by_shift = share_of_reference(matrix(s, "cells"), final_own, prompts, "native_shift", share_boot)
        common = matrix(s, "cells_final_readout")
        by_interaction = (share_of_reference(common, final_common, prompts, "interaction", share_boot)
                          if common is not None and final_common is not None
                          else {"mean": None, "ci": None, "n": len(events),
                                "na_reason": "run recorded before the final readout was kept: rerun with --overwrite"})
        common_block = (effect_block(common, prompts, share_boot)["effects"]["interaction"]
                        if common is not None else {"mean": None, "ci": None})
        out_stages[s] = {
            "events": len(recs), "native_y": block["cells"]["uit_lit"], "native_shift": block["effects"]["native_shift"],
            "E_PT": block["effects"]["E_PT"], "E_IT": block["effects"]["E_IT"],
            "interaction": block["effects"]["interaction"],
            "interaction_final_readout": common_block,
            "share_of_final_shift": by_shift,
            "share_of_final_interaction": by_interaction,
            "percent_of_final": by_shift["mean"],
            "top1_agreement_with_final": float(np.mean([r["top1_is_t_final"] for r in recs])) if recs else None,
            "label_swap": label_swap_null(fake, seed=boot.seed),
        }
    return {"schema_version": LINEAGE_SCHEMA, "stages": stages, "final": final, "boundary": boundary,
            "events": result.summary["counts"]["events"], "by_stage": {s: out_stages[s] for s in stages},
            "note": ("support fixed on the Base -> Final first divergences; each stage scored on (t_Base, t_Final). "
                     "Share of final (shift) = the stage's native shift Y(U_S,L_S) - Y(U_B,L_B), each model read with "
                     "its own head, over the final stage's; share of final (interaction, the method's authors' "
                     "measure) = the stage's interaction over the final's, every cell read with the final model's "
                     "head; both with 95% prompt-cluster intervals")}


def plot_lineage(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report.plots import legend

    stages = summary["stages"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    steps = summary.get("training_steps") or {}
    by_step = all(s in steps for s in stages)
    x = np.array([steps[s] for s in stages]) if by_step else np.arange(len(stages))
    for key, label in (("native_shift", "native shift D"), ("E_IT", "E_IT"), ("E_PT", "E_PT"),
                       ("interaction", "interaction")):
        stats = [summary["by_stage"][s][key] for s in stages]
        means = [np.nan if st["mean"] is None else st["mean"] for st in stats]
        ax.plot(x, means, marker="o", label=label)
        lo = [np.nan if not st.get("ci") else st["ci"][0] for st in stats]
        hi = [np.nan if not st.get("ci") else st["ci"][1] for st in stats]
        ax.fill_between(x, lo, hi, alpha=0.15)
    if by_step:
        ax.set_xlabel("training step")
    else:
        ax.set_xticks(x, stages)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("logits (t_Final vs t_Base)")
    ax.set_title("lineage: every stage on the Base -> Final contrast")
    legend(ax, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "lineage.png", dpi=120)
    fig.savefig(out / "lineage.svg")
    plt.close(fig)


LINEAGE_COLUMNS = ("stage", "n", "native shift D", "share of final (shift)", "interaction (final's head)",
                   "share of final (interaction, authors')", "top-1 = t_Final", "E_PT", "E_IT", "interaction",
                   "label-swap null")


def lineage_rows(summary: dict) -> list[list[str]]:
    """One row per stage under :data:`LINEAGE_COLUMNS` (text, unescaped), for both reports."""
    from .report.markdown import fmt_percent, fmt_value

    rows = []
    for s in summary["stages"]:
        r = summary["by_stage"][s]
        agree = "n/a" if r["top1_agreement_with_final"] is None else f"{100 * r['top1_agreement_with_final']:.0f}%"
        swap = r["label_swap"]
        null = "n/a" if swap["p_value"] is None else f"p={swap['p_value']:.3f}"
        share_shift = r.get("share_of_final_shift") or {"mean": r.get("percent_of_final"), "ci": None}
        rows.append([s, str(r["events"]), fmt_value(r["native_shift"]), fmt_percent(share_shift),
                     fmt_value(r.get("interaction_final_readout")), fmt_percent(r.get("share_of_final_interaction")),
                     agree, fmt_value(r["E_PT"]), fmt_value(r["E_IT"]), fmt_value(r["interaction"]), null])
    return rows


def render_lineage_markdown(summary: dict) -> str:
    from .report.markdown import _table, md_escape

    lines = ["# crosspatch lineage", "", md_escape(summary["note"]) + ".", "",
             f"{summary['events']} Base -> Final events at boundary {summary['boundary']}.", "",
             "![lineage](lineage.png)", ""]
    rows = [[md_escape(row[0]), *row[1:]] for row in lineage_rows(summary)]
    lines += _table(list(LINEAGE_COLUMNS), rows)
    return "\n".join(lines + [""])


def render_lineage_html(summary: dict, out: Path) -> str:
    import base64

    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("crosspatch.report", "templates"), autoescape=select_autoescape(["j2"]))
    png = out / "lineage.png"
    return env.get_template("tables.html.j2").render(
        title="crosspatch lineage", intro=summary["note"],
        tables=[("Stages", list(LINEAGE_COLUMNS), lineage_rows(summary))], links=[],
        image=base64.b64encode(png.read_bytes()).decode() if png.exists() else None)


# -- pooling ------------------------------------------------------------------------------------
def pool_runs(run_dirs: dict[str, str | Path] | list[str | Path], readout: str = "common_it",
              bootstrap: int = 2000, seed: int = 0) -> dict:
    """Family-balanced pooling of finished runs (one per base/descendant family): the mean of
    per-family means, prompts resampled within each family; at each run's headline boundary."""
    from .store import RunStore

    if not isinstance(run_dirs, dict):
        run_dirs = {Path(d).name: d for d in run_dirs}
    groups, seen = {}, {}
    for name, d in run_dirs.items():
        store = RunStore(d)
        summary = store.summary()
        run_id = store.config().get("run_fingerprint")
        if run_id is not None and run_id in seen:  # one run (a copy, or two shards of it) must count once
            raise OptionError(f"{d} and {seen[run_id]} hold the same run (or shards of one run): each family must "
                              "count once; merge shards with crosspatch merge first")
        seen[run_id] = d
        b = summary.get("verdict", {}).get("boundary", int(summary["boundaries"][0]))
        groups[name] = [r for r in store.load_records() if r.boundary == b and r.kind == "first_diff"]
    return pool_family_balanced(groups, readout, BootstrapConfig(bootstrap, seed))


__all__ = ["CompareResult", "CrossDescendant", "LineageResult", "StageScores", "compare", "lineage", "parse_cross",
           "pool_runs"]


class _CallableModule(type(sys.modules[__name__])):
    """``crosspatch.compare`` is both this module and the function :func:`compare`: importing a
    submodule makes it an attribute of its package, so whichever was looked up first used to win
    (the second ``crosspatch.compare(...)`` call failed with "'module' object is not callable").
    Calling the module calls the function."""

    def __call__(self, *args, **kwargs):
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
