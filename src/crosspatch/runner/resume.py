"""Resuming: a finished run recognised before any model loads (:func:`finished_result`), and
``--until-ci-width``'s bookkeeping (whether the interval is narrow enough, which prompts were
processed, what the summary says of it)."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.cells import headline_boundary
from ..core.stats import BootstrapConfig
from ..errors import CrosspatchError
from ..inputs.prompts import Prompt, as_prompts, prompts_digest
from ..store import RESULT_RULES, RunStore, completed_prompts, json_value
from .config import RunConfig, normalise_run_config, resolve_boundaries
from .finished import recorded_models
from .result import RunResult
from .shards import select_shard

# what decides how a run computes, never what it stores (resuming with other values is allowed): a
# finished run asked for again with other values of these is the same run, nothing to load
SPEED_ONLY = ("batch_size", "max_batch_tokens", "decode", "engine", "workers", "sequential_chunk")
SPEED_ONLY_LOADING = ("residency", "verbose")


def _without(mapping, keys: tuple[str, ...]):
    """``mapping`` without ``keys`` (anything that is no mapping, as it is)."""
    return {k: v for k, v in mapping.items() if k not in keys} if isinstance(mapping, dict) else mapping


def _results_spec(spec):
    """A ``load_spec`` without its load options of speed alone (:data:`SPEED_ONLY_LOADING`)."""
    return {**spec, "options": _without(spec.get("options"), SPEED_ONLY_LOADING)} if isinstance(spec, dict) else spec


def finished_result(out: str | Path, base: str, tuned: dict[str, str], adapters: dict[str, str], options,
                    prompts, config: RunConfig) -> RunResult | None:
    """The stored result of ``out`` when it already holds this very run, finished: the same load
    request (paths and load options), unchanged weight and defining files (their sha256 recomputed), the same
    options, boundaries and prompts (options of speed alone, :data:`SPEED_ONLY`, and the residency
    aside), every prompt done and a summary written. None otherwise (the
    caller loads the models and ``run`` resumes, refuses or replaces as usual). Nothing is loaded
    or written: the command that finished the run says so instantly. A run whose reports were not all
    written (it stopped on a full disk) is not finished here: the normal path writes them."""
    from dataclasses import asdict, replace

    from ..execution.opening import load_spec
    from ..models.loading import provenance
    from ..store.identity import scored_role_named

    path = Path(out)
    if not (path / "config.json").is_file() or not (path / "summary.json").is_file():
        return None
    config = normalise_run_config(replace(config))
    if config.until_ci_width is not None or config.synthetic_nulls or config.verify_fp32:
        return None  # these decide or measure in the session itself
    store = RunStore(path)
    try:
        stored = store.config()
        # (the residency is left aside, so it is not resolved: that reads every adapter's files)
        spec = json.loads(json.dumps(load_spec(base, tuned, adapters, options), default=json_value))
        if _results_spec(spec) != _results_spec(stored.get("load_spec")):
            return None
        asked = json.loads(json.dumps(asdict(config), default=json_value))
        asked, recorded = (scored_role_named(o, stored.get("roles")) for o in (asked, stored.get("options")))
        if _without(asked, SPEED_ONLY) != _without(recorded, SPEED_ONLY):
            return None
        for entry in recorded_models(stored):
            if entry is None:
                return None
            now = provenance(entry["path"], options)
            if any(now.get(key) != entry.get(key) for key in ("weights", "files")):
                return None  # a weight or defining file changed (or was never hashed)
        all_prompts = as_prompts(prompts)
        parts = stored.get("fingerprint_inputs", {})
        if parts.get("prompts") != prompts_digest(all_prompts) or parts.get("result_rules") != RESULT_RULES:
            return None  # other prompts, or a result of an older crosspatch: the normal path says so
        if resolve_boundaries(config, stored["num_layers"]) != stored["resolved_boundaries"]:
            return None
        return _stored_if_finished(store, stored, {p.id for p in select_shard(all_prompts, config.shard)})
    except (CrosspatchError, OSError, KeyError, TypeError, ValueError):
        return None  # anything unusual: the normal path decides, with its named errors


def _stored_if_finished(store: RunStore, stored: dict, wanted: set[str]) -> RunResult | None:
    """The stored result of the run ``store`` holds (its config ``stored``) when every prompt of
    ``wanted`` is done and its summary and reports are written, else None (a run stopped while
    writing its reports, on a full disk: the normal path writes them)."""
    from .finished import stored_analyses

    boundaries = stored["resolved_boundaries"]
    records, no_div = store.load_records(), store.load_no_divergence()
    if not wanted <= completed_prompts(records, no_div, boundaries):
        return None
    summary = store.summary()
    if not all((store.path / name).is_file() for name in finished_outputs(boundaries)):
        return None
    return RunResult(summary, records, no_div, stored, store.path, stored_analyses(store, skip_torn_tail=True))


def finished_read_only(out: str | Path | None, record: dict, prompts: list[Prompt], config: RunConfig,
                       resume: bool = True, overwrite: bool = False) -> RunResult | None:
    """The stored result of ``out`` when this process cannot write there and it already holds the
    very run ``record`` describes (its fingerprint: the same models, options, boundaries and
    prompts), finished with its reports written: :func:`~crosspatch.runner.pipeline.run` given
    models in memory returns it as it stands, as the command line does (:func:`finished_result`),
    where recomputing it would only fail to write what is there. None otherwise (a writable
    directory, another or an unfinished run: the normal path resumes, refuses or names the write
    error; no ``out``, ``resume=False`` or ``overwrite``: the same). Nothing is written."""
    import os

    if out is None or not resume or overwrite:
        return None
    path = Path(out)
    if not path.is_dir() or os.access(path, os.W_OK | os.X_OK):
        return None
    if config.until_ci_width is not None or config.synthetic_nulls or config.verify_fp32:
        return None  # these decide or measure in the session itself
    store = RunStore(path)
    try:
        stored = store.config()
        if stored.get("fingerprint") != record.get("fingerprint"):
            return None
        return _stored_if_finished(store, stored, {p.id for p in prompts})
    except (CrosspatchError, OSError, KeyError, TypeError, ValueError):
        return None  # anything unusual: the normal path decides, with its named errors


def refuse_before_loading(out: str | Path, prompts, config: RunConfig, resume: bool = True,
                          models: tuple[str, dict[str, str], object] | None = None) -> None:
    """Before any model loads, what the run would refuse in ``out`` once both models had loaded
    (minutes for a large pair), with the same named error: a run of other options, boundaries,
    prompts or shard (:class:`~crosspatch.errors.RunSettingsMismatchError`, the changes listed); a
    config.json that is damaged or of another format; records that are damaged or of another run
    (a last line cut off by an interruption is let pass: the resume cuts it); with ``resume=False``
    (``--no-resume``), a run of these settings (:class:`~crosspatch.errors.RunDirectoryError`). With
    ``models`` (the base's path, each descendant role's path, the load options), a local model of
    another weight or defining file than the run's in the same role is named too (the rest of the
    models' record needs the loaded set: compared once loaded); a directory without a run and a run
    with synthetic nulls (whose roles are made in the run) are left to the run."""
    from dataclasses import replace

    from ..errors import RunSettingsMismatchError
    from ..store import settings_diff
    from ..store.identity import named_inputs, scored_role_named
    from .config import result_options

    path = Path(out)
    store = RunStore(path)
    if config.synthetic_nulls or not (path / "config.json").is_file() or not store.is_run():
        return
    stored = store.config()  # damaged, or of another format: the run's own error, now
    try:
        parts = named_inputs(stored)  # ({} for a config without them: left to the run)
        config = normalise_run_config(replace(config))
        boundaries = resolve_boundaries(config, stored["num_layers"])
        now = {"options": scored_role_named(result_options(config), stored.get("roles")), "boundaries": boundaries,
               "headline_boundary": headline_boundary(boundaries, stored["num_layers"], config.boundary),
               "prompts": prompts_digest(as_prompts(prompts))}
        if not all(key in parts for key in now):
            return
        now["result_rules"] = RESULT_RULES  # absent from a run of a crosspatch older than the key
    except (CrosspatchError, KeyError, TypeError, ValueError):
        return  # anything unusual: the run decides, with its named errors
    stored_parts = {key: parts.get(key) for key in now} | {"shard": stored.get("options", {}).get("shard")}
    changes = settings_diff(stored_parts, json.loads(json.dumps(now | {"shard": config.shard}, default=json_value)))
    if models is not None and isinstance(parts.get("models"), dict):
        changes += _model_changes(parts["models"], *models)
    if changes:
        raise RunSettingsMismatchError(f"{path} holds a run with other settings ({'; '.join(changes[:8])}). Use another "
                                       "--out, or --overwrite to replace that run (no model was loaded)")
    if not resume:
        from ..errors import RunDirectoryError

        raise RunDirectoryError(f"{path} already holds a run of these options and prompts; run without --no-resume to "
                                "finish it, or pass --overwrite to start it afresh (no model was loaded)")
    store.check_records(torn_tails=True)


def _model_changes(recorded: dict, base: str, descendants: dict[str, str], options) -> list[str]:
    """``models.ROLE.weights`` / ``.files`` for each role the run recorded (its fingerprint's
    models) and is given again whose local model has other weight or defining files now (their
    sha256, remembered between runs); roles not in both, hub models and unhashed weights are left
    to the check after loading."""
    from ..models.loading import provenance

    single = [k for k in ("tuned", "adapter") if k in recorded]
    if single:
        if len(descendants) != 1:
            return []
        by_role = {"base": recorded.get("base"), next(iter(descendants)): recorded[single[0]]}
    else:
        by_role = {"base": recorded.get("base"), **(recorded.get("descendants") or {})}
    changes = []
    for role, path in {"base": base, **descendants}.items():
        entry = by_role.get(role)
        if not isinstance(entry, dict) or not entry.get("local"):
            continue
        weights = entry.get("weights")
        if not isinstance(weights, dict) or not weights or not all(isinstance(v, str) for v in weights.values()):
            continue
        now = provenance(path, options)
        if not all(isinstance(v, str) for v in (now.get("weights") or {}).values()):
            continue  # not hashed this time (hash_weights off): nothing to compare
        changes += [f"models.{role}.{part}: another model's ({path})" for part in ("weights", "files")
                    if now.get(part) is not None and now.get(part) != entry.get(part)]
    return changes


def finished_outputs(boundaries: list) -> list[str]:
    """The files a finished run directory holds besides its records: the table, the reports and,
    for several boundaries, the sweep's plots (each written whole or not at all)."""
    return ["events.parquet", "report.md", "report.html"] + (["sweep.png", "sweep.svg"] if len(boundaries) > 1 else [])


