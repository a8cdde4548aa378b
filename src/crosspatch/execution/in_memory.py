"""Model sets from models already in memory (notebooks, training loops, tests): used where and as
they are, never moved or cast (:func:`pair_from_models`, :func:`pair_from_peft_model`,
:func:`models_from_modules`)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError, UnsupportedAdapterError
from ..models.forward import ModelHandle
from ..models.loading import LoadOptions
from .modelset import ResidentSet, active_adapters, adapters_kept
from .opening import assemble_set
from .roles import BASE, check_role_name

IN_MEMORY = "<in-memory>"  # the path a run records for a model given in memory

__all__ = ["IN_MEMORY", "check_injected_adapters", "check_weights_present", "differing_dtypes", "in_memory_options", "models_from_modules", "module_digest", "pair_from_models", "pair_from_peft_model", "unwrapped_module"]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules hold the very same weights: one module, or every tensor of one state
    dict equal to the other's (exactly: :func:`module_digest` is only a fingerprint)."""
    if a is b:
        return True
    ours, theirs = a.state_dict(), b.state_dict()
    with torch.no_grad():
        return list(ours) == list(theirs) and all(
            x.shape == y.shape and not x.is_meta and not y.is_meta and torch.equal(x, y.to(x.device))
            for x, y in zip(ours.values(), theirs.values()))


