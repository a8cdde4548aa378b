"""Model paths: local directories vs hub ids, checked before any weight is loaded."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import AdapterGivenAsCheckpointError, ModelLoadError, ModelPathNotFoundError, OptionError
from .config_dicts import local_config, quantization_settings

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def looks_local(path: str) -> bool:
    """Whether ``path`` names a local directory rather than a hub id (``org/name``, or
    ``org/name@REVISION``)."""
    p = str(path)
    if split_hub_revision(p) is not None:  # (a hub id at a revision of its own, ``refs/pr/1`` included)
        return False
    return (p.startswith((".", "/", "~")) or os.sep in p.strip("/").replace("/", "", 1) or "\\" in p
            or p.endswith("/") or Path(p).expanduser().exists() or not _HUB_ID.match(p))


_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def split_hub_revision(path) -> tuple[str, str] | None:
    """``REPO@REVISION`` (a hub id at a branch, tag or commit of its own, as training runs publish
    their intermediate checkpoints: ``EleutherAI/pythia-160m@step1000``) as ``(repo, revision)``;
    None for anything else, a local path whose name holds an '@' included."""
    text = str(path)
    repo, at, revision = text.partition("@")
    if not at or not _HUB_ID.match(repo) or not _REVISION.fullmatch(revision) or ".." in revision:
        return None
    return None if Path(text).expanduser().exists() else (repo, revision)


def hub_target(path: str, revision: str | None) -> tuple[str, str | None]:
    """Which hub repository and revision ``path`` reads: ``(repo, its revision)`` for
    ``REPO@REVISION``, else ``(path, revision)``."""
    return split_hub_revision(path) or (path, revision)


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


def _gguf_refusal(named: str, folder: Path, gguf: list[str]) -> str:
    """Why GGUF weights (llama.cpp's format, quantized for inference) are no checkpoint to patch."""
    return (f"{named}: give the Hugging Face checkpoint it was converted from, or convert it back with transformers "
            f"(AutoModelForCausalLM.from_pretrained({str(folder)!r}, gguf_file={gguf[0]!r}).save_pretrained(DIR), "
            "AutoTokenizer the same way; it needs the gguf package)")


def sharded_training_state(folder: Path) -> str | None:
    """How to consolidate a checkpoint a distributed trainer saved as per-rank training state
    (DeepSpeed ZeRO's ``global_step*/``, FSDP's sharded ``pytorch_model_fsdp_*/``) into the
    weights it lacks, or None where ``folder`` holds no such state."""
    steps = sorted(d.name for d in folder.glob("global_step*") if d.is_dir())
    if steps or (folder / "zero_to_fp32.py").is_file():
        where = f" ({steps[-1]}/)" if steps else ""
        script = folder / "zero_to_fp32.py" if (folder / "zero_to_fp32.py").is_file() else "-m deepspeed.utils.zero_to_fp32"
        return (f"it is a DeepSpeed ZeRO checkpoint{where}, each rank's partition of the weights: consolidate them "
                f"beside its config.json (python {script} {folder} {folder} --safe_serialization, "
                "which needs deepspeed), or save with stage3_gather_16bit_weights_on_model_save")
    fsdp = sorted(d.name for d in folder.glob("pytorch_model_fsdp*") if d.is_dir())
    if fsdp:
        return (f"it is an FSDP sharded checkpoint ({fsdp[0]}/, each rank's shard of the weights): merge them beside "
                f"its config.json (accelerate merge-weights {folder / fsdp[0]} {folder}), or save with "
                "state_dict_type FULL_STATE_DICT")
    return None


def check_model_path(path: str, role: str, adapter: bool = False, revision: str | None = None) -> None:
    """A local path exists and is what it is given as; a hub id is reachable or cached (at
    ``revision``, the loading option, when given)."""
    p = Path(str(path)).expanduser()
    # how the user gave it: --base, --tuned, --adapter, or another name ("lineage stage", "--null")
    flag = "--adapter" if adapter and role in ("tuned", "base") else {"base": "--base", "tuned": "--tuned"}.get(role, role)
    if (split := split_hub_revision(path)) is not None:  # REPO@REVISION: a hub id at a revision of its own
        check_hub_id(split[0], flag, "adapter_config.json" if adapter else "config.json", split[1])
        return
    if looks_local(path):
        if not p.exists():
            raise ModelPathNotFoundError(f"{flag} {path}: no such directory")
        if not p.is_dir():
            if p.suffix.lower() == ".gguf" and not adapter:
                raise ModelLoadError(_gguf_refusal(f"{flag} {path} is a GGUF file (llama.cpp's format), not a Hugging "
                                                   "Face checkpoint directory", p.parent, [p.name]))
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
        gguf = sorted(f.name for f in p.glob("*.gguf"))
        if not adapter and not has_config:
            named = f"{flag} {path} has no config.json: not a Hugging Face checkpoint directory"
            raise ModelLoadError(_gguf_refusal(f"{named} (it holds GGUF weights, llama.cpp's format)", p, gguf)
                                 if gguf else named)
        weights = check_checkpoint_files(p, f"{flag} {path}")
        if not adapter:  # a model the method cannot run is named as such, whatever else it lacks
            from .anatomy import check_supported

            config = local_config(str(p))
            check_supported(config)
            check_quantization_packages(config, f"{flag} {path}")
        if not weights:
            wanted = "adapter_model.safetensors" if adapter else "model.safetensors, its shards or pytorch_model.bin"
            if gguf and not adapter:
                raise ModelLoadError(_gguf_refusal(f"{flag} {path} holds GGUF weights ({', '.join(gguf[:2])}), "
                                                   f"llama.cpp's format, and no {wanted}", p, gguf))
            sharded = None if adapter else sharded_training_state(p)
            raise ModelLoadError(f"{flag} {path} has no weight files (no {wanted}): "
                                 + (sharded or "an incomplete download or copy?"))
        if not adapter:
            check_default_weight_names(p, weights, f"{flag} {path}")
        return
    check_hub_id(str(path), flag, "adapter_config.json" if adapter else "config.json", revision)


# the weight files transformers loads from a checkpoint directory when no variant is asked for
DEFAULT_WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                        "pytorch_model.bin.index.json")
# a variant's files, as save_pretrained(variant=V) names them: model.V.safetensors, its shards and index
_VARIANT = re.compile(r"(?:model|pytorch_model)\.([\w-]+?)(?:-\d+-of-\d+)?\.(?:safetensors|bin)"
                      r"|(?:model\.safetensors|pytorch_model\.bin)\.index\.([\w-]+)\.json")


