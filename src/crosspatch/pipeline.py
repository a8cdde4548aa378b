"""The one path: load models -> find divergences -> analyses (the 2x2, ...) -> statistics -> report.

``run`` works through the prompts in chunks (``process_chunk``: the divergence stage, then
each analysis, all as programs for the executor); an engine (local or Ray) runs the chunks and
each chunk's outcomes are appended to the run directory as soon as it is done, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .analysis import EventSet
from .cells import CellRecord, CellsConfig, CrossPatch
from .kinds import EventKinds, parse_event_kinds, relabel
from .registry import PlanContext, enabled_plugins
from .summary import build_summary
from .verdict import VerdictPolicy
from .divergence import DivergenceConfig, NoDivergence, divergence_program, find_divergences
from .execution import Executor, ModelSet, map_chunks
from .execution.batching import chunk_size, state_cache_bytes as cache_bytes
from .models.execution import WorkCounter, counting_work
from .models.loading import DTYPES
from .models.vocab import tokenize_once
from .prompts import Prompt, as_prompts, prompts_digest
from .stats import BootstrapConfig
from .errors import OptionError
from .validation import (
    check_chat_template, check_group_by, check_prompt_lengths, check_prompt_token_ids,
    validate_run_options,
)
from .store import CONFIG_SCHEMA, RunStore, check_complete, completed_prompts, environment, fingerprint
# the run's pieces, each in its own module; importable from here as before
from .result import Rendered, RunResult, rerender, rerender_run, write_outputs  # noqa: F401
from .resume import finished_result, precision_reached, precision_record, processed_prompts  # noqa: F401
from .runconfig import RunConfig, normalise_run_config, resolve_boundaries  # noqa: F401
from .shards import merge_runs, select_shard  # noqa: F401


def _prompt_text(pair: ModelSet, prompt: Prompt, config: RunConfig) -> str:
    if not config.chat_template:
        return prompt.prompt
    return pair.tokenizers[config.tuned or pair.roles[1]].apply_chat_template(
        [{"role": "user", "content": prompt.prompt}], tokenize=False, add_generation_prompt=True
    )


def prompt_token_ids(pair: ModelSet, prompts: list[Prompt], tuned: str, config: RunConfig) -> list[list[int]]:
    """Token ids of every prompt, identical under the base's and ``tuned``'s tokenizers; an image
    prompt goes through both models' processors (which must agree) and its image is registered
    for the passes (:mod:`crosspatch.models.media`)."""
    import torch

    from .errors import PromptImageError
    from .models.media import encode_image_prompt

    token = pair.image_token_id
    images = [p.id for p in prompts if p.metadata.get("image")]
    if images and token is None:
        raise PromptImageError(f"prompt(s) {', '.join(images[:5])} have an image, but the base is a text-only model")
    if images and config.engine != "local":
        raise OptionError("image prompts run with the local engine (--engine local)")
    out = []
    for p in prompts:
        text = _prompt_text(pair, p, config)
        if not p.metadata.get("image"):
            # a chat template renders its special tokens (BOS too): adding them again doubles BOS
            ids = tokenize_once(pair.tokenizers[pair.base], pair.tokenizers[tuned], p.id, text,
                                add_special_tokens=not config.chat_template)
            if token is not None and token in ids:
                raise PromptImageError(f"prompt {p.id!r} holds the image placeholder but has no 'image' field")
            out.append(ids)
            continue
        processor_pt, processor_it = pair.processor(pair.base), pair.processor(tuned)
        ids, inputs = encode_image_prompt(processor_pt, p.id, text, p.metadata["image"])
        ids_it, inputs_it = (ids, inputs) if processor_it is processor_pt else \
            encode_image_prompt(processor_it, p.id, text, p.metadata["image"])
        same = ids == ids_it and inputs.keys() == inputs_it.keys() and all(
            inputs[k].shape == inputs_it[k].shape and torch.equal(inputs[k], inputs_it[k]) for k in inputs)
        if not same:
            raise PromptImageError(f"prompt {p.id!r}: the base's and {tuned!r}'s processors turn the image into "
                                   "different tokens or pixels; cross-patching needs one shared prefix")
        pair.media.register(p.id, ids, inputs)
        out.append(ids)
    return out


def build_config_record(pair: ModelSet, prompts: list[Prompt], config: RunConfig, boundaries: list[int],
                        shard_ids: list[str] | None = None) -> dict:
    options = asdict(config)
    digest = prompts_digest(prompts)
    models = {k: v for k, v in pair.provenance.items() if k not in ("residency_reason", "load_spec", "reopen_spec")}
    models["load_options"] = {k: v for k, v in models.get("load_options", {}).items() if k != "residency"}
    result_parts = {  # what changes results; residency and batching only move float rounding
        "options": {k: v for k, v in options.items()
                    if k not in ("batch_size", "max_batch_tokens", "title", "back_link", "shard", "engine", "workers", "sequential_chunk",
                                 "verify_fp32", "policy", "until_ci_width")},
        "boundaries": boundaries,
        "models": models,
        "prompts": digest,
    }
    run_fingerprint = fingerprint(result_parts)
    return {
        "schema_version": CONFIG_SCHEMA,
        "title": config.title,
        "back_link": config.back_link,
        "options": options,
        "resolved_boundaries": boundaries,
        "num_layers": pair.num_layers,
        "residency": pair.residency,
        "models": {k: v for k, v in pair.provenance.items() if k not in ("load_spec", "reopen_spec")},
        # what reloads these models (after-the-fact analyses)
        "load_spec": pair.provenance.get("load_spec") or pair.provenance.get("reopen_spec"),
        "roles": list(pair.roles),
        "load_options": pair.provenance.get("load_options", {}),
        "prompts": {"count": len(prompts), "sha256": digest},
        "prompt_ids": shard_ids if shard_ids is not None else [p.id for p in prompts],  # this run's (shard's)
        "fingerprint_inputs": result_parts,
        "pair_warnings": pair.warnings,
        "real_vocabulary": pair.real_vocab.as_record(),
        "environment": environment(),
        "run_fingerprint": run_fingerprint,  # the same for every shard of one run
        "fingerprint": fingerprint({"run": run_fingerprint, "shard": config.shard}),
    }


def with_nulls(pair: ModelSet, config: RunConfig, tuned: str) -> tuple[ModelSet, RunConfig]:
    """The model set and config with the run's null descendants checked (``config.nulls``: other
    descendant roles) and its synthetic nulls built (``config.synthetic_nulls``)."""
    bad = [n for n in config.nulls if n not in pair.descendants or n == tuned]
    if bad:
        others = ", ".join(r for r in pair.descendants if r != tuned) or "none"
        raise OptionError(f"nulls must name other descendant roles of the model set ({others}), "
                          f"not {', '.join(map(repr, bad))}")
    if not config.synthetic_nulls:
        return pair, config
    from .execution.nulls import with_synthetic_nulls

    pair, roles = with_synthetic_nulls(pair, tuned, config.synthetic_nulls, config.seed)
    return pair, replace(config, nulls=[*config.nulls, *roles], tuned=tuned)


@dataclass
class ChunkPlan:
    """What every chunk of a run does (picklable: it travels to Ray actors)."""

    boundaries: list[int]
    divergence: DivergenceConfig
    cells: CellsConfig
    analyses: list = field(default_factory=list)  # controls and further analyses, run on the same events
    tuned: str | None = None  # the descendant role scored against the base (default: the first)
    kinds: EventKinds | None = None  # event kinds beyond the first divergence


@dataclass
class ChunkResult:
    """One chunk's outcomes: events, no-divergence outcomes, 2x2 records, other analyses'
    records (by analysis name), and the work done in token-layers."""

    events: list
    no_divergence: list[NoDivergence]
    records: list[CellRecord]
    analyses: dict[str, list]
    token_layers: int


def process_chunk(models, plan: ChunkPlan, item) -> ChunkResult:
    """Search and score one chunk of prompts (``item`` = (prompts, token ids)): the unit of work
    of every engine. The stages are programs the executor runs, whatever the residency."""
    prompts, token_ids = item
    ex = Executor(models, plan.cells.batch_size, plan.cells.max_batch_tokens)
    tuned = plan.tuned or models.roles[1]
    with counting_work() as work:
        events, none, natural = ex.drive(divergence_program(prompts, token_ids, plan.divergence, models.base, tuned))
        evset = EventSet(events, models.base, tuned, natural)
        programs = [CrossPatch(plan.boundaries, plan.cells).program(ex, evset)]
        programs += [a.program(ex, evset) for a in plan.analyses]
        if plan.kinds is not None:
            programs.append(plan.kinds.program(ex, evset))
        values = ex.drive_all(programs)  # side by side: passes of one role grouped across analyses
        scored = values[0]
        others = {a.name: v for a, v in zip(plan.analyses, values[1:])}
        if plan.kinds is not None:  # written before the first divergence's records, which mark completion
            kind_records, twins = values[-1]
            scored = kind_records + relabel(scored, twins) + scored
    return ChunkResult(events, none, scored, others, work.token_layers)


def chunk_plan(config: RunConfig, boundaries: list[int], num_layers: int, analyses=(),
               validators: dict | None = None) -> ChunkPlan:
    """What every chunk runs: the search, the 2x2, and the analysis of every enabled plug-in
    (selected controls, default analyses, ``config.analyses``), then the ``analyses`` objects given
    in Python (``run`` has put the names of registered plug-ins into ``config.analyses``)."""
    div_cfg = DivergenceConfig(config.max_new_tokens, config.batch_size, config.rollout_model,
                               capture_boundaries=boundaries if config.plan == "minimal" else None,
                               max_batch_tokens=config.max_batch_tokens)
    context = PlanContext.for_run(config, boundaries, num_layers, validators)
    cells = context.cells
    kinds = parse_event_kinds(config.event_kinds)
    built = []
    for plugin in enabled_plugins(vars(config)):
        if plugin.build is None:
            continue
        analysis = plugin.build(plugin.make_options(config.analysis_options.get(plugin.name)), context)
        if analysis is not None:
            built.append(analysis)
    return ChunkPlan(boundaries, div_cfg, cells, built + list(analyses), config.tuned,
                     EventKinds(boundaries, kinds, config.max_new_tokens, config.rollout_model, cells)
                     if len(kinds) > 1 else None)


def _float32_models(models: ModelSet) -> ModelSet:
    """The same models in float32: reloaded from their paths, or copied when in memory."""
    import copy

    from .execution import load_models, models_from_modules
    from .models.loading import LoadOptions

    spec = models.provenance.get("load_spec")
    if spec is not None:
        opts = LoadOptions(**{**spec["options"], "dtype": "float32"})
        return load_models(spec["base"], tuned=spec["tuned"], adapters=spec["adapters"], options=opts)
    modules = {role: copy.deepcopy(models.handle(role).module).float() for role in models.roles}
    return models_from_modules(modules, models.tokenizer, models.tokenizers)


def verify_near_ties_fp32(models: ModelSet, prompts: list[Prompt], token_ids: list[list[int]],
                          records: list[CellRecord], config: RunConfig) -> dict:
    """Re-run the divergence search of near-tie events' prompts in float32; count the events whose
    position or tokens move (a low-precision near-tie decided them)."""
    dtype = models.provenance.get("load_options", {}).get("dtype", "float32")
    ties = {r.prompt_id: r for r in records if r.kind == "first_diff" and r.near_tie}
    if dtype == "float32" or not ties:
        return {"checked": 0, "moved": 0, "moved_prompts": [],
                "note": "the run is already float32" if dtype == "float32" else "no near-tie events"}
    idx = [k for k, p in enumerate(prompts) if p.id in ties]
    models32 = _float32_models(models)
    div = DivergenceConfig(config.max_new_tokens, config.batch_size, config.rollout_model,
                           max_batch_tokens=config.max_batch_tokens)
    events, none = find_divergences(models32, [prompts[k] for k in idx], [token_ids[k] for k in idx], div,
                                    tuned=config.tuned or models.roles[1])
    found = {e.prompt_id: (e.position, e.t_pt, e.t_it) for e in events}
    moved = sorted(pid for pid, r in ties.items() if found.get(pid) != (r.position, r.t_pt, r.t_it))
    models32.release()
    return {"checked": len(ties), "moved": len(moved), "moved_prompts": moved[:200]}


def state_cache_bytes(models: ModelSet, prompt_ids: list[list[int]], max_new_tokens: int, n_boundaries: int) -> int:
    """Upper bound of the CPU state cache of one chunk under sequential residency: both models'
    boundary and final states over prompt + budget tokens, in the compute dtype."""
    dtype = models.provenance.get("load_options", {}).get("dtype", "float32")
    itemsize = DTYPES[dtype].itemsize if dtype in DTYPES else 4
    tokens = sum(len(p) + max_new_tokens for p in prompt_ids)
    return cache_bytes("sequential", tokens, models.hidden_size, itemsize, n_boundaries)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        from rich.console import Console

        Console(stderr=True).print(message, soft_wrap=True, markup=False)


def _progress(enabled: bool):
    """Progress bars on a terminal; plain progress lines when standard error is not one."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if enabled and not console.is_terminal:
        from .progress import LineProgress

        return LineProgress()
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=not (enabled and console.is_terminal), transient=False,
    )


