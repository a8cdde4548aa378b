"""The after-the-fact commands, each on a finished run directory through the one path of
:mod:`crosspatch.runner.finished`: ``crosspatch consequence`` (:func:`consequence_for_run`) and
``crosspatch features train|mediate`` (:func:`run_features`). Both work on every run directory
crosspatch writes (a pair, a compare member, a lineage run) and hold its lock while they write."""

from __future__ import annotations

import time
from pathlib import Path

from ..analyses.consequence import (
    CONSEQUENCE_FILE,
    PARTIAL_FILE,
    Consequence,
    _record_partial,
    check_prompt_set,
    check_prompt_texts,
    check_stored_consequences,
    validators_of,
)
from ..analyses.features import cache_activations
from ..analyses.features.crosscoder import load_crosscoder, quality_gate, save_crosscoder, train_crosscoder
from ..analyses.features.study import Closure, FeatureStudy, split_events
from ..errors import OptionError
from ..execution import Executor
from ..inputs.prompts import as_prompts
from ..models.cached import checkable
from ..models.config_dicts import local_max_positions, local_rope_switch, local_sparse_topk
from ..models.options import check_progress
from ..models.own_forward import without_autocast
from ..store import RunStore, json_document, write_whole
from .checks import check_continuation_lengths
from .finished import first_events, load_request, recorded_load_options, reopen_models, resummarize, run_on_finished
from .gathered import drive_gathered
from .reading import check_prompt_texts as read_prompt_texts
from .reading import image_prompts_of_run, register_run_images

__all__ = ["consequence_for_run", "run_features"]


def consequence_for_run(run_dir: str | Path, prompts, budget: int = 32, with_pt: bool = False,
                        progress=False, allow_partial: bool = False, overwrite: bool = False) -> dict:
    """``crosspatch consequence RUN_DIR``: forced-token continuations of a finished run's
    first-divergence events (prompts give the validators); resumable (events already scored in
    consequence.jsonl are skipped; scored with other settings, a named error unless ``overwrite``,
    which scores every event afresh in place of them, once the inputs are checked); the events are
    scored chunk by chunk, each chunk's rows appended when done, so an interrupted call keeps what
    it scored. ``progress``: as :func:`~crosspatch.runner.pipeline.run`'s. Works on every run
    directory crosspatch writes (a pair, a compare member, a lineage run). Updates summary.json and
    the reports; returns the block."""
    from .checks import _int
    from .config import check_switches

    _int("budget (--budget)", budget, 1)
    check_switches(with_pt=with_pt, allow_partial=allow_partial, overwrite=overwrite)
    check_progress(progress)
    store = RunStore(run_dir)
    config = store.config()
    store.summary()  # the run must have finished
    given = as_prompts(prompts)
    validators = validators_of(given)
    if not validators:
        raise OptionError("no prompt carries a 'validator' field: nothing to score")
    run_ids = set(config.get("prompt_ids") or [])
    if run_ids and not run_ids & set(validators):
        shown = ", ".join(sorted(validators)[:5])
        raise OptionError(f"none of the {len(validators)} prompt(s) with a validator ({shown}"
                          f"{', ...' if len(validators) > 5 else ''}) is a prompt of the run in {store.path}: "
                          "give the run's own prompt file, with 'validator' fields added")
    _, _, events = first_events(store, config)
    partial = check_prompt_set(run_ids, [p.id for p in given], {e.prompt_id for e in events}, store.path,
                               allow_partial)
    unchecked = check_prompt_texts(config, given, store.path)
    if unchecked:  # a partial file: each of its prompts with a validator and an event, token by token
        unchecked = check_prompt_tokens(config, given, validators, events, store.path)
    partial += unchecked if partial else []  # a file lacking only prompts without events is no partial scoring
    seed = config["options"].get("seed", 0)
    # (a call killed while it appended left a torn last line: its event is scored again, the line cut as rows append)
    stored = [] if overwrite else store.load_rows(CONSEQUENCE_FILE, skip_torn_tail=True)
    check_stored_consequences(stored, validators, budget, with_pt, seed, store.path / CONSEQUENCE_FILE)
    done = {row["event_key"] for row in stored}
    events = [e for e in events if e.prompt_id in validators and e.key not in done]
    # before loading: the file holds the images of the events it scores
    base, _, _, load = load_request(config)
    base = checkable(base, load.get("revision"))  # (a hub id: its whole snapshot in the local cache)
    image_prompts_of_run(config, events, given, base=base)
    lengths = {e.key: len(e.prefix_ids) for e in events}
    check_continuation_lengths(lengths, budget, local_max_positions(base), local_sparse_topk(base),
                               local_rope_switch(base))
    record, scored = store.path / PARTIAL_FILE, store.path / CONSEQUENCE_FILE
    before = record.read_text(encoding="utf-8") if record.is_file() else None
    size_before = scored.stat().st_size if scored.is_file() else None
    with store.lock(create=False):  # what this call left out, kept beside the records so every later summary reports it
        if overwrite:  # (asked for, and every input checked: the continuations of other settings go)
            scored.unlink(missing_ok=True)
        _record_partial(store.path, partial)
    try:
        if events:
            summary = run_on_finished(run_dir, Consequence(validators, budget, with_pt, seed), events,
                                      check_models=lambda models: check_continuation_lengths(
                                          lengths, budget, models.facts[models.base].get("max_positions"),
                                          models.facts[models.base].get("sparse_topk"),
                                          models.facts[models.base].get("rope_switch")), prompts=given,
                                      progress=progress)
        else:
            with store.lock(create=False):
                summary = resummarize(store, config)
    except BaseException:  # a call that scored nothing leaves the record of the last call that did
        with store.lock(create=False):
            # (one that appended rows keeps them, to resume from, with the record of what it left out)
            if (scored.stat().st_size if scored.is_file() else None) != size_before:
                raise
            if before is None:
                record.unlink(missing_ok=True)
            else:
                write_whole(record, before)
        raise
    return summary.get("consequences") or {}



