"""``crosspatch run``, ``sweep``, ``compare`` and ``lineage``: the commands that run the diagnostic (one
definition of their options, ``run``'s, shared by the others)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from ..errors import CrosspatchError, OptionError
from ..models.options import LoadOptions
from ..runner.config import RunConfig
from .app import _fail, _stdout, app, console, print_summary_table, print_warnings
from .options import command
from .targets import PairTarget, Session, default_out


def run_pair(target: PairTarget, config: RunConfig, load: LoadOptions, session: Session) -> None:
    """Run the first-divergence 2x2 factorial on a model pair and write a run directory."""
    from .. import load_models
    from ..runner.checks import validate_run_options
    from ..runner.pipeline import run

    tuned, adapter = target.tuned, target.adapter
    try:
        if (tuned is None) == (adapter is None):
            raise OptionError("give exactly one descendant: --tuned (a full or merged checkpoint) or --adapter "
                              "(a PEFT adapter directory)")
        if target.out is None:
            target.out = default_out(target.base, [tuned or adapter or ""], target.out_kind)
        items = _prepare(config, load, session, target.base, target.prompts, target.out,
                         [tuned] if tuned else [], [adapter] if adapter else [], fields=target.fields)
        roles_tuned, roles_adapters = _null_roles(target.base, tuned, adapter, target.null or [], load)
        config.nulls = [r for r in [*roles_tuned, *roles_adapters] if r != "tuned"]
        config.synthetic_nulls, config.tuned = target.synthetic_null, "tuned"
        validate_run_options(config)
        if config.synthetic_nulls:  # refused before any weight loads (and in the dry run's plan)
            from ..execution import choose_residency
            from ..execution.nulls import check_synthetic_null_residency

            check_synthetic_null_residency(choose_residency(target.base, [tuned] if tuned else [],
                                                            [adapter] if adapter else [], load)[0],
                                           config.synthetic_nulls)
        if session.dry_run:
            return _print_plan(target.base, target.out, [tuned] if tuned else [], [adapter] if adapter else [],
                               items, config, load)
        from ..runner.pipeline import finished_result
        from ..runner.resume import refuse_before_loading

        result = finished_result(target.out, target.base, roles_tuned, roles_adapters, load, items, config) \
            if session.resume and not session.overwrite else None
        if result is not None:  # the same command again on a finished run: nothing to load or compute
            console.print(f"{target.out} already holds this run, finished: nothing to do (no model loaded)",
                          soft_wrap=True)
        else:
            from ..runner.checks import check_writable

            check_writable(target.out)  # (a finished run, returned as it stands, may be read-only)
            if not session.overwrite:  # another run's directory, or this one's damaged: said before the weights load
                refuse_before_loading(target.out, items, config, resume=session.resume,
                                      models=(target.base, {**roles_tuned, **roles_adapters}, load))
            with console.status("loading models"):
                pair = load_models(target.base, tuned=roles_tuned or None, adapters=roles_adapters or None,
                                   options=load)
            console.print(f"residency: {pair.residency} ({pair.provenance.get('residency_reason')})",
                          soft_wrap=True, markup=False)
            result = run(pair, items, config, out=target.out, resume=session.resume, progress=not session.quiet,
                         overwrite=session.overwrite)
    except (CrosspatchError, ValueError) as exc:
        _fail(exc)
        return  # _fail exits
    resumed = result.summary.get("cost_this_session", {}).get("prompts_resumed")
    if resumed and session.quiet:  # otherwise the run said so as it resumed
        console.print(f"resumed: {resumed} prompts already done", soft_wrap=True)
    print_warnings(result.summary["warnings"])
    print_summary_table(result.summary)
    verdict = result.summary.get("verdict")
    if verdict:
        _stdout().print(Text.assemble(("verdict: ", "bold"), (verdict["verdict"], "bold"), " — ", verdict["reason"]),
                        soft_wrap=True)
    console.print(f"run directory: {target.out} (report.md, report.html, summary.json, events.jsonl, events.parquet)",
                  soft_wrap=True)


run_cmd = app.command("run")(command(run_pair))


def _null_roles(base, tuned, adapter, nulls: list[str], options) -> tuple[dict, dict]:
    """The roles to load: the descendant as ``tuned`` and each ``--null`` as ``null-1``, ...
    (an adapter directory or a checkpoint, told apart by its adapter_config.json), each path
    checked before any weight loads: a null is neither the base nor the descendant (however the
    path is spelt), and each is given once (a null given twice would count twice in the yardstick)."""
    from ..models.adapters import check_adapter_files
    from ..runner.checks import check_given_once, check_model_path, path_key

    roles_tuned = {"tuned": tuned} if tuned else {}
    roles_adapters = {"tuned": adapter} if adapter else {}
    taken = {path_key(base): "the base", path_key(tuned or adapter): "the descendant"}
    check_given_once(nulls, "--null", "each null counts once")
    for k, path in enumerate(nulls, 1):
        if (what := taken.get(path_key(path))) is not None:
            raise OptionError(f"--null {path} is {what} itself: a null must be another fine-tune of the base")
        is_adapter = (Path(path) / "adapter_config.json").exists()
        check_model_path(path, "--null", adapter=is_adapter)
        if is_adapter:
            check_adapter_files(path, options.allow_pickle, base)
        (roles_adapters if is_adapter else roles_tuned)[f"null-{k}"] = path
    return roles_tuned, roles_adapters


def check_options_take_effect(config: RunConfig) -> None:
    """An option given on the command line that the other options leave without effect is refused
    (in Python these fields may be carried along unused, as the demo's sections do): a budget
    for consequences that are not scored, Ray actors for the local engine."""
    default = {name: f.default for name, f in RunConfig.__dataclass_fields__.items()}
    if config.consequence_budget != default["consequence_budget"] and not config.consequence:
        raise OptionError(f"--consequence-budget {config.consequence_budget} sets how far --consequence continues "
                          "each forced token: add --consequence, or drop it")
    if config.workers != default["workers"] and config.engine == "local":
        raise OptionError(f"--workers {config.workers} sets the Ray actors of --engine ray: add --engine ray, or "
                          "drop it")


def _prepare(config: RunConfig, options: LoadOptions, session: Session, base: str, prompts: Path, out: Path,
             tuned: list[str], adapters: list[str], collection: str | None = None, fields: str | None = None,
             final_stage: str | None = None):
    """Validate every option, the prompt file (its columns named by ``fields``, ``--fields``), the
    model paths, the prompts as the descendants' tokenizers read them (a lineage's: its
    ``final_stage``'s) and --out before any weight is loaded; returns the prompts."""
    from .. import load_prompts
    from ..errors import PromptImageError
    from ..inputs.chats import check_chat_rows
    from ..models.anatomy import check_boundaries_supported
    from ..models.checks import local_input_embeddings
    from ..models.config_dicts import (
        local_config,
        local_is_multimodal,
        local_max_positions,
        local_num_layers,
        local_rope_switch,
        local_sparse_topk,
    )
    from ..models.preload import check_checkpoints
    from ..runner.checks import (
        check_distinct_descendants,
        check_group_by,
        check_out_dir,
        check_prompt_lengths,
        check_prompt_token_ids,
        validate_load_options,
        validate_run_options,
    )
    from ..runner.pipeline import resolve_boundaries
    from ..runner.prepare import check_prompt_texts

    validate_load_options(options)
    validate_run_options(config)
    from ..execution.engines import check_engine_device

    check_engine_device(config.engine, options.device)  # (before loading: the workers' layout)
    check_options_take_effect(config)
    items = load_prompts(prompts, fields)
    check_chat_rows(items, config.chat_template)
    check_group_by(list(config.group_by), items)  # a field no prompt has (its warnings: the run's)
    role = "lineage stage" if collection == "lineage" else "tuned"  # named as the user gave them
    from ..execution.roles import named_path

    tuned = [(named_path(p) or (None, p))[1] for p in tuned]  # NAME=PATH: the path is checked
    adapters = [(named_path(p) or (None, p))[1] for p in adapters]
    check_distinct_descendants(list(tuned) + list(adapters))
    files = check_checkpoints(base, {path: path for path in tuned}, adapters, options, role)
    layers = local_num_layers(files[base])
    if layers is not None:
        check_boundaries_supported(local_config(files[base]), resolve_boundaries(config, layers))
    # the chat template's refusals and prompts the two tokenizers split apart, named before the weights load;
    # a lineage scores its stages on the base -> final events, read with the final stage's tokenizer
    read_by = [(p, False) for p in tuned] + [(p, True) for p in adapters]
    token_ids = check_prompt_texts(base, [d for d in read_by if final_stage in (None, d[0])], items, options,
                                   config.chat_template)
    # prompts the generation budget, the consequences' continuations or a control's decoding would carry past
    # the base's positions
    check_prompt_lengths(list(token_ids), list(token_ids.values()), config.max_new_tokens,
                         local_max_positions(files[base]), *_decoding_reach(config, layers, items),
                         sparse_topk=local_sparse_topk(files[base]), rope_switch=local_rope_switch(files[base]))
    # ids a tokenizer that is not its model's gives beyond a checkpoint's embeddings (an adapter's model: the base's)
    check_prompt_token_ids(list(token_ids), list(token_ids.values()),
                           {"base": local_input_embeddings(files[base]),
                            **{f"descendant {path}": local_input_embeddings(files[path]) for path in tuned}})
    images = [p.id for p in items if p.metadata.get("image")]
    if images and local_is_multimodal(files[base]) is False:
        raise PromptImageError(f"prompt(s) {', '.join(images[:5])} have an image, but the base is a text-only model")
    check_out_dir(out, resume=session.resume, overwrite=session.overwrite, collection=collection,
                  finished_may_be_read_only=True)  # (writing checked again once not returned as finished)
    return items


def _decoding_reach(config: RunConfig, layers: int | None, items) -> tuple[int | None, int]:
    """What the run decodes past a prompt besides ``--max-new-tokens``, as the run's own length check
    counts it: the consequences' budget (None when no prompt has a validator or consequences are
    off) and the furthest a planned analysis decodes (0 where the model's depth is not known yet)."""
    from ..analyses.consequence import validators_of
    from ..runner.pipeline import chunk_plan, resolve_boundaries

    validators = validators_of(items)
    reach = 0
    if layers is not None:
        plan = chunk_plan(config, resolve_boundaries(config, layers), layers, (), validators)
        reach = max([0] + [a.tokens_past_prompt() for a in plan.analyses])
    return (config.consequence_budget if config.consequence and validators else None), reach


def _print_plan(base: str, out_dir: Path, tuned: list[str], adapters: list[str], items, config: RunConfig,
                options: LoadOptions, collection_runs=None, collection_files: str | None = None) -> None:
    """The --dry-run plan: everything decided before a weight is loaded. ``tuned`` and ``adapters``
    as given (``NAME=PATH`` or a path); ``collection_runs(headline)``: a compare's or lineage's
    runs, each the analyses it adds (for the work estimate); ``collection_files``: what such a
    command writes into ``out_dir`` besides its runs' directories (which hold a run's files)."""
    from ..analyses.controls import parse_controls
    from ..analyses.event_kinds import parse_event_kinds
    from ..analyses.repeated_prompts import find_repeats
    from ..execution import choose_residency, kv_bytes_per_token, largest_batch_tokens
    from ..execution.batching import over_batch_tokens, state_cache_bytes
    from ..execution.roles import named_path
    from ..models.cached import checkable
    from ..models.config_dicts import config_hidden_size, local_config, local_num_layers
    from ..models.loading import DTYPES, load_tokenizer
    from ..runner.pipeline import resolve_boundaries, select_shard

    out = _stdout()
    residency, reason = choose_residency(base, [(named_path(p) or (None, p))[1] for p in tuned],
                                         [(named_path(p) or (None, p))[1] for p in adapters], options)
    read = checkable(base, options.revision)  # (a hub id's whole snapshot in the local cache)
    layers = local_num_layers(read)
    prompts = select_shard(items, config.shard)
    lines = [f"base: {base}"] + [f"descendant: {p}" for p in tuned] + [f"adapter: {p}" for p in adapters]
    lines.append(f"residency: {residency} ({reason})")
    if config.engine == "ray":
        from ..execution.batching import chunk_size
        from ..execution.engines import worker_resources

        gpus = worker_resources(options.device)["num_gpus"]
        chunks = -(-len(prompts) // chunk_size(residency, config.batch_size, config.sequential_chunk))
        workers = max(1, min(config.workers, chunks))  # (the engine starts no worker it has no chunk for)
        lines.append(f"engine: ray, {workers} worker(s), each loading its own copy of the models ({residency}) "
                     + (f"on a GPU of its own: the Ray cluster needs {workers * gpus} GPUs" if gpus else
                        f"on the CPU: the Ray cluster needs {workers} CPUs")
                     + (f" (--workers {config.workers}, but these prompts make {chunks} chunk(s) of work)"
                        if workers < config.workers else ""))
    if layers:
        bounds = resolve_boundaries(config, layers)
        lines.append(f"boundaries: {', '.join(map(str, bounds))} of {layers} layers")
    else:
        bounds = None
        lines.append("boundaries: resolved when the model config is read (a hub id not in the local cache)")
    model_config = local_config(read)
    itemsize = DTYPES[options.dtype].itemsize
    lines.append(f"prompts: {len(prompts)}" + (f" (shard {config.shard} of {len(items)})" if config.shard else ""))
    kinds, controls = parse_event_kinds(config.event_kinds), parse_controls(config.controls)
    lines.append(f"event kinds: {', '.join(kinds)}; controls: {', '.join(controls) or 'none'}")
    try:  # what the run reads (the first descendant's chat template; an image prompt with its image's tokens)
        from ..runner.prepare import check_prompt_texts

        read_by = [((named_path(p) or (None, p))[1], False) for p in tuned] + \
            [((named_path(p) or (None, p))[1], True) for p in adapters]
        by_id = check_prompt_texts(base, read_by[:1] or [(base, False)], prompts, options, config.chat_template)
        unread = [p for p in prompts if p.id not in by_id]  # an image prompt of a hub base: by its text
        if unread:
            tok = load_tokenizer(base, options)
            by_id.update({p.id: tok(p.prompt)["input_ids"] for p in unread})
        ids = [by_id[p.id] for p in prompts]
        lengths = [len(i) + config.max_new_tokens for i in ids]
        tokens = sum(lengths)
    except CrosspatchError:
        ids, lengths, tokens = [], [], None
    if tokens is not None and bounds and layers:
        from ..analyses.consequence import validators_of
        from ..core.cells import headline_boundary
        from ..runner.estimate import estimate_work

        runs = collection_runs(headline_boundary(bounds, layers, config.boundary)) if collection_runs else None
        work = estimate_work(config, lengths, bounds, layers, validators_of(prompts), model_config, runs)
        lines.append(f"estimated work: at most {work.total:,.0f} token forward-pass equivalents over {tokens:,} "
                     f"prompt+budget tokens ({work.parts_text()})")
        hidden = config_hidden_size(model_config)
        size = state_cache_bytes(residency, tokens, hidden, itemsize, len(bounds)) if isinstance(hidden, int) else None
        if size is not None:
            lines.append(f"state cache (sequential, CPU): up to {size / 2**20:.1f} MiB")
    lines.append(f"batching: up to {config.batch_size} sequences per forward pass"
                 + (f", at most {config.max_batch_tokens:,} padded tokens (prompt + generation budget while decoding)"
                    if config.max_batch_tokens else ""))
    if (over := over_batch_tokens(lengths, config.max_batch_tokens)) is not None:
        lines.append(f"warning: {over}")
    if repeats := find_repeats((p.id, (tuple(i), p.metadata.get("image"))) for p, i in zip(prompts, ids)):
        shown = ", ".join(f"{a} = {b}" for a, b in repeats[:3]) + (", ..." if len(repeats) > 3 else "")
        after = " (the repeated_prompts control warns after the run)" if "repeated_prompts" in controls else ""
        lines.append(f"warning: {len(repeats)} prompt(s) repeat another prompt's tokens ({shown}): each would be scored "
                     f"again and counted as an independent prompt, narrowing the intervals{after}; drop them first")
    per_token = kv_bytes_per_token(model_config, itemsize)
    if per_token and lengths:
        largest = largest_batch_tokens(lengths, config.batch_size, config.max_batch_tokens)
        lines.append(f"KV cache of the largest decoding batch: up to {largest * per_token / 2**20:,.1f} MiB per model "
                     f"({largest:,} padded tokens; --max-batch-tokens lowers it)")
    run_files = ("config.json, events.jsonl, no_divergence.jsonl, summary.json, events.parquet, report.md, report.html"
                 + (", control_*.jsonl" if controls else "") + (", sweep.png, sweep.svg" if bounds and len(bounds) > 1 else ""))
    lines.append(f"output: {out_dir}/ {collection_files}; each run directory: {run_files}" if collection_files
                 else f"output: {out_dir}/ {run_files}")
    lines.append("dry run: no weight was loaded and nothing was written (the tokenizers read the prompts)")
    for line in lines:
        out.print(line, soft_wrap=True, markup=False)
