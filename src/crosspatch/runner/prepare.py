"""What a run prepares before any chunk: the prompts as token ids (chat template, images), the
null descendants it adds, and the record of everything it was asked that goes into config.json."""

from __future__ import annotations

from dataclasses import asdict, replace

from ..core.cells import headline_boundary
from ..errors import OptionError
from ..execution import ModelSet
from ..inputs.prompts import Prompt, prompts_digest
from ..models.vocab import tokenize_once
from ..store import CONFIG_SCHEMA, RESULT_RULES, environment, fingerprint
from .config import RunConfig, normalise_run_config, resolve_boundaries, result_options  # noqa: F401

# the run's pieces, each in its own module; importable from here as before
from .result import Rendered, RunResult, rerender, rerender_run, write_outputs  # noqa: F401
from .resume import finished_result, precision_reached, precision_record, processed_prompts  # noqa: F401
from .shards import merge_runs, select_shard  # noqa: F401


def _prompt_text(pair: ModelSet, prompt: Prompt, config: RunConfig) -> str:
    """The text both models read: the prompt as given, or (``chat_template``) its chat (a row's
    ``messages``, else one user turn) rendered by the descendant's chat template with the
    assistant's opening; a template that refuses the chat is a PromptFileError naming the prompt."""
    if not config.chat_template:
        return prompt.prompt
    tuned = config.tuned or pair.roles[1]
    return render_chat(pair.tokenizers[tuned], prompt, repr(tuned))


def render_chat(tokenizer, prompt: Prompt, whose: str) -> str:
    """``prompt``'s chat (its ``messages``, else one user turn) rendered by ``tokenizer``'s chat
    template with the assistant's opening; a template that refuses it is a PromptFileError
    naming the prompt and ``whose`` template it is."""
    from ..errors import PromptFileError

    chat = list(prompt.messages) if prompt.messages else [{"role": "user", "content": prompt.prompt}]
    try:
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template raises what it likes (jinja2's TemplateError, ValueError, ...)
        raise PromptFileError(f"prompt {prompt.id!r}: the chat template of {whose} refuses its chat "
                              f"({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(text, str):
        raise PromptFileError(f"prompt {prompt.id!r}: the chat template of {whose} rendered no text")
    return text


def check_prompt_texts(base: str, descendants: list[tuple[str, bool]], prompts: list[Prompt], options,
                       chat_template: bool) -> dict[str, list[int]]:
    """Before any model loads: every text prompt reads as the run will read it against each
    descendant (``(path, is_adapter)``, with its tokenizer: its own, else the base's) — with
    ``chat_template``, rendered by a chat template the tokenizer has — and tokenizes to the same
    ids under the base's tokenizer; else the ChatTemplateMissingError, PromptFileError or
    PromptTokenizationMismatchError the run would meet once its weights had loaded (minutes, for
    a large pair). Image prompts are left to the run (they go through the models' processors).
    Returns the text prompts' token ids by prompt id (what the run will feed both models)."""
    from ..execution.adapters import descendant_tokenizer
    from ..models.loading import load_tokenizer
    from .checks import check_chat_template

    base_tokenizer = load_tokenizer(base, options)
    token_ids: dict[str, list[int]] = {}
    for path, is_adapter in descendants:
        tokenizer = descendant_tokenizer(path, options, base_tokenizer, adapter=is_adapter)
        if chat_template:
            check_chat_template(tokenizer)
        for prompt in prompts:
            if prompt.metadata.get("image"):
                continue
            text = render_chat(tokenizer, prompt, repr(path)) if chat_template else prompt.prompt
            # as prompt_token_ids reads it: a rendered chat holds its special tokens (BOS too) already
            ids = tokenize_once(base_tokenizer, tokenizer, prompt.id, text, add_special_tokens=not chat_template)
            token_ids[prompt.id] = max(token_ids.get(prompt.id, []), ids, key=len)  # (templates may differ)
    return token_ids


def prompt_token_ids(pair: ModelSet, prompts: list[Prompt], tuned: str, config: RunConfig) -> list[list[int]]:
    """Token ids of every prompt, identical under the base's and ``tuned``'s tokenizers; an image
    prompt goes through both models' processors (which must agree) and its image is registered
    for the passes (:mod:`crosspatch.models.media`)."""
    import torch

    from ..errors import PromptImageError
    from ..models.media import encode_image_prompt

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
                    **({"source": source} if (source := getattr(prompts, "source", None)) else {})},
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
    from ..execution.nulls import with_synthetic_nulls

    pair, roles = with_synthetic_nulls(pair, tuned, config.synthetic_nulls, config.seed)
    return pair, replace(config, nulls=[*config.nulls, *roles], tuned=tuned)
