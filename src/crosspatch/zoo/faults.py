"""Deliberately faulty zoo descendants, for the practitioner workflows to fail on.

Both are derived deterministically from files the zoo already has (``base`` and ``it-lora-all``),
so ``crosspatch zoo build`` makes them after those two and a maintainer can re-derive them on a
built zoo without retraining (:func:`derive_fault_models`):

- ``it-lora-noop``: ``it-lora-all`` as an adapter looks when it is saved before training, or
  trained with a learning rate of zero: every LoRA ``B`` matrix is zero, so ``ΔW = B A = 0`` and
  the adapter changes nothing (the configuration and ``A`` matrices are real);
- ``it-merged-broken``: ``it-lora-all`` merged into ``base`` twice (``W + 2 ΔW``), the effect of
  calling a merge on an already merged model, or of a merge script that scales by ``alpha``
  twice; its logits differ from the adapter's far beyond rounding.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

NOOP_ADAPTER = "it-lora-noop"
BROKEN_MERGE = "it-merged-broken"
FAULTS = (NOOP_ADAPTER, BROKEN_MERGE)

RECIPES = {
    NOOP_ADAPTER: ("`it-lora-all` with every LoRA `B` matrix set to zero, as an adapter saved before training "
                   "looks: `ΔW = 0`, the adapter changes nothing. For `crosspatch preflight` to fail on."),
    BROKEN_MERGE: ("`it-lora-all` merged into `base` twice (`W + 2·ΔW`), as a second merge of an already merged "
                   "model gives. For `crosspatch preflight` to fail on."),
}


def _noop_adapter(zoo: Path, out: Path) -> None:
    from safetensors.torch import load_file, save_file

    src = zoo / "it-lora-all"
    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(src / "adapter_model.safetensors"))
    zeroed = {k: (torch.zeros_like(v) if ".lora_B." in k else v.clone()) for k, v in tensors.items()}
    save_file(zeroed, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    for f in src.iterdir():
        if f.name not in ("adapter_model.safetensors", "README.md"):
            shutil.copy2(f, out / f.name)


def _broken_merge(zoo: Path, out: Path, dtype: torch.dtype) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(str(zoo / "base"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(zoo / "it-lora-all"))
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                delta = getattr(module, "get_delta_weight")("default")  # noqa: B009 - a LoRA layer's method
                getattr(module, "base_layer").weight += 2 * delta  # noqa: B009
    merged = model.unload()  # drop the LoRA layers without merging them again
    merged.to(dtype).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(zoo / "it-lora-all")).save_pretrained(str(out))


def derive_fault_models(zoo: str | Path, dtype: torch.dtype = torch.float16) -> list[Path]:
    """Write ``it-lora-noop`` and ``it-merged-broken`` into ``zoo`` from its ``base`` and
    ``it-lora-all`` (replacing earlier copies); returns their directories."""
    zoo = Path(zoo)
    written = []
    for name, make in ((NOOP_ADAPTER, lambda p: _noop_adapter(zoo, p)),
                       (BROKEN_MERGE, lambda p: _broken_merge(zoo, p, dtype))):
        target = zoo / name
        if target.exists():
            shutil.rmtree(target)
        make(target)
        (target / "README.md").write_text(f"# crosspatch zoo: `{name}`\n\n{RECIPES[name]}\n", encoding="utf-8")
        written.append(target)
    return written


def refresh_manifest_files(zoo: str | Path) -> None:
    """Recompute the ``files`` hashes of a zoo's manifest (everything else is kept)."""
    from .build import manifest_entries

    zoo = Path(zoo)
    path = zoo / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(manifest_entries(zoo))
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
