"""Commands that run the diagnostic several times: ``sweep`` (every boundary), ``compare`` (every
descendant of one base, with cross-descendant patching) and ``lineage`` (every training stage).
Each takes ``run``'s options, generated from the same dataclasses (``cli.options``). And ``pool``:
several families' finished runs, pooled family-balanced."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import CrosspatchError, OptionError
from ..models.options import LoadOptions
from ..runner.config import RunConfig
from .app import _fail, _stdout, app, console, print_warnings
from .options import command
from .run import _prepare, _print_plan, run_pair
from .targets import CompareTarget, LineageTarget, Session, SweepTarget, default_out


@app.command("sweep")
@command(defaults={"boundaries": "all"})
def sweep_cmd(target: SweepTarget, config: RunConfig, load: LoadOptions, session: Session) -> None:
    """Layer sweep: E_PT, E_IT and the interaction at every boundary (upstream states captured
    once per event); writes sweep.png/svg and the report. Takes exactly run's options."""
    run_pair(target, config, load, session)


@app.command("compare")
@command
def compare_cmd(target: CompareTarget, config: RunConfig, load: LoadOptions, session: Session) -> None:
    """Every descendant against one base in one table (a run directory each under --out), with
    cross-descendant patching (--cross A:D or all)."""
    from ..execution import load_models
    from ..execution.roles import descendant_roles
    from ..runner.checks import check_writable
    from ..runner.compare import compare, finished_compare, member_config, parse_cross

    tuned, adapters, cross, out = target.tuned or [], target.adapter or [], target.cross, target.out
    try:
        if not tuned and not adapters:
            raise OptionError("give the descendants to compare: --tuned DIR (repeatable) and/or --adapter DIR")
        tuned_roles, adapter_roles = descendant_roles(tuned or None, adapters or None)
        roles = (*tuned_roles, *adapter_roles)
        out = out if out is not None else default_out(target.base, list(roles), "compare")
        items = _prepare(config, load, session, target.base, target.prompts, out, tuned, adapters,
                         collection="compare", fields=target.fields)
        plan = parse_cross(cross, roles)
        if session.dry_run:
            from ..runner.compare import CrossDescendant

            return _print_plan(target.base, out, tuned, adapters, items, config, load, lambda b: [
                [CrossDescendant(b, plan[role])] if role in plan else [] for role in roles],
                "compare.json, report.md, report.html, a run directory per descendant ("
                + ", ".join(f"{role}/" for role in roles) + ")")
        result = finished_compare(out, target.base, tuned_roles, adapter_roles, load, items, config, cross) \
            if session.resume and not session.overwrite else None
        if result is not None:  # the same command again on a finished compare: nothing to load or compute
            console.print(f"{out} already holds this compare, finished: nothing to do (no model loaded)", soft_wrap=True)
        else:
            check_writable(out)  # (a finished one, returned as it stands, may be read-only)
            if not session.overwrite:  # a member holding another run: said before the weights load
                from ..runner.resume import refuse_before_loading

                for role in roles:
                    refuse_before_loading(Path(out) / role, items, member_config(config, role), resume=session.resume,
                                          models=(target.base, {**tuned_roles, **adapter_roles}, load))
            with console.status("loading models"):
                models = load_models(target.base, tuned=tuned or None, adapters=adapters or None, options=load)
            console.print(f"residency: {models.residency} ({models.provenance.get('residency_reason')})",
                          soft_wrap=True, markup=False)
            result = compare(models, items, config, out=out, cross=cross, progress=not session.quiet,
                             resume=session.resume, overwrite=session.overwrite)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
        return  # _fail exits
    from ..report.collections import compare_intervals, compare_readout
    from ..report.markdown import fmt_effect

    table = Table(title=f"crosspatch compare: {compare_readout(result.summary)}, headline boundary, "
                        f"{compare_intervals(result.summary)}")
    for col in ("descendant", "verdict", "events", "E_PT", "E_IT", "interaction", "direct share"):
        table.add_column(col)

    for role, r in result.summary["rows"].items():
        table.add_row(role, r["verdict"], str(r["events"]),
                      *[fmt_effect({"effects": r["effects"]}, k) for k in ("E_PT", "E_IT", "interaction", "direct_share")])
    _stdout().print(table)
    print_warnings(result.summary.get("warnings"))
    console.print(f"report: {out}/report.md and report.html; one run directory per descendant", soft_wrap=True)


