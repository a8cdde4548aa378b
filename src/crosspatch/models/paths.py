"""Model paths: local directories vs hub ids, checked before any weight is loaded."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import AdapterGivenAsCheckpointError, ModelLoadError, ModelPathNotFoundError, OptionError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def looks_local(path: str) -> bool:
    """Whether ``path`` names a local directory rather than a hub id (``org/name``)."""
    p = str(path)
    return (p.startswith((".", "/", "~")) or os.sep in p.strip("/").replace("/", "", 1) or "\\" in p
            or p.endswith("/") or Path(p).expanduser().exists() or not _HUB_ID.match(p))


def path_key(path) -> str:
    """What a model path names, for telling two arguments apart: a local directory resolved
    (``./a`` and ``a/`` alike), a hub id as given."""
    return str(Path(str(path)).expanduser().resolve()) if looks_local(str(path)) else str(path)


def check_given_once(paths: list, what: str, why: str, names: list[str | None] | None = None) -> None:
    """Each of ``paths`` (local directories, or hub ids) names a different thing: the same one
    twice (``./a`` and ``a/`` alike) is an OptionError saying ``why``, naming both arguments (by
    ``names``, the roles given with them, where there are any)."""
    seen: dict[str, tuple[str, str | None]] = {}
    for path, name in zip(paths, names or [None] * len(paths)):
        if (first := seen.get(path_key(path))) is not None:
            if name is not None and first[1] is not None and name != first[1]:
                raise OptionError(f"{what}s {first[1]!r} and {name!r} name the same model ({path}): {why}")
            raise OptionError(f"{what} {path} is given twice{f' (also as {first[0]})' if first[0] != str(path) else ''}: {why}")
        seen[path_key(path)] = (str(path), name)


def check_model_path(path: str, role: str, adapter: bool = False, revision: str | None = None) -> None:
    """A local path exists and is what it is given as; a hub id is reachable or cached (at
    ``revision``, the loading option, when given)."""
    p = Path(str(path)).expanduser()
    # how the user gave it: --base, --tuned, --adapter, or another name ("lineage stage", "--null")
    flag = "--adapter" if adapter and role in ("tuned", "base") else {"base": "--base", "tuned": "--tuned"}.get(role, role)
    if looks_local(path):
        if not p.exists():
            raise ModelPathNotFoundError(f"{flag} {path}: no such directory")
        if not p.is_dir():
            raise ModelPathNotFoundError(f"{flag} {path}: not a directory (give the checkpoint's directory)")
        has_config, has_adapter = (p / "config.json").exists(), (p / "adapter_config.json").exists()
        if adapter and not has_adapter:
            raise ModelLoadError(f"{flag} {path} is not a PEFT adapter directory (no adapter_config.json)"
                                 + ("; it looks like a full checkpoint: give it as --tuned" if has_config else ""))
        model_weights = [f for f in p.iterdir() if is_weight_file(f) and not f.name.startswith("adapter_model")]
        if not adapter and has_adapter and (not has_config or not model_weights):
            found = "no config.json" if not has_config else "a config.json but no model weights beside its adapter's"
            raise AdapterGivenAsCheckpointError(
                f"{flag} {path} is a PEFT adapter directory (adapter_config.json, {found}); "
                f"give it as --adapter {path} with its base as --base")
        if not adapter and not has_config:
            raise ModelLoadError(f"{flag} {path} has no config.json: not a Hugging Face checkpoint directory")
        weights = check_checkpoint_files(p, f"{flag} {path}")
        if not adapter:  # a model the method cannot run is named as such, whatever else it lacks
            from .anatomy import check_supported

            config = local_config(str(p))
            check_supported(config)
            check_quantization_packages(config, f"{flag} {path}")
        if not weights:
            wanted = "adapter_model.safetensors" if adapter else "model.safetensors, its shards or pytorch_model.bin"
            gguf = sorted(f.name for f in p.glob("*.gguf"))
            if gguf and not adapter:  # llama.cpp's format: quantized for inference, not layers to patch
                raise ModelLoadError(
                    f"{flag} {path} holds GGUF weights ({', '.join(gguf[:2])}), llama.cpp's format, and no {wanted}: "
                    "give the Hugging Face checkpoint it was converted from, or convert it back with transformers "
                    f"(AutoModelForCausalLM.from_pretrained({str(path)!r}, gguf_file={gguf[0]!r}).save_pretrained(DIR), "
                    "which needs the gguf package)")
            raise ModelLoadError(f"{flag} {path} has no weight files (no {wanted}): an incomplete download or copy?")
        return
    check_hub_id(str(path), flag, "adapter_config.json" if adapter else "config.json", revision)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
# what a Trainer saves beside the weights of a checkpoint-N directory (optimizer state: twice the
# weights' size under Adam); never weights, so never hashed or checked as such
TRAINER_STATE_PREFIXES = ("optimizer", "scheduler", "scaler", "rng_state", "training_args", "trainer_state")


def is_weight_file(path: Path) -> bool:
    """Whether a directory entry's name is that of a weight file (a Trainer's state is not)."""
    return path.suffix in WEIGHT_SUFFIXES and not path.name.startswith(TRAINER_STATE_PREFIXES)


# the JSON files of a checkpoint or adapter directory that loading reads; transformers skips a
# generation config it cannot parse without a word (its EOS ids with it)
CHECKPOINT_JSON_FILES = ("config.json", "generation_config.json", "adapter_config.json", "tokenizer_config.json",
                         "special_tokens_map.json", "preprocessor_config.json", "processor_config.json")
# the small files of a checkpoint or adapter directory that change what a model computes or how
# text becomes tokens: those, and the tokenizer's and chat template's own (anything else there, a
# README or a trainer's state, changes neither)
DEFINING_FILES = CHECKPOINT_JSON_FILES + ("tokenizer.json", "added_tokens.json", "vocab.json", "merges.txt",
                                          "tokenizer.model", "chat_template.jinja", "chat_template.json")


def check_checkpoint_files(root: Path, named: str) -> list[Path]:
    """The files loading reads from the local directory ``root`` are sound, read before any model
    loads (a 32B base is not loaded to learn that its descendant's download is incomplete): each of
    :data:`CHECKPOINT_JSON_FILES` present is a JSON object; each weight file a readable regular
    file (not a folder, a dangling or looping link) and, for safetensors, a header that reads and
    covers the file (a truncated download fails here; the tensors are not read, and pickle files
    are not opened: loading one runs its code); every shard a ``*.index.json`` names present.
    Else a ModelLoadError naming the file. Returns the weight files."""
    import json

    from safetensors import SafetensorError, safe_open

    for name in CHECKPOINT_JSON_FILES:
        if not (root / name).exists():
            continue
        try:
            data = json.loads((root / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{named}: {name} cannot be read ({exc.__class__.__name__}: {exc})") from exc
        except ValueError as exc:
            raise ModelLoadError(f"{named}: {name} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ModelLoadError(f"{named}: {name} holds a JSON {type(data).__name__}, not an object")
    try:
        weights = sorted(entry for entry in root.iterdir() if is_weight_file(entry))
    except OSError as exc:
        raise ModelLoadError(f"{named} cannot be listed ({exc.__class__.__name__}: {exc})") from exc
    for entry in weights:
        try:
            regular = entry.is_file()
            if regular:
                with open(entry, "rb"):
                    pass
        except OSError as exc:
            raise ModelLoadError(f"{named}: weight file {entry.name} cannot be read ({exc.__class__.__name__}: "
                                 f"{exc.strerror or exc})") from exc
        if not regular:
            what = "a folder" if entry.is_dir() else "a link to nothing" if entry.is_symlink() else "not a regular file"
            raise ModelLoadError(f"{named}: weight file {entry.name} is {what}")
        if entry.suffix == ".safetensors":
            try:
                with safe_open(str(entry), framework="pt"):
                    pass
            except (SafetensorError, OSError) as exc:
                raise ModelLoadError(f"{named}: weight file {entry.name} is not a whole safetensors file ({exc}): "
                                     "truncated or damaged; download or copy it again") from exc
    for index in sorted(root.glob("*.index.json")):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{named}: {index.name} is not a readable shard index ({exc})") from exc
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{named}: {index.name} has no weight_map object")
        missing = sorted({str(shard) for shard in weight_map.values() if not (root / str(shard)).is_file()})
        if missing:
            raise ModelLoadError(f"{named}: {index.name} names {len(missing)} shard(s) the directory lacks: {some_of(missing)} "
                                 "(an incomplete download or copy?)")
    return weights


def check_quantization_packages(config: dict, named: str) -> None:
    """A quantized checkpoint (a ``quantization_config``: bitsandbytes, GPTQ, AWQ, ...) whose
    method needs a package this environment lacks is a ModelLoadError saying which, before any
    model loads: transformers' own check of the method's environment, asked up front (whatever
    else it refuses, a device map or a backend, is left to the loader, which sees the options)."""
    quantization = quantization_settings(config)
    if quantization is None:
        return
    try:
        from transformers.quantizers.auto import AutoHfQuantizer

        # (some methods' quantizers check their packages when made, others when validated)
        AutoHfQuantizer.from_config(quantization, pre_quantized=True).validate_environment(device_map=None,
                                                                                            weights_only=True)
    except ImportError as exc:
        method = quantization.get("quant_method", "quantized")
        raise ModelLoadError(f"{named} is a {method} checkpoint, and loading it needs a package this environment "
                             f"lacks: {exc}") from None
    except Exception:  # an unknown method, a malformed config, a backend or a device: the loader decides with
        return         # the run's options, and names it


def check_hub_id(repo: str, flag: str, marker: str = "config.json", revision: str | None = None) -> None:
    """Fail at once (not after retries) when a hub id cannot be resolved: offline and its
    ``marker`` file (a checkpoint's config.json, an adapter's adapter_config.json) not cached
    (at ``revision`` when given)."""
    try:
        cached = _cached_file(repo, marker, revision)
    except Exception:  # no hub library, or an id or revision it refuses to parse: loading names it
        return
    if cached is not None:
        return
    from ..errors import HubUnavailableError

    where = "in the local Hugging Face cache" + (f" at revision {revision!r}" if revision else "")
    if hub_offline():
        raise HubUnavailableError(
            f"{flag} {repo}: not a local directory, and not {where} while HF_HUB_OFFLINE=1; "
            "download it first or give a local path")
    if not hub_reachable():
        raise HubUnavailableError(
            f"{flag} {repo}: not a local directory, not {where}, and the Hub cannot be reached "
            "(no network); give a local path, or download the model where there is network")


def hub_snapshot(repo: str, revision: str | None = None, marker: str = "config.json", cache_dir=None) -> str | None:
    """The commit a hub id (at ``revision``, else its main branch) resolves to in the local Hugging
    Face cache: the snapshot its files are read from, told by its ``marker`` file's folder; None
    where it is not cached. What a run records of a hub model, so that a model updated on the Hub
    between two sessions of one run is another run, not mixed into it."""
    try:
        cached = _cached_file(repo, marker, revision, cache_dir)
    except Exception:  # no hub library, or an id it refuses to parse: nothing to record
        return None
    return Path(cached).parent.name if cached is not None else None


def _cached_file(repo: str, marker: str, revision: str | None, cache_dir=None) -> str | None:
    """The local Hugging Face cache's copy of ``repo``'s ``marker`` file at ``revision`` (its main
    branch when None), or None where it is not cached; the hub library's errors pass through."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, marker, cache_dir=cache_dir, revision=revision)
    return cached if isinstance(cached, str) else None


def hub_offline() -> bool:
    """Whether offline mode is set (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hub answers (offline mode set: no), asked once with a short timeout."""
    if hub_offline():
        return False
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _read_config(path: str):
    """A local checkpoint's parsed config.json, or None (a hub id, or no readable JSON)."""
    import json

    try:
        return json.loads((Path(str(path)).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def some_of(names: list[str], k: int = 3) -> str:
    """The first ``k`` of ``names`` and how many more, as the load errors name weights and shards."""
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


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
        if isinstance(cfg.get(key), int) and cfg[key] > 0:
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
