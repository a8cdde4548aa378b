"""After the fact: analyses on a finished run directory (``crosspatch consequence``,
``crosspatch features``, any registered analysis), by one path.

:func:`reopen_models` loads the run's base and the descendant it scored from the load spec its
``config.json`` records (a pair, a member of ``compare``, a ``lineage`` run: whatever the number of
roles that run had loaded); :func:`first_events` rebuilds its first-divergence events at the
headline boundary from the stored records; :func:`run_on_finished` drives an analysis' program
through the executor, appends its records, and summarises and renders the run again from its
stored files (:func:`resummarize`).
"""

from __future__ import annotations

from pathlib import Path

from ..core.cells import CellRecord, headline_boundary
from ..core.divergence import DivergenceEvent
from ..errors import CorruptRunFileError, ModelLoadError, ModelPathNotFoundError, OptionError
from .reading import image_prompts_of_run, register_run_images

_SESSION_KEYS = ("cost_this_session", "fp32_verification")  # summary keys a later summary keeps


def scored_role(config: dict) -> str:
    """The descendant role a run scored against its base."""
    roles = config.get("roles") or []
    return (config.get("options") or {}).get("tuned") or (roles[1] if len(roles) > 1 else "tuned")


def load_request(config: dict) -> tuple[str, dict | None, dict | None, dict]:
    """``(base, tuned, adapters, load options)`` that reload a run's base and scored descendant
    (one role, under its recorded name) from its ``config.json``: the recorded load spec, or for
    runs written before it was recorded, the model paths (pair or ``descendants`` layout). A run of
    models given in memory is a :class:`ModelLoadError`: nothing records where to load them from."""
    from ..execution.in_memory import IN_MEMORY

    base, tuned, adapters, options = _load_request(config)
    if IN_MEMORY in (base, *(tuned or {}).values(), *(adapters or {}).values()):
        raise ModelLoadError(
            "this run's models were given in memory (pair_from_models, pair_from_peft_model, models_from_modules, or "
            "the training callback), so an analysis after the run cannot load them again: ask for it in the run "
            "itself (crosspatch.run(..., consequence=True) or analyses=[...]), or run the saved checkpoints")
    local = {str(entry.get("path")) for entry in recorded_models(config) if entry and entry.get("local")}
    for path in (base, *(tuned or {}).values(), *(adapters or {}).values()):
        if path in local and not Path(path).is_absolute() and not Path(path).expanduser().is_dir():
            raise ModelPathNotFoundError(
                f"the run recorded a model as {path}, a path relative to the directory it ran in (runs "
                f"written before crosspatch recorded absolute paths), and {Path(path).absolute()} is no directory: "
                "run this command from the directory the run ran in")
    return base, tuned, adapters, options


def recorded_models(stored_config: dict) -> list[dict | None]:
    """The provenance entries a run's config records for its models (``path``, ``weights``: file
    name -> sha256, or None where not hashed): the base's (None if missing), then the descendant's
    or adapter's, or every descendant's of a run that loaded several."""
    models = stored_config.get("models") or {}
    return [models.get("base")] + ([models[k] for k in ("tuned", "adapter") if k in models]
                                   or list((models.get("descendants") or {}).values()))


def _load_request(config: dict) -> tuple[str, dict | None, dict | None, dict]:
    role = scored_role(config)
    spec = config.get("load_spec")
    if spec is not None:
        tuned, adapters = spec.get("tuned") or {}, spec.get("adapters") or {}
        if role not in tuned and role not in adapters:
            raise ModelLoadError(f"the run's load spec has no descendant {role!r} (roles: "
                                 f"{', '.join([*tuned, *adapters]) or 'none'})")
        options = dict(spec.get("options") or {})
        pick = ({role: tuned[role]}, None) if role in tuned else (None, {role: adapters[role]})
        return spec["base"], pick[0], pick[1], options
    models = config.get("models") or {}
    options = dict(config.get("load_options") or {})
    if "descendants" in models:
        entry = models["descendants"].get(role)
        if entry is None:
            raise ModelLoadError(f"the run records no descendant {role!r}")
        pick = (None, {role: entry["path"]}) if entry.get("kind") == "adapter" else ({role: entry["path"]}, None)
    elif "adapter" in models:
        pick = (None, {role: models["adapter"]["path"]})
    else:
        pick = ({role: models.get("tuned", {}).get("path")}, None)
    return models["base"]["path"], pick[0], pick[1], options


