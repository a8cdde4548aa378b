"""The commands on finished runs and the zoo: ``gate``, ``consequence``, ``features``,
``merge``, ``report``, ``demo``, ``zoo build|verify``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from ..errors import CrosspatchError, OptionError
from .app import (
    HELP_OPTIONS,
    CommandGroup,
    _boundary,
    _crashed,
    _fail,
    _print_section,
    _stdout,
    app,
    console,
    load_policy,
    print_summary_table,
    print_warnings,
    zoo_app,
)
from .targets import FIELDS


@app.command("gate")
def gate_cmd(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A finished run directory, or a compare/lineage directory."),
    max_interaction_share: Optional[float] = typer.Option(
        None, "--max-interaction-share",
        help="Upstream-dependent when the whole I/E_IT interval lies above this (default: the run's policy, else 0.5)."),
    portable_interaction_share: Optional[float] = typer.Option(
        None, "--portable-interaction-share",
        help="Portable when the whole I/E_IT interval lies below this and E_PT is reliable (default: the run's policy, "
             "else 0.25)."),
    min_late_effect: Optional[float] = typer.Option(
        None, "--min-late-effect", help="No late effect when both intervals lie within ±this (default: the run's policy, "
                                        "else 0.5)."),
    min_prompts: Optional[int] = typer.Option(
        None, "--min-prompts", help="Fewer prompts with events: inconclusive (default: the run's policy, else 5)."),
    allow: Optional[str] = typer.Option(None, "--allow",
                                        help="Verdicts that pass, comma list (default: the run's policy, else "
                                             "portable,no-late-effect)."),
    policy: Optional[Path] = typer.Option(
        None, "--policy", help="Thresholds from a YAML/JSON file, in place of the run's policy's (flags override it)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object for machines."),
) -> None:
    """Pass or fail a run for CI: exit 0 pass, 1 fail, 2 unusable run (missing, unfinished,
    inconsistent, or a sanity control failed). Prints the verdict and its reason, decided under the
    run's own policy with the thresholds given in place. On a compare directory: every
    descendant's run, one line each, and the exit code of the worst."""

    from ..store.files import json_document
    from ..workflows.gate import gate

    overrides: dict[str, Any] = {k: v for k, v in dict(max_interaction_share=max_interaction_share,
                                        portable_interaction_share=portable_interaction_share,
                                        min_late_effect=min_late_effect, min_prompts=min_prompts).items() if v is not None}
    if allow is not None:  # "--allow ''" names no verdict: refused, not read as the default
        overrides["pass_verdicts"] = [x.strip() for x in allow.split(",") if x.strip()]
    try:
        base_policy = load_policy(policy) if policy else {}
    except CrosspatchError as exc:
        _fail(exc)
    try:
        outcome = gate(run_dir, {**base_policy, **overrides})
    except Exception as exc:  # a crash is no verdict: exit 2 (unusable), never Python's 1, which CI reads as a fail
        console.print_exception()
        outcome = {"status": "unusable", "exit_code": 2, "verdict": None,
                   "reason": f"crosspatch could not gate {run_dir} ({type(exc).__name__}: {exc}); the traceback above is "
                             "a crosspatch bug, please report it"}
    if as_json:
        print(json_document(outcome), end="")
    else:
        styles = {0: "bold green", 1: "bold red", 2: "bold yellow"}

        def line(prefix: str, result: dict) -> Text:  # "status: verdict — reason" (no verdict: "status — reason")
            verdict = result.get("verdict")
            return Text.assemble(prefix, (f"{result['status']}{': ' if verdict else ''}", styles[result["exit_code"]]),
                                 verdict or "", " — ", result["reason"])

        for name, member in (outcome.get("members") or {}).items():  # a compare or lineage: one line per run
            _stdout().print(line(f"{name}: ", member), soft_wrap=True)
        _stdout().print(line("", outcome), soft_wrap=True)
    raise typer.Exit(code=outcome["exit_code"])