def run(
    pair: ModelSet,
    prompts,
    config: RunConfig | None = None,
    out: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    analyses=(),
    overwrite: bool = False,
    **overrides,
) -> RunResult:
    """Run the first-divergence 2x2 on ``prompts`` (Prompt objects, dicts or strings), and any
    further ``analyses`` (:class:`~crosspatch.analysis.Analysis`) on the same events; their
    records are in ``result.analyses[name]`` and ``<name>.jsonl``.

    With ``out``, records stream into that run directory (resumable) and the summary, Parquet
    table and report.md are written there. ``resume=False`` refuses a directory that already
    holds this run; ``overwrite=True`` replaces the crosspatch run in ``out`` (never other files)."""
    config = config or RunConfig()
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise TypeError(f"unknown run option {key!r}")
        setattr(config, key, value)
    named = [a for a in analyses if isinstance(a, str)]  # registered analyses given by name
    if named:
        config.analyses = list(dict.fromkeys([*config.analyses, *named]))
    analyses = [a for a in analyses if not isinstance(a, str)]
    validate_run_options(config)
    normalise_run_config(config)
    tuned = config.tuned or pair.roles[1]
    if tuned not in pair.descendants:
        raise OptionError(f"tuned must name a descendant role ({', '.join(pair.descendants)}), not {tuned!r}")
    pair, config = with_nulls(pair, config, tuned)
    all_prompts = as_prompts(prompts)
    run_warnings = check_group_by(list(config.group_by), all_prompts)
    if config.chat_template:
        check_chat_template(pair.tokenizers[tuned])
    boundaries = resolve_boundaries(config, pair.num_layers)
    from .consequence import validators_of

    validators = validators_of(all_prompts)
    if config.consequence and not validators:
        run_warnings.append("--consequence: no prompt carries a 'validator' field, so nothing is scored")
    plan = chunk_plan(config, boundaries, pair.num_layers, analyses, validators)  # validates kinds and controls
    VerdictPolicy.from_dict(config.policy or {})
    names = [a.name for a in plan.analyses]
    if len(set(names)) != len(names):
        raise OptionError(f"analysis names must be unique in a run: {names}")
    prompts = select_shard(all_prompts, config.shard)
    record = build_config_record(pair, all_prompts, config, boundaries, [p.id for p in prompts])
    record["run_warnings"] = run_warnings
    token_ids = prompt_token_ids(pair, prompts, tuned, config)
    check_prompt_lengths([p.id for p in prompts], token_ids, config.max_new_tokens,
                         pair.facts[pair.base].get("max_positions"),
                         config.consequence_budget if config.consequence and validators else None,
                         max([0] + [a.tokens_past_prompt() for a in plan.analyses]))
    check_prompt_token_ids([p.id for p in prompts], token_ids,
                           {role: pair.facts[role].get("input_embeddings") for role in pair.roles})
    store = RunStore(out) if out is not None else None
    with store.lock() if store is not None else contextlib.nullcontext():  # one process per run directory
        records: list[CellRecord] = []
        no_div: list[NoDivergence] = []
        if store is not None:
            records, no_div = store.start(record, resume=resume, overwrite=overwrite)
        done = completed_prompts(records, no_div, boundaries)
        todo = [k for k, p in enumerate(prompts) if p.id not in done]
        resumed = len(prompts) - len(todo)
        if resumed:
            _say(progress, f"resumed: {resumed} prompt(s) already done in {out}, {len(todo)} to go")
        by_id = {p.id: k for k, p in enumerate(prompts)}
        started = time.perf_counter()
        chunk = chunk_size(pair.residency, config.batch_size, config.sequential_chunk)
        dtype = pair.provenance.get("load_options", {}).get("dtype", "float32")
        size = cache_bytes(pair.residency, sum(len(token_ids[k]) + config.max_new_tokens for k in todo[:chunk]),
                           pair.hidden_size, DTYPES[dtype].itemsize if dtype in DTYPES else 4, len(boundaries))
        if size is not None and todo:
            batching = (f"batches of at most {config.max_batch_tokens:,} padded tokens" if config.max_batch_tokens
                        else "--max-batch-tokens bounds each batch's working memory")
            _say(progress, f"sequential residency: one model at a time; CPU state cache up to {size / 2**20:.1f} MiB; "
                           f"{batching} ({pair.provenance.get('residency_reason', '')})")
        event_work = 0
        work = WorkCounter()  # summed from the chunks (which may run in other processes)
        extra: dict[str, list] = {  # earlier sessions' records of prompts already complete
            a.name: [r for r in (store.load_rows(f"{a.name}.jsonl") if store is not None else []) if r.get("prompt_id") in done]
            for a in plan.analyses}
        with _progress(progress) if progress else contextlib.nullcontext() as bar:
            if bar:
                search_task = bar.add_task("divergence search (prompts)", total=len(prompts),
                                           completed=len(prompts) - len(todo))
                cells_task = bar.add_task(f"2x2 cells at {len(boundaries)} boundar{'y' if len(boundaries) == 1 else 'ies'} "
                                          "(records of the events found so far)", total=len(records), completed=len(records))
            items = [([prompts[k] for k in todo[start : start + chunk]], [token_ids[k] for k in todo[start : start + chunk]])
                     for start in range(0, len(todo), chunk)]
            precision = {"target": config.until_ci_width, "half_width": None, "reached": False} \
                if config.until_ci_width else None
            if precision is not None and precision_reached(precision, records, boundaries, pair.num_layers, config):
                items = []  # an earlier session already reached the target: nothing more to process
            try:
                for result in map_chunks(pair, process_chunk, plan, items, config.engine, config.workers):
                    # streamed: each chunk is stored as soon as it is done
                    work.add(result.token_layers, 1)
                    event_work += sum(len(e.prefix_ids) for e in result.events) * pair.num_layers
                    for rec in result.records:
                        meta = prompts[by_id[rec.prompt_id]].metadata
                        rec.extra.update({f: meta.get(f) for f in config.group_by})
                    if store is not None:
                        for name, rows in result.analyses.items():
                            store.append_rows(f"{name}.jsonl", rows)
                        # the 2x2 records last: a prompt counts as done once all its boundaries are stored
                        store.append_records(result.records)
                        store.append_no_divergence(result.no_divergence)
                    for name, rows in result.analyses.items():
                        extra[name] += [r.to_record() if hasattr(r, "to_record") else r for r in rows]
                    records += result.records
                    no_div += result.no_divergence
                    if bar:
                        bar.update(search_task, advance=len(result.events) + len(result.no_divergence))
                        bar.update(cells_task, total=len(records), completed=len(records))
                    if precision is not None and precision_reached(precision, records, boundaries, pair.num_layers, config):
                        break  # the interval is as narrow as asked: the remaining prompts are left, and said so
            finally:
                pair.release()
        processed = processed_prompts(precision, prompts, records, no_div, boundaries)
        check_complete([p.id for p in processed], records, no_div, boundaries, str(out) if out is not None else "run")
        records.sort(key=lambda r: (by_id.get(r.prompt_id, len(by_id)), r.boundary))
        no_div.sort(key=lambda x: by_id.get(x.prompt_id, len(by_id)))
        boot = BootstrapConfig(config.bootstrap, config.seed)
        cost = {
            "plan": config.plan,
            "token_layers_executed": work.token_layers,
            "event_prefix_token_layers": event_work,
            "fe_per_event": round(work.token_layers / event_work, 3) if event_work else None,
            "seconds": round(time.perf_counter() - started, 3),
            "prompts_processed": len(todo) - (len(precision["unprocessed"]) if precision is not None else 0),
            "prompts_resumed": resumed,
        }
        extras = {"cost_this_session": cost}
        if precision is not None:
            extras["until_ci_width"] = precision_record(precision)
        if config.verify_fp32:
            extras["fp32_verification"] = verify_near_ties_fp32(pair, prompts, token_ids, records, config)
        summary = build_summary(record, records, no_div, len(processed), boot, extras, extra, run_dir=out)
        result = RunResult(summary, records, no_div, record, Path(out) if out is not None else None, extra)
        if store is not None:
            result._report = write_outputs(store, summary, records, record)
        return result


