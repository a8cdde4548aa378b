"""Commands that run the diagnostic several times: ``sweep`` (every boundary), ``compare`` (every
descendant of one base, with cross-descendant patching) and ``lineage`` (every training stage).
Each takes ``run``'s options, from ``run``'s own signature."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import CrosspatchError, OptionError
from .app import _fail, _stdout, app, console
from .run import _prepare, _print_plan, run_cmd


def _signature_like_run(drop: tuple[str, ...] = (), replace: dict | None = None, add: list | None = None):
    """``run``'s parameters (one definition of the options for every command that runs)."""
    import inspect

    params = []
    for p in inspect.signature(run_cmd, eval_str=True).parameters.values():
        if p.name in drop:
            continue
        if replace and p.name in replace:
            p = p.replace(**replace[p.name])
        params.append(p)
    for extra in add or []:
        params.insert(0 if extra.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD and extra.default is inspect._empty
                      else len(params), extra)
    return inspect.Signature(params)


def _compare_cmd(**kw) -> None:
    """Every descendant against one base in one table (a run directory each under --out), with
    cross-descendant patching (--cross A:D or all)."""
    from ..execution import load_models
    from ..execution.roles import descendant_roles
    from ..runner.compare import compare, parse_cross

    tuned, adapters = kw.pop("tuned") or [], kw.pop("adapter") or []
    cross = kw.pop("cross")
    try:
        if not tuned and not adapters:
            raise OptionError("give the descendants to compare: --tuned DIR (repeatable) and/or --adapter DIR")
        items, config, options = _prepare(kw, tuned, adapters, collection="compare")
        parse_cross(cross, tuple(r for roles in descendant_roles(tuned or None, adapters or None) for r in roles))
        if kw["dry_run"]:
            return _print_plan(kw, tuned, adapters, items, config, options)
        with console.status("loading models"):
            models = load_models(kw["base"], tuned=tuned or None, adapters=adapters or None, options=options)
        console.print(f"residency: {models.residency} ({models.provenance.get('residency_reason')})",
                      soft_wrap=True, markup=False)
        result = compare(models, items, config, out=kw["out"], cross=cross, progress=not kw["quiet"],
                         resume=kw["resume"], overwrite=kw["overwrite"])
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
    table = Table(title="crosspatch compare: common-IT readout, headline boundary")
    for col in ("descendant", "verdict", "events", "E_PT", "E_IT", "interaction", "direct share"):
        table.add_column(col)
    from ..report.markdown import fmt_effect

    for role, r in result.summary["rows"].items():
        table.add_row(role, r["verdict"], str(r["events"]),
                      *[fmt_effect({"effects": r["effects"]}, k) for k in ("E_PT", "E_IT", "interaction", "direct_share")])
    _stdout().print(table)
    console.print(f"report: {kw['out']}/report.md and report.html; one run directory per descendant", soft_wrap=True)