def module_digest(module: nn.Module) -> str:
    """A cheap fingerprint of in-memory weights (names, shapes, sums and a few values of every
    tensor), so that runs of different in-memory models never share a run directory."""
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in module.state_dict().items():
            if p.is_meta:  # offloaded by a device map: its shape is all that is at hand
                h.update(f"{name}{tuple(p.shape)}".encode())
                continue
            flat = p.detach().reshape(-1)
            if flat.is_floating_point():
                flat = flat.float()
            h.update(f"{name}{tuple(p.shape)}{float(flat.sum()) if flat.numel() else 0.0:.6e}".encode())
            h.update(flat[:16].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def unwrapped_module(model: Any) -> Any:
    """The model inside the wrappers a training loop puts around it, which run it and hold no
    weights of their own: ``torch.compile``'s module, DistributedDataParallel/DataParallel and
    DeepSpeed's engine (a trainer's prepared reference model, given as the callback's base).
    crosspatch runs its own passes through the model's layers (a compiled forward would not run
    them, and a parallel wrapper is one process's handle on the same weights)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    for _ in range(8):  # a compiled model inside a parallel wrapper, or the other way round
        if isinstance(model, (DataParallel, DistributedDataParallel)) or (
                type(model).__name__ == "DeepSpeedEngine" and isinstance(getattr(model, "module", None), nn.Module)):
            model = model.module
        elif isinstance(model, nn.Module) and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            break
    return model


def differing_dtypes(models: dict[str, nn.Module]) -> str | None:
    """"NAME dtype, ..." for models in memory of different dtypes (their first parameter's: one
    model's states must enter the other's layers), else None."""
    dtypes = {name: str(p.dtype).removeprefix("torch.") for name, m in models.items()
              for p in [next(m.parameters(), None)] if p is not None}
    return ", ".join(f"{name} {d}" for name, d in dtypes.items()) if len(set(dtypes.values())) > 1 else None


def in_memory_options(options: dict, models: dict[str, nn.Module], residency: str) -> LoadOptions:
    """The :class:`LoadOptions` of a set made of models in memory, used where and as they are,
    whose residency is ``residency``. A dtype, device or residency that disagrees with the models
    (they would be recorded as if they had acted), or a hub revision, is an ``OptionError``; one
    that says what the models are is accepted. Models of different dtypes are a
    ``ModelLoadError`` (one model's states cannot enter the other's layers)."""
    from ..errors import OptionError
    from ..models.loading import dtype_name

    opts = LoadOptions(**options)
    first = {role: p for role, m in models.items() for p in [next(m.parameters(), None)] if p is not None}
    dtypes = {role: str(p.dtype).removeprefix("torch.") for role, p in first.items()}
    if (listed := differing_dtypes(models)) is not None:
        raise ModelLoadError(f"the models in memory differ in dtype ({listed}): one model's states must enter the "
                             "other's layers; cast them to one dtype (model.to(torch.float32))")
    dtype = dtype_name(opts.dtype if isinstance(opts.dtype, torch.dtype) else str(opts.dtype))
    device = str(opts.device).lower()
    disagree = {
        "dtype": dtype != "auto" and dtype not in set(dtypes.values()),
        "device": device != "auto" and not all(_on_device(p, device) for p in first.values()),
        "residency": opts.residency not in (None, residency),
        "revision": opts.revision is not None,
    }
    acted = [name for name, differs in disagree.items() if differs]
    if acted:
        given = ", ".join(f"{name}={getattr(opts, name)!r}" for name in acted)
        found = ", ".join(sorted(set(dtypes.values()))) + " on " + ", ".join(sorted({str(p.device) for p in first.values()}))
        raise OptionError(f"{given}: models given in memory are used where and as they are ({found}, residency "
                          f"{residency}); these options act only when crosspatch loads checkpoints (move or cast "
                          "the models yourself, e.g. model.to('cuda', torch.bfloat16))")
    return opts


def _on_device(parameter: torch.Tensor, device: str) -> bool:
    """Whether ``parameter`` lies on ``device`` (``cuda`` meaning any GPU, ``map`` a dispatched model)."""
    if device == "map":
        return True  # a device map spreads a model over devices: nothing single to compare
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError):
        return False
    return parameter.device.type == wanted.type and (wanted.index is None or parameter.device.index == wanted.index)


def models_from_modules(models: dict[str, nn.Module], tokenizer, tokenizers: dict[str, Any] | None = None,
                        processors: dict[str, object] | object | None = None, **options) -> ResidentSet:
    """A set from models already in memory (notebooks, tests); the first entry is the base.
    Every pass computes them in eval mode, and leaves each in the mode it was in (a training loop's
    model goes on training). ``processors``: vision-language models' processors (one for
    all roles, or a dict by role)."""
    if not isinstance(models, dict) or len(models) < 2:
        given = f"a dict of {len(models)}" if isinstance(models, dict) else f"a {type(models).__name__}"
        raise ModelLoadError(f"models_from_modules needs a dict of at least two models by role, the base first; "
                             f"got {given}")
    models = {role: unwrapped_module(m) for role, m in models.items()}
    for role, m in models.items():
        check_role_name(role)  # a role names a run directory (compare, nulls)
        if not isinstance(m, nn.Module):
            hint = (": give its .model (and its .tokenizer as the tokenizer)" if isinstance(getattr(m, "model", None),
                                                                                    nn.Module)  # a transformers pipeline
                    else ": a checkpoint's path loads with crosspatch.load_pair or load_models"
                    if isinstance(m, (str, os.PathLike)) else "")
            raise ModelLoadError(f"{role}: a model in memory must be a torch module (a transformers model), "
                                 f"not {type(m).__name__}{hint}")
    check_injected_adapters(models)
    for role, m in models.items():
        check_weights_present(role, m)
    toks = {r: (tokenizers or {}).get(r, tokenizer) for r in models}
    for role, tok in toks.items():
        if not callable(getattr(tok, "get_vocab", None)):
            processor = callable(getattr(getattr(tok, "tokenizer", None), "get_vocab", None))  # (a VLM's processor)
            raise ModelLoadError(f"{role}: needs a Hugging Face tokenizer, not {type(tok).__name__}"
                                 + (": give its .tokenizer as the tokenizer, and the processor as processors="
                                    if processor else ""))
    opts = in_memory_options(options, models, "both")
    roles = list(models)
    handles = {r: ModelHandle(r, m) for r, m in models.items()}
    first = next(iter(models.values()))
    digests = {r: module_digest(m) for r, m in models.items()}
    record = {"base": {"path": IN_MEMORY, "weights_digest": digests[roles[0]]}, "load_options": vars(opts) | {
        "dtype": str(next(first.parameters()).dtype).replace("torch.", "")}}
    if len(roles) == 2:
        record["tuned"] = {"path": IN_MEMORY, "weights_digest": digests[roles[1]]}
    else:
        record["descendants"] = {r: {"path": IN_MEMORY, "weights_digest": digests[r]} for r in roles[1:]}
    warnings = []
    for role in roles[1:]:  # a descendant that is the base (the same module, or a copy of its weights)
        if digests[role] == digests[roles[0]] and same_weights(models[roles[0]], models[role]):
            which = "the descendant" if len(roles) == 2 else repr(role)
            why = (f"{which}: it is the base's very module, so it computes exactly the base and finding no divergence "
                   "says nothing about a fine-tune; PEFT's merge_and_unload() merges an adapter into the model it "
                   "was built on, in place: that module is no longer the base (load the base again for the base role)"
                   if models[role] is models[roles[0]] else
                   f"{which}: its weights are an exact copy of the base's, so it computes exactly the base and finding "
                   "no divergence says nothing about a fine-tune; is this the model you meant?")
            (record["tuned"] if len(roles) == 2 else record["descendants"][role])["computes_the_base"] = why
            warnings.append(why)  # (recorded for gate, which calls such a run unusable)
    models_set = assemble_set(handles, toks, "both", opts, warnings, record)
    _give_processors(models_set, processors)
    return models_set


def check_weights_present(role: str, model: nn.Module) -> None:
    """A ``ModelLoadError`` for a model holding weights on the meta device that nothing loads: one
    built under ``torch.device("meta")`` or accelerate's ``init_empty_weights`` and never given its
    weights (its passes would fail on shapes alone). A model accelerate dispatched with offloading
    keeps such weights under a hook that brings them in for each pass: it is fine."""
    hooked: set[str] = set()
    for name, module in model.named_modules():
        if getattr(module, "_hf_hook", None) is not None:
            hooked.add(name)
        meta = next((p for p, w in module.named_parameters(recurse=False) if w.is_meta), None)
        parts = name.split(".") if name else []
        if meta is not None and not any(".".join(parts[:k]) in hooked for k in range(len(parts) + 1)):
            where = f"{name}.{meta}" if name else meta
            raise ModelLoadError(f"{role}: its weight {where} is on the meta device (a model built under "
                                 "torch.device('meta') or init_empty_weights, never loaded): give the model with "
                                 "its weights (from_pretrained, or load_state_dict(..., assign=True))")


def pair_from_peft_model(peft_model, tokenizer, adapter_name: str | None = None, processors=None,
                         **options) -> ResidentSet:
    """A pair from one PEFT model in memory: ``base`` is the model with its adapters switched off,
    ``tuned`` with ``adapter_name`` (default: the active adapter) on; no second copy of the
    weights (residency "adapter"). A run computes it in eval mode with the adapter scored, and
    leaves it as it was found: each module's mode (a training loop's model goes on training), the
    adapters it had active, merged where they were (computed unmerged in every pass), and switched
    off where its layers were (``disable_adapter_layers()``: scored switched on). An
    ``adapter_name`` it does not hold, or several active adapters and none named, is an
    ``OptionError``.
    ``processors``: a vision-language model's processor (one for both roles, or a dict by role)."""
    from ..models.adapters import layer_replication_text
    from ..models.anatomy import is_peft_model, unwrap_peft

    peft_model = unwrapped_module(peft_model)
    if not is_peft_model(peft_model):
        raise ModelLoadError(f"pair_from_peft_model needs a PEFT model, not {type(peft_model).__name__}")
    check_weights_present(BASE, peft_model)
    name = _adapter_to_score(peft_model, adapter_name)
    config = (getattr(peft_model, "peft_config", None) or {}).get(name)
    if (replicated := layer_replication_text(getattr(config, "layer_replication", None))) is not None:
        raise UnsupportedAdapterError(f"adapter {name!r} {replicated}")
    opts = in_memory_options(options, {BASE: peft_model}, "adapter")
    handles = {BASE: ModelHandle(BASE, peft_model, adapter_enabled=False),
               "tuned": ModelHandle("tuned", peft_model, adapter_enabled=True, adapter_name=name)}
    dtype = str(next(unwrap_peft(peft_model).parameters()).dtype).replace("torch.", "")
    with adapters_kept(peft_model):  # (the set's checks run the adapter scored; the base's weights read unmerged)
        record = {"base": {"path": IN_MEMORY, "weights_digest": module_digest(unwrap_peft(peft_model))},
                  "adapter": {"path": IN_MEMORY, "adapter_name": name, "weights_digest": module_digest(peft_model)},
                  "load_options": vars(opts) | {"dtype": dtype}}
        warnings = _rewritten_base(peft_model, name)
        if (inert := _inert_in_memory(peft_model, name, config)) is not None:  # (recorded for gate: unusable)
            record["adapter"]["computes_the_base"] = inert
            warnings.append(inert)
        models_set = assemble_set(handles, {BASE: tokenizer, "tuned": tokenizer}, "adapter", opts, warnings, record)
    _give_processors(models_set, processors)
    return models_set


