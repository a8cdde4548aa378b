"""What a checkpoint's config.json states, read as a dict before any model is built: layer count,
widths, vocabulary, position limit, quantization, sparse attention, long-context RoPE, and a
multimodal model's language part (``text_config``). ``local_*`` read a local checkpoint's file
(None or {} for a hub id or an unreadable file); ``config_*`` read a dict already parsed."""

from __future__ import annotations

from pathlib import Path


def _read_config(path: str):
    """A local checkpoint's parsed config.json, or None (a hub id, or no readable JSON)."""
    import json

    try:
        return json.loads((Path(str(path)).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def local_config(path: str) -> dict:
    """A local checkpoint's config.json as a dict ({} for a hub id, no readable file, or JSON that
    is not an object)."""
    data = _read_config(path)
    return data if isinstance(data, dict) else {}


def is_quantized(config: dict) -> bool:
    """Whether a config dict says its checkpoint is quantized (bitsandbytes, GPTQ, AWQ, ...): a
    ``quantization_config`` at its top or in a multimodal model's ``text_config``, whatever its
    settings. Such a checkpoint's weights are packed: their shapes in the files are not the model's."""
    return any("quantization_config" in part for part in (config, text_config(config)))


def quantization_settings(config: dict) -> dict | None:
    """A quantized checkpoint's ``quantization_config`` settings (where :func:`is_quantized` finds
    them), or None where it has none that are settings."""
    for part in (config, text_config(config)):
        found = part.get("quantization_config")
        if isinstance(found, dict):
            return found
    return None


def text_config(config: dict) -> dict:
    """The language model's part of a config dict: a multimodal model's ``text_config``, else the
    config itself."""
    text = config.get("text_config")
    return text if isinstance(text, dict) else config


def local_num_layers(path: str) -> int | None:
    """The decoder layer count from a local checkpoint's config.json (None when unknown)."""
    return config_num_layers(local_config(path))


def config_num_layers(data: dict) -> int | None:
    """The decoder layer count a config dict states (None when it does not)."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(data.get(key), int):
            return data[key]
    layers = text_config(data).get("num_hidden_layers")
    return layers if isinstance(layers, int) else None


def config_count(value) -> int | None:
    """``value`` where it is a count a config can state (a positive whole number, not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def config_vocab_size(data: dict) -> int | None:
    """The vocabulary size a config dict states (a multimodal model's ``text_config``); None when it does not."""
    return config_count(text_config(data).get("vocab_size"))


def config_hidden_size(data: dict) -> int | None:
    """The residual width a config dict states (a multimodal model's ``text_config``; ``n_embd``
    for GPT-2-style configs, ``d_model`` for MPT's); None when it does not."""
    text = text_config(data)
    return next((text[k] for k in ("hidden_size", "n_embd", "d_model") if isinstance(text.get(k), int)), None)


POSITION_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")  # where configs say it


def local_max_positions(path: str) -> int | None:
    """The position limit from a local checkpoint's config.json (None when unknown)."""
    cfg = text_config(local_config(path))
    for key in POSITION_LIMIT_KEYS:
        if isinstance(cfg.get(key), int) and not isinstance(cfg[key], bool) and cfg[key] > 0:
            return cfg[key]
    return None


def config_sparse_topk(text: dict) -> int | None:
    """How many keys an indexed sparse attention (DeepSeek-V3.2's indexer, GLM-5's) picks per token,
    from a (text) config dict's ``index_topk``; None for dense attention. The key counts where the
    model has such layers: its ``layer_types`` name an indexed kind, or, without them, its model
    type's config class declares ``index_topk`` (or transformers does not know the type); a key
    some other config merely carries along is not read."""
    topk = text.get("index_topk")
    if not isinstance(topk, int) or isinstance(topk, bool) or topk <= 0:
        return None
    kinds = text.get("layer_types")
    if isinstance(kinds, list) and kinds:
        return topk if any("indexed" in str(kind) for kind in kinds) else None
    try:
        from transformers import CONFIG_MAPPING

        declares = hasattr(CONFIG_MAPPING[str(text.get("model_type"))], "index_topk")
    except (ImportError, KeyError, ValueError):
        declares = True  # a type transformers does not know: take the key at its word
    return topk if declares else None


def local_sparse_topk(path: str) -> int | None:
    """:func:`config_sparse_topk` of a local checkpoint's config.json (None when unknown)."""
    return config_sparse_topk(text_config(local_config(path)))


def config_rope_switch(text: dict) -> int | None:
    """The sequence length past which a long-context RoPE that depends on a pass's length (``longrope``:
    Phi-3/3.5's 128k models, Phi-4-mini) computes every position of one pass with its long-context
    frequencies, while generating computes the earlier positions with the short ones: its
    ``original_max_position_embeddings``, from a (text) config dict; None for any other RoPE.
    (Dynamic NTK scaling switches past ``max_position_embeddings``, the position limit itself.)"""
    params = text.get("rope_parameters") or text.get("rope_scaling")
    if not isinstance(params, dict):
        return None
    kinds = [params] if ("rope_type" in params or "type" in params) else [v for v in params.values() if isinstance(v, dict)]
    for kind in kinds:  # (a dict per layer type where layers differ)
        if (kind.get("rope_type") or kind.get("type")) == "longrope":
            original = kind.get("original_max_position_embeddings") or text.get("original_max_position_embeddings")
            if isinstance(original, int) and not isinstance(original, bool) and original > 0:
                return original
    return None


def local_rope_switch(path: str) -> int | None:
    """:func:`config_rope_switch` of a local checkpoint's config.json (None when unknown)."""
    return config_rope_switch(text_config(local_config(path)))


def local_is_multimodal(path: str) -> bool | None:
    """Whether a local checkpoint's config.json describes a vision-language model (None when
    unknown: a hub id or no readable config)."""
    data = _read_config(path)
    if data is None:
        return None
    return isinstance(data, dict) and isinstance(data.get("vision_config"), dict)
