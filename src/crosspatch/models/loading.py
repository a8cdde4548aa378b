"""Loading checkpoints: hub ids or local dirs, PEFT adapter settings, provenance records.

Safe by default: ``trust_remote_code`` is off, safetensors are required unless the user passes
``allow_pickle=True``. Everything that identifies the weights (paths, revisions, sha256 of
local weight files, adapter settings) goes into the pair's provenance for the run record.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import DeviceUnavailableError, ModelLoadError, OptionError, first_line
from .cached import check_weight_format, revision_snapshot
from .digests import sha256_file
from .options import LoadOptions, check_switches
from .paths import DEFINING_FILES, hub_target, some_of, weight_files

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def dtype_name(dtype):
    """A dtype by its canonical name: a torch dtype or a name in any case, aliases (``bf16``,
    ``fp16``, ``fp32``) spelled out; ``auto`` stays ``auto``; any other value as given
    (validated by the caller)."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    name = dtype.strip().lower() if isinstance(dtype, str) else dtype
    return DTYPE_ALIASES.get(name, name) if isinstance(name, str) else name


def resolve_dtype(dtype, device) -> str:
    """A dtype name as loading uses it (:func:`dtype_name`), ``auto`` resolved: bfloat16 (float16
    where the GPU has no bfloat16) when a CUDA device will be used, float32 on the CPU. Other
    values are returned as given (validated by the caller)."""
    name = dtype_name(dtype)
    if name == "auto":
        if str(device).strip().lower() != "cpu" and torch.cuda.is_available():
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    return name
DEVICES = ("auto", "cpu", "cuda", "map")  # and cuda:N


def resolve_device(device) -> str:
    """A device as loading uses it: ``auto`` is CUDA (``cuda``, the current GPU) when this torch
    sees one, else ``cpu``; ``map`` is accelerate's device map (a model spread over every GPU and
    the CPU); other values are returned as given (validated by the caller)."""
    name = str(device).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def validate_load_options(options) -> None:
    """dtype, device and residency of :class:`~crosspatch.models.loading.LoadOptions`; the device
    and the dtype are resolved in place (:func:`resolve_device`, :func:`resolve_dtype`), so the
    record holds the device and dtype actually used. The switches must be booleans: the string
    "no" would have switched ``trust_remote_code`` on."""
    check_switches(**{name: getattr(options, name) for name in ("trust_remote_code", "allow_pickle",
                                                                "allow_special_token_mismatch", "hash_weights", "verbose")})
    if options.revision is not None and (not isinstance(options.revision, str) or not options.revision.strip()):
        raise OptionError(f"revision must be a branch, tag or commit (a non-empty string) or None, not "
                          f"{options.revision!r}")
    if isinstance(options.dtype, torch.dtype):  # dtype=torch.bfloat16 reads as "bfloat16"
        options.dtype = str(options.dtype).removeprefix("torch.")
    if isinstance(options.device, torch.device):  # device=torch.device("cuda", 1) reads as "cuda:1"
        options.device = str(options.device)
    if not isinstance(options.device, str) or not isinstance(options.dtype, str):
        raise OptionError(f"device and dtype must be strings, not {options.device!r} and {options.dtype!r}")
    device = resolve_device(options.device)
    if device not in DEVICES and not re.match(r"^cuda:\d+$", device):
        raise OptionError(f"device must be auto, cpu, cuda, cuda:N or map, not {options.device!r}")
    options.device = device
    resolved = resolve_dtype(options.dtype, options.device)
    if resolved not in DTYPES:
        raise OptionError(f"dtype must be auto, {', '.join(DTYPES)} (or bf16, fp16, fp32), not {options.dtype!r}")
    options.dtype = resolved
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"--device {device} asked for CUDA, but this torch ({torch.__version__}) sees no CUDA device; "
                "use --device auto or cpu, or install a CUDA build of torch on a machine with a GPU")
    if options.residency not in (None, "both", "sequential", "adapter"):
        raise OptionError(f"residency must be both, sequential or adapter, not {options.residency!r}")