def _inert_in_memory(peft_model, name: str, config) -> str | None:
    """Why the PEFT model's adapter ``name`` changes nothing, as :func:`~crosspatch.models.checks.inert_adapter`
    tells of a saved one: a LoRA adapter with every ``lora_B`` zero (as ``get_peft_model`` makes it,
    before the first training step) and nothing else trained; else None."""
    from peft import get_peft_model_state_dict

    from ..models.checks import inert_lora_text, zero_lora_factors

    if str(getattr(config, "peft_type", "")).upper().removeprefix("PEFTTYPE.") != "LORA" or \
            getattr(config, "modules_to_save", None) or getattr(config, "bias", "none") != "none":
        return None
    try:
        tensors = get_peft_model_state_dict(peft_model, adapter_name=name)
    except Exception:  # noqa: BLE001 - a state PEFT cannot gather here: nothing said
        return None
    zero = zero_lora_factors(list(tensors), tensors.__getitem__)
    return None if zero is None else inert_lora_text(f"the adapter {name!r} in memory", zero)


def _adapter_to_score(peft_model, adapter_name: str | None) -> str:
    """The adapter a PEFT model in memory is scored with: ``adapter_name``, one of its adapters, or
    else its one active adapter. Several active adapters (``set_adapter([...])``) compute a
    combination that no one adapter's switch reproduces: the caller names one (an OptionError)."""
    from ..errors import OptionError

    names = list(getattr(peft_model, "peft_config", None) or {})
    if adapter_name is not None:
        if adapter_name not in names:
            raise OptionError(f"adapter_name {adapter_name!r} is not an adapter of this PEFT model (it holds "
                              f"{', '.join(map(repr, names)) or 'none'})")
        return adapter_name
    active = active_adapters(peft_model)
    if len(active) > 1:
        raise OptionError(f"this PEFT model has several active adapters ({', '.join(map(repr, active))}): name the "
                          "one to score against the base (adapter_name=), or combine them into one adapter first "
                          "(add_weighted_adapter)")
    return active[0]


