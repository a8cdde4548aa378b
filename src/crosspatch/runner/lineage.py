"""Training stages of one recipe (DESIGN 1.6: lineage): every stage scored on the Base -> Final
first-divergence events (:func:`lineage`), with its share of the final's native shift and of its
interaction (every cell read with the final's head), the table and plot of the reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.analysis import Analysis, EventSet, late_passes
from ..core.cells import CELLS, CellRecord, cells_against_base
from ..core.divergence import RecordKey
from ..core.stats import BootstrapConfig, block_bootstrap, effect_block, label_swap_null, share_of_reference
from ..errors import OptionError
from ..execution import Executor, ModelSet, Program
from ..models.options import check_progress
from ..models.vocab import masked_argmax
from ..report.collections import LINEAGE_COLUMNS, lineage_rows, render_lineage_markdown, write_lineage_pages  # noqa: F401 (re-exported)
from ..report.markdown import WHY_NO_INTERVALS, any_interval, chosen_settings
from ..store import checked, json_document, mark_collection, read_collection_summary, write_whole
from .checks import check_model_set, check_out_dir
from .config import check_switches
from .pipeline import RunConfig, RunResult, run
from .result import interval_columns, read_run

LINEAGE_SCHEMA = "crosspatch.lineage/1"


@dataclass
class StageScores(Analysis):
    """Each stage's 2x2 against the base on the run's events (Base -> Final contrast), read
    with the stage's own head (``cells``) and with the final stage's head (``cells_final_readout``,
    the authors' common readout for a stage's share), and whether the stage's own top-1 is
    ``t_Final``."""

    boundary: int
    stages: list[str]
    name: str = "lineage"

    def work_per_event(self, num_layers: int, budget: int, model_config: dict | None = None) -> float:
        """Per stage: its states (one pass) and two late passes."""
        return len(self.stages) * (1 + late_passes(2, self.boundary, num_layers))

    def model_roles(self) -> list[str]:
        return list(self.stages)

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


# -- lineage ------------------------------------------------------------------------------------
@dataclass
class LineageResult:
    run: RunResult
    summary: dict
    report: str
    out: Path | None = None

    def effects(self):
        """A DataFrame of every stage's numbers on the Base -> Final events, in training order: one
        row per (stage, quantity) with its 95% interval (``E_PT``, ``E_IT``, ``interaction``,
        ``native_shift``, ``share_of_final_shift``, ...) and the stage's training step where
        known."""
        import pandas as pd

        steps = self.summary.get("training_steps") or {}
        return pd.DataFrame([{"stage": stage, "step": steps.get(stage), "quantity": name, **interval_columns(stat),
                              "n_events": self.summary["by_stage"][stage].get("events"), "note": stat.get("na_reason")}
                             for stage in self.summary["stages"]
                             for name, stat in self.summary["by_stage"][stage].items()
                             if isinstance(stat, dict) and "mean" in stat])

    def _repr_html_(self) -> str:
        """What a notebook shows: one row per training stage, as the lineage report's table."""
        from ..report.notebook import lineage_card

        return lineage_card(self.summary, self.out)

    def __repr__(self) -> str:
        where = f", out={str(self.out)!r}" if self.out else ""
        return (f"LineageResult(stages={self.summary.get('stages')}, boundary={self.summary.get('boundary')}, "
                f"events={self.summary.get('events')}{where})")


def open_lineage(path: Path) -> LineageResult:
    """A finished lineage's output directory read back (``crosspatch.open_run``): its per-stage
    summary and the run of the final stage, from the stored files alone."""
    summary = read_collection_summary(path, "lineage")
    return LineageResult(read_run(path / "run"), summary, render_lineage_markdown(summary), path)


