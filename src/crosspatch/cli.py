"""The ``crosspatch`` command: thin subcommands over the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import CrosspatchError, OptionError

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, context_settings=HELP_OPTIONS,
                  help="First-divergence cross-patching of a base model and its fine-tuned descendant.")
zoo_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, context_settings=HELP_OPTIONS,
                      help="The embedded weather-report model zoo.")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"crosspatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print crosspatch's version and exit.")) -> None:
    """First-divergence cross-patching of a base model and its fine-tuned descendant."""
app.add_typer(zoo_app, name="zoo")
console = Console(stderr=True)


def _boundary(text: str) -> int | float:
    """``12`` is layer 12; ``0.6`` is 60% of depth; ``1.0`` or ``abc`` are named errors."""
    from .errors import BoundaryError

    text = str(text).strip()
    try:
        value = float(text)
    except ValueError:
        raise BoundaryError(f"boundary must be an int layer (e.g. 12) or a depth fraction (e.g. 0.6), not {text!r}") from None
    if value.is_integer() and "." not in text and "e" not in text.lower():
        return int(value)
    return value


def _stdout() -> Console:
    """Console for result tables: never narrower than the tables when output is not a terminal."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=140)


def _boundaries(text: str | None):
    from .errors import BoundaryError

    if text is None:
        return None
    if text.strip() == "all":
        return "all"
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise BoundaryError(f"--boundaries must be 'all' or a comma-separated list of layers, not {text!r}")
    return [_boundary(x) for x in items]


def _fail(exc: Exception) -> None:
    console.print(Text.assemble(("error ", "bold red"), f"{type(exc).__name__}: {exc}"), soft_wrap=True)
    raise typer.Exit(code=2)


def print_summary_table(summary: dict, title: str = "crosspatch") -> None:
    """A short rich table of the headline effects (common-IT readout, first boundary)."""
    from .report.markdown import fmt_effect

    out = _stdout()
    if len(summary["boundaries"]) > 1:  # a sweep: one row per boundary
        table = Table(title=f"{title}: layer sweep, common-IT readout (plot: sweep.png in the run directory)")
        for col in ("boundary", "events", "E_PT", "E_IT", "interaction"):
            table.add_column(col, justify="right")
        for b in summary["boundaries"]:
            block = summary["results"][b]["common_it"]["all"]
            table.add_row(b, str(block["n_events"]), *[fmt_effect(block, k) for k in ("E_PT", "E_IT", "interaction")])
        out.print(table)
    b = str((summary.get("verdict") or {}).get("boundary", summary["boundaries"][0]))
    block = summary["results"][b]["common_it"]["all"]
    table = Table(title=f"{title}: boundary {b}, common-IT readout, {block['n_events']} events")
    table.add_column("quantity")
    table.add_column("mean [95% CI]", justify="right")
    for name in ("E_PT", "E_IT", "interaction", "direct_share", "native_shift"):
        table.add_row(name, fmt_effect(block, name))
    out.print(table)
    nd = summary["counts"]["no_divergence"]
    out.print(f"prompts {summary['counts']['prompts']}, events {summary['counts']['events']}, "
              f"no divergence {sum(nd.values())}, invalid {summary['counts']['invalid']}")