def _give_processors(models_set: ResidentSet, processors) -> None:
    """A set's vision-language processors: one for every role, or a dict by role."""
    if processors is not None:
        roles = models_set.roles
        models_set.processors = dict(processors) if isinstance(processors, dict) else {r: processors for r in roles}


def _rewritten_base(peft_model, name: str) -> list[str]:
    """A warning where the PEFT model's base weights are not the base's any more: an initialisation
    that rewrites them (PiSSA, OLoRA, ...), or a ``bias`` setting that trains them in place."""
    from ..models.adapters import base_change
    from ..models.anatomy import unwrap_peft

    config = (getattr(peft_model, "peft_config", None) or {}).get(name)
    init, bias = getattr(config, "init_lora_weights", True), getattr(config, "bias", "none")
    changed = base_change(init, bias, lambda: any(n.endswith(".bias") for n, _ in unwrap_peft(peft_model).named_parameters()))
    if changed == "init":
        why = f"adapter init_lora_weights={init!r} rewrote the base's weights in place"
    elif changed == "bias":
        why = f"adapter bias={bias!r} trains the base's own biases in place"
    else:
        return []
    return [f"{why}: with the adapter switched off, this model in memory is not the base it was (load the base afresh "
            "and pass it with this model to pair_from_models)"]