def pad_token_id(tokenizer) -> int:
    """Id used for padding (never attended to by real tokens): pad, else eos, else unk, else 0."""
    for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


# chat-turn terminators of instruct models: an instruct model ends its answer with one of these
# even where its generation config does not list it (a fine-tune saved without one): Llama 3 and 4,
# ChatML (Qwen, Phi-4, SmolLM), Gemma, Phi-3 and GPT-OSS, Command-R
CHAT_TURN_TERMINATORS = ("<|eot_id|>", "<|eom_id|>", "<|eot|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|return|>",
                         "<|END_OF_TURN_TOKEN|>")


def eos_token_ids(tokenizer, model) -> set[int]:
    """End-of-sequence ids: the tokenizer's EOS, the model's generation config's, and the
    chat-turn terminators (:data:`CHAT_TURN_TERMINATORS`) the tokenizer has as special tokens."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False) and str(token) in CHAT_TURN_TERMINATORS:
            ids.add(int(token_id))
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    return ids


def no_eos_warning(eos: set[int]) -> list[str]:
    """A warning where neither model names an end-of-sequence token (tokenizer, generation config,
    chat-turn terminators): every continuation then runs to the generation budget, so a pair that
    would have ended together (no event) is searched past that end."""
    if eos:
        return []
    return ["no end-of-sequence token is known for either model (tokenizer, generation_config.json, chat-turn "
            "terminators): every continuation runs to --max-new-tokens, past where the models would have stopped; "
            "set eos_token in tokenizer_config.json (or eos_token_id in generation_config.json)"]


def is_local(path: str) -> bool:
    return Path(path).expanduser().exists()


def defining_files(path: str) -> dict[str, str]:
    """sha256 of each of :data:`DEFINING_FILES` a local model directory has (name -> digest):
    with its weights, what makes two directories the same model wherever they are."""
    root = Path(path).expanduser()
    return {name: sha256_file(root / name) for name in DEFINING_FILES if (root / name).is_file()}


def provenance(path: str, options: LoadOptions) -> dict:
    """What a run records of one model: ``path`` as given, ``local``, ``revision``; for a local
    directory ``weights`` (file name -> sha256, None where ``hash_weights`` is off) and ``files``
    (its small defining files' sha256, :func:`defining_files`)."""
    record = {"path": str(path), "local": is_local(path), "revision": options.revision}
    if record["local"]:
        files = weight_files(path)
        record["weights"] = {
            f.name: (sha256_file(f) if options.hash_weights else None) for f in files
        }
        record["files"] = defining_files(path)
    return record


@contextlib.contextmanager
def quiet_loading(verbose: bool = False) -> Iterator[None]:
    """No per-file loading bars or advisory chatter from transformers unless ``verbose``."""
    if verbose:
        yield
        return
    import warnings

    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|peft)\..*")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _load_report(lines: list[str]) -> Iterator[None]:
    """Collect transformers' warning-level log lines (its load report) into ``lines`` instead of
    printing them."""
    import logging

    from transformers.utils import logging as hf_logging

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())
            lines.extend(text.splitlines())

    handler, logger = Collect(level=logging.WARNING), hf_logging.get_logger("transformers")
    level, silent = hf_logging.get_verbosity(), logging.getLogger("transformers").level > logging.WARNING
    logger.addHandler(handler)
    if silent:  # quiet loading: the report is collected, not shown
        hf_logging.disable_default_handler()
        hf_logging.set_verbosity_warning()
    try:
        yield
    finally:
        logger.removeHandler(handler)
        if silent:
            hf_logging.set_verbosity(level)
            hf_logging.enable_default_handler()