@app.command("run")
def run_cmd(
    base: str = typer.Option(..., "--base", help="Base model (PT): hub id or local directory."),
    prompts: Path = typer.Option(..., "--prompts", help="Prompt file: .jsonl, .json (an array or JSON lines), .csv (comma, semicolon or tab), .tsv or .parquet."),
    tuned: Optional[str] = typer.Option(None, "--tuned", help="Descendant (IT): full or merged checkpoint."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="PEFT adapter directory on --base."),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="Run directory."),
    boundary: str = typer.Option("0.6", "--boundary", help="Boundary layer: int index or depth fraction."),
    boundaries: Optional[str] = typer.Option(None, "--boundaries", help="Comma-separated boundaries, or 'all'."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Greedy budget of the divergence search (tokens)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per forward pass."),
    max_batch_tokens: Optional[int] = typer.Option(
        None, "--max-batch-tokens", help="Padded tokens per forward pass at most (prompt + generation budget while "
        "decoding): bounds working memory, e.g. with --residency sequential."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on a GPU, float32 on the CPU) | float32 | bfloat16 (bf16) | float16 (fp16)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto (accelerate device_map)"),
    bootstrap: int = typer.Option(2000, "--bootstrap", help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and of the random controls."),
    chat_template: bool = typer.Option(False, "--chat-template", help="Apply the descendant's chat template."),
    rollout_model: str = typer.Option("IT", "--rollout-model", help="Which model decodes greedily: IT or PT."),
    group_by: Optional[str] = typer.Option(None, "--group-by", help="Comma-separated prompt fields to break down by."),
    plan: str = typer.Option("minimal", "--plan", help="minimal (fewest passes) or exact (bit-exact controls)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: take prompts i, i+n, ... (then crosspatch merge)."),
    engine: str = typer.Option("local", "--engine", help="local, or ray (chunks on Ray actors; pip install crosspatch[ray])."),
    workers: int = typer.Option(2, "--workers", help="Ray actors (each holds the models)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code shipped with a checkpoint (off by default)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights."),
    allow_special_token_mismatch: bool = typer.Option(False, "--allow-special-token-mismatch", help="Accept differing BOS/EOS/PAD/UNK (recorded as a warning)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit) of the checkpoints."),
    residency: Optional[str] = typer.Option(None, "--residency",
                                            help="both | sequential | adapter (default: chosen, reason printed)."),
    controls: str = typer.Option("default", "--controls",
                                 help="Controls: default (the cheap ones), all, none, or a comma list "
                                      "(label_swap, pre_divergence, pre_late_commitment, hybrid_state, readout_agreement, "
                                      "position_subsets, near_ties, random_later, native_history)."),
    event_kinds: str = typer.Option("all", "--event-kinds",
                                    help="all, or a comma list of first_diff, first_nonformat_diff, "
                                         "first_assistant_marker_diff."),
    verify_fp32: bool = typer.Option(False, "--verify-fp32",
                                     help="Re-run the search of near-tie events in float32 and count how many move."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Verdict thresholds (YAML or JSON, see docs/verdict.md)."),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="Finish an interrupted run in --out (default); --no-resume refuses a directory "
                                     "that already holds this run."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace the crosspatch run in --out and start afresh (never touches other files)."),
    consequence: bool = typer.Option(False, "--consequence",
                                     help="Force t_IT, t_PT and matched alternatives at each event and score the "
                                          "continuation with the prompt's validator."),
    consequence_budget: int = typer.Option(32, "--consequence-budget", help="Tokens continued after the forced token."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Print the plan (models, residency, boundaries, prompts, estimated work and "
                                      "state cache, output files) and exit before loading any weight."),
    until_ci_width: Optional[float] = typer.Option(
        None, "--until-ci-width", help="Process prompts chunk by chunk until the interaction's 95% half-width is at "
        "most this (logits), or the prompts run out; says which (resumable)."),
    null: Optional[list[str]] = typer.Option(
        None, "--null", help="A null descendant of the same base (a checkpoint or adapter trained like the descendant "
        "on a null task, or with another seed): the verdict's yardstick (repeatable)."),
    synthetic_null: int = typer.Option(
        0, "--synthetic-null", help="Synthetic nulls of the descendant: the real weight delta's spectrum in random "
        "directions (a weaker yardstick than --null; needs both models in memory)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Run the first-divergence 2x2 factorial on a model pair and write a run directory."""
    from . import load_models
    from .pipeline import run
    from .validation import validate_run_options

    kw = dict(locals())
    try:
        if (tuned is None) == (adapter is None):
            raise OptionError("give exactly one descendant: --tuned (a full or merged checkpoint) or --adapter "
                              "(a PEFT adapter directory)")
        items, config, options = _prepare(kw, [tuned] if tuned else [], [adapter] if adapter else [])
        roles_tuned, roles_adapters = _null_roles(tuned, adapter, null or [], options)
        config.nulls = [r for r in [*roles_tuned, *roles_adapters] if r != "tuned"]
        config.synthetic_nulls, config.tuned = synthetic_null, "tuned"
        validate_run_options(config)
        if dry_run:
            return _print_plan(kw, [tuned] if tuned else [], [adapter] if adapter else [], items, config, options)
        with console.status("loading models"):
            pair = load_models(base, tuned=roles_tuned or None, adapters=roles_adapters or None, options=options)
        console.print(f"residency: {pair.residency} ({pair.provenance.get('residency_reason')})",
                      soft_wrap=True, markup=False)
        result = run(pair, items, config, out=out, resume=resume, progress=not quiet, overwrite=overwrite)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
    resumed = result.summary.get("cost_this_session", {}).get("prompts_resumed")
    if resumed:
        console.print(f"resumed: {resumed} prompts already done", soft_wrap=True)
    for w in result.summary["warnings"]:
        console.print(Text.assemble(("warning ", "yellow"), w), soft_wrap=True)
    print_summary_table(result.summary)
    verdict = result.summary.get("verdict")
    if verdict:
        _stdout().print(Text.assemble(("verdict: ", "bold"), (verdict["verdict"], "bold"), " — ", verdict["reason"]),
                        soft_wrap=True)
    console.print(f"run directory: {out} (report.md, report.html, summary.json, events.jsonl, events.parquet)",
                  soft_wrap=True)


def _null_roles(tuned, adapter, nulls: list[str], options) -> tuple[dict, dict]:
    """The roles to load: the descendant as ``tuned`` and each ``--null`` as ``null-1``, ...
    (an adapter directory or a checkpoint, told apart by its adapter_config.json), each path
    checked before any weight loads."""
    from .validation import check_model_path
    from .models.loading import check_adapter_files

    roles_tuned = {"tuned": tuned} if tuned else {}
    roles_adapters = {"tuned": adapter} if adapter else {}
    for k, path in enumerate(nulls, 1):
        if path in (tuned, adapter):
            raise OptionError(f"--null {path} is the descendant itself: a null must be another fine-tune")
        is_adapter = (Path(path) / "adapter_config.json").exists()
        check_model_path(path, "--null", adapter=is_adapter)
        if is_adapter:
            check_adapter_files(path, options.allow_pickle)
        (roles_adapters if is_adapter else roles_tuned)[f"null-{k}"] = path
    return roles_tuned, roles_adapters


def _prepare(kw: dict, tuned: list[str], adapters: list[str], collection: str | None = None):
    """Validate every option, the prompt file, the model paths and --out before any weight is
    loaded; returns (prompts, RunConfig, LoadOptions)."""
    from . import load_prompts
    from .models.loading import LoadOptions
    from .pipeline import RunConfig, resolve_boundaries
    from .errors import PromptImageError
    from .models.anatomy import check_supported
    from .models.paths import local_config, local_is_multimodal
    from .validation import (
        check_distinct_descendants, check_model_path, check_out_dir, local_num_layers, validate_load_options,
        validate_run_options,
    )

    options = LoadOptions(dtype=kw["dtype"], device=kw["device"], trust_remote_code=kw["trust_remote_code"],
                          allow_pickle=kw["allow_pickle"], revision=kw["revision"],
                          allow_special_token_mismatch=kw["allow_special_token_mismatch"], residency=kw["residency"])
    validate_load_options(options)
    group_by = kw["group_by"]
    config = RunConfig(
        boundary=_boundary(kw["boundary"]), boundaries=_boundaries(kw["boundaries"]),
        max_new_tokens=kw["max_new_tokens"], batch_size=kw["batch_size"], max_batch_tokens=kw["max_batch_tokens"],
        rollout_model=kw["rollout_model"].upper(),
        bootstrap=kw["bootstrap"], seed=kw["seed"], chat_template=kw["chat_template"],
        group_by=[x.strip() for x in group_by.split(",") if x.strip()] if group_by else [], plan=kw["plan"],
        shard=kw["shard"], engine=kw["engine"], workers=kw["workers"], controls=kw["controls"],
        event_kinds=kw["event_kinds"], verify_fp32=kw["verify_fp32"],
        policy=load_policy(kw["policy"]) if kw["policy"] else None,
        consequence=kw["consequence"], consequence_budget=kw["consequence_budget"],
        until_ci_width=kw.get("until_ci_width"),
    )
    validate_run_options(config)
    items = load_prompts(kw["prompts"])
    check_model_path(kw["base"], "base")
    role = "lineage stage" if collection == "lineage" else "tuned"  # named as the user gave them
    from .execution.modelset import named_path

    tuned = [(named_path(p) or (None, p))[1] for p in tuned]  # NAME=PATH: the path is checked
    adapters = [(named_path(p) or (None, p))[1] for p in adapters]
    for path in tuned:
        check_model_path(path, role)
    for path in adapters:
        check_model_path(path, role, adapter=True)
    check_distinct_descendants(list(tuned) + list(adapters))
    for path in [kw["base"], *tuned]:
        check_supported(local_config(path))  # a hub id: checked once loaded
    layers = local_num_layers(kw["base"])
    if layers is not None:
        resolve_boundaries(config, layers)
    images = [p.id for p in items if p.metadata.get("image")]
    if images and local_is_multimodal(kw["base"]) is False:
        raise PromptImageError(f"prompt(s) {', '.join(images[:5])} have an image, but the base is a text-only model")
    check_out_dir(kw["out"], resume=kw["resume"], overwrite=kw["overwrite"], collection=collection)
    return items, config, options


def _print_plan(kw: dict, tuned: list[str], adapters: list[str], items, config, options) -> None:
    """The --dry-run plan: everything decided before a weight is loaded."""
    from .controls import parse_controls
    from .execution import choose_residency, kv_bytes_per_token, largest_batch_tokens
    from .execution.batching import state_cache_bytes
    from .kinds import parse_event_kinds
    from .models.loading import DTYPES, load_tokenizer
    from .models.paths import local_config, text_config
    from .pipeline import resolve_boundaries, select_shard
    from .validation import local_num_layers

    out = _stdout()
    residency, reason = choose_residency(kw["base"], tuned, adapters, options)
    layers = local_num_layers(kw["base"])
    prompts = select_shard(items, config.shard)
    lines = [f"base: {kw['base']}"] + [f"descendant: {p}" for p in tuned] + [f"adapter: {p}" for p in adapters]
    lines.append(f"residency: {residency} ({reason})")
    if layers:
        bounds = resolve_boundaries(config, layers)
        lines.append(f"boundaries: {', '.join(map(str, bounds))} of {layers} layers")
    else:
        bounds = None
        lines.append("boundaries: resolved when the model config is read (hub id)")
    model_config = local_config(kw["base"])
    itemsize = DTYPES[options.dtype].itemsize
    lines.append(f"prompts: {len(prompts)}" + (f" (shard {config.shard} of {len(items)})" if config.shard else ""))
    kinds, controls = parse_event_kinds(config.event_kinds), parse_controls(config.controls)
    lines.append(f"event kinds: {', '.join(kinds)}; controls: {', '.join(controls) or 'none'}")
    try:
        tok = load_tokenizer(kw["base"], options)
        lengths = [len(tok(p.prompt)["input_ids"]) + config.max_new_tokens for p in prompts]
        tokens = sum(lengths)
    except CrosspatchError:
        lengths, tokens = [], None
    if tokens is not None and bounds:
        late = sum(2 * (layers - b) / layers for b in bounds)
        fe = tokens * (2 + late + (2 if len(kinds) > 1 else 0))
        lines.append(f"estimated work: at most {fe:,.0f} token forward-pass equivalents over {tokens:,} prompt+budget "
                     "tokens (search, cells" + (", event kinds" if len(kinds) > 1 else "") + "; controls add a little)")
        hidden = text_config(model_config).get("hidden_size") or model_config.get("n_embd")
        size = state_cache_bytes(residency, tokens, hidden, itemsize, len(bounds)) if isinstance(hidden, int) else None
        if size is not None:
            lines.append(f"state cache (sequential, CPU): up to {size / 2**20:.1f} MiB")
    lines.append(f"batching: up to {config.batch_size} sequences per forward pass"
                 + (f", at most {config.max_batch_tokens:,} padded tokens (prompt + generation budget while decoding)"
                    if config.max_batch_tokens else ""))
    per_token = kv_bytes_per_token(model_config, itemsize)
    if per_token and lengths:
        largest = largest_batch_tokens(lengths, config.batch_size, config.max_batch_tokens)
        lines.append(f"KV cache of the largest decoding batch: up to {largest * per_token / 2**20:,.1f} MiB per model "
                     f"({largest:,} padded tokens; --max-batch-tokens lowers it)")
    out_dir = Path(kw["out"])
    lines.append(f"output: {out_dir}/ config.json, events.jsonl, no_divergence.jsonl, summary.json, events.parquet, "
                 "report.md, report.html" + (", control_*.jsonl" if controls else "")
                 + (", sweep.png, sweep.svg" if bounds and len(bounds) > 1 else ""))
    lines.append("dry run: nothing was loaded or written")
    for line in lines:
        out.print(line, soft_wrap=True, markup=False)


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
    from .compare import compare, parse_cross
    from .execution import load_models
    from .execution.modelset import descendant_roles

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
    from .report.markdown import fmt_effect

    for role, r in result.summary["rows"].items():
        table.add_row(role, r["verdict"], str(r["events"]),
                      *[fmt_effect({"effects": r["effects"]}, k) for k in ("E_PT", "E_IT", "interaction", "direct_share")])
    _stdout().print(table)
    console.print(f"report: {kw['out']}/report.md and report.html; one run directory per descendant", soft_wrap=True)


def _lineage_cmd(**kw) -> None:
    """Score every training stage on the Base -> Final first divergences: MODELS is BASE STAGE1
    ... FINAL (checkpoint or adapter directories, in training order)."""
    from pathlib import Path as _Path

    from .compare import lineage
    from .execution import load_models

    paths = kw.pop("models")
    checkpoints = kw.pop("checkpoints")
    steps, found = None, []
    try:
        if checkpoints is not None:
            from .workflows.checkpoints import discover_checkpoints

            if len(paths) != 1:
                raise OptionError("with --checkpoints give only BASE as MODELS: the stages are the checkpoint-<step> "
                                  "directories, in step order (the last one is the final model)")
            found = discover_checkpoints(checkpoints)
            paths = [paths[0], *[str(c.path) for c in found]]
            steps = {c.name: c.step for c in found}
        if len(paths) < 2:
            raise OptionError("lineage needs BASE and at least one stage (the last one is the final model)")
        kw["base"] = paths[0]
        stages = paths[1:]
        adapters = [p for p in stages if (_Path(p) / "adapter_config.json").exists()]
        tuned = [p for p in stages if p not in adapters]
        items, config, options = _prepare(kw, tuned, adapters, collection="lineage")
        if kw["dry_run"]:
            return _print_plan(kw, tuned, adapters, items, config, options)
        names = {c.name: str(c.path) for c in found}
        for p in ([] if found else stages):
            name, k = _Path(str(p).rstrip("/")).name or "stage", 2
            while name in names or name == "base":
                name, k = f"{_Path(str(p).rstrip('/')).name}-{k}", k + 1
            names[name] = p
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
    table = Table(title=f"crosspatch lineage: base -> {result.summary['final']}")
    for col in ("stage", "native shift D", "% of final", "top-1 = t_Final", "interaction"):
        table.add_column(col)
    from .report.markdown import fmt_value

    for s in result.summary["stages"]:
        r = result.summary["by_stage"][s]
        table.add_row(s, fmt_value(r["native_shift"]),
                      "n/a" if r["percent_of_final"] is None else f"{r['percent_of_final']:.0f}%",
                      "n/a" if r["top1_agreement_with_final"] is None else f"{100 * r['top1_agreement_with_final']:.0f}%",
                      fmt_value(r["interaction"]))
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


_sweep_cmd.__signature__ = _sweep_signature()
app.command("sweep")(_sweep_cmd)


def _compare_signature():
    import inspect

    cross = inspect.Parameter("cross", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, "--cross", help="Cross-descendant patching: 'all', or UPSTREAM:LATE pairs (comma-separated roles)."))
    return _signature_like_run(drop=("null", "synthetic_null"), replace={
        "tuned": {"annotation": Optional[list[str]], "default": typer.Option(
            None, "--tuned", help="A descendant checkpoint (repeat for several; roles are the directory names, or "
            "give NAME=PATH).")},
        "adapter": {"annotation": Optional[list[str]], "default": typer.Option(
            None, "--adapter", help="A PEFT adapter directory on --base (repeatable; NAME=PATH names its role).")},
        "out": {"default": typer.Option(Path("runs/compare"), "--out", help="Directory of the comparison.")},
    }, add=[cross])


def _lineage_signature():
    import inspect

    models = inspect.Parameter("models", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=list[str],
                               default=typer.Argument(..., help="BASE STAGE1 ... FINAL (directories, training order); "
                                                      "with --checkpoints only BASE."))
    checkpoints = inspect.Parameter("checkpoints", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                    default=typer.Option(None, "--checkpoints", help="A trainer's output_dir: its "
                                                         "checkpoint-<step> directories (full or adapter) are the stages, "
                                                         "in step order."))
    return _signature_like_run(drop=("base", "tuned", "adapter", "null", "synthetic_null"), replace={
        "out": {"default": typer.Option(Path("runs/lineage"), "--out", help="Directory of the lineage.")}},
        add=[models, checkpoints])


_compare_cmd.__signature__ = _compare_signature()
app.command("compare")(_compare_cmd)
_lineage_cmd.__signature__ = _lineage_signature()
app.command("lineage")(_lineage_cmd)


def load_policy(path: Path) -> dict:
    """Verdict thresholds from a YAML or JSON file (a mapping of VerdictPolicy fields)."""
    import yaml

    from .errors import PolicyFileError

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PolicyFileError(f"cannot read policy file {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PolicyFileError(f"policy file {path} must hold a mapping of thresholds, not {type(data).__name__}")
    return data


@app.command("gate")
def gate_cmd(
    run_dir: Path = typer.Argument(..., help="A finished run directory, or a compare/lineage directory."),
    max_interaction_share: Optional[float] = typer.Option(
        None, "--max-interaction-share", help="Upstream-dependent when the whole I/E_IT interval lies above this (default 0.5)."),
    portable_interaction_share: Optional[float] = typer.Option(
        None, "--portable-interaction-share",
        help="Portable when the whole I/E_IT interval lies below this and E_PT is reliable (default 0.25)."),
    min_late_effect: Optional[float] = typer.Option(None, "--min-late-effect",
                                                    help="No late effect when both intervals lie within ±this (default 0.5)."),
    min_prompts: Optional[int] = typer.Option(None, "--min-prompts", help="Fewer prompts with events: inconclusive (default 5)."),
    allow: Optional[str] = typer.Option(None, "--allow",
                                        help="Verdicts that pass, comma list (default: portable,no-late-effect)."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Thresholds from a YAML/JSON file (flags override it)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object for machines."),
) -> None:
    """Pass or fail a run for CI: exit 0 pass, 1 fail, 2 unusable run (missing, unfinished,
    inconsistent, or a sanity control failed). Prints the verdict and its reason. On a compare
    directory: every descendant's run, one line each, and the exit code of the worst."""
    import json

    from .gate import gate

    overrides = {k: v for k, v in dict(max_interaction_share=max_interaction_share,
                                        portable_interaction_share=portable_interaction_share,
                                        min_late_effect=min_late_effect, min_prompts=min_prompts).items() if v is not None}
    if allow:
        overrides["pass_verdicts"] = [x.strip() for x in allow.split(",") if x.strip()]
    try:
        base_policy = load_policy(policy) if policy else {}
    except CrosspatchError as exc:
        _fail(exc)
    outcome = gate(run_dir, {**base_policy, **overrides})
    if as_json:
        print(json.dumps(outcome, indent=2, default=str))
    else:
        styles = {0: "bold green", 1: "bold red", 2: "bold yellow"}
        for name, member in (outcome.get("members") or {}).items():  # a compare or lineage: one line per run
            _stdout().print(Text.assemble(f"{name}: ", (f"{member['status']}: ", styles[member["exit_code"]]),
                                          member.get("verdict") or "", " — ", member["reason"]), soft_wrap=True)
        _stdout().print(Text.assemble((f"{outcome['status']}: ", styles[outcome["exit_code"]]),
                                      outcome.get("verdict") or "", " — ", outcome["reason"]), soft_wrap=True)
    raise typer.Exit(code=outcome["exit_code"])


@app.command("preflight")
def preflight_cmd(
    base: str = typer.Option(..., "--base", help="Base model: hub id or local directory."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="PEFT adapter directory on --base."),
    merged: Optional[str] = typer.Option(None, "--merged", help="A merged checkpoint (of --adapter, if given)."),
    merge_in_memory: Optional[str] = typer.Option(None, "--merge-in-memory", help="Merge --adapter with PEFT in memory, "
                                                  "weights rounded to float32|bfloat16|float16, and check that merge."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Prompt file (default: 8 built-in generic probes)."),
    domain_text: Optional[Path] = typer.Option(None, "--domain-text", help="Held-out domain text: .txt (blank-line "
                                               "separated) or .jsonl with a 'text' field."),
    out: Optional[Path] = typer.Option(None, "--out", help="New directory for preflight.json/.md/.html, or a "
                                       "crosspatch run directory (adds a Preflight section to its reports)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Greedy budget per prompt and model."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on a GPU, float32 on the CPU) | float32 | bfloat16 (bf16) | float16 (fp16)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto (accelerate device_map)"),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Tolerances from a YAML/JSON file (PreflightPolicy fields)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code shipped with a checkpoint."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights."),
    allow_special_token_mismatch: bool = typer.Option(False, "--allow-special-token-mismatch",
                                                      help="Accept differing BOS/EOS/PAD/UNK (recorded as a warning)."),
    as_json: bool = typer.Option(False, "--json", help="Print preflight.json for machines."),
) -> None:
    """Before you merge or ship: is the adapter active, does the merge compute what the adapter
    computes, do the models still generate sensibly, did the fine-tune learn its domain. Exit 0
    when every check passes, 1 when one fails, 2 for unusable input."""
    import json

    from .models.loading import LoadOptions
    from .workflows.preflight import preflight

    try:
        thresholds = load_policy(policy) if policy else {}
        options = LoadOptions(dtype=dtype, device=device, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                              allow_special_token_mismatch=allow_special_token_mismatch)
        result = preflight(base, adapter=adapter, merged=merged, prompts=prompts, domain_text=domain_text, out=out,
                           policy=thresholds, max_new_tokens=max_new_tokens, options=options,
                           merge_in_memory=merge_in_memory,
                           progress=None if as_json else (lambda m: console.print(f"[dim]{m}[/dim]")))
    except CrosspatchError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(result.document, indent=2, default=str))
    else:
        table = Table(title=f"crosspatch preflight: {'PASS' if result.passed else 'FAIL'}")
        for column in ("check", "status", "finding"):
            table.add_column(column, overflow="fold")
        colours = {"pass": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}
        for check in result.document["checks"]:
            table.add_row(check["name"], Text(check["status"], style=colours[check["status"]]), check["summary"])
        _stdout().print(table)
        if out is not None:
            console.print(f"written: {out}/preflight.md, preflight.html, preflight.json")
    raise typer.Exit(code=result.exit_code)


@app.command("splice")
def splice_cmd(
    base: str = typer.Option(..., "--base", help="Base model: hub id or local directory."),
    prompts: Path = typer.Option(..., "--prompts", help="Prompt file (validators, if any, give pass rates)."),
    tuned: Optional[str] = typer.Option(None, "--tuned", help="Descendant: full or merged checkpoint."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Descendant: PEFT adapter directory on --base."),
    boundary: Optional[str] = typer.Option(None, "--boundary", help="Boundary layer (int) or depth fraction (default 0.6)."),
    boundaries: Optional[str] = typer.Option(None, "--boundaries", help="Comma-separated boundaries, or 'all'."),
    out: Path = typer.Option(Path("runs/splice"), "--out", help="New directory for splice.json/.md/.html."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", help="Greedy budget per prompt and chimera."),
    no_diagnostic: bool = typer.Option(False, "--no-diagnostic", help="Skip the cross-patching run at the same boundaries."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on a GPU, float32 on the CPU) | float32 | bfloat16 (bf16) | float16 (fp16)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto (accelerate device_map)"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code shipped with a checkpoint."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin) weights."),
    allow_special_token_mismatch: bool = typer.Option(False, "--allow-special-token-mismatch",
                                                      help="Accept differing BOS/EOS/PAD/UNK (recorded as a warning)."),
) -> None:
    """What a layer-range merge would write: the four static chimeras (base/tuned early layers x
    base/tuned late layers) generate freely on the prompts, side by side, with validator pass
    rates, where each departs from the tuned model, and the cross-patching numbers there."""
    from .models.loading import LoadOptions
    from .workflows.splice import splice

    try:
        if boundary is not None and boundaries is not None:
            raise OptionError("give --boundary or --boundaries, not both")
        chosen = _boundaries(boundaries) if boundaries is not None else [_boundary(boundary or "0.6")]
        options = LoadOptions(dtype=dtype, device=device, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                              allow_special_token_mismatch=allow_special_token_mismatch)
        result = splice(base, tuned=tuned, adapter=adapter, prompts=prompts, boundaries=chosen, out=out,
                        max_new_tokens=max_new_tokens, options=options, run_diagnostic=not no_diagnostic,
                        progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    except CrosspatchError as exc:
        _fail(exc)
    table = Table(title="crosspatch splice: validator pass rate / same as tuned")
    table.add_column("boundary")
    names = list(next(iter(result.document["boundaries"].values()))["chimeras"])
    for name in names:
        table.add_column(name, overflow="fold")
    for b, block in result.document["boundaries"].items():
        cells = []
        for name in names:
            chimera = block["chimeras"][name]
            rate = chimera["validator_pass_rate"]
            cells.append(f"{'—' if rate is None else f'{rate:.0%}'} / {chimera['same_as_tuned']:.0%}")
        table.add_row(b, *cells)
    _stdout().print(table)
    console.print(f"written: {out}/splice.html (continuations side by side), splice.md, splice.json")


@app.command("merge-check")
def merge_check_cmd(
    config: Path = typer.Argument(..., help="A mergekit configuration (YAML)."),
    prompts: Path = typer.Option(..., "--prompts", help="Prompt file."),
    base: Optional[str] = typer.Option(None, "--base", help="The base the merged models descend from (default: the "
                                       "configuration's base_model; a passthrough splice: its first slice's model)."),
    out: Path = typer.Option(Path("runs/merge-check"), "--out", help="New directory for merge-check.json/.md/.html."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Greedy budget per prompt and model."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on a GPU, float32 on the CPU) | float32 | bfloat16 (bf16) | float16 (fp16)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto (accelerate device_map)"),
) -> None:
    """Evaluate a mergekit configuration before you ship the merge: a passthrough layer splice as
    `crosspatch splice` at its boundary; a weight merge (linear, TIES, DARE, SLERP, ...) built with
    mergekit into a temporary directory, preflighted and diagnosed beside its parents. Needs
    `pip install 'crosspatch[merge]'`."""
    from .models.loading import LoadOptions
    from .workflows.mergecheck import merge_check

    try:
        document = merge_check(config, prompts, base=base, out=out, max_new_tokens=max_new_tokens,
                               options=LoadOptions(dtype=dtype, device=device),
                               progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    except CrosspatchError as exc:
        _fail(exc)
    if document["kind"] == "splice":
        _stdout().print(f"{document['this_chimera']} at layer {document['plan']['boundary']}: {document['receives']}; "
                        f"verdict {document.get('verdict')}", soft_wrap=True)
    else:
        table = Table(title=f"crosspatch merge-check: {document['method']} merge vs its parents (against the base)")
        for column in ("model", "E_PT", "E_IT", "interaction", "verdict"):
            table.add_column(column)
        from .workflows.splice import _ci

        for role, v in document["diagnostic"].items():
            table.add_row(role, _ci(v.get("E_PT")), _ci(v.get("E_IT")), _ci(v.get("interaction")), str(v.get("verdict")))
        _stdout().print(table)
        console.print(f"preflight of the merge: {'pass' if document['preflight']['passed'] else 'FAIL'}")
    console.print(f"written: {out}/merge-check.md, merge-check.html, merge-check.json")


@app.command("env")
def env_cmd(
    base: Optional[str] = typer.Option(None, "--base", help="With --tuned/--adapter: say which residency a run would use."),
    tuned: Optional[list[str]] = typer.Option(None, "--tuned", help="A descendant checkpoint (repeatable)."),
    adapter: Optional[list[str]] = typer.Option(None, "--adapter", help="A PEFT adapter directory (repeatable)."),
    dtype: str = typer.Option("auto", "--dtype", help="The dtype a run would load in (auto, float32, bf16, fp16)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object for machines."),
) -> None:
    """What crosspatch runs on: versions, devices and memory, what --dtype auto resolves to, the
    optional extras, headless Chromium for the report tests; with --base and a descendant, the
    residency a run would choose and why (nothing is loaded)."""
    import json
    import os

    import torch

    from .models.loading import LoadOptions, validate_load_options
    from .report.browser import find_chromium
    from .store import environment, package_version

    try:
        options = LoadOptions(dtype=dtype, device=device)
        validate_load_options(options)
        facts = environment()
        facts["cpu_count"] = os.cpu_count()
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
        facts["memory_gib"] = round(pages * os.sysconf("SC_PAGE_SIZE") / 2**30, 1) if pages else None
        facts["cuda_devices"] = [{"name": torch.cuda.get_device_name(i),
                                  "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
                                 for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        facts["dtype_auto"] = options.dtype if dtype == "auto" else None
        facts["dtype"] = options.dtype
        facts["extras"] = {name: package_version(name) for name in ("trl", "datasets", "mergekit", "ray")}
        facts["chromium"] = find_chromium()
        if base is not None:
            from .execution import choose_residency

            if not tuned and not adapter:
                raise OptionError("with --base give --tuned and/or --adapter: the residency depends on the descendants")
            residency, reason = choose_residency(base, list(tuned or []), list(adapter or []), options)
            facts["residency"] = {"choice": residency, "reason": reason}
    except CrosspatchError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(facts, indent=2, default=str))
        return
    table = Table(title="crosspatch env")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for key, value in facts.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v if v is not None else 'not installed'}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(f"{d['name']} ({d['memory_gib']} GiB)" for d in value) or "none"
        table.add_row(key, "not found" if value is None else str(value))
    _stdout().print(table)


def _print_section(lines: list[str], written: str) -> None:
    """A report section on stdout, then what was written (stderr)."""
    for line in lines:
        _stdout().print(line, soft_wrap=True, markup=False)
    console.print(f"wrote {written}", soft_wrap=True)


@app.command("consequence")
def consequence_cmd(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    prompts: Path = typer.Option(..., "--prompts", help="The run's prompt file, whose rows carry 'validator' fields."),
    budget: int = typer.Option(32, "--budget", help="Tokens continued after the forced token."),
    with_pt: bool = typer.Option(False, "--with-pt", help="Also continue with the base model."),
    allow_partial: bool = typer.Option(False, "--allow-partial",
                                       help="Score the prompts the file and the run share when they differ "
                                            "(recorded; by default a differing prompt file is an error)."),
) -> None:
    """Does the divergent token matter? Force t_IT, t_PT, a rank-matched and a random token at
    each event, continue greedily, score the suffix with the prompt's validator (resumable)."""
    from .consequence import consequence_for_run
    from .prompts import load_prompts

    try:
        if budget < 1:
            raise OptionError(f"--budget must be >= 1, not {budget}")
        cons = consequence_for_run(run_dir, load_prompts(prompts), budget, with_pt, allow_partial=allow_partial)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
    from .consequence import render_consequences
    from .report.sections import section_markdown

    section = render_consequences(cons)
    _print_section(section_markdown(section) if section else [],
                   f"{run_dir / 'consequence.jsonl'}, summary.json, report.md, report.html")


@app.command("pool")
def pool_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="Finished run directories, one per base/descendant family."),
    bootstrap: int = typer.Option(2000, "--bootstrap", help="Bootstrap resamples (within each family)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Pool several families family-balanced: the mean of per-family means, prompts resampled
    within each family (each run at its headline boundary, common-IT readout)."""
    import json

    from .compare import pool_runs
    from .report.markdown import fmt_effect
    from .validation import check_bootstrap, check_given_once

    try:
        if len(run_dirs) < 2:
            raise OptionError("give at least two run directories (one per family) to pool")
        check_bootstrap(bootstrap)
        check_given_once(run_dirs, "run directory", "each family must count once")
        names = [p.name for p in run_dirs]
        if len(set(names)) != len(names):
            names = [str(p) for p in run_dirs]
        pooled = pool_runs(dict(zip(names, run_dirs)), bootstrap=bootstrap, seed=seed)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(pooled, indent=2, default=str))
        return
    table = Table(title=f"family-balanced pool of {pooled['n_pairs']} families, {pooled['n_events']} events")
    table.add_column("quantity")
    table.add_column("mean [95% CI]", justify="right")
    for name in ("E_PT", "E_IT", "interaction", "direct_share", "native_shift"):
        table.add_row(name, fmt_effect(pooled, name))
    _stdout().print(table)


features_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, context_settings=HELP_OPTIONS,
                            help="Sparse final-MLP feature mediation with a paired crosscoder.")
app.add_typer(features_app, name="features")


def _features(run_dir: Path, crosscoder: Optional[Path], layers: int, latents: int, k: int, steps: int,
              train_only: bool) -> None:
    from .features import run_features

    try:
        for value, name in ((layers, "--layers"), (latents, "--latents"), (k, "--k"), (steps, "--steps")):
            if value < 1:
                raise OptionError(f"{name} must be >= 1, not {value}")
        if k > latents:
            raise OptionError(f"--k {k} cannot exceed --latents {latents}")
        result = run_features(run_dir, crosscoder, layers, latents, k, steps, train_only,
                              log=lambda m: console.print(m, soft_wrap=True, markup=False))
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
    from .features.plugin import render_features
    from .report.sections import section_markdown

    section = render_features(result)
    _print_section(section_markdown(section) if section else [],
                   f"{run_dir / 'features'}/, summary.json, report.md, report.html")


@features_app.command("train")
def features_train_cmd(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    layers: int = typer.Option(3, "--layers", help="How many final MLP layers the crosscoder reads."),
    latents: int = typer.Option(256, "--latents", help="Dictionary size."),
    k: int = typer.Option(8, "--k", help="Active latents per token (BatchTopK)."),
    steps: int = typer.Option(1500, "--steps", help="Training steps."),
) -> None:
    """Cache paired activations of the run's events and train the crosscoder (with its gate)."""
    _features(run_dir, None, layers, latents, k, steps, True)


@features_app.command("mediate")
def features_mediate_cmd(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    crosscoder: Optional[Path] = typer.Option(None, "--crosscoder",
                                              help="A trained crosscoder directory (crosspatch or dictionary_learning "
                                                   "layout); default: train one now."),
    layers: int = typer.Option(3, "--layers", help="Final MLP layers (when training)."),
    latents: int = typer.Option(256, "--latents", help="Dictionary size (when training)."),
    k: int = typer.Option(8, "--k", help="Active latents per token (when training)."),
    steps: int = typer.Option(1500, "--steps", help="Training steps (when training)."),
) -> None:
    """Mediation curve, rescue and structured closure on held-out events."""
    _features(run_dir, crosscoder, layers, latents, k, steps, False)


@app.command("merge")
def merge_cmd(
    shard_dirs: list[Path] = typer.Argument(..., help="Run directories of shards 0/n .. n-1/n."),
    out: Path = typer.Option(..., "--out", help="Run directory for the merged run (new or empty)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a crosspatch run already in --out."),
) -> None:
    """Merge the run directories of a sharded run (e.g. a SLURM job array) into one run."""
    from .pipeline import merge_runs
    from .validation import check_out_dir

    try:
        check_out_dir(out, overwrite=overwrite)
        result = merge_runs(shard_dirs, out, overwrite=overwrite)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
    print_summary_table(result.summary)
    console.print(f"merged {len(shard_dirs)} shards into {out}")


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    check: bool = typer.Option(False, "--check", help="Check that every number report.md and report.html print "
                                                      "comes from the stored data (exit 1 if one does not)."),
) -> None:
    """Re-render report.md and report.html from a run directory's stored files alone."""
    from .pipeline import rerender_run

    try:
        written = rerender_run(run_dir)
        if check:
            from .report.check import check_report

            problems = check_report(run_dir)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
    for w in written.warnings:
        console.print(Text.assemble(("warning ", "yellow"), w), soft_wrap=True)
    for path in written.files:
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
    from .zoo.demo import headline_rows, run_demo

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
    from .zoo.reading import demo_reading

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
    from .errors import OptionError
    from .zoo import zoo_path
    from .zoo.assemble import build_zoo
    from .zoo.build import ZooSpec

    target = out or zoo_path()
    if Path(target).resolve() == zoo_path().resolve() and not into_package:
        _fail(OptionError(f"refusing to overwrite the zoo inside the installed package ({zoo_path()}): give "
                          "--out DIR for a new zoo, or --into-package to replace the embedded one"))
    result = build_zoo(target, ZooSpec(seed=seed), log=lambda m: console.print(m))
    console.print(f"zoo built at {result.out} in {result.seconds:.0f} s")


@zoo_app.command("verify")
def zoo_verify_cmd(path: Optional[Path] = typer.Argument(None, help="Zoo directory (default: embedded).")) -> None:
    """Check every zoo file against the sha256 in its manifest."""
    from .zoo import verify

    try:
        man = verify(path)
    except CrosspatchError as exc:
        _fail(exc)
    console.print(f"ok: {len(man['files'])} files match manifest.json")


def _quiet_libraries() -> None:
    """Keep the terminal for crosspatch's own progress: no per-file loading bars or deprecation
    chatter from transformers/peft (warnings that matter to the run go into its report). Set
    through the environment, so that nothing heavy is imported before a command needs it."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")


def main() -> None:
    _quiet_libraries()
    try:
        app()
    except KeyboardInterrupt:  # records already appended stay; rerun the same command to resume
        console.print("interrupted; run the same command again to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