@app.command("consequence")
def consequence_cmd(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A finished run directory."),
    prompts: Path = typer.Option(..., "--prompts", help="The run's prompt file, whose rows carry 'validator' fields."),
    fields: Optional[str] = typer.Option(None, "--fields", help=FIELDS, metavar="FIELD=COLUMN,..."),
    budget: int = typer.Option(32, "--budget", help="Tokens continued after the forced token."),
    with_pt: bool = typer.Option(False, "--with-pt", help="Also continue with the base model."),
    allow_partial: bool = typer.Option(False, "--allow-partial",
                                       help="Score the prompts the file and the run share when they differ "
                                            "(recorded; by default a differing prompt file is an error)."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Score every event afresh, replacing the run's consequence.jsonl (by "
                                        "default, continuations scored with other settings are an error)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Does the divergent token matter? Force t_IT, t_PT, a rank-matched and a random token at
    each event, continue greedily, score the suffix with the prompt's validator (resumable)."""
    from ..inputs.prompts import load_prompts
    from ..runner.on_finished import consequence_for_run

    try:
        cons = consequence_for_run(run_dir, load_prompts(prompts, fields), budget, with_pt, allow_partial=allow_partial,
                                   overwrite=overwrite, progress=not quiet)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
    from ..analyses.consequence import render_consequences

    _print_section(render_consequences(cons), f"{run_dir / 'consequence.jsonl'}, summary.json, report.md, report.html")


features_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, context_settings=HELP_OPTIONS, cls=CommandGroup,
                            help="Sparse final-MLP feature mediation with a paired crosscoder.")
app.add_typer(features_app, name="features")


def _features(run_dir: Path, crosscoder: Optional[Path], layers: int, latents: int, k: int, steps: int,
              train_only: bool, engine: Optional[str] = None, workers: Optional[int] = None) -> None:
    from ..runner.on_finished import run_features

    try:
        result = run_features(run_dir, crosscoder, layers, latents, k, steps, train_only,
                              log=lambda m: console.print(m, soft_wrap=True, markup=False), engine=engine,
                              workers=workers)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
    from ..analyses.features.plugin import render_features

    _print_section(render_features(result), f"{run_dir / 'features'}/, summary.json, report.md, report.html")


@features_app.command("train")
def features_train_cmd(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A finished run directory."),
    layers: int = typer.Option(3, "--layers", help="How many final MLP layers the crosscoder reads."),
    latents: int = typer.Option(256, "--latents", help="Dictionary size."),
    k: int = typer.Option(8, "--k", help="Active latents per token (BatchTopK)."),
    steps: int = typer.Option(1500, "--steps", help="Training steps."),
) -> None:
    """Cache paired activations of the run's events and train the crosscoder (with its gate)."""
    _features(run_dir, None, layers, latents, k, steps, True)


@features_app.command("mediate")
def features_mediate_cmd(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A finished run directory."),
    crosscoder: Optional[Path] = typer.Option(None, "--crosscoder",
                                              help="A trained crosscoder directory (crosspatch or dictionary_learning "
                                                   "layout); default: train one now."),
    layers: int = typer.Option(3, "--layers", help="Final MLP layers (when training)."),
    latents: int = typer.Option(256, "--latents", help="Dictionary size (when training)."),
    k: int = typer.Option(8, "--k", help="Active latents per token (when training)."),
    steps: int = typer.Option(1500, "--steps", help="Training steps (when training)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="local, or ray (the study's passes on Ray actors); "
                                         "default: the run's own."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray actors (default: the run's own)."),
) -> None:
    """Mediation curve, rescue and structured closure on held-out events (any chunking or engine
    gives the same result)."""
    _features(run_dir, crosscoder, layers, latents, k, steps, False, engine, workers)


@app.command("merge")
def merge_cmd(
    shard_dirs: list[Path] = typer.Argument(..., metavar="SHARD_DIR...", help="Run directories of shards 0/n .. n-1/n."),
    out: Path = typer.Option(..., "--out", help="Run directory for the merged run (new or empty)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a crosspatch run already in --out."),
) -> None:
    """Merge the run directories of a sharded run (e.g. a SLURM job array) into one run."""
    from ..runner.checks import check_out_dir
    from ..runner.pipeline import merge_runs

    try:
        check_out_dir(out, overwrite=overwrite)
        result = merge_runs(list(shard_dirs), out, overwrite=overwrite)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
    print_summary_table(result.summary)
    console.print(f"merged {len(shard_dirs)} shards into {out}")


@app.command("analyses")
def analyses_cmd(as_json: bool = typer.Option(False, "--json", help="Print one JSON object for machines.")) -> None:
    """The registered analyses and controls (built in, and those third-party packages register
    through the `crosspatch.analyses` entry point): what each does, whether a run includes it by
    default, and its options (set with --analysis-option NAME.OPTION=VALUE; add an analysis to a run
    with --analysis NAME, a control with --controls)."""
    import dataclasses

    from ..core.registry import registered
    from ..store.files import json_document
    from .options import field_default

    listing = []
    for plugin in registered().values():
        options = [{"name": f.name, "default": field_default(f), "help": f.metadata.get("help", "")}
                   for f in (dataclasses.fields(plugin.options) if plugin.options is not None else ())]
        listing.append({"name": plugin.name, "role": plugin.role, "default": plugin.default,
                        "description": plugin.description, "options": options})
    if as_json:
        print(json_document(listing), end="")
        return
    table = Table(title="crosspatch analyses (--analysis NAME, --controls NAME, --analysis-option NAME.OPTION=VALUE)")
    for column in ("name", "role", "by default", "what it does", "options"):
        table.add_column(column, overflow="fold")
    for item in listing:
        options = "; ".join(f"{o['name']}={o['default']}" + (f" ({o['help']})" if o["help"] else "")
                            for o in item["options"])
        table.add_row(item["name"], item["role"], "yes" if item["default"] else "no", item["description"],
                      options or "—")
    _stdout().print(table)


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="A run directory."),
    check: bool = typer.Option(False, "--check", help="Check that every number report.md and report.html print "
                                                      "comes from the stored data (exit 1 if one does not)."),
) -> None:
    """Re-render report.md and report.html from a run directory's stored files alone (a compare's or
    lineage's output directory: its pages and each of its runs' reports; a preflight's, splice's or
    merge-check's: its pages and the runs inside it)."""
    from ..runner.result import rerender_run  # reads the stored files: no model code, no torch
    from ..workflows.rerender import rerender_workflow

    try:
        pages = rerender_workflow(run_dir)
        written = rerender_run(run_dir) if pages is None else None
        if check:
            from ..report.check import check_report
            from ..store import collection_kind, collection_runs

            if pages is not None:  # a workflow's directory: the runs inside it
                members = sorted({p.parent for p in pages if p.name == "report.md"})
            else:  # a compare's or lineage's output: each of its runs' reports
                kind = collection_kind(run_dir)
                members = [run_dir] if kind is None else collection_runs(run_dir, kind)
            problems = [f"{'' if member == run_dir else str(member.relative_to(run_dir)) + '/'}{problem}"
                        for member in members for problem in check_report(member)]
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
    except Exception:
        if not check:
            raise
        _crashed("report --check")  # (its exit 1 is a number the stored data does not back)
    print_warnings(written.warnings if written is not None else [])
    for path in written.files if written is not None else pages or []:
        console.print(f"wrote {path}", soft_wrap=True)
    if check:
        for problem in problems:
            console.print(Text.assemble(("not in the stored data ", "red"), problem), soft_wrap=True)
        console.print(f"check: {'every printed number comes from the stored data' if not problems else f'{len(problems)} number(s) are not backed by the stored data'}",
                      soft_wrap=True)
        if problems:
            raise typer.Exit(code=1)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory for the combined demo."),
    boundary: str = typer.Option("0.6", "--boundary", help="Boundary layer: int index or depth fraction."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", help="Greedy budget of the divergence search."),
    bootstrap: int = typer.Option(2000, "--bootstrap", help="Bootstrap resamples (0: no intervals)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    quick: bool = typer.Option(False, "--quick", help="A quarter of the prompts, first divergences only."),
    full: bool = typer.Option(False, "--full", help="Every descendant (adds it-merged and the seed twin it-full-seed2)."),
) -> None:
    """Run the diagnostic on the embedded weather-report zoo: base vs its descendants, each with
    the zoo's null fine-tunes as the verdict's yardstick."""
    from ..zoo.demo import run_demo
    from ..zoo.demo_report import headline_rows

    try:
        result = run_demo(out, boundary=_boundary(boundary), max_new_tokens=max_new_tokens,
                          bootstrap=bootstrap, progress=not quiet, log=lambda m: console.print(m), quick=quick,
                          full=full)
    except CrosspatchError as exc:
        _fail(exc)
    table = Table(title="crosspatch demo: weather zoo, common-IT readout")
    for col in ("descendant", "events", "E_PT", "E_IT", "interaction", "direct share", "I/E_IT", "verdict"):
        table.add_column(col)
    for row in headline_rows(result.summary):
        table.add_row(row[0], row[1], *row[6:12])
    _stdout().print(table)
    from ..zoo.reading import demo_reading

    for paragraph in demo_reading(result.summary):
        _stdout().print(paragraph.replace("**", ""), markup=False, highlight=False)
    console.print(f"report: {out / 'report.md'} and {out / 'report.html'} ({result.summary['seconds']} s)",
                  soft_wrap=True)


@zoo_app.command("build")
def zoo_build_cmd(
    out: Path = typer.Option(None, "--out", help="Where to build (a new directory)."),
    seed: int = typer.Option(1234, "--seed", help="Seed of the zoo build."),
    into_package: bool = typer.Option(False, "--into-package",
                                      help="Replace the zoo inside the installed crosspatch package (maintainers)."),
) -> None:
    """Rebuild the whole zoo from the seed: data, tokenizer, every model, cards, manifest."""
    from ..zoo import zoo_path
    from ..zoo.assemble import build_zoo
    from ..zoo.build import ZooSpec

    target = out or zoo_path()
    into = Path(target).resolve() == zoo_path().resolve()
    if into and not into_package:
        _fail(OptionError(f"refusing to overwrite the zoo inside the installed package ({zoo_path()}): give "
                          "--out DIR for a new zoo, or --into-package to replace the embedded one"))
    if into_package and out is not None and not into:
        _fail(OptionError("--into-package replaces the embedded zoo: give it without --out"))
    try:
        result = build_zoo(target, ZooSpec(seed=seed), log=lambda m: console.print(m), replace=into)
    except CrosspatchError as exc:
        _fail(exc)
    console.print(f"zoo built at {result.out} in {result.seconds:.0f} s")


@zoo_app.command("verify")
def zoo_verify_cmd(path: Optional[Path] = typer.Argument(None, metavar="PATH", help="Zoo directory (default: embedded).")) -> None:
    """Check every zoo file against the sha256 in its manifest."""
    from ..zoo import verify

    try:
        man = verify(path)
    except CrosspatchError as exc:
        _fail(exc)
    console.print(f"ok: {len(man['files'])} files match manifest.json")
