"""Loading a pair: hub ids or local dirs, a base + PEFT adapter, or a merged checkpoint.

Safe by default: ``trust_remote_code`` is off, safetensors are required unless the user passes
``allow_pickle=True``. Everything that identifies the weights (paths, revisions, sha256 of
local weight files, adapter settings) goes into the pair's provenance for the run record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelLoadError, PickleWeightsRefusedError
from .checks import check_pair_compatible, check_special_tokens
from .execution import ModelHandle
from .vocab import RealVocabulary, build_real_vocabulary

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass
class LoadOptions:
    """How to load checkpoints (every field is recorded in the run's config.json)."""

    dtype: str = "float32"
    device: str = "cpu"  # cpu | cuda | auto (accelerate device_map)
    trust_remote_code: bool = False
    allow_pickle: bool = False
    revision: str | None = None
    allow_special_token_mismatch: bool = False
    hash_weights: bool = True
    residency: str | None = None  # both | sequential | adapter; None chooses (see choose_residency)


@dataclass
class ModelPair:
    """A base (PT) and a descendant (IT) ready for cross-patching."""

    pt: ModelHandle
    it: ModelHandle
    tokenizer_pt: object
    tokenizer_it: object
    real_vocab: RealVocabulary
    residency: str  # "both" or "adapter"
    warnings: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.pt.anatomy.num_layers

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.tokenizer_it)

    @property
    def eos_ids(self) -> set[int]:
        return eos_token_ids(self.tokenizer_pt, self.pt.anatomy.model) | eos_token_ids(
            self.tokenizer_it, self.it.anatomy.model
        )


def pad_token_id(tokenizer) -> int:
    """Id used for padding (never attended to by real tokens): pad, else eos, else unk, else 0."""
    for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id, 0):
        if cand is not None:
            return int(cand)
    return 0


