"""PEFT adapters on disk or the Hub: their configuration read without loading (the kind, the target
modules, settings that change the base), the checks made before an adapter loads, and the
settings recorded with a run."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelLoadError, PickleWeightsRefusedError, UnsupportedAdapterError, first_line
from .loading import is_local


def read_adapter_config(adapter: str) -> dict:
    """A PEFT adapter's adapter_config.json (a local directory's, or a hub id's through the
    Hugging Face cache): a JSON object naming a ``peft_type`` that changes the model's layers,
    else a :class:`ModelLoadError` saying what is wrong."""
    cfg_path = Path(adapter).expanduser() / "adapter_config.json"
    if not cfg_path.exists() and not is_local(adapter):
        cfg_path = _hub_adapter_config(adapter)
    if not cfg_path.exists():
        raise ModelLoadError(f"{adapter} is not a PEFT adapter directory (no adapter_config.json)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{adapter}: adapter_config.json is not readable JSON ({exc})") from None
    if not isinstance(cfg, dict) or not cfg.get("peft_type"):
        raise ModelLoadError(f"{adapter}: adapter_config.json names no peft_type; is it a PEFT adapter?")
    known = known_peft_types()
    if known and (not isinstance(cfg["peft_type"], str) or cfg["peft_type"].upper() not in known):
        import peft

        raise UnsupportedAdapterError(
            f"{adapter}: adapter_config.json names peft_type {cfg['peft_type']!r}, which the installed PEFT "
            f"({peft.__version__}) does not know: an adapter saved by a newer PEFT (upgrade peft), or not a PEFT "
            "adapter")
    if is_prompt_learning(str(cfg["peft_type"])):
        raise UnsupportedAdapterError(
            f"{adapter} is a {cfg['peft_type']} adapter: prompt-learning methods add virtual tokens (or key/value "
            "prefixes) to the input instead of changing the model's layers, so the descendant has no late stack of "
            "its own to cross-patch and its sequence is not the base's. Use an adapter that changes weights (LoRA, "
            "IA3, ...), or compare a checkpoint fine-tuned in full.")
    return cfg


def _hub_adapter_config(repo: str) -> Path:
    """A hub adapter's adapter_config.json, from the cache or the Hub (as PEFT would fetch it)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, "adapter_config.json"))
    except Exception as exc:  # huggingface_hub raises many types: offline, not found, gated, network
        first = first_line(exc, 300)
        raise ModelLoadError(f"--adapter {repo}: could not fetch its adapter_config.json from the Hub or the local "
                             f"cache ({first})") from None


def known_peft_types() -> set[str]:
    """The ``peft_type`` names the installed PEFT can load (none where its layout is unknown)."""
    try:
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    except ImportError:  # pragma: no cover - an older PEFT layout
        return set()
    return {str(getattr(kind, "value", kind)).upper() for kind in PEFT_TYPE_TO_CONFIG_MAPPING}


def is_prompt_learning(peft_type: str) -> bool:
    """Whether PEFT's ``peft_type`` is a prompt-learning method (prompt / prefix / P-tuning, ...),
    as PEFT itself classifies it."""
    try:
        from peft import PromptLearningConfig
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    except ImportError:  # pragma: no cover - an older PEFT layout
        return peft_type.upper() in _PROMPT_LEARNING
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type.upper())  # pyright: ignore[reportArgumentType] - PeftType is a str enum
    if config_class is None:
        return peft_type.upper() in _PROMPT_LEARNING
    return issubclass(config_class, PromptLearningConfig)


_PROMPT_LEARNING = {"PROMPT_TUNING", "MULTITASK_PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "CPT", "CARTRIDGE"}


def check_adapter_files(path: str, allow_pickle: bool) -> None:
    """A PEFT adapter has a readable adapter_config.json of a kind crosspatch can patch, and a
    local adapter directory has adapter weights (safetensors unless ``allow_pickle``), checked
    before any model loads."""
    read_adapter_config(path)
    root = Path(path).expanduser()
    if not root.is_dir():
        return  # a hub id: PEFT resolves its weights
    files = [f for f in root.iterdir() if f.name.startswith("adapter_model")]
    if not files:
        raise ModelLoadError(f"--adapter {path} holds no adapter weights (adapter_model.safetensors)")
    if not any(f.suffix == ".safetensors" for f in files) and not allow_pickle:
        raise PickleWeightsRefusedError(
            f"{path} has only pickle adapter weights ({', '.join(f.name for f in files[:3])}); pickle can run "
            "arbitrary code when loaded. Convert to safetensors, or pass --allow-pickle if you trust it.")


def _model_name(path: str) -> str:
    """What a model path or hub id is called, for telling two names of a base apart: its last
    part, lower case (``meta-llama/Llama-3.1-8B`` and ``/models/llama-3.1-8b/`` alike)."""
    return Path(str(path).rstrip("/\\")).name.lower()


def base_name_warning(recorded, base: str) -> str | None:
    """A warning when an adapter's ``base_model_name_or_path`` (``recorded``) names another model
    than the ``base`` it is applied to: the commonest slip is an adapter trained on the
    instruct model applied to the pretrained one, which loads without a word (same shapes) and
    measures nothing meaningful. Names are compared by their last part (a local copy of a hub
    model under the hub name's folder matches), a local path also by where it leads; None where
    they agree or nothing is recorded."""
    from .paths import path_key

    if not isinstance(recorded, str) or not recorded.strip():
        return None
    if _model_name(recorded) == _model_name(base) or path_key(recorded) == path_key(base):
        return None
    return (f"the adapter's adapter_config.json names its base as {recorded!r}, and it is applied to {base!r}: "
            "if these are not the same model (an adapter trained on an instruct model and applied to the "
            "pretrained one is the common slip), the descendant is not what was trained and the effects mean nothing")


def adapter_settings(adapter_dir: str, base: str | None = None) -> tuple[dict, list[str]]:
    """The recorded settings of a PEFT adapter directory, and warnings about settings that make
    "adapter disabled" differ from the original base, and (``base`` given) about an adapter whose
    config names another base (:func:`base_name_warning`)."""
    cfg = read_adapter_config(adapter_dir)
    settings = {k: cfg.get(k) for k in ("peft_type", "r", "lora_alpha", "target_modules", "bias",
                                         "modules_to_save", "layers_to_transform", "base_model_name_or_path")}
    warnings = []
    if base is not None and (other := base_name_warning(cfg.get("base_model_name_or_path"), base)):
        warnings.append(other)
    if cfg.get("bias", "none") not in (None, "none"):
        warnings.append(
            f"adapter bias={cfg['bias']!r}: biases are trained in place, so 'adapter disabled' is not "
            "exactly the original base model"
        )
    if cfg.get("modules_to_save"):
        warnings.append(
            f"adapter modules_to_save={cfg['modules_to_save']}: these modules are replaced wholesale; "
            "'adapter disabled' uses the originals"
        )
    return settings, warnings