def reopen_models(config: dict):
    """The run's base and scored descendant, loaded as the run recorded them (residency chosen
    afresh: the run may have had more models in memory)."""
    from ..execution import load_models

    base, tuned, adapters, options = load_request(config)
    try:
        return load_models(base, tuned=tuned, adapters=adapters, options=recorded_load_options(options))
    except ModelPathNotFoundError as exc:  # (the flag it names is the run's, not this command's)
        raise ModelPathNotFoundError(
            f"{exc}: this command loads the run's models again from where its config.json records them; put them "
            "back at those paths (a run directory read on another machine needs them there too)") from None


def recorded_load_options(options: dict):
    """The :class:`LoadOptions` a run recorded (the residency aside: it is chosen afresh)."""
    from ..models.loading import LoadOptions

    known = set(LoadOptions.__dataclass_fields__)
    return LoadOptions(**{k: v for k, v in options.items() if k in known and k != "residency"})


def first_events(store, config: dict) -> tuple[int, list[CellRecord], list[DivergenceEvent]]:
    """The headline boundary, its valid first-divergence records and their events."""
    b = headline_boundary(config["resolved_boundaries"], config["num_layers"], config["options"]["boundary"])
    records = [r for r in store.load_records() if r.boundary == b and r.kind == "first_diff" and r.valid]
    if any(r.prefix_ids is None for r in records):
        raise CorruptRunFileError(f"{store.path}: its records lack prefix ids (made by an older crosspatch); "
                                  "run it again")
    events = [DivergenceEvent(r.prompt_id, r.category, r.prompt_len, r.position, r.prefix_ids, r.t_pt, r.t_it)
              for r in records]
    return b, records, events


def stored_analyses(store, skip_torn_tail: bool = False) -> dict[str, list[dict]]:
    """Every analysis' stored records, by records-file stem (``skip_torn_tail``: a reader that
    writes nothing reads the lines before a last line a killed command left torn)."""
    from ..store import EVENTS_FILE, NO_DIV_FILE

    names = [n for n in store.records_files() if n not in (EVENTS_FILE, NO_DIV_FILE)]
    return {n[: -len(".jsonl")]: store.load_rows(n, skip_torn_tail) for n in names}


def resummarize(store, config: dict | None = None) -> dict:
    """Summarise a run again from its stored files (what the run itself would have written with
    these records), keep the previous summary's session keys, write summary.json and both
    reports; returns the summary."""
    from ..core.stats import BootstrapConfig
    from ..report.render import render_reports
    from .summary import build_summary

    config = config or store.config()
    old = store.summary()
    opts = config["options"]
    records = store.load_records()
    no_div = store.load_no_divergence()
    session_keys = {k: old[k] for k in _SESSION_KEYS if k in old}
    summary = build_summary(config, records, no_div, old["counts"]["prompts"],
                            BootstrapConfig(opts.get("bootstrap", 2000), opts.get("seed", 0)), session_keys,
                            stored_analyses(store), run_dir=store.path)
    store.write_summary(summary)
    render_reports(store, summary, config)
    return summary