def eos_token_ids(tokenizer, model) -> set[int]:
    """End-of-sequence ids of a tokenizer and of a model's generation config."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    return ids


def _is_local(path: str) -> bool:
    return Path(path).expanduser().exists()


def weight_files(path: str) -> list[Path]:
    root = Path(path).expanduser()
    return sorted(p for p in root.iterdir() if p.suffix in (".safetensors",) + _PICKLE_SUFFIXES)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_weight_format(path: str, allow_pickle: bool) -> None:
    if not _is_local(path):
        return
    files = weight_files(path)
    if files and not any(f.suffix == ".safetensors" for f in files) and not allow_pickle:
        raise PickleWeightsRefusedError(
            f"{path} has only pickle weights ({', '.join(f.name for f in files[:3])}); pickle can run "
            "arbitrary code when loaded. Convert to safetensors, or pass --allow-pickle if you trust it."
        )


def _provenance(path: str, options: LoadOptions) -> dict:
    record = {"path": str(path), "local": _is_local(path), "revision": options.revision}
    if record["local"]:
        files = weight_files(path)
        record["weights"] = {
            f.name: (sha256_file(f) if options.hash_weights else None) for f in files
        }
    return record


def load_causal_lm(path: str, options: LoadOptions):
    """A transformers causal LM in eval mode, loaded with the safe defaults above."""
    from transformers import AutoModelForCausalLM

    _check_weight_format(path, options.allow_pickle)
    kwargs = dict(
        dtype=DTYPES[options.dtype],
        trust_remote_code=options.trust_remote_code,
        revision=options.revision,
    )
    if not options.allow_pickle:
        kwargs["use_safetensors"] = True
    if options.device == "auto":
        kwargs["device_map"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load {path!r}: {exc}") from exc
    if options.device not in ("auto", "cpu"):
        model.to(options.device)
    model.eval()
    return model


def load_tokenizer(path: str, options: LoadOptions):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            path, trust_remote_code=options.trust_remote_code, revision=options.revision
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load a tokenizer from {path!r}: {exc}") from exc


def _adapter_warnings(adapter_dir: str) -> tuple[dict, list[str]]:
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    if not cfg_path.exists():
        raise ModelLoadError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
    cfg = json.loads(cfg_path.read_text())
    settings = {k: cfg.get(k) for k in ("peft_type", "r", "lora_alpha", "target_modules", "bias",
                                         "modules_to_save", "layers_to_transform", "base_model_name_or_path")}
    warnings = []
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


def load_pair(
    base: str,
    tuned: str | None = None,
    adapter: str | None = None,
    options: LoadOptions | None = None,
    **overrides,
) -> ModelPair:
    """Load a base and its descendant: ``tuned`` (full or merged checkpoint) or ``adapter``
    (a PEFT adapter directory on ``base``; one copy of the base weights serves both sides)."""
    options = options or LoadOptions()
    for key, value in overrides.items():
        if not hasattr(options, key):
            raise TypeError(f"unknown load option {key!r}")
        setattr(options, key, value)
    if (tuned is None) == (adapter is None):
        raise ModelLoadError("give exactly one of tuned= (a checkpoint) or adapter= (a PEFT adapter dir)")
    residency, reason = choose_residency(base, tuned, adapter, options)
    options.residency = residency
    if residency == "sequential":
        from ..residency import load_sequential_pair

        pair = load_sequential_pair(base, tuned, options)
        pair.provenance["residency_reason"] = reason
        return pair
    warnings: list[str] = []
    provenance = {"base": _provenance(base, options), "load_options": vars(options).copy()}
    tok_pt = load_tokenizer(base, options)
    if adapter is not None:
        from peft import PeftModel

        settings, adapter_warnings = _adapter_warnings(adapter)
        warnings += adapter_warnings
        base_model = load_causal_lm(base, options)
        peft_model = PeftModel.from_pretrained(base_model, adapter, is_trainable=False)
        peft_model.eval()
        pt = ModelHandle("PT", peft_model, adapter_enabled=False)
        it = ModelHandle("IT", peft_model, adapter_enabled=True)
        has_tok = any((Path(adapter) / n).exists() for n in ("tokenizer.json", "tokenizer_config.json"))
        tok_it = load_tokenizer(adapter, options) if has_tok else tok_pt
        provenance["adapter"] = _provenance(adapter, options) | {"settings": settings}
    else:
        pt = ModelHandle("PT", load_causal_lm(base, options))
        it = ModelHandle("IT", load_causal_lm(tuned, options))
        tok_it = load_tokenizer(tuned, options)
        provenance["tuned"] = _provenance(tuned, options)
    provenance["residency_reason"] = reason
    return assemble_pair(pt, it, tok_pt, tok_it, residency, options, warnings, provenance)


def _weights_bytes(path: str) -> int | None:
    if not _is_local(path):
        return None
    return sum(f.stat().st_size for f in weight_files(path)) or None


def _available_bytes(options: LoadOptions) -> int | None:
    if options.device in ("cuda", "auto") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def choose_residency(base: str, tuned: str | None, adapter: str | None, options: LoadOptions) -> tuple[str, str]:
    """The residency to use and why: ``adapter`` for a PEFT adapter (one copy of the base
    weights serves both sides); otherwise ``both`` when two models fit in the free memory of
    the target device with 20% headroom, else ``sequential`` (one model at a time)."""
    if options.residency is not None:
        if adapter is not None and options.residency != "adapter":
            raise ModelLoadError("with an adapter the residency is 'adapter' (one copy of the base weights)")
        if adapter is None and options.residency == "adapter":
            raise ModelLoadError("residency 'adapter' needs --adapter")
        return options.residency, "asked for"
    if adapter is not None:
        return "adapter", "PEFT adapter: one copy of the base weights serves both models"
    sizes = [_weights_bytes(base), _weights_bytes(tuned)]
    free = _available_bytes(options)
    if None in sizes or free is None:
        return "both", "model sizes or free memory unknown (hub ids); loading both"
    scale = {"float32": 4, "bfloat16": 2, "float16": 2}[options.dtype] / 2  # files are mostly 16-bit
    need = int(sum(sizes) * max(scale, 1.0) * 1.2)
    if need <= free:
        return "both", f"both models (~{need / 2**30:.1f} GiB with headroom) fit in {free / 2**30:.1f} GiB free"
    return "sequential", f"both models need ~{need / 2**30:.1f} GiB but {free / 2**30:.1f} GiB is free"


def assemble_pair(pt, it, tok_pt, tok_it, residency, options, warnings, provenance) -> ModelPair:
    """Check compatibility and build the real vocabulary of two already-loaded handles."""
    check_pair_compatible(pt, it)
    warnings = list(warnings) + check_special_tokens(
        tok_pt, tok_it, allow_mismatch=options.allow_special_token_mismatch
    )
    rows = min(pt.anatomy.lm_head.weight.shape[0], it.anatomy.lm_head.weight.shape[0])
    real = build_real_vocabulary(tok_pt, tok_it, rows)
    return ModelPair(pt, it, tok_pt, tok_it, real, residency, warnings, provenance)


def pair_from_models(pt_model, it_model, tokenizer, tokenizer_it=None, **options) -> ModelPair:
    """A pair from models already in memory (notebooks, tests). Models are put in eval mode."""
    opts = LoadOptions(**options)
    pt_model.eval()
    it_model.eval()
    return assemble_pair(
        ModelHandle("PT", pt_model), ModelHandle("IT", it_model), tokenizer,
        tokenizer_it if tokenizer_it is not None else tokenizer, "both", opts, [],
        {"base": {"path": "<in-memory>"}, "tuned": {"path": "<in-memory>"},
         "load_options": vars(opts) | {"dtype": str(next(pt_model.parameters()).dtype).replace("torch.", "")}},
    )