def lineage(models: ModelSet, prompts, config: RunConfig | None = None, out: str | Path | None = None,
            progress=True, resume: bool = True, overwrite: bool = False, steps: dict[str, int] | None = None,
            **overrides) -> LineageResult:
    """Score every stage of ``models`` (descendant roles in training order, the last one the
    final model) on the Base -> Final first divergences. ``steps``: the training step of each
    stage (trainer checkpoints), recorded and used as the plot's x axis."""
    from ..core.cells import headline_boundary
    from .pipeline import resolve_boundaries

    check_model_set(models, "lineage")
    if len(models.descendants) < 1:
        raise OptionError("a lineage needs at least one stage")
    config = RunConfig.with_overrides(config, **overrides)
    check_switches(resume=resume, overwrite=overwrite)
    check_progress(progress)
    if steps is not None and (not isinstance(steps, dict) or any(
            s not in models.descendants or isinstance(n, bool) or not isinstance(n, int) or n < 0
            for s, n in steps.items())):
        raise OptionError(f"steps must map stage names ({', '.join(models.descendants)}) to training steps "
                          f"(integers >= 0), not {steps!r}")
    final = models.descendants[-1]
    b = headline_boundary(resolve_boundaries(config, models.num_layers), models.num_layers, config.boundary)
    cfg = final_config(config, final)
    if out is not None:
        check_out_dir(out, resume=resume, overwrite=overwrite, collection="lineage")
        mark_collection(out, "lineage")
    result = run(models, prompts, cfg, out=Path(out) / "run" if out is not None else None, progress=progress,
                 analyses=[StageScores(b, list(models.descendants))], resume=resume, overwrite=overwrite)
    summary = lineage_summary(result, list(models.descendants), b, BootstrapConfig(config.bootstrap, config.seed))
    if steps:
        summary["training_steps"] = {s: steps[s] for s in models.descendants if s in steps}
    if out is not None:
        out = Path(out)
        write_whole(out / "lineage.json", json_document(checked("lineage.json", summary)))
        report = write_lineage_pages(out, summary)  # the Markdown it wrote
    else:
        report = render_lineage_markdown(summary)
    return LineageResult(result, summary, report, Path(out) if out is not None else None)


def final_config(config: RunConfig, final: str) -> RunConfig:
    """The configuration of a lineage's run: the Base -> ``final`` pair, titled after it."""
    from dataclasses import replace

    return replace(config, tuned=final, title=config.title or f"crosspatch lineage: base -> {final}")


def finished_lineage(out: str | Path, base: str, tuned: dict[str, str], adapters: dict[str, str], options, prompts,
                     config: RunConfig, stages: list[str], steps: dict[str, int] | None = None) -> LineageResult | None:
    """The stored lineage in ``out`` when it already holds this very lineage, finished: its run the
    finished Base -> Final run (:func:`~crosspatch.runner.resume.finished_result`: the same models,
    weights, options and prompts) and lineage.json naming these stages (and training steps). None
    otherwise (the caller loads the models and ``lineage`` resumes as usual). Nothing is loaded or
    written."""
    from ..errors import CrosspatchError
    from .resume import finished_result

    try:
        if finished_result(Path(out) / "run", base, tuned, adapters, options, prompts,
                           final_config(config, stages[-1])) is None:
            return None
        summary = read_collection_summary(Path(out), "lineage")
        wanted_steps = {s: steps[s] for s in stages if s in steps} if steps else None
        if summary.get("stages") != list(stages) or summary.get("training_steps") != wanted_steps:
            return None
        return open_lineage(Path(out))
    except (CrosspatchError, OSError, KeyError, TypeError, ValueError):
        return None  # anything unusual: the normal path decides, with its named errors


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
    assert final_own is not None  # every row records its own cells
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
        own = matrix(s, "cells")
        assert own is not None
        by_shift = share_of_reference(own, final_own, prompts, "native_shift", share_boot)
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
    # no Base -> Final event, no stage to score: why, in the Base -> Final run's own words (a broken final
    # checkpoint's NaN logits, a final model that never departs from the base)
    why = {} if result.summary["counts"]["events"] else {
        "no_events_reason": (result.summary.get("verdict") or {}).get("reason") or "no prompt produced an event"}
    intervals = ("both with 95% prompt-cluster intervals" if any_interval(stage["interaction"] for stage in out_stages.values())
                 else f"no intervals ({WHY_NO_INTERVALS})")
    return {"schema_version": LINEAGE_SCHEMA, "stages": stages, "final": final, "boundary": boundary, **why,
            "warnings": list(result.config.get("pair_warnings") or []),  # the model set's (a stage that is the base)
            # a chat template rendered the prompts: named on the pages (the run's other settings change no stage's row)
            "settings": [list(item) for item in chosen_settings(result.config.get("options") or {})
                         if item[0] == "chat template"],
            "events": result.summary["counts"]["events"], "by_stage": {s: out_stages[s] for s in stages},
            "note": ("support fixed on the Base -> Final first divergences; each stage scored on (t_Base, t_Final). "
                     "Share of final (shift) = the stage's native shift Y(U_S,L_S) - Y(U_B,L_B), each model read with "
                     "its own head, over the final stage's; share of final (interaction, the method's authors' "
                     "measure) = the stage's interaction over the final's, every cell read with the final model's "
                     f"head; {intervals}")}