def run_features(run_dir, crosscoder_dir=None, n_layers: int = 3, n_latents: int = 256, k: int = 8,
                 steps: int = 1500, train_only: bool = False, log=print, engine: str | None = None,
                 workers: int | None = None) -> dict:
    """Train (or load) the crosscoder on a run's events, then mediation, rescue and closure
    (holding the run directory's lock; works on every run directory crosspatch writes, a merged
    sharded run included). The study and the closure run on ``engine`` (default: the run's own;
    ``ray``: both their passes spread over ``workers`` actors, the same result)."""
    from ..execution import ENGINES
    from .checks import _int
    from .config import check_switches

    for value, name in ((n_layers, "n_layers (--layers)"), (n_latents, "n_latents (--latents)"), (k, "k (--k)"),
                        (steps, "steps (--steps)")):
        _int(name, value, 1)
    if k > n_latents:
        raise OptionError(f"--k {k} cannot exceed --latents {n_latents}")
    check_switches(train_only=train_only)
    if not callable(log):
        raise OptionError(f"log must be a function of one message, not {log!r}")
    if crosscoder_dir is not None and (not isinstance(crosscoder_dir, (str, Path)) or not str(crosscoder_dir).strip()):
        raise OptionError(f"--crosscoder must be a crosscoder's directory, not {crosscoder_dir!r}")
    if engine is not None and engine not in ENGINES:
        raise OptionError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if workers is not None:
        _int("workers", workers, 1)
    store = RunStore(run_dir)
    # outside a caller's autocast: the crosscoder's sums (the gate, the study's edits) in float32 as the passes
    with store.lock(create=False), without_autocast():  # one writer per run directory
        return _run_features(store, crosscoder_dir, n_layers, n_latents, k, steps, train_only, log, engine, workers)