def _lineage_cmd(**kw) -> None:
    """Score every training stage on the Base -> Final first divergences: MODELS is BASE STAGE1
    ... FINAL (checkpoint or adapter directories, in training order)."""
    from pathlib import Path as _Path

    from ..execution import load_models
    from ..runner.lineage import lineage

    paths = kw.pop("models")
    checkpoints = kw.pop("checkpoints")
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
        kw["base"] = paths[0]
        from ..execution.roles import _role_names

        names = {c.name: str(c.path) for c in found} or _role_names(list(paths[1:]), what="stage", each="stage")
        stages = list(names.values())
        adapters = [p for p in stages if (_Path(p) / "adapter_config.json").exists()]
        tuned = [p for p in stages if p not in adapters]
        items, config, options = _prepare(kw, tuned, adapters, collection="lineage")
        if kw["dry_run"]:
            return _print_plan(kw, tuned, adapters, items, config, options)
        with console.status("loading models"):
            models = load_models(paths[0], tuned={n: p for n, p in names.items() if p in tuned} or None,
                                 adapters={n: p for n, p in names.items() if p in adapters} or None, options=options)
            order = ("base",) + tuple(names)
            if models.roles != order:  # checkpoints and adapters mixed: keep the training order
                models.roles = order
        result = lineage(models, items, config, out=kw["out"], progress=not kw["quiet"], resume=kw["resume"],
                         overwrite=kw["overwrite"], steps=steps)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
    from ..runner.lineage import LINEAGE_COLUMNS, lineage_rows

    table = Table(title=f"crosspatch lineage: base -> {result.summary['final']}")
    shown = [k for k, col in enumerate(LINEAGE_COLUMNS) if col not in ("E_PT", "E_IT", "label-swap null")]
    for k in shown:
        table.add_column(LINEAGE_COLUMNS[k])
    for row in lineage_rows(result.summary):
        table.add_row(*[row[k] for k in shown])
    _stdout().print(table)
    console.print(f"report: {kw['out']}/report.md, report.html, lineage.png", soft_wrap=True)


def _sweep_cmd(**options) -> None:
    """Layer sweep: E_PT, E_IT and the interaction at every boundary (upstream states captured
    once per event); writes sweep.png/svg and the report. Takes exactly run's options."""
    options["boundaries"] = options.get("boundaries") or "all"
    run_cmd(**options)


def _sweep_signature():
    """``run``'s parameters, with ``--boundaries`` defaulting to all and ``--out`` to runs/sweep."""
    import inspect

    params = []
    for p in inspect.signature(run_cmd, eval_str=True).parameters.values():
        if p.name == "boundaries":
            p = p.replace(default=typer.Option("all", "--boundaries", help="'all' (1..L-1) or a comma-separated list."))
        elif p.name == "out":
            p = p.replace(default=typer.Option(Path("runs/sweep"), "--out", help="Run directory."))
        params.append(p)
    return inspect.Signature(params)


def _compare_signature():
    import inspect

    cross = inspect.Parameter("cross", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, "--cross", help="Cross-descendant patching: 'all', or UPSTREAM:LATE pairs (comma-separated roles)."))
    return _signature_like_run(drop=("null", "synthetic_null"), replace={
        "tuned": {"annotation": Optional[list[str]], "default": typer.Option(
            None, "--tuned", metavar="[NAME=]DIR", help="A descendant checkpoint (repeat for several; roles are the directory names, or "
            "give NAME=PATH).")},
        "adapter": {"annotation": Optional[list[str]], "default": typer.Option(
            None, "--adapter", metavar="[NAME=]DIR", help="A PEFT adapter directory on --base (repeatable; NAME=PATH names its role).")},
        "out": {"default": typer.Option(Path("runs/compare"), "--out", help="Directory of the comparison.")},
    }, add=[cross])


def _lineage_signature():
    import inspect

    models = inspect.Parameter("models", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=list[str],
                               default=typer.Argument(..., metavar="MODEL...", help="BASE STAGE1 ... FINAL (directories, training order); "
                                                      "with --checkpoints only BASE."))
    checkpoints = inspect.Parameter("checkpoints", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                    default=typer.Option(None, "--checkpoints", help="A trainer's output_dir: its "
                                                         "checkpoint-<step> directories (full or adapter) are the stages, "
                                                         "in step order."))
    return _signature_like_run(drop=("base", "tuned", "adapter", "null", "synthetic_null"), replace={
        "out": {"default": typer.Option(Path("runs/lineage"), "--out", help="Directory of the lineage.")}},
        add=[models, checkpoints])


_sweep_cmd.__signature__ = _sweep_signature()
app.command("sweep")(_sweep_cmd)
_compare_cmd.__signature__ = _compare_signature()
app.command("compare")(_compare_cmd)
_lineage_cmd.__signature__ = _lineage_signature()
app.command("lineage")(_lineage_cmd)