def load_causal_lm(path: str, options: LoadOptions, warnings: list[str] | None = None):
    """A transformers causal LM in eval mode, loaded with the safe defaults above (a
    vision-language checkpoint loads as its image-text-to-text model). A checkpoint that lacks
    weights the model needs is a :class:`ModelLoadError` (transformers would initialise them at
    random and say so only in its log); weights the model does not use are named in
    ``warnings``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from .collector import settle

    path = revision_snapshot(path)  # (REPO@REVISION: its snapshot, as a local checkpoint)
    check_weight_format(path, options.allow_pickle, options.revision)
    settle()  # the command line's start is over: no weight is frozen (see collector)
    kwargs = dict(
        dtype=DTYPES[resolve_dtype(options.dtype, options.device)],
        trust_remote_code=options.trust_remote_code,
        revision=options.revision,
    )
    if not options.allow_pickle:
        kwargs["use_safetensors"] = True
    device = resolve_device(options.device)
    if device == "map":
        kwargs["device_map"] = "auto"
    report: list[str] = []
    try:
        with quiet_loading(options.verbose), _load_report(report):
            config = AutoConfig.from_pretrained(path, trust_remote_code=options.trust_remote_code,
                                                revision=options.revision)
            auto = AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None \
                else AutoModelForCausalLM
            model, info = _from_pretrained(auto, path, kwargs, warnings)
    except Exception as exc:  # transformers, safetensors and torch raise many types for a bad checkpoint
        first = first_line(exc)
        mismatched = [" ".join(line.replace("Reinit due to size mismatch - ", "").split()) for line in report
                      if "MISMATCH" in line and "|" in line]  # transformers 5: in its log, not its error
        mismatched = mismatched or [" ".join(line.split()) for line in str(exc).splitlines() if "size mismatch" in line]
        if mismatched:
            raise ModelLoadError(
                f"{path}: weights do not have the shapes its config.json gives ({'; '.join(mismatched[:4])[:600]}). "
                "Is the config.json the checkpoint's own?") from exc
        raise ModelLoadError(f"could not load {path!r} as a causal LM: {first}") from exc
    missing, unused = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    if missing:
        prefix = _wrapper_prefix(unused, missing)
        raise ModelLoadError(
            f"{path} lacks {len(missing)} weight(s) that its {type(model).__name__} needs "
            f"({some_of(missing)}); transformers would initialise them at random. " + (
                f"Its tensors are these weights under the prefix {prefix!r} (a state dict saved from a wrapped model: "
                "torch.compile's '_orig_mod.', DDP's 'module.'): save the unwrapped model with save_pretrained"
                if prefix else "Is the checkpoint complete (every shard of its index present)?"))
    if unused and warnings is not None:
        note = f"{path}: {len(unused)} weight(s) in the checkpoint are not used by {type(model).__name__} ({some_of(unused)})"
        if note not in warnings:
            warnings.append(note)
    if device not in ("map", "cpu"):
        model.to(device)
    model.eval()
    return model


def _from_pretrained(auto, path: str, kwargs: dict, warnings: list[str] | None) -> tuple[Any, dict]:
    """``auto.from_pretrained`` with its loading info. A checkpoint whose config.json asks for an
    attention kernel this machine lacks (FlashAttention, saved from a GPU training run) loads with
    torch's SDPA attention, else the eager one, and says so: the kernel changes speed and float
    rounding, not what the model computes."""
    try:
        return auto.from_pretrained(path, output_loading_info=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised below unless it is the missing kernel
        if "flashattention" not in str(exc).lower().replace(" ", "").replace("_", ""):
            raise
        missing = exc
    from transformers import AutoConfig

    for implementation in ("sdpa", "eager"):
        config = AutoConfig.from_pretrained(path, trust_remote_code=kwargs.get("trust_remote_code", False),
                                            revision=kwargs.get("revision"))
        if hasattr(config, "attn_implementation"):  # the key transformers 5 reads from config.json
            delattr(config, "attn_implementation")
        config._attn_implementation = implementation  # the one transformers 4 reads  # pyright: ignore[reportAttributeAccessIssue]
        try:
            loaded = auto.from_pretrained(path, config=config, output_loading_info=True,
                                          attn_implementation=implementation, **kwargs)
        except (ValueError, ImportError):  # this architecture has no SDPA path
            continue
        if warnings is not None:
            warnings.append(f"{path}: its config.json asks for an attention kernel that is not installed "
                            f"({first_line(missing)[:120]}); loaded with {implementation} attention instead (the same "
                            "model, other float rounding)")
        return loaded
    raise missing


def check_custom_code(path: str, trust_remote_code: bool) -> None:
    """A local checkpoint whose model type transformers does not know and whose config.json maps
    its classes to code shipped with it (``auto_map``) loads only with ``trust_remote_code``: a
    named error before any weight loads. (A known type with an ``auto_map``, as some official
    checkpoints keep from before transformers supported them, loads with transformers' code.)"""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from .config_dicts import local_config

    config = local_config(path)
    auto_map = config.get("auto_map")
    if auto_map and not trust_remote_code and config.get("model_type") not in CONFIG_MAPPING:
        raise ModelLoadError(
            f"{path} ships its own model code (config.json auto_map: {', '.join(sorted(auto_map))[:200]}); crosspatch "
            "never runs a checkpoint's code unless asked: pass --trust-remote-code (trust_remote_code=True) if you "
            "trust it")


def load_processor(path: str, options: LoadOptions):
    """The multimodal processor saved with a vision-language checkpoint."""
    from transformers import AutoProcessor

    from ..errors import PromptImageError

    name, revision = hub_target(revision_snapshot(path, fetch=False), options.revision)  # (REPO@REVISION: its own)
    try:
        with quiet_loading(options.verbose):
            return AutoProcessor.from_pretrained(name, trust_remote_code=options.trust_remote_code, revision=revision)
    except Exception as exc:  # transformers raises many types for a missing or bad processor
        first = first_line(exc)
        raise PromptImageError(f"could not load an image processor from {path!r}: {first}") from exc


def _wrapper_prefix(unused: list[str], missing: list[str]) -> str | None:
    """The prefix (``_orig_mod.``, ``module.``, ...) under which the unused tensors are the missing weights, or None."""
    cuts = [i + 1 for i, ch in enumerate(unused[0] if unused else "") if ch == "."]
    return next((unused[0][:c] for c in cuts if all(n.startswith(unused[0][:c]) for n in unused)
                 and set(missing) <= {n[c:] for n in unused}), None)


def load_tokenizer(path: str, options: LoadOptions):
    """The tokenizer of ``path``. One saved by transformers 5 names its class ``TokenizersBackend``
    (a fast tokenizer over ``tokenizer.json``), which transformers 4 does not know: there it loads
    as the same fast tokenizer (``PreTrainedTokenizerFast``)."""
    from transformers import AutoTokenizer

    name, revision = hub_target(revision_snapshot(path, fetch=False), options.revision)  # (REPO@REVISION: its own)
    try:
        with quiet_loading(options.verbose):
            return AutoTokenizer.from_pretrained(name, trust_remote_code=options.trust_remote_code, revision=revision)
    except Exception as exc:  # tokenizers and transformers raise many types for a bad tokenizer
        if _saved_by_transformers_5(name):
            try:
                from transformers import PreTrainedTokenizerFast

                with quiet_loading(options.verbose):
                    return PreTrainedTokenizerFast.from_pretrained(name, revision=revision or "main")
            except Exception:  # noqa: BLE001 - the first failure is the one to report
                pass
        first = first_line(exc)
        raise ModelLoadError(f"could not load a tokenizer from {path!r}: {first}") from exc


def _transformers_has(name: str) -> bool:
    """Whether the installed transformers exports ``name``."""
    import transformers

    return hasattr(transformers, name)


def _saved_by_transformers_5(path: str) -> bool:
    """Whether the local tokenizer at ``path`` names transformers 5's ``TokenizersBackend`` class
    (with its ``tokenizer.json``) while the installed transformers has no such class."""
    config, table = Path(path) / "tokenizer_config.json", Path(path) / "tokenizer.json"
    if _transformers_has("TokenizersBackend") or not (config.is_file() and table.is_file()):
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") == "TokenizersBackend"
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, RecursionError):
        return False