def _run_features(store, crosscoder_dir, n_layers, n_latents, k, steps, train_only, log, engine, workers) -> dict:
    config = store.config()
    store.summary()  # the run must have finished
    boundary, _, events = first_events(store, config)
    # before loading: the run's images can still be found, and the study's engine can pass them
    base, _, _, load = load_request(config)
    images, needed = image_prompts_of_run(config, events, base=checkable(base, load.get("revision")))
    if needed and not train_only and (engine or config["options"].get("engine", "local")) != "local":
        raise OptionError("this run's events hold images: its feature study runs with the local engine (--engine local)")
    train, held = split_events(events)
    needs = "a training half" if train_only else "a training and a held-out half"
    if (crosscoder_dir is None and not train) or (not train_only and not (train and held)):
        raise OptionError(
            f"{store.path}: the feature study needs first-divergence events for {needs} (split by prompt); this run has "
            f"{len(events)} valid event(s) at boundary {boundary} ({len(train)} training, {len(held)} held out). Run "
            "more prompts")
    pair = reopen_models(config)
    register_run_images(pair, config, events, images)
    ex = Executor.for_run(pair, config["options"])
    out = store.path / "features"
    started = time.perf_counter()
    if crosscoder_dir is not None:
        cc = load_crosscoder(crosscoder_dir)
        layers = cc.config.layers or list(range(pair.num_layers - n_layers, pair.num_layers))
        if cc.config.d_in != len(layers) * pair.hidden_size or not all(boundary <= x < pair.num_layers for x in layers):
            raise OptionError(
                f"--crosscoder {crosscoder_dir} reads layers {layers} with {cc.config.d_in} inputs; this run's late "
                f"stack is layers {boundary}..{pair.num_layers - 1} of width {pair.hidden_size}: it was trained on "
                "another model or boundary")
    else:
        layers = list(range(max(boundary, pair.num_layers - n_layers), pair.num_layers))
        if len(layers) < n_layers:
            log(f"--layers {n_layers}: the crosscoder reads the {len(layers)} layer(s) above boundary {boundary} "
                f"({layers[0]}..{layers[-1]}), all there are")
        x_pt, x_it = cache_activations(ex, train, boundary, layers, out / "activations", log=log)
        cc = train_crosscoder(x_pt, x_it, layers, pair.hidden_size, n_latents=n_latents, k=k, steps=steps, log=log)
        save_crosscoder(cc, out / "crosscoder")
    h_pt, h_it = cache_activations(ex, held, boundary, layers, out / "activations_heldout", log=log) if held else (None, None)
    gate = quality_gate(cc, h_pt, h_it) if h_pt is not None and h_it is not None and len(h_pt) else None
    result = {"boundary": boundary, "layers": layers, "n_latents": cc.config.n_latents, "k": cc.config.k,
              "source": cc.config.source, "quality_gate": gate, "train_seconds": round(time.perf_counter() - started, 1)}
    if not train_only:
        options = config["options"]
        engine = engine or options.get("engine", "local")
        if engine != "local":
            pair.release()  # the workers load their own copies
        result["study"], result["closure"] = drive_gathered(  # each splits the events by prompt as above
            pair, [FeatureStudy(cc, boundary), Closure(boundary)], events, options, engine=engine,
            workers=workers or options.get("workers", 2))
        result["engine"] = engine
        if gate is not None and not gate["passed"]:
            result["note"] = "the crosscoder failed its quality gate: read the mediation results with caution"
    pair.release()
    out.mkdir(parents=True, exist_ok=True)
    name = "train" if train_only else "mediate"  # each command's result kept beside the other's
    result["result"] = name
    write_whole(out / f"{name}.json", json_document(result))
    resummarize(store, config)  # the features plug-in reads the results into summary.json and the reports
    return result


def check_prompt_tokens(config: dict, given: list, validators: dict, events: list, path) -> list[str]:
    """A partial prompt file (:func:`check_prompt_texts` cannot compare it as a whole): each of its
    text prompts that carries a validator and has an event is read as the run read it (chat
    template, tokenizers) and must give the tokens the run's event starts with; else a
    :class:`PromptSetMismatchError` naming them (image prompts: once loaded, by
    :func:`~crosspatch.runner.reading.register_run_images`). Returns what the summary says of it."""
    from ..errors import PromptSetMismatchError

    prompt_tokens = {e.prompt_id: list(e.prefix_ids[: e.prompt_len]) for e in events}
    scored = [p for p in given if p.id in validators and p.id in prompt_tokens]
    read = prompt_ids_as_run(config, scored)
    differ = [p.id for p in scored if p.id in read and read[p.id] != prompt_tokens[p.id]]
    if differ:
        shown = ", ".join(map(repr, differ[:5])) + (", ..." if len(differ) > 5 else "")
        raise PromptSetMismatchError(
            f"prompt(s) {shown} of the file are not the prompts the run in {path} scored under those ids (their "
            "tokens differ from the run's), so their validators would judge continuations of other prompts. Give the "
            "run's own prompts with 'validator' fields added")
    images = [p.id for p in scored if p.id not in read]
    return [f"the file is not the run's whole prompt set: its {len(read)} text prompt(s) with a validator and an event "
            "were checked token by token against the run's"
            + (f"; its {len(images)} image prompt(s) are checked token by token once the models' processors load, "
               "but their images cannot be compared with the run's and are taken to be the same" if images else "")]


def prompt_ids_as_run(config: dict, prompts: list) -> dict[str, list[int]]:
    """The token ids the run fed both models for each text prompt of ``prompts`` (its chat template
    and tokenizers as recorded; image prompts are left out), read from the tokenizers alone."""
    base, tuned, adapters, options = load_request(config)
    descendant = [(path, False) for path in (tuned or {}).values()] + [(path, True) for path in (adapters or {}).values()]
    return read_prompt_texts(base, descendant, prompts, recorded_load_options(options),
                             bool(config["options"].get("chat_template")))