def check_default_weight_names(root: Path, weights: list[Path], named: str) -> None:
    """A checkpoint directory whose weight files are none that transformers loads by default
    (:data:`DEFAULT_WEIGHT_NAMES`) is a ModelLoadError before any model loads (loading it failed
    with "no file named model.safetensors" after the other models had loaded): a variant's files
    (``model.fp16.safetensors``, as ``save_pretrained(variant="fp16")`` writes them) are named
    with how to write the default ones; other names, with the names loading looks for."""
    if any((root / name).is_file() for name in DEFAULT_WEIGHT_NAMES):
        return
    names = sorted({w.name for w in weights} | {f.name for f in root.glob("*.index.*.json")})
    variants = sorted({v for n in names if (m := _VARIANT.fullmatch(n)) for v in m.groups() if v})
    if variants:
        raise ModelLoadError(
            f"{named} holds its weights as the variant {variants[0]!r} only ({some_of(names)}, as "
            f"save_pretrained(variant={variants[0]!r}) writes them), and crosspatch loads a checkpoint's default "
            f"weights: write them once with AutoModelForCausalLM.from_pretrained(DIR, variant={variants[0]!r})"
            ".save_pretrained(NEW_DIR) and give NEW_DIR")
    raise ModelLoadError(f"{named} holds weight files under names loading does not read ({some_of(names)}): a "
                         "checkpoint's weights are model.safetensors (or its shards with model.safetensors.index.json) "
                         "or pytorch_model.bin, as save_pretrained writes them")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
# what a Trainer saves beside the weights of a checkpoint-N directory (optimizer state: twice the
# weights' size under Adam); never weights, so never hashed or checked as such
TRAINER_STATE_PREFIXES = ("optimizer", "scheduler", "scaler", "rng_state", "training_args", "trainer_state")


