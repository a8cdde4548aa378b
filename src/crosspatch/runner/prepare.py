"""What a run prepares before any chunk: the prompts as token ids (chat template, images), the
null descendants it adds, and the record of everything it was asked that goes into config.json."""

from __future__ import annotations

import os
from dataclasses import asdict, replace

from ..core.cells import headline_boundary
from ..errors import OptionError
from ..execution import ModelSet
from ..inputs.prompts import Prompt, prompts_digest
from ..store import CONFIG_SCHEMA, RESULT_RULES, environment, fingerprint
from .config import RunConfig, normalise_run_config, resolve_boundaries, result_options  # noqa: F401

# how a run reads its prompts (chat template, tokenizers, images): in runner/reading.py, importable from here
from .reading import _prompt_text, check_prompt_texts, prompt_token_ids, render_chat  # noqa: F401

# the run's pieces, each in its own module; importable from here as before
from .result import Rendered, RunResult, rerender, rerender_run, write_outputs  # noqa: F401
from .resume import finished_result, precision_reached, precision_record, processed_prompts  # noqa: F401
from .shards import merge_runs, select_shard  # noqa: F401


def model_identity(entry):
    """What names a model in the run's fingerprint (its ``provenance`` entry, or a role -> entry
    map): a hub id as given, with its revision; a local directory by its weight files' sha256,
    so that the same model given as ``./base``, ``base/`` or an absolute path, or found at
    another place on another machine's disk (the shards of one run), is the same run; by its
    resolved path where its weights were not hashed."""
    from ..models.paths import path_key

    if not isinstance(entry, dict):
        return entry
    if "path" not in entry:
        return {k: model_identity(v) for k, v in entry.items()}
    if not entry.get("local"):
        return entry
    weights = entry.get("weights") or {}
    if weights and all(isinstance(v, str) for v in weights.values()):
        return {k: v for k, v in entry.items() if k != "path"}
    return entry | {"path": path_key(entry["path"])}


def build_config_record(pair: ModelSet, prompts: list[Prompt], config: RunConfig, boundaries: list[int],
                        shard_ids: list[str] | None = None, read_roles=()) -> dict:
    """config.json of a run of ``pair`` (every model it loaded recorded), with its fingerprint:
    the options and prompts that change results, and the models the run reads, which are the base,
    the descendant, its nulls and ``read_roles`` (other descendants its analyses read): a model set
    that holds more descendants, as a compare given one more does, leaves the run the same."""
    options = asdict(config)
    digest = prompts_digest(prompts)
    models = {k: model_identity(v) if k != "load_options" else v for k, v in pair.provenance.items()
              if k not in ("residency_reason", "load_spec", "reopen_spec")}
    if isinstance(models.get("descendants"), dict):
        read = {config.tuned or pair.roles[1], *config.nulls, *read_roles}
        models["descendants"] = {r: e for r, e in models["descendants"].items() if r in read}
    models["load_options"] = {k: v for k, v in models.get("load_options", {}).items()
                              if k not in ("residency", "verbose", "hash_weights")}
    result_parts = {
        "options": result_options(config),
        # the boundaries as layers, not as spelled (4,2 and 2,4; 0.6 and 4 on six layers are one run)
        "boundaries": boundaries,
        "headline_boundary": headline_boundary(boundaries, pair.num_layers, config.boundary),
        "models": models,
        "prompts": digest,
        "result_rules": RESULT_RULES,  # records of an older crosspatch are never resumed into
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
        "prompts": {"count": len(prompts), "sha256": digest,  # and where they were read from (inputs.PromptSet)
                    **({"source": source} if (source := getattr(prompts, "source", None)) else {}),
                    # (absolute: what the analyses after the run read again for images, from any directory)
                    **({"path": os.path.abspath(source)} if source and os.path.isfile(source) else {}),
                    **({"fields": fields} if (fields := getattr(prompts, "fields", None)) else {})},
        "prompt_ids": shard_ids if shard_ids is not None else [p.id for p in prompts],  # this run's (shard's)
        "fingerprint_inputs": result_parts,
        "pair_warnings": pair.warnings,
        "real_vocabulary": pair.real_vocab.as_record(),
        "environment": environment(pair.provenance.get("load_options", {}).get("device")),
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
    from ..execution.nulls import with_synthetic_nulls

    pair, roles = with_synthetic_nulls(pair, tuned, config.synthetic_nulls, config.seed)
    return pair, replace(config, nulls=[*config.nulls, *roles], tuned=tuned)