@app.command("lineage")
@command
def lineage_cmd(target: LineageTarget, config: RunConfig, load: LoadOptions, session: Session) -> None:
    """Score every training stage on the Base -> Final first divergences: MODELS is BASE STAGE1
    ... FINAL (checkpoint or adapter directories, in training order)."""
    from ..execution import load_models
    from ..runner.checks import check_writable
    from ..runner.lineage import final_config, finished_lineage, lineage

    paths, checkpoints, out = list(target.models), target.checkpoints, target.out
    steps, found = None, []
    try:
        if checkpoints is not None:
            from ..workflows.checkpoints import discover_checkpoints

            if len(paths) != 1:
                raise OptionError("with --checkpoints give only BASE as MODELS: the stages are the checkpoint-<step> "
                                  "directories, in step order (the last one is the final model)")
            found = discover_checkpoints(checkpoints)
            paths = [paths[0], *[str(c.path) for c in found]]
            steps = {c.name: c.step for c in found}
        if len(paths) < 2:
            raise OptionError("lineage needs BASE and at least one stage (the last one is the final model)")
        if out is None:
            out = default_out(paths[0], [str(checkpoints) if checkpoints is not None else paths[-1]], "lineage")
        from ..execution.roles import _role_names

        names = {c.name: str(c.path) for c in found} or _role_names(list(paths[1:]), what="stage", each="stage")
        stages = list(names.values())
        adapters = [p for p in stages if (Path(p) / "adapter_config.json").exists()]
        tuned = [p for p in stages if p not in adapters]
        items = _prepare(config, load, session, paths[0], target.prompts, out, tuned, adapters, collection="lineage",
                         fields=target.fields, final_stage=stages[-1])
        if session.dry_run:
            from ..runner.lineage import StageScores

            return _print_plan(paths[0], out, tuned, adapters, items, config, load,
                               lambda b: [[StageScores(b, list(names))]],
                               "lineage.json, lineage.png, lineage.svg, report.md, report.html, the Base -> Final run (run/)")
        tuned_roles = {n: p for n, p in names.items() if p in tuned}
        adapter_roles = {n: p for n, p in names.items() if p in adapters}
        result = finished_lineage(out, paths[0], tuned_roles, adapter_roles, load, items, config, list(names), steps) \
            if session.resume and not session.overwrite else None
        if result is not None:  # the same command again on a finished lineage: nothing to load or compute
            console.print(f"{out} already holds this lineage, finished: nothing to do (no model loaded)", soft_wrap=True)
        else:
            check_writable(out)  # (a finished one, returned as it stands, may be read-only)
            if not session.overwrite:  # its run holding another run: said before the weights load
                from ..runner.resume import refuse_before_loading

                refuse_before_loading(Path(out) / "run", items, final_config(config, list(names)[-1]),
                                      resume=session.resume, models=(paths[0], {**tuned_roles, **adapter_roles}, load))
            with console.status("loading models"):
                models = load_models(paths[0], tuned=tuned_roles or None, adapters=adapter_roles or None, options=load)
                order = ("base",) + tuple(names)
                if models.roles != order:  # checkpoints and adapters mixed: keep the training order
                    models.roles = order
            result = lineage(models, items, config, out=out, progress=not session.quiet, resume=session.resume,
                             overwrite=session.overwrite, steps=steps)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
        return  # _fail exits
    from ..report.collections import lineage_no_events
    from ..runner.lineage import LINEAGE_COLUMNS, lineage_rows

    table = Table(title=f"crosspatch lineage: base -> {result.summary['final']}")
    shown = [k for k, col in enumerate(LINEAGE_COLUMNS) if col not in ("E_PT", "E_IT", "label-swap null")]
    for k in shown:
        table.add_column(LINEAGE_COLUMNS[k])
    for row in lineage_rows(result.summary):
        table.add_row(*[row[k] for k in shown])
    _stdout().print(table)
    print_warnings(result.summary.get("warnings"))
    if why := lineage_no_events(result.summary):  # an empty table says why it is empty
        print_warnings([f"no Base -> Final event: {why}"])
    console.print(f"report: {out}/report.md, report.html, lineage.png", soft_wrap=True)


