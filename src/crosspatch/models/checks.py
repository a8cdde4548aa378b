"""Pair checks run before any compute; each failure is a named error saying what differs."""

from __future__ import annotations

from ..errors import ArchitectureMismatchError, HiddenSizeMismatchError, LayerCountMismatchError, SpecialTokensMismatchError
from .config_dicts import POSITION_LIMIT_KEYS, config_count, config_hidden_size, config_num_layers, local_config
from .paths import some_of

_SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")


def position_limit(model) -> int | None:
    """How many positions a loaded model's (text) config says it has (None when it names none, or
    no positive number: as :func:`~crosspatch.models.config_dicts.local_max_positions` reads it)."""
    from .anatomy import text_config

    cfg = text_config(model.config)
    limits = (getattr(cfg, k, None) for k in POSITION_LIMIT_KEYS)
    return next((v for v in limits if isinstance(v, int) and not isinstance(v, bool) and v > 0), None)


def model_facts(handle) -> dict:
    """What the pair checks compare (kept after a model is freed); ``handle``: ModelHandle."""
    a = handle.anatomy
    limit = position_limit(a.model)
    from .anatomy import router_name

    routers = {i: name for i, layer in enumerate(a.layers) if (name := router_name(layer)) is not None}
    embeddings = a.model.get_input_embeddings()
    from .anatomy import text_config
    from .config_dicts import config_rope_switch, config_sparse_topk

    return {"class": type(a.model).__name__, "num_layers": a.num_layers, "hidden_size": a.hidden_size,
            "lm_head_rows": a.lm_head.weight.shape[0], "max_positions": limit, "routers": routers,
            "sparse_topk": config_sparse_topk(text_config(a.model.config).to_dict()),
            "rope_switch": config_rope_switch(text_config(a.model.config).to_dict()),
            "input_embeddings": getattr(embeddings, "num_embeddings", None),
            "image_token_id": a.image_token_id,  # and which layers cannot start a late stack (GLM-5's shared indexers)
            "indexer_types": getattr(text_config(a.model.config), "indexer_types", None)}


def check_pair_compatible(pt, it) -> None:
    """Architecture class, layer count and hidden size must match (handles: ModelHandle)."""
    compare_facts(model_facts(pt), model_facts(it))


def compare_facts(a: dict, b: dict, names: tuple[str, str] = ("PT", "IT")) -> None:
    """The checks on recorded facts (``class``, ``num_layers``, ``hidden_size``) of two models
    (``names``: how the messages call them). A fact either side leaves unsaid (None: a config.json
    that does not state it, :func:`compare_configs`) is not compared; loaded models state all."""
    x, y = names
    if a["class"] and b["class"] and a["class"] != b["class"]:
        raise ArchitectureMismatchError(f"architecture differs: {x} is {a['class']}, {y} is {b['class']}")
    if a["num_layers"] and b["num_layers"] and a["num_layers"] != b["num_layers"]:
        raise LayerCountMismatchError(
            f"layer count differs: {x} has {a['num_layers']} decoder layers, {y} has {b['num_layers']}"
        )
    if a["hidden_size"] and b["hidden_size"] and a["hidden_size"] != b["hidden_size"]:
        raise HiddenSizeMismatchError(f"hidden size differs: {x} {a['hidden_size']}, {y} {b['hidden_size']}")


def config_facts(path: str) -> dict:
    """What a local checkpoint's config.json says of the facts :func:`compare_facts` checks
    (``model_type`` for the architecture, ``num_layers``, ``hidden_size``), each None where it
    does not say (a hub id, an unusual config): read before any weight loads."""
    config = local_config(path)
    kind = config.get("model_type")
    return {"model_type": kind if isinstance(kind, str) else None, "num_layers": config_num_layers(config),
            "hidden_size": config_hidden_size(config)}


def local_input_embeddings(path: str) -> int | None:
    """A local checkpoint's input-embedding rows, read before any weight loads: its config's
    vocabulary size (a multimodal model's ``text_config``) where a weight of that many rows in its
    safetensors files confirms it; None otherwise (a hub id, a config that does not say, or one
    its weights do not bear out: left to the check made once the model has loaded)."""
    from .adapters import vocabulary_weights

    rows, weights = vocabulary_weights(path)
    return rows if weights else None