def run_on_finished(run_dir: str | Path, analysis, events: list[DivergenceEvent] | None = None,
                    check_models=None, prompts: list | None = None, progress=False) -> dict:
    """Run ``analysis`` (an :class:`~crosspatch.core.analysis.Analysis`, or the name of a registered
    plug-in, built with its default options) on a finished run's first-divergence events (or on
    ``events``, a subset of them), append its records to ``<name>.jsonl``, and summarise and
    render the run again. ``check_models(models)`` may refuse the loaded models before any pass. An
    image run's images come from ``prompts`` (a prompt file a command was given), else from the
    run's own prompt file (:func:`~crosspatch.runner.reading.register_run_images`). The events go
    in chunks of the run's own size (:func:`~crosspatch.execution.batching.chunk_size`), each
    chunk's records appended as soon as it is scored: an interrupted call keeps the chunks it
    finished, and a call again skips the events ``<name>.jsonl`` already scores
    (:func:`scored_event_keys`). Rows scored with other settings than an analysis object's are not
    told apart here: such an analysis records its settings in its rows and refuses rows of others
    itself, as ``consequence`` does (:func:`~crosspatch.analyses.consequence.check_stored_consequences`);
    one given by name is built from the run's recorded options, the same each time. An analysis
    that records nothing on any event (``routing`` on
    dense models) is an :class:`OptionError`, the run unchanged. ``progress``: as :func:`run`'s (True:
    bars on a terminal, lines otherwise; a function of one line; False). Holds the run directory's
    lock. Returns the new summary."""
    from ..core.analysis import EventSet, drive_apart
    from ..core.plugin_calls import guarded_program
    from ..execution import Executor
    from ..execution.batching import chunk_size
    from ..models.options import check_progress
    from ..store import RunStore
    from .config import RunConfig
    from .progress import progress_display

    check_progress(progress)

    store = RunStore(run_dir)
    with store.lock(create=False):
        config = store.config()
        store.summary()  # the run must have finished
        if isinstance(analysis, str):
            analysis = build_for_finished(analysis, config)
        if getattr(analysis, "scores_cells", False):
            raise OptionError(f"analysis {analysis.name!r} scores more events with the 2x2 while a run searches; it "
                              "cannot be added to a finished run: run again with the option that enables it "
                              "(event kinds: --event-kinds) into a new --out")
        if events is None:
            _, _, events = first_events(store, config)
        # (an interrupted or repeated call: the events it recorded rows for are done; a torn last line is cut on append)
        done = scored_event_keys(store.load_rows(f"{analysis.name}.jsonl", skip_torn_tail=True))
        asked, events = len(events), [e for e in events if e.key not in done]
        recorded = 0
        if events:
            images, _ = image_prompts_of_run(config, events, prompts, base=load_request(config)[0])  # before loading
            models = reopen_models(config)
            try:
                if check_models is not None:
                    check_models(models)
                register_run_images(models, config, events, images)
                ex = Executor.for_run(models, config["options"])
                opts, defaults = config["options"], RunConfig()
                chunk = chunk_size(models.residency, opts.get("batch_size") or defaults.batch_size,
                                   opts.get("sequential_chunk") or defaults.sequential_chunk)
                with progress_display(progress) as bar:
                    task = bar.add_task(f"{analysis.name} (events)", total=len(events))
                    for start in range(0, len(events), chunk):
                        evset = EventSet(events[start:start + chunk], models.base, models.roles[1], None)
                        rows = [row for _, part in drive_apart(ex, evset, lambda p: guarded_program(analysis, ex, p))
                                for row in part]
                        store.append_rows(f"{analysis.name}.jsonl", rows)  # (as records: to_record where it has one)
                        recorded += len(rows)
                        bar.update(task, advance=len(evset.events))
            finally:
                models.release()
            if not recorded and len(events) == asked:  # (none before either: the analysis says nothing here)
                from ..core.registry import registered

                what = _described(registered().get(analysis.name))
                raise OptionError(f"analysis {analysis.name!r}{what} recorded nothing on this run's {len(events)} "
                                  "event(s): it does not apply to these models; the run is unchanged")
        return resummarize(store, config)


def scored_event_keys(rows: list[dict]) -> set[str]:
    """The keys of the events an analysis' stored rows score: a row's ``event_key``, else the event
    of its :class:`~crosspatch.core.records.RecordKey` ``key``."""
    from ..core.records import RecordKey

    keys = set()
    for row in rows:
        if isinstance(row.get("event_key"), str):
            keys.add(row["event_key"])
        elif isinstance(row.get("key"), str):
            try:
                keys.add(RecordKey.parse(row["key"]).event)
            except ValueError:
                pass
    return keys


def _described(plugin) -> str:
    """`` (its description)`` of a registered analysis, to follow its name in a message ('' without one)."""
    return f" ({plugin.description})" if plugin is not None and plugin.description else ""


def build_for_finished(name: str, config: dict):
    """A registered plug-in's analysis, built for a finished run from its recorded options."""
    from types import SimpleNamespace

    from ..core.plugin_calls import call_plugin
    from ..core.registry import PlanContext, get_analysis

    plugin = get_analysis(name)
    what = _described(plugin)  # (names the command of one that has its own)
    if plugin.build is None:
        raise OptionError(f"analysis {name!r}{what} runs no passes here: it is summarised from the stored records "
                          "alone (crosspatch report), or they come from its own command")
    opts = config["options"]
    boundaries = config["resolved_boundaries"]
    context = PlanContext.for_run(SimpleNamespace(**opts), boundaries, config["num_layers"])
    analysis = call_plugin(name, "build", plugin.build, plugin.make_options((opts.get("analysis_options") or {}).get(name)),
                           context)
    if analysis is None:
        raise OptionError(f"analysis {name!r}{what} has nothing to run on this run's settings")
    return analysis