def pair_from_models(pt_model, it_model, tokenizer, tokenizer_it=None, processors=None, **options) -> ResidentSet:
    """A pair (roles ``base``, ``tuned``) from models already in memory. A PEFT model built on
    ``pt_model`` itself (``get_peft_model(base, config)``, ``PeftModel.from_pretrained(base, ...)``:
    PEFT injects its layers into the base in place) is :func:`pair_from_peft_model`'s pair: the base
    is the model with its adapters switched off (as it was before), not the model as it now is.
    ``processors``: vision-language models' processors (one for both, or a dict by role)."""
    pt_model, it_model = unwrapped_module(pt_model), unwrapped_module(it_model)
    if tokenizer_it is None and _is_peft_wrapper(it_model) and _shares_weights(pt_model, it_model):
        return pair_from_peft_model(it_model, tokenizer, processors=processors, **options)
    return models_from_modules({BASE: pt_model, "tuned": it_model}, tokenizer,
                               {"tuned": tokenizer_it} if tokenizer_it is not None else None, processors=processors,
                               **options)


def _is_peft_wrapper(model) -> bool:
    from ..models.anatomy import is_peft_model

    return is_peft_model(model) and callable(getattr(model, "disable_adapter", None))


def _injected_adapters(model: nn.Module) -> bool:
    """Whether PEFT's tuner layers (LoRA, IA3, ...) sit in ``model``'s modules."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def _shares_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold any parameter tensor in common (one is built on the other)."""
    mine = {p.data_ptr() for p in a.parameters()}
    return any(p.data_ptr() in mine for p in b.parameters())


def check_injected_adapters(models: dict[str, nn.Module]) -> None:
    """A ``ModelLoadError`` for a set whose models PEFT has changed in place: a base holding
    adapter layers (its outputs include the adapter: it is not the base any more), or two roles
    sharing weights where one holds adapter layers (a PEFT model and the model it was built on).
    The same plain model in two roles is allowed (identical models: zero effects)."""
    roles = list(models)
    with_adapters = {role for role, m in models.items() if _injected_adapters(m)}
    advice = ("pass the PEFT model alone: crosspatch.pair_from_peft_model(peft_model, tokenizer) scores it "
              "against the base with its adapters switched off (or load the base afresh for the base role)")
    if roles[0] in with_adapters:
        raise ModelLoadError(f"{roles[0]}: the base model holds PEFT adapter layers (get_peft_model and "
                             "PeftModel.from_pretrained inject them into the model given, in place): its outputs "
                             f"include the adapter, so it is not the base any more; {advice}")
    for k, role in enumerate(roles):
        for other in roles[k + 1:]:
            if {role, other} & with_adapters and _shares_weights(models[role], models[other]):
                raise ModelLoadError(f"{role} and {other} share their weights and PEFT adapter layers sit in them "
                                     f"(a PEFT model and the model it was built on): {advice}")

