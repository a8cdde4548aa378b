"""PEFT adapters on disk or the Hub: their configuration read without loading (the kind, the target
modules, settings that change the base), the checks made before an adapter loads, and the
settings recorded with a run."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelLoadError, PickleWeightsRefusedError, UnsupportedAdapterError, first_line
from .config_dicts import config_vocab_size, is_quantized, local_config
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
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
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
    if (replicated := layer_replication_text(cfg.get("layer_replication"))) is not None:
        raise UnsupportedAdapterError(f"{adapter} {replicated}")
    task = str(cfg.get("task_type") or "").upper()
    if task in NON_GENERATIVE_TASKS:
        raise UnsupportedAdapterError(
            f"{adapter} is a {task} adapter, trained for {NON_GENERATIVE_TASKS[task]}: with a head or a model a causal "
            "language model does not have, which loading it onto one drops; crosspatch compares causal language "
            "models (a CAUSAL_LM adapter)")
    check_peft_config(adapter, cfg)
    return cfg


def check_peft_config(adapter: str, cfg: dict) -> None:
    """PEFT builds its configuration from ``cfg`` (its own checks of each field's value), else a
    :class:`ModelLoadError` naming the adapter's adapter_config.json, before any model loads."""
    import warnings

    from peft import PeftConfig

    try:
        with warnings.catch_warnings():  # (keys of a newer PEFT: it drops them and says so as it loads)
            warnings.simplefilter("ignore")
            PeftConfig.from_peft_type(**cfg)
    except Exception as exc:  # PEFT's __post_init__ checks raise ValueError, TypeError, AttributeError, ...
        raise ModelLoadError(f"{adapter}: adapter_config.json is not a {cfg['peft_type']} configuration PEFT can "
                             f"build ({type(exc).__name__}: {first_line(exc, 300)})") from None


def layer_replication_text(ranges) -> str | None:
    """Why an adapter with PEFT's ``layer_replication`` (a model expanded by stacking copies of the
    base's layers) cannot be cross-patched with its base, or None where it has none: the descendant
    is deeper than the base, so there is no layer-for-layer late stack to swap, and with the adapter
    switched off the model is still the expanded one, not the base (PEFT rebuilds it in place)."""
    if not ranges:
        return None
    try:
        shown = f"{ranges}: a model of {sum(int(end) - int(start) for start, end in ranges)} layers"
    except (TypeError, ValueError):
        shown = repr(ranges)
    return (f"replicates its base's layers (layer_replication {shown}): the descendant is a model of another depth "
            "than its base, and switching the adapter off leaves the expanded model, not the base; crosspatch "
            "cross-patches a base and a descendant of the same depth, layer for layer. Merge the adapter, save the "
            "expanded model, and compare it with a base of its depth")


# PEFT task types of adapters trained for something other than generating text
NON_GENERATIVE_TASKS = {"SEQ_CLS": "a reward model or sequence classifier", "TOKEN_CLS": "token classification",
                        "QUESTION_ANS": "extractive question answering", "FEATURE_EXTRACTION": "an embedding model",
                        "SEQ_2_SEQ_LM": "an encoder-decoder model"}


def _hub_adapter_config(repo: str) -> Path:
    """A hub adapter's adapter_config.json, from the cache or the Hub (as PEFT would fetch it; an
    adapter given as ``REPO@REVISION``: at that revision)."""
    from huggingface_hub import hf_hub_download

    from .paths import hub_target

    name, revision = hub_target(repo, None)
    try:
        return Path(hf_hub_download(name, "adapter_config.json", revision=revision))
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


def check_adapter_files(path: str, allow_pickle: bool, base: str | None = None) -> None:
    """A PEFT adapter has a readable adapter_config.json of a kind crosspatch can patch, and a
    local adapter directory has adapter weights (safetensors unless ``allow_pickle``) that fit a
    local ``base`` (:func:`check_lora_fits`), checked before any model loads."""
    config = read_adapter_config(path)
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
    if base is not None and (root / "adapter_model.safetensors").is_file() and Path(base).expanduser().is_dir() \
            and not is_quantized(local_config(base)):  # a quantized base's weights are packed
        from .skeleton import model_weight_shapes

        # the base's modules by the names PEFT gives them (the model its config describes), its weights' own shapes
        # first (a checkpoint laid out under other names is still checked)
        base_shapes = model_weight_shapes(base) | checkpoint_shapes(base)
        check_lora_fits(path, config, weight_shapes([root / "adapter_model.safetensors"]), base_shapes, base)


def adapter_vocabulary_rows(adapter: str, modules: list[str]) -> int | None:
    """The vocabulary rows a local adapter's weights give the embedding and output ``modules`` (their
    names in the base model): a full copy (``modules_to_save``: ``MODULE.weight``; PEFT's saved
    embedding layers: ``MODULE.base_layer.weight``), an embedding LoRA (``lora_embedding_A``:
    ``[r, rows]``) or an output LoRA (``lora_B``: ``[rows, r]``); None where it holds none of them
    (or is not a local safetensors file)."""
    weights = Path(adapter).expanduser() / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    shapes = weight_shapes([weights])
    rows = []
    for module in modules:
        prefix = f"base_model.model.{module}."
        for key, dim in (("weight", 0), ("base_layer.weight", 0), ("lora_embedding_A", 1), ("lora_B.weight", 0)):
            shape = shapes.get(prefix + key)
            if shape is not None and len(shape) == 2:
                rows.append(shape[dim])
    return max(rows) if rows else None


def vocabulary_conflict(base: str, adapters: list[str]) -> str | None:
    """What keeps local ``adapters`` from sharing one copy of a local ``base``: some were trained
    with more vocabulary rows than others (tokens added before one was trained, not before
    another, :func:`adapter_vocabulary_rows`), so no one size of the base's embeddings fits them
    all; None where they fit one copy or where it cannot be told without loading (hub models). The
    base's embedding and output modules are its weights of the vocabulary's rows (and
    ``lm_head``, which a checkpoint with tied weights leaves out)."""
    if len(adapters) < 2 or not Path(base).expanduser().is_dir():
        return None
    modules = vocabulary_weights(base)[1] | {"lm_head"}
    found = {path: adapter_vocabulary_rows(path, sorted(modules)) for path in adapters}
    sizes = {path: n for path, n in found.items() if n is not None}
    if len(set(sizes.values())) < 2:
        return None
    names = {path: Path(path).name for path in sizes}
    if len(set(names.values())) < len(names):  # (adapters saved in folders of one name: their paths)
        names = {path: str(path) for path in sizes}
    return vocabulary_sizes_text({names[path]: n for path, n in sizes.items()})


def method_conflict(adapters: list[str]) -> str | None:
    """What keeps ``adapters`` from being one PEFT model (one copy of the base): they are of
    different PEFT methods (``peft_type``: LoRA and IA3, ...), which PEFT cannot hold together;
    None where they are of one method (or one cannot be read: loading names it)."""
    if len(adapters) < 2:
        return None
    try:
        methods = {path: str(read_adapter_config(path)["peft_type"]).upper() for path in adapters}
    except ModelLoadError:
        return None
    if len(set(methods.values())) < 2:
        return None
    names = {path: Path(path).name for path in methods}
    if len(set(names.values())) < len(names):
        names = {path: str(path) for path in methods}
    return ("adapters of different PEFT methods ("
            + ", ".join(f"{names[path]}: {method}" for path, method in methods.items()) + ")")


def vocabulary_sizes_text(rows: dict[str, int]) -> str:
    """How adapters of different vocabularies are named (``rows``: each one's name -> its rows)."""
    return ("adapters trained with vocabularies of different sizes ("
            + ", ".join(f"{name}: {n} rows" for name, n in rows.items()) + ")")


def checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """:func:`weight_shapes` of a local checkpoint directory's safetensors files (none for a hub id)."""
    root = Path(path).expanduser()
    return weight_shapes(sorted(root.glob("*.safetensors"))) if root.is_dir() else {}


def vocabulary_weights(path: str) -> tuple[int | None, set[str]]:
    """A local checkpoint's vocabulary size by its config (a multimodal model's ``text_config``) and
    the names, less ``.weight``, of its weights of that many rows (its embedding and output
    matrices); None and none where the config does not say."""
    rows = config_vocab_size(local_config(path))
    if rows is None:
        return None, set()
    return rows, {key.removesuffix(".weight") for key, shape in checkpoint_shapes(path).items()
                  if key.endswith(".weight") and len(shape) == 2 and shape[0] == rows}


def weight_shapes(files) -> dict[str, tuple[int, ...]]:
    """Each floating-point tensor's shape, read from the safetensors files' headers (no weight is
    read); packed integer tensors (a quantized checkpoint's) are left out, and a file that cannot be
    read is left to the loader, which names it."""
    return {key: shape for key, (_, shape) in weight_locations(files).items()}


def weight_locations(files) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each floating-point tensor's file and shape, from the safetensors files' headers (as
    :func:`weight_shapes`): where to read one weight alone."""
    from safetensors import safe_open

    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    tensor = handle.get_slice(key)
                    if tensor.get_dtype().startswith(("F", "BF")):
                        found[key] = (str(file), tuple(tensor.get_shape()))
        except Exception:  # damaged or truncated: the loader's named error, later
            continue
    return found


def check_lora_fits(path: str, config: dict, lora: dict[str, tuple[int, ...]], base_shapes: dict[str, tuple[int, ...]],
                    base: str) -> None:
    """A LoRA adapter's weights (``lora``: key -> shape, as saved) against its configuration and
    its base's weights (``base_shapes``), the errors loading would give once the base had loaded:
    a module with only one of its two LoRA matrices (:class:`ModelLoadError`); a rank other than
    the configuration's ``r`` (without a ``rank_pattern``), or input and output sizes that are not
    the base weight's, either way round (:class:`AdapterShapeMismatchError`). A module whose base
    weight is not found under its name (another checkpoint layout) is left to the loader."""
    from ..errors import AdapterShapeMismatchError

    if str(config.get("peft_type", "")).upper() != "LORA":
        return
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in lora.items():
        parts = key.rsplit(".", 2)  # MODULE.lora_A.weight
        if len(parts) == 3 and parts[1] in ("lora_A", "lora_B") and parts[2] == "weight" and len(shape) == 2:
            pairs.setdefault(parts[0], {})[parts[1]] = shape
    rank = config.get("r") if not config.get("rank_pattern") else None
    vocab_rows = config_vocab_size(local_config(base)) if Path(base).expanduser().is_dir() else None
    for module, matrices in sorted(pairs.items()):
        if len(matrices) < 2:
            have, lack = ("lora_A", "lora_B") if "lora_A" in matrices else ("lora_B", "lora_A")
            raise ModelLoadError(f"adapter {path}: {module} has its {have} weight but no {lack}: the adapter file is "
                                 "incomplete; save it again with PEFT's save_pretrained")
        (r_a, fan_in), (fan_out, r_b) = matrices["lora_A"], matrices["lora_B"]
        for saved, name in ((r_a, "lora_A"), (r_b, "lora_B")):
            if isinstance(rank, int) and saved != rank:
                raise AdapterShapeMismatchError(
                    f"adapter {path} does not match its own adapter_config.json: {module}.{name}.weight has rank "
                    f"{saved} in its weights but the configuration (r, rank_pattern) gives rank {rank}; save the "
                    "adapter again with PEFT's save_pretrained, or correct r")
        target = base_shapes.get(module.removeprefix("base_model.model.") + ".weight")
        grown = vocab_rows is not None and target is not None and len(target) == 2 and target[0] == vocab_rows \
            and fan_in == target[1] and fan_out > vocab_rows  # an output LoRA over tokens added for fine-tuning
        if target is not None and len(target) == 2 and (fan_out, fan_in) not in (target, target[::-1]) and not grown:
            raise AdapterShapeMismatchError(
                f"adapter {path} does not fit base {base}: {module} maps {fan_in} inputs to {fan_out} outputs in the "
                f"adapter but its base weight has shape {list(target)}; was it trained on another base?")


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


# LoRA initialisations that rewrite the base's weights as PEFT loads the adapter (the residual of
# the principal components, an orthonormal or quantisation-aware split): PiSSA, OLoRA, CorDA, LoftQ
BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")


def changes_base_in_place(adapter: str) -> str | None:
    """Why the model with ``adapter`` switched off would not be the base, or None: a LoRA adapter
    saved with an initialisation that rewrites the base's weights when PEFT loads it
    (:data:`BASE_REWRITING_INITS`; one converted to plain LoRA on saving is not), or an adapter
    whose ``bias`` setting trained the base's own biases (they load into the base's layers, and
    switching the adapter off leaves them there), where its weights hold such biases (a base
    without biases, as Llama's, has none to train; an adapter on the Hub, whose weights are not at
    hand, is taken to hold them)."""
    config = read_adapter_config(adapter)
    init, bias = config.get("init_lora_weights"), config.get("bias", "none")
    weights = Path(adapter).expanduser() / "adapter_model.safetensors"
    changed = base_change(init, bias, lambda: not weights.is_file() or any(
        name.endswith(".bias") and "lora_" not in name for name in weight_shapes([weights])))
    if changed == "init":
        return (f"adapter init_lora_weights={init!r}: PEFT rewrites the base's weights in place as it loads the "
                "adapter, so with the adapter switched off the model is not the base")
    if changed == "bias":
        return (f"adapter bias={bias!r} trained the base's own biases, which load into the base's layers: with the "
                "adapter switched off the model is not the base")
    return None


def base_change(init, bias, holds_biases) -> str | None:
    """What an adapter's settings change in its base's own weights: ``"init"`` (an initialisation
    of :data:`BASE_REWRITING_INITS`), ``"bias"`` (a ``bias`` setting other than "none", where
    ``holds_biases()`` says there are biases to train), else None. The one rule for an adapter on
    disk (:func:`changes_base_in_place`) and a PEFT model in memory."""
    if isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS):
        return "init"
    if bias not in (None, "none") and holds_biases():
        return "bias"
    return None


def adapter_settings(adapter_dir: str, base: str | None = None, shares_base: bool = True) -> tuple[dict, list[str]]:
    """The recorded settings of a PEFT adapter directory, and warnings about settings that make
    "adapter disabled" differ from the original base where the adapter ``shares_base`` (one copy of
    the base weights serves the base, or other adapters, too), and (``base`` given) about an adapter
    whose config names another base (:func:`base_name_warning`)."""
    cfg = read_adapter_config(adapter_dir)
    settings = {k: cfg.get(k) for k in ("peft_type", "r", "lora_alpha", "target_modules", "bias",
                                         "modules_to_save", "layers_to_transform", "base_model_name_or_path")}
    warnings = []
    if base is not None and (other := base_name_warning(cfg.get("base_model_name_or_path"), base)):
        warnings.append(other)
    if shares_base and (why := changes_base_in_place(adapter_dir)):
        warnings.append(f"{why}: one copy of the base weights serves the base (or other adapters) here, so what is "
                        "read as the base carries these changes; with no residency asked for, crosspatch gives the "
                        "base a copy of its own")
    if cfg.get("modules_to_save"):
        warnings.append(
            f"adapter modules_to_save={cfg['modules_to_save']}: these modules are replaced wholesale; "
            "'adapter disabled' uses the originals"
        )
    return settings, warnings