def compare_configs(base: str, descendant: str, names: tuple[str, str] = ("PT", "IT")) -> None:
    """:func:`compare_facts` from two local checkpoints' config.json files, before their weights
    load (the same named errors; a fact either config leaves unsaid is left to the check made
    once the models have loaded)."""
    a, b = config_facts(base), config_facts(descendant)
    x, y = names
    if a["model_type"] and b["model_type"] and a["model_type"] != b["model_type"]:
        raise ArchitectureMismatchError(f"architecture differs: {x} is a {a['model_type']} model, {y} a "
                                        f"{b['model_type']} model (their config.json model_type)")
    compare_facts({**a, "class": None}, {**b, "class": None}, names)  # depth and width, where both say them


# config fields that set weights' shapes: two configs that differ in one, over weights of the same shapes,
# cannot both describe their weights
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "vocab_size", "n_embd", "n_inner", "n_head", "ffn_dim", "moe_intermediate_size", "num_local_experts",
                "num_experts")
OUTPUT_HEADS = ("lm_head.", "embed_out.", "output.")  # a head tied to the embeddings is not saved


def compare_weight_layouts(base: str, descendant: str, names: tuple[str, str] = ("PT", "IT")) -> None:
    """Before any weight loads, from two local checkpoints' safetensors headers (the same layout:
    every weight the descendant holds is the base's, by name), the errors loading would give once
    the models had loaded: a descendant lacking matrices its base has (transformers would
    initialise them at random), or two config.json files that differ in a field that sets
    weights' shapes while every weight has the same shape in both (one config does not describe
    its weights). A descendant of another layout (saved by another library version, a hub id) or
    a quantized checkpoint is left to the loader."""
    from pathlib import Path

    from ..errors import ModelLoadError
    from .adapters import checkpoint_shapes
    from .config_dicts import is_quantized, text_config

    if not all(Path(p).expanduser().is_dir() for p in (base, descendant)) or any(
            is_quantized(local_config(p)) for p in (base, descendant)):
        return  # (a quantized checkpoint's packed weights are not read from its headers)
    ours, theirs = checkpoint_shapes(base), checkpoint_shapes(descendant)
    if not ours or not theirs or not set(theirs) <= set(ours):
        return
    cb, cd = text_config(local_config(base)), text_config(local_config(descendant))
    unties = cd.get("tie_word_embeddings") is False  # (else a tied head is left out of its file)
    missing = sorted(k for k in set(ours) - set(theirs)
                     if len(ours[k]) == 2 and (unties or not any(k.startswith(h) or f".{h}" in k for h in OUTPUT_HEADS)))
    x, y = names
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ModelLoadError(f"{descendant} ({y}) lacks {len(missing)} weight(s) that {base} ({x}) has ({shown}); "
                             "transformers would initialise them at random. Is the checkpoint complete (every shard "
                             "of its index present)?")
    if set(theirs) == set(ours) and all(theirs[k] == ours[k] for k in ours):
        differ = [f"{f} {cb[f]} vs {cd[f]}" for f in SHAPE_FIELDS if config_count(cb.get(f)) and config_count(cd.get(f))
                  and cb[f] != cd[f]]  # (a field one config leaves null or unsaid is its default: not compared)
        if differ:
            raise ModelLoadError(f"the config.json files of {base} ({x}) and {descendant} ({y}) differ in "
                                 f"{', '.join(differ)}, while every weight has the same shape in both: one config "
                                 "does not describe its weights. Is each config.json the checkpoint's own?")


def check_special_tokens(tok_pt, tok_it, allow_mismatch: bool = False) -> list[str]:
    """Compare BOS/EOS/PAD/UNK. A BOS, EOS or UNK difference raises unless ``allow_mismatch``;
    then it is returned as a warning. A PAD difference alone is always a warning: padded
    positions are masked and zeroed, so the method never reads the pad id (fine-tunes often set
    ``pad_token = eos_token`` over a base that has none)."""
    diffs, pad = [], []
    for name in _SPECIAL:
        x, y = getattr(tok_pt, name, None), getattr(tok_it, name, None)
        if x != y:
            (pad if name == "pad_token" else diffs).append(f"{name}: PT {x!r} vs IT {y!r}")
    if diffs and not allow_mismatch:
        raise SpecialTokensMismatchError(
            "special tokens differ (" + "; ".join(diffs + pad) + "); pass --allow-special-token-mismatch "
            "(allow_special_token_mismatch=True) to run anyway, with the difference recorded"
        )
    return ([f"special token mismatch accepted: {d}" for d in diffs]
            + [f"special token differs, of no consequence: {d} (padding is masked, the method never reads it)"
               for d in pad])