def processed_prompts(precision: dict | None, prompts: list[Prompt], records, no_div, boundaries) -> list[Prompt]:
    """The prompts this run accounts for: all of them, or with ``--until-ci-width`` those processed
    before the target was reached (the others are recorded in ``precision``)."""
    if precision is None:
        return prompts
    done = completed_prompts(records, no_div, boundaries)
    unprocessed = [p.id for p in prompts if p.id not in done]
    precision.update(prompts_processed=len(prompts) - len(unprocessed), prompts_total=len(prompts),
                     unprocessed=unprocessed)
    return [p for p in prompts if p.id in done]


def precision_reached(precision: dict, records, boundaries: list[int], num_layers: int, config: RunConfig) -> bool:
    """Whether the interaction's 95% half-width at the headline boundary (common-IT, first
    divergences, prompt-cluster bootstrap) is at most ``precision["target"]``; updates it."""
    from ..core.stats import cell_matrix, effect_block

    headline = headline_boundary(boundaries, num_layers, config.boundary)
    first = [r for r in records if r.boundary == headline and r.kind == "first_diff" and r.valid]
    if not first:
        return False
    ci = effect_block(cell_matrix(first, "common_it"), [r.prompt_id for r in first],
                      BootstrapConfig(max(config.bootstrap, 200), config.seed))["effects"]["interaction"]["ci"]
    if ci is None or None in ci:
        return False
    precision["half_width"] = (ci[1] - ci[0]) / 2
    precision["reached"] = precision["half_width"] <= precision["target"]
    return precision["reached"]


def precision_record(precision: dict) -> dict:
    """What ``--until-ci-width`` did, in words and numbers (summary.json ``until_ci_width``)."""
    out = {k: v for k, v in precision.items() if k != "unprocessed"}
    out["unprocessed_prompts"] = list(precision["unprocessed"])
    hw = precision["half_width"]
    out["message"] = (
        f"the interaction's 95% half-width reached {hw:.3f} <= {precision['target']} after "
        f"{precision['prompts_processed']} of {precision['prompts_total']} prompts; the other "
        f"{len(precision['unprocessed'])} were not processed (run again with a smaller width to add them)"
        if precision["reached"] else
        f"the prompts ran out: {precision['prompts_total']} processed, half-width "
        + (f"{hw:.3f}" if hw is not None else "n/a") + f" > {precision['target']} (add prompts)")
    return out