@app.command("pool")
def pool_cmd(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="Finished run directories, one per base/descendant family."),
    bootstrap: int = typer.Option(2000, "--bootstrap", help="Bootstrap resamples (within each family)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    readout: Optional[str] = typer.Option(
        None, "--readout", help="common_it or common_pt, or as printed: common-IT, common-PT (default: the one the "
                                "runs' verdicts read)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Pool several families family-balanced: the mean of per-family means, prompts resampled
    within each family (each run at its headline boundary, in the readout its verdict reads)."""

    from ..core.records import readout_label
    from ..report.markdown import fmt_effect, has_intervals
    from ..runner.compare import pool_runs
    from ..store.files import json_document

    try:
        pooled = pool_runs(list(run_dirs), readout=readout, bootstrap=bootstrap, seed=seed)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
    if as_json:
        print(json_document(pooled), end="")
        return
    print_warnings(f"{name}: no scorable first-divergence event at its headline boundary: left out of the pool (its "
                   "report says why)" for name in pooled.get("families_without_events") or [])
    quantities = ("E_PT", "E_IT", "interaction", "late_interaction_share", "direct_share", "native_shift")
    loo = pooled.get("leave_one_out") or {}
    n = pooled["n_pairs"]
    table = Table(title=f"family-balanced pool of {n} {'family' if n == 1 else 'families'}, {pooled['n_events']} events, "
                        f"{readout_label(pooled['readout'])} readout")
    table.add_column("quantity")
    table.add_column("mean [95% CI]" if has_intervals(pooled) else "mean (no intervals)", justify="right")
    table.add_column("leave-one-out range of the mean", justify="right")
    for name in quantities:
        means = [b["effects"][name]["mean"] for b in loo.values() if b["effects"][name]["mean"] is not None]
        spread = "n/a" if not means else (f"{100 * min(means):.0f}% .. {100 * max(means):.0f}%" if name.endswith("share")
                                          else f"{min(means):+.2f} .. {max(means):+.2f}")
        table.add_row(name, fmt_effect(pooled, name), spread)
    _stdout().print(table)
    if pooled.get("ci_note"):
        _stdout().print(pooled["ci_note"], soft_wrap=True, markup=False)
    families = Table(title="each family, and the pool without it (leave one out)")
    for col in ("family", "events", "its interaction", "pooled interaction without it", "pooled I/E_IT without it"):
        families.add_column(col)
    for name, own in (pooled.get("families") or {}).items():
        rest = loo.get(name)
        families.add_row(name, str(own["n_events"]), fmt_effect(own, "interaction"),
                         fmt_effect(rest, "interaction") if rest else "n/a",
                         fmt_effect(rest, "late_interaction_share") if rest else "n/a")
    _stdout().print(families)
    _print_pool_settings(pooled.get("settings") or {})


def _print_pool_settings(settings: dict) -> None:
    """The settings the pooled runs chose (a policy, a chat template, word lists: as each run's
    reports name them): once where every run chose the same, else each family's, with a warning."""
    def said(items) -> str:
        return "; ".join(f"{what}: {how}" for what, how in items)

    chosen = list(settings.values())
    if not chosen:
        return
    if all(items == chosen[0] for items in chosen):
        if chosen[0]:
            _stdout().print(f"every family's run chose: {said(chosen[0])}", soft_wrap=True, markup=False)
    else:
        for name, items in settings.items():
            _stdout().print(f"{name}'s run chose: {said(items) or 'the defaults'}", soft_wrap=True, markup=False)
        print_warnings(["the families' runs chose different settings (above): the pool averages numbers read "
                        "under each one's own"])