def check_weights_fit_config(path: str) -> None:
    """Before any weight loads, a local checkpoint's safetensors headers against the model its
    config.json describes (built on the meta device: no memory, a fraction of a second), the
    errors loading would give: a weight the model needs that no file holds (transformers would
    initialise it at random; a head tied to the embeddings is not needed), or a weight whose shape
    is not the config's (the config.json is not the checkpoint's own). A checkpoint whose tensor
    names are not the model's (another library version's layout, a conversion mapping, a fused
    mixture of experts), a quantized one, one that ships its own code, one the installed
    transformers cannot build, or a hub id is left to the loader, which names the same errors."""
    from ..errors import ModelLoadError
    from .adapters import checkpoint_shapes
    from .skeleton import local_skeleton

    saved = checkpoint_shapes(path)
    skeleton = local_skeleton(path) if saved else None
    beyond = skeleton.layers_beyond(saved) if skeleton is not None else {}
    if skeleton is not None and beyond:  # (transformers would drop them with a warning: a shallower model than the checkpoint's)
        numbers = ", ".join(str(i) for i in sorted(set(beyond.values())))
        raise ModelLoadError(f"{path} holds weights of block(s) {numbers} that its config.json does not build "
                             f"({some_of(sorted(beyond))}): its {skeleton.name} would load without them, a shallower "
                             "model than the checkpoint's. Is the config.json the checkpoint's own (num_hidden_layers)?")
    if skeleton is None or not skeleton.holds(saved):
        return
    needed = [names for names in skeleton.tied_groups if not any(n in saved for n in names)]
    missing = sorted(names[0] for names in needed if not any(skeleton.ignored(n) for n in names))
    if missing:
        raise ModelLoadError(f"{path} lacks {len(missing)} weight(s) that its {skeleton.name} needs ({some_of(missing)}); "
                             "transformers would initialise them at random. Is the checkpoint complete (every shard "
                             "of its index present)?")
    other = [f"{k} {list(saved[k])} in the file, {list(skeleton.shapes[k])} by the config" for k in sorted(saved)
             if k in skeleton.shapes and tuple(saved[k]) != skeleton.shapes[k]]
    if other:
        raise ModelLoadError(f"{path}: weights do not have the shapes its config.json gives ({'; '.join(other[:3])}"
                             f"{'; ...' if len(other) > 3 else ''}). Is the config.json the checkpoint's own?")


def check_readout(handle) -> None:
    """Refuse by name a model whose logits crosspatch's readout would not reproduce: the cells are
    read out with the final norm, the output embeddings and the known final scalings (softcap,
    logit scale, Granite's divisor) applied to the residual stream's final state, so a model that
    puts more between them (ModernBERT-decoder's prediction head) would be scored with logits it
    never computes. One full pass over a few tokens, compared with the model's own forward
    (``handle``: ModelHandle, resident)."""
    import torch

    from ..errors import UnsupportedArchitectureError
    from .forward import capture_forward, readout, step_logits

    anatomy = handle.anatomy
    rows = int(anatomy.lm_head.weight.shape[0])
    skip = {anatomy.image_token_id}
    tokens = [i for i in range(1, min(rows, 16)) if i not in skip][:6] or [0]
    calls = [0] * anatomy.num_layers
    counters = [layer.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
                for i, layer in enumerate(anatomy.layers)]
    try:
        states = capture_forward(handle, [tokens], [], pad_id=tokens[0])
    finally:
        for counter in counters:
            counter.remove()
    if any(n > 1 for n in calls):  # a looped (recurrent-depth) model: a layer is no single place in the stack
        raise UnsupportedArchitectureError(
            f"{type(anatomy.model).__name__}: its layers {[i for i, n in enumerate(calls) if n > 1][:8]} run several "
            f"times in one forward pass (a looped, recurrent-depth stack), so the residual entering a layer is not "
            "one state and no boundary splits the model into an early and a late stack; not supported")
    ours = readout(handle, states.final_states[0])
    ids = torch.tensor([tokens], device=handle.input_device)
    theirs = step_logits(handle, len(tokens), len(tokens), input_ids=ids, use_cache=False)[0].to(ours.device)
    name, norm = type(anatomy.model).__name__, type(anatomy.final_norm).__name__
    if ours.shape != theirs.shape:  # (a final norm that also runs elsewhere is read after the last layer)
        raise UnsupportedArchitectureError(
            f"{name}: its final norm {norm} does not run once after the last layer ({ours.shape[0]} positions recorded "
            f"for {len(tokens)} tokens), so crosspatch cannot tell the residual stream's final state; not supported")
    gap = logits_gap(ours, theirs, states.final_states.dtype)
    if gap is not None:
        raise UnsupportedArchitectureError(
            f"{name}: crosspatch's readout (the final norm {norm}, then the output embeddings) does not reproduce "
            f"the model's own logits (largest difference {gap:.3g}): the model computes its logits with more than a "
            "final norm and an output layer (a prediction head between them, a scaling crosspatch does not know), "
            "so its cells could not be read out as the model reads them")


