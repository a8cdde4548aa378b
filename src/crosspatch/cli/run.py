"""``crosspatch run``, ``sweep``, ``compare`` and ``lineage``: the commands that run the diagnostic (one
definition of their options, ``run``'s, shared by the others)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from ..errors import CrosspatchError, OptionError
from .app import DEVICE_HELP, _boundaries, _boundary, _fail, _stdout, app, console, load_policy, print_summary_table


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
    batch_size: int = typer.Option(128, "--batch-size", help="Sequences per forward pass at most."),
    max_batch_tokens: Optional[int] = typer.Option(
        16384, "--max-batch-tokens", help="Padded tokens per forward pass at most (prompt + generation budget while "
        "decoding): with --batch-size it sets the rows of a batch from the prompts' lengths, and bounds working "
        "memory (lower it with --residency sequential or a small GPU)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on a GPU, float32 on the CPU) | float32 | bfloat16 (bf16) | float16 (fp16)"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
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
    format_tokens: Optional[str] = typer.Option(None, "--format-tokens", metavar="WORDS",
                                                help="Words counted as FORMAT (structural/discourse words), replacing "
                                                     "crosspatch's list: a comma list or @FILE (one per line); "
                                                     "punctuation, whitespace, markup and special tokens stay FORMAT."),
    marker_words: Optional[str] = typer.Option(None, "--marker-words", metavar="WORDS",
                                               help="Assistant-marker words for first_assistant_marker_diff, replacing "
                                                    "crosspatch's list: a comma list or @FILE; a marker must be a whole "
                                                    "word."),
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
        None, "--null", metavar="DIR", help="A null descendant of the same base (a checkpoint or adapter trained like the descendant "
        "on a null task, or with another seed): the verdict's yardstick (repeatable)."),
    synthetic_null: int = typer.Option(
        0, "--synthetic-null", help="Synthetic nulls of the descendant: the real weight delta's spectrum in random "
        "directions (a weaker yardstick than --null; needs both models in memory)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Run the first-divergence 2x2 factorial on a model pair and write a run directory."""
    from .. import load_models
    from ..runner.checks import validate_run_options
    from ..runner.pipeline import run

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
        from ..runner.pipeline import finished_result

        result = finished_result(out, base, roles_tuned, roles_adapters, options, items, config) \
            if resume and not overwrite else None
        if result is not None:  # the same command again on a finished run: nothing to load or compute
            console.print(f"{out} already holds this run, finished: nothing to do (no model loaded)", soft_wrap=True)
        else:
            with console.status("loading models"):
                pair = load_models(base, tuned=roles_tuned or None, adapters=roles_adapters or None, options=options)
            console.print(f"residency: {pair.residency} ({pair.provenance.get('residency_reason')})",
                          soft_wrap=True, markup=False)
            result = run(pair, items, config, out=out, resume=resume, progress=not quiet, overwrite=overwrite)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
        return  # _fail exits
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
    from ..models.adapters import check_adapter_files
    from ..runner.checks import check_model_path

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
    from .. import load_prompts
    from ..errors import PromptImageError
    from ..models.anatomy import check_supported
    from ..models.loading import LoadOptions
    from ..models.paths import local_config, local_is_multimodal
    from ..runner.checks import (
        check_distinct_descendants,
        check_model_path,
        check_out_dir,
        local_num_layers,
        validate_load_options,
        validate_run_options,
    )
    from ..runner.pipeline import RunConfig, resolve_boundaries

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
        format_tokens=kw.get("format_tokens"), marker_words=kw.get("marker_words"),
        policy=load_policy(kw["policy"]) if kw["policy"] else None,
        consequence=kw["consequence"], consequence_budget=kw["consequence_budget"],
        until_ci_width=kw.get("until_ci_width"),
    )
    validate_run_options(config)
    items = load_prompts(kw["prompts"])
    check_model_path(kw["base"], "base")
    role = "lineage stage" if collection == "lineage" else "tuned"  # named as the user gave them
    from ..execution.roles import named_path

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
    from ..analyses.controls import parse_controls
    from ..analyses.event_kinds import parse_event_kinds
    from ..execution import choose_residency, kv_bytes_per_token, largest_batch_tokens
    from ..execution.batching import state_cache_bytes
    from ..models.loading import DTYPES, load_tokenizer
    from ..models.paths import local_config, text_config
    from ..runner.checks import local_num_layers
    from ..runner.pipeline import resolve_boundaries, select_shard

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
    if tokens is not None and bounds and layers:
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