def is_weight_file(path: Path) -> bool:
    """Whether a directory entry's name is that of a weight file (a Trainer's state is not)."""
    return path.suffix in WEIGHT_SUFFIXES and not path.name.startswith(TRAINER_STATE_PREFIXES)


def weight_files(path: str) -> list[Path]:
    """The weight files of a checkpoint directory, sorted."""
    root = Path(path).expanduser()
    return sorted(p for p in root.iterdir() if is_weight_file(p) and p.is_file())


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

    for name in DEFINING_FILES:
        if (root / name).exists() and not (root / name).is_file():  # (a device behind a link: read until memory runs out)
            raise ModelLoadError(f"{named}: {name} is not a regular file (a folder, device or pipe)")
    for name in CHECKPOINT_JSON_FILES:
        if not (root / name).exists():
            continue
        try:
            data = json.loads((root / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{named}: {name} cannot be read ({exc.__class__.__name__}: {exc})") from exc
        except (ValueError, RecursionError) as exc:  # (JSON nested thousands deep)
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
        if not index.is_file():  # (as the files above)
            raise ModelLoadError(f"{named}: {index.name} is not a regular file (a folder, device or pipe)")
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError, RecursionError) as exc:
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
    else it refuses, a device map or a backend, is left to the loader, which sees the options).
    So is a checkpoint MLX quantized (a ``quantization`` of bits and group size, and no
    ``quantization_config`` naming a method: packed weights no transformers quantizer reads)."""
    quantization = quantization_settings(config)
    mlx = config.get("quantization")
    if isinstance(mlx, dict) and ("bits" in mlx or "group_size" in mlx) and "quant_method" not in (quantization or {}):
        raise ModelLoadError(
            f"{named} holds weights quantized by MLX (its config.json's 'quantization': {mlx.get('bits')} bits, groups "
            f"of {mlx.get('group_size')}), which transformers cannot load: give the unquantized checkpoint (MLX's "
            "mlx_lm can write it dequantized) or the Hugging Face model it was converted from")
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
    from ..errors import HubUnavailableError

    if cached is not None:
        lacking = _snapshot_lacks_weights(Path(cached).parent, marker, f"{flag} {repo}")
        if lacking and (hub_offline() or not hub_reachable()):
            raise HubUnavailableError(
                f"{flag} {repo} is cached only in part: its snapshot in the local Hugging Face cache holds {marker} but "
                f"{lacking}, and the Hub cannot be reached to fetch {'them' if 'shard' in lacking else 'it'} "
                f"({'HF_HUB_OFFLINE=1' if hub_offline() else 'no network'}): download it whole first "
                f"(hf download {repo}) or give a local path")
        return

    where = "in the local Hugging Face cache" + (f" at revision {revision!r}" if revision else "")
    if hub_offline():
        raise HubUnavailableError(
            f"{flag} {repo}: not a local directory, and not {where} while HF_HUB_OFFLINE=1; "
            "download it first or give a local path")
    if not hub_reachable():
        raise HubUnavailableError(
            f"{flag} {repo}: not a local directory, not {where}, and the Hub cannot be reached "
            "(no network); give a local path, or download the model where there is network")


def _snapshot_lacks_weights(root: Path, marker: str, named: str) -> str | None:
    """What a cached snapshot ``root`` lacks to load without the Hub (a download stopped part way,
    or only config.json fetched): no weight file loading reads, or shards its index names (None:
    it has them). A weight file that is there but truncated is a ModelLoadError naming it."""
    if marker == "adapter_config.json":
        names = ("adapter_model.safetensors", "adapter_model.bin")
    else:
        names = DEFAULT_WEIGHT_NAMES
    if not any((root / name).exists() for name in names):
        return f"no weights ({' or '.join(n for n in names if 'index' not in n)})"
    try:
        check_checkpoint_files(root, named)
    except ModelLoadError as exc:
        if "shard(s) the directory lacks" in str(exc):
            return "not every shard its index names"
        raise
    return None


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
    branch when None; ``REPO@REVISION``: at its own), or None where it is not cached; the hub
    library's errors pass through."""
    from huggingface_hub import try_to_load_from_cache

    repo, revision = hub_target(repo, revision)  # (REPO@REVISION: at its own)
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


def some_of(names: list[str], k: int = 3) -> str:
    """The first ``k`` of ``names`` and how many more, as the load errors name weights and shards."""
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")