def logits_gap(got, want, dtype) -> float | None:
    """The largest difference between two computations of the same logits where it is more than
    their precision explains, else None: beyond 1e-3 (float32) or 5e-2 (half precisions) of the
    logits' own scale (their largest magnitude, at least 1), so that rounding over a whole
    vocabulary is never taken for a difference in what is computed, while a wrong mask, head or
    state moves logits by a sizeable part of that scale."""
    import torch

    tol = 5e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3
    both = torch.isfinite(got) & torch.isfinite(want)
    if not torch.equal(both, torch.isfinite(got)) or not torch.equal(both, torch.isfinite(want)):
        return float("inf")  # one computation is finite where the other is not
    if not bool(both.any()):
        return None
    gap = float((got[both] - want[both]).abs().max())
    scale = max(1.0, float(want[both].abs().max()))
    return gap if gap > tol * scale else None


def inert_adapter(adapter_dir: str, name: str = "the adapter", config: dict | None = None) -> str | None:
    """Why a local LoRA adapter changes nothing, where its weights say so: every ``lora_B`` (and
    ``lora_embedding_B``) is zero, as PEFT initialises them, and it trains no bias, magnitude or
    whole module; the adapter then computes exactly its base (saved before its first training
    step, or trained with a learning rate of zero), and a run of it finds no divergence, which is
    no finding about a fine-tune. None otherwise (another method, a hub id, pickle weights)."""
    from pathlib import Path

    from ..errors import ModelLoadError
    from .adapters import read_adapter_config
    from .loading import is_local

    try:
        config = read_adapter_config(adapter_dir) if config is None else config
    except ModelLoadError:  # (no adapter to read: the loading names it)
        return None
    weights = Path(adapter_dir).expanduser() / "adapter_model.safetensors"
    if not is_local(adapter_dir):  # a hub id: its weights in the local cache (PEFT loads the main revision)
        from .paths import _cached_file

        try:
            weights = Path(_cached_file(adapter_dir, "adapter_model.safetensors", None) or weights)
        except Exception:  # noqa: BLE001 - an id the hub library refuses: nothing cached
            return None
    if str(config.get("peft_type", "")).upper() != "LORA" or not weights.is_file() or \
            config.get("modules_to_save") or config.get("bias", "none") != "none":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            zero = zero_lora_factors(list(handle.keys()), handle.get_tensor)
    except Exception:  # noqa: BLE001 - a file the loader will name
        return None
    return None if zero is None else inert_lora_text(f"{name} ({adapter_dir})", zero)


def zero_lora_factors(keys: list[str], tensor) -> int | None:
    """The number of a LoRA adapter's ``lora_B`` (and ``lora_embedding_B``) factors when every one
    is zero and it holds nothing else but the ``A`` factors (``tensor(key)`` reads one); else None."""
    factors = [k for k in keys if "lora_B" in k or "lora_embedding_B" in k]
    others = [k for k in keys if k not in factors and "lora_A" not in k and "lora_embedding_A" not in k]
    if not factors or others or any(bool(tensor(k).any()) for k in factors):
        return None
    return len(factors)


def inert_lora_text(name: str, factors: int) -> str:
    """The warning of a LoRA adapter whose ``factors`` B matrices are all zero."""
    return (f"{name} changes nothing: all {factors} of its lora_B matrices are zero, as PEFT initialises them (saved "
            "before its first training step?), so the descendant computes exactly the base and finding no "
            "divergence says nothing about a fine-tune")
