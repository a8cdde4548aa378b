"""The one path: load models -> find divergences -> analyses (the 2x2, ...) -> statistics -> report.

``run`` works through the prompts in chunks (``process_chunk``: the divergence stage, then
each analysis, all as programs for the executor); an engine (local or Ray) runs the chunks and
each chunk's outcomes are appended to the run directory as soon as it is done, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.analysis import EventSet
from ..core.cells import CellRecord, CellsConfig, CrossPatch
from ..core.divergence import DivergenceConfig, NoDivergence, divergence_program, find_divergences, search_roles
from ..core.plugin_calls import call_plugin, guarded_program
from ..core.records import in_run_order
from ..core.registry import PlanContext, enabled_plugins
from ..core.stats import BootstrapConfig
from ..core.verdict import VerdictPolicy
from ..errors import OptionError
from ..execution import Executor, ModelSet, combined_wish, map_chunks
from ..execution.batching import chunk_size, over_batch_tokens
from ..execution.batching import state_cache_bytes as cache_bytes
from ..execution.engines import check_engine_device
from ..inputs.chats import check_chat_rows
from ..inputs.prompts import Prompt, as_prompts
from ..models.anatomy import check_boundaries_supported
from ..models.collector import settle
from ..models.forward import WorkCounter, counting_work
from ..models.loading import DTYPES
from ..models.media import media_chunks
from ..models.options import check_progress
from ..models.vocab import prompt_token_warnings
from ..store import RunStore, check_complete, completed_prompts
from .checks import (
    check_analysis_names,
    check_chat_template,
    check_group_by,
    check_model_set,
    check_prompt_lengths,
    check_prompt_token_ids,
    validate_run_options,
)
from .config import RunConfig, check_switches, normalise_run_config, resolve_boundaries  # noqa: F401
from .prepare import build_config_record, prompt_token_ids, with_nulls
from .progress import progress_display, say

# the run's pieces, each in its own module, importable from here as before (and RunConfig above)
from .result import Rendered, RunResult, rerender, rerender_run, write_outputs  # noqa: F401
from .resume import finished_read_only, finished_result, precision_reached, precision_record, processed_prompts  # noqa: F401
from .shards import merge_runs, select_shard  # noqa: F401
from .summary import build_summary


@dataclass
class ChunkPlan:
    """What every chunk of a run does (picklable: it travels to Ray actors)."""

    boundaries: list[int]
    divergence: DivergenceConfig
    cells: CellsConfig
    analyses: list = field(default_factory=list)  # controls and further analyses, run on the same events
    tuned: str | None = None  # the descendant role scored against the base (default: the first)
    decode: str = "eager"  # how the search and the histories decode (execution.modes.DECODE_MODES)
    share_histories: bool = True  # the search decodes the histories analyses wish for (False: apart, to compare)


@dataclass
class ChunkResult:
    """One chunk's outcomes: events, no-divergence outcomes, 2x2 records, other analyses'
    records (by analysis name), and the work done in token-layers."""

    events: list
    no_divergence: list[NoDivergence]
    records: list[CellRecord]
    analyses: dict[str, list]
    token_layers: int
    decode: dict = field(default_factory=dict)  # the mode the decoders used, and why


def process_chunk(models, plan: ChunkPlan, item) -> ChunkResult:
    """Search and score one chunk of prompts (``item`` = (prompts, token ids)): the unit of work
    of every engine. The stages are programs the executor runs, whatever the residency."""
    prompts, token_ids = item
    with models.media.only(p.id for p in prompts):  # this chunk's images (twins of other chunks apart)
        return _process_chunk(models, plan, prompts, token_ids)


def _process_chunk(models, plan: ChunkPlan, prompts, token_ids) -> ChunkResult:
    ex = Executor(models, plan.cells.batch_size, plan.cells.max_batch_tokens, plan.decode)
    tuned = plan.tuned or models.roles[1]
    roll, check = search_roles(plan.divergence, models.base, tuned)
    # histories the analyses will read with the search's roles: decoded by the search on the way
    wishes = [w for w in (a.history_wish(models) for a in plan.analyses if hasattr(a, "history_wish")) if w is not None]
    wish = combined_wish(wishes, plan.divergence.max_new_tokens) if plan.share_histories else None
    with counting_work() as work:
        events, none, natural, searched = ex.drive(
            divergence_program(prompts, token_ids, plan.divergence, models.base, tuned, wish))
        evset = EventSet(events, models.base, tuned, natural, searched, (roll, check, plan.divergence.max_new_tokens))
        programs = [CrossPatch(plan.boundaries, plan.cells).program(ex, evset)]
        programs += [guarded_program(a, ex, evset) for a in plan.analyses]
        values = ex.drive_all(programs)  # side by side: passes of one role grouped across analyses
        first, added, others = values[0], [], {}
        for analysis, value in zip(plan.analyses, values[1:]):
            if getattr(analysis, "scores_cells", False):  # more events scored with the 2x2 (event kinds)
                added += analysis.cell_records(value, first)
            else:
                others[analysis.name] = value
        scored = added + first  # the first divergence's records last: they mark a prompt complete
    return ChunkResult(events, none, scored, others, work.token_layers, dict(ex.decode_used))


def chunk_plan(config: RunConfig, boundaries: list[int], num_layers: int, analyses=(),
               validators: dict | None = None) -> ChunkPlan:
    """What every chunk runs: the search, the 2x2, and the analysis of every enabled plug-in
    (selected controls, default analyses, ``config.analyses``), then the ``analyses`` objects given
    in Python (``run`` has put the names of registered plug-ins into ``config.analyses``)."""
    div_cfg = DivergenceConfig(config.max_new_tokens, config.batch_size, config.rollout_model,
                               capture_boundaries=boundaries if config.plan == "minimal" else None,
                               max_batch_tokens=config.max_batch_tokens)
    context = PlanContext.for_run(config, boundaries, num_layers, validators)
    built = []
    for plugin in enabled_plugins(vars(config)):
        if plugin.build is None:
            continue
        analysis = call_plugin(plugin.name, "build", plugin.build, plugin.make_options(config.analysis_options.get(plugin.name)),
                               context)
        if analysis is not None:
            built.append(analysis)
    return ChunkPlan(boundaries, div_cfg, context.cells, built + list(analyses), config.tuned, config.decode)


def _chunk_items(pair: ModelSet, prompts: list[Prompt], token_ids: list[list[int]], todo: list[int], chunk: int,
                 progress) -> list[tuple[list[Prompt], list[list[int]]]]:
    """The chunks of the prompts ``todo`` (positions), at most ``chunk`` each, in order: prompts with
    the same tokens and different images go to different chunks, each reading its own images
    (:func:`~crosspatch.models.media.media_chunks`)."""
    pieces = media_chunks([prompts[k].id for k in todo], chunk, pair.media)
    if len(pieces) > -(-len(todo) // chunk):
        say(progress, f"{len(pieces)} chunks where {-(-len(todo) // chunk)} would do: image prompts with the same text "
                       "and different images never share a batch, and with one model resident at a time each chunk "
                       "loads every model once (give them distinct texts to batch them)")
    return [([prompts[todo[j]] for j in piece], [token_ids[todo[j]] for j in piece]) for piece in pieces]


def _float32_models(models: ModelSet) -> ModelSet:
    """The same models in float32: reloaded from their paths, or copied when in memory."""
    import copy

    from ..execution import load_models, models_from_modules
    from ..models.loading import LoadOptions

    spec = models.provenance.get("load_spec")
    if spec is not None:
        opts = LoadOptions(**{**spec["options"], "dtype": "float32"})
        return load_models(spec["base"], tuned=spec["tuned"], adapters=spec["adapters"], options=opts)
    modules = {role: copy.deepcopy(models.handle(role).module).float() for role in models.roles}
    return models_from_modules(modules, models.tokenizer, models.tokenizers, processors=models.processors_for(models.roles))


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
    tuned = config.tuned or models.roles[1]
    if models.image_token_id is not None:  # a set of its own: its image prompts read again, as the run read them
        prompt_token_ids(models32, [prompts[k] for k in idx], tuned, config)
    div = DivergenceConfig(config.max_new_tokens, config.batch_size, config.rollout_model,
                           max_batch_tokens=config.max_batch_tokens)
    found = {}
    for piece in media_chunks([prompts[k].id for k in idx], max(len(idx), 1), models32.media):  # twins apart
        group = [idx[j] for j in piece]
        with models32.media.only(prompts[k].id for k in group):
            events, _ = find_divergences(models32, [prompts[k] for k in group], [token_ids[k] for k in group], div,
                                         tuned=tuned)
        found.update({e.prompt_id: (e.position, e.t_pt, e.t_it) for e in events})
    moved = sorted(pid for pid, r in ties.items() if found.get(pid) != (r.position, r.t_pt, r.t_it))
    models32.release()
    return {"checked": len(ties), "moved": len(moved), "moved_prompts": moved[:200]}


def state_cache_bytes(models: ModelSet, prompt_ids: list[list[int]], max_new_tokens: int,
                      n_boundaries: int) -> int | None:
    """Upper bound of the CPU state cache of one chunk under sequential residency: both models'
    boundary and final states over prompt + budget tokens, in the compute dtype."""
    dtype = models.provenance.get("load_options", {}).get("dtype", "float32")
    itemsize = DTYPES[dtype].itemsize if dtype in DTYPES else 4
    tokens = sum(len(p) + max_new_tokens for p in prompt_ids)
    return cache_bytes("sequential", tokens, models.hidden_size, itemsize, n_boundaries)


def _given_analyses(analyses, config: RunConfig) -> list:
    """:func:`run`'s ``analyses``: the registered names among them join ``config.analyses``; the
    :class:`~crosspatch.core.analysis.Analysis` objects (or objects of its shape) are returned."""
    if isinstance(analyses, (str, bytes)) or not isinstance(analyses, (list, tuple)) or \
            any(not isinstance(a, str) and not (hasattr(a, "name") and callable(getattr(a, "program", None)))
                for a in analyses):  # (an Analysis, or an object of its shape)
        raise OptionError(f"analyses must be a list of registered analysis names or Analysis objects, not {analyses!r}")
    named = [a for a in analyses if isinstance(a, str)]  # registered analyses given by name
    if named:
        config.analyses = list(dict.fromkeys([*config.analyses, *named]))
    return [a for a in analyses if not isinstance(a, str)]


def run(
    pair: ModelSet,
    prompts,
    config: RunConfig | None = None,
    out: str | Path | None = None,
    resume: bool = True,
    progress: bool | Callable[[str], Any] = True,
    analyses=(),
    overwrite: bool = False,
    **overrides,
) -> RunResult:
    """Run the first-divergence 2x2 on ``prompts`` (Prompt objects, dicts or strings), and any
    further ``analyses`` (:class:`~crosspatch.core.analysis.Analysis`) on the same events; their
    records are in ``result.analyses[name]`` and ``<name>.jsonl``.

    With ``out``, records stream into that run directory (resumable) and the summary, Parquet
    table and report.md are written there. ``resume=False`` refuses a directory that already
    holds this run; ``overwrite=True`` replaces the crosspatch run in ``out`` (never other files).
    ``progress``: True (bars on a terminal, lines otherwise), False, or a function of one line
    (e.g. ``logging.info``). ``config`` is not changed: ``overrides`` and named ``analyses`` apply
    to this run's copy."""
    check_model_set(pair, "run")
    config = RunConfig.with_overrides(config, **overrides)
    check_switches(resume=resume, overwrite=overwrite)
    check_progress(progress)
    settle()  # a command whose weights load elsewhere (Ray workers) still collects its garbage (models.collector)
    analyses = _given_analyses(analyses, config)
    validate_run_options(config)
    if config.engine == "ray" and (spec := pair.provenance.get("load_spec")):
        check_engine_device("ray", spec["options"].get("device", "cpu"))
    normalise_run_config(config)
    tuned = pair.roles[1] if config.tuned is None else config.tuned
    if not isinstance(tuned, str) or tuned not in pair.descendants:
        raise OptionError(f"tuned must name a descendant role ({', '.join(pair.descendants)}), not {tuned!r}")
    config.tuned = tuned  # recorded as named: the command line names it, and the two are one run
    pair, config = with_nulls(pair, config, tuned)
    all_prompts = as_prompts(prompts)
    check_chat_rows(all_prompts, config.chat_template)
    run_warnings = check_group_by(list(config.group_by), all_prompts)
    if config.chat_template:
        check_chat_template(pair.tokenizers[tuned])
    boundaries = resolve_boundaries(config, pair.num_layers)
    for facts in pair.facts.values():  # before any search: a layer that cannot start a late stack
        check_boundaries_supported(facts, boundaries)
    from ..analyses.consequence import validators_of

    validators = validators_of(all_prompts)
    if config.consequence and not validators:
        run_warnings.append("--consequence: no prompt carries a 'validator' field, so nothing is scored")
    plan = chunk_plan(config, boundaries, pair.num_layers, analyses, validators)  # validates kinds and controls
    VerdictPolicy.from_dict({} if config.policy is None else config.policy)
    check_analysis_names([a.name for a in plan.analyses])
    prompts = select_shard(all_prompts, config.shard)
    record = build_config_record(pair, all_prompts, config, boundaries, [p.id for p in prompts],
                                 sorted({r for a in plan.analyses for r in a.model_roles()}))
    record["run_warnings"] = run_warnings
    token_ids = prompt_token_ids(pair, prompts, tuned, config)
    check_prompt_lengths([p.id for p in prompts], token_ids, config.max_new_tokens,
                         pair.facts[pair.base].get("max_positions"),
                         config.consequence_budget if config.consequence and validators else None,
                         max([0] + [a.tokens_past_prompt() for a in plan.analyses]),
                         sparse_topk=pair.facts[pair.base].get("sparse_topk"), rope_switch=pair.facts[pair.base].get("rope_switch"))
    check_prompt_token_ids([p.id for p in prompts], token_ids,
                           {role: pair.facts[role].get("input_embeddings") for role in pair.roles})
    run_warnings += prompt_token_warnings(pair.tokenizers[pair.base], [p.id for p in prompts], token_ids)
    if (over := over_batch_tokens([len(ids) + config.max_new_tokens for ids in token_ids],
                                  config.max_batch_tokens)) is not None:
        run_warnings.append(over)
    store = RunStore(out) if out is not None else None
    if (stored := finished_read_only(out, record, prompts, config, resume, overwrite)) is not None:
        return stored  # (a finished run on a share this process cannot write: as it stands)
    # one process per run directory; models a training loop gave in memory compute in eval mode and go on training
    with store.lock() if store is not None else contextlib.nullcontext(), pair.borrowed():
        records: list[CellRecord] = []
        no_div: list[NoDivergence] = []
        if store is not None:
            records, no_div = store.start(record, resume=resume, overwrite=overwrite)
        done = completed_prompts(records, no_div, boundaries)
        todo = [k for k, p in enumerate(prompts) if p.id not in done]
        resumed = len(prompts) - len(todo)
        if resumed:
            say(progress, f"resumed: {resumed} prompt(s) already done in {out}, {len(todo)} to go")
        by_id = {p.id: k for k, p in enumerate(prompts)}
        started = time.perf_counter()
        chunk = chunk_size(pair.residency, config.batch_size, config.sequential_chunk)
        dtype = pair.provenance.get("load_options", {}).get("dtype", "float32")
        size = cache_bytes(pair.residency, sum(len(token_ids[k]) + config.max_new_tokens for k in todo[:chunk]),
                           pair.hidden_size, DTYPES[dtype].itemsize if dtype in DTYPES else 4, len(boundaries))
        if size is not None and todo:
            batching = (f"batches of at most {config.max_batch_tokens:,} padded tokens" if config.max_batch_tokens
                        else "--max-batch-tokens bounds each batch's working memory")
            say(progress, f"sequential residency: one model at a time; CPU state cache up to {size / 2**20:.1f} MiB; "
                           f"{batching} ({pair.provenance.get('residency_reason', '')})")
        event_work, decode_used = 0, {}
        work = WorkCounter()  # summed from the chunks (which may run in other processes)
        analysis_records: dict[str, list] = {  # earlier sessions' records of prompts already complete
            a.name: [r for r in (store.load_rows(f"{a.name}.jsonl") if store is not None else []) if r.get("prompt_id") in done]
            for a in plan.analyses if not getattr(a, "scores_cells", False)}
        search_task: Any = None  # the bar's tasks, when a bar is shown (rich is imported only then)
        cells_task: Any = None
        with progress_display(progress) if progress else contextlib.nullcontext() as bar:
            if bar:
                search_task = bar.add_task("divergence search (prompts)", total=len(prompts),
                                           completed=len(prompts) - len(todo))
                cells_task = bar.add_task(
                    f"2x2 cells at {len(boundaries)} boundar{'y' if len(boundaries) == 1 else 'ies'} "
                    "(records of the events found so far)", total=len(records), completed=len(records))
            items = _chunk_items(pair, prompts, token_ids, todo, chunk, progress)
            precision = {"target": config.until_ci_width, "half_width": None, "reached": False} \
                if config.until_ci_width else None
            if precision is not None and precision_reached(precision, records, boundaries, pair.num_layers, config):
                items = []  # an earlier session already reached the target: nothing more to process
            try:
                for result in map_chunks(pair, process_chunk, plan, items, config.engine, config.workers):
                    # streamed: each chunk is stored as soon as it is done
                    work.add(result.token_layers, 1)
                    decode_used = result.decode or decode_used
                    event_work += sum(len(e.prefix_ids) for e in result.events) * pair.num_layers
                    for rec in result.records:
                        meta = prompts[by_id[rec.prompt_id]].metadata
                        rec.extra.update({f: meta.get(f) for f in config.group_by})
                        if meta.get("image"):  # which image the event read (prompts of one text tell apart by it)
                            rec.extra["image"] = meta["image"]
                    if store is not None:
                        for name, rows in result.analyses.items():
                            store.append_rows(f"{name}.jsonl", rows)
                        # the 2x2 records last: a prompt counts as done once all its boundaries are stored
                        store.append_records(result.records)
                        store.append_no_divergence(result.no_divergence)
                    for name, rows in result.analyses.items():
                        analysis_records[name] += [r.to_record() if hasattr(r, "to_record") else r for r in rows]
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
        records, no_div = in_run_order(records, list(by_id)), in_run_order(no_div, list(by_id))
        boot = BootstrapConfig(config.bootstrap, config.seed)
        cost = {
            "plan": config.plan,
            "decode": {"asked": config.decode, **decode_used},
            "token_layers_executed": work.token_layers,
            "event_prefix_token_layers": event_work,
            "fe_per_event": round(work.token_layers / event_work, 3) if event_work else None,
            "seconds": round(time.perf_counter() - started, 3),
            "prompts_processed": len(todo) - (len(precision["unprocessed"]) if precision is not None else 0),
            "prompts_resumed": resumed,
        }
        session_keys = {"cost_this_session": cost}
        if precision is not None:
            session_keys["until_ci_width"] = precision_record(precision)
        if config.verify_fp32:
            session_keys["fp32_verification"] = verify_near_ties_fp32(pair, prompts, token_ids, records, config)
        summary = build_summary(record, records, no_div, len(processed), boot, session_keys, analysis_records, run_dir=out)
        result = RunResult(summary, records, no_div, record, Path(out) if out is not None else None, analysis_records)
        if store is not None:
            result._report = write_outputs(store, summary, records, record)
        return result
