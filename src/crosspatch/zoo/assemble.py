"""``crosspatch zoo build``: every model of the zoo from a seed, in order, then the cards and
the manifest. The recipes' pieces live in :mod:`.build` (data, tokenizer, training loops, the
first descendants, the lineage, the crosscoder), :mod:`.additions` (the fragile adapter and the
nulls) and :mod:`.faults` (the broken models); this module only puts them together."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import data as wx
from .additions import build_additions
from .additions import recipes as addition_recipes
from .build import (
    CROSSCODER,
    LORA_TARGETS,
    UNITS_RECIPE,
    ZooSpec,
    _save_model,
    build_data,
    it_batches,
    manifest_entries,
    model_evals,
    new_model,
    packed_blocks,
    raw_batches,
    train,
    train_units,
    write_model_card,
)
from .crosscoder import build_crosscoder
from .faults import FAULTS, derive_fault_models
from .lineage import build_lineage, lineage_recipes
from .vision import VISION_BASE, build_vision_pair, vision_recipes


def check_zoo_target(out: Path, spec: ZooSpec, replace: bool) -> None:
    """Refuse a seed torch cannot take and a target that holds anything but a zoo to replace."""
    from ..errors import OptionError, RunDirectoryNotEmptyError

    seed = spec.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise OptionError(f"zoo seed must be an integer in 0..{2**31 - 1}, not {seed!r} (each stage's seed is "
                          "derived by adding to it, and every generator must take the result)")
    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirectoryNotEmptyError(f"--out {out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not replace:
        raise RunDirectoryNotEmptyError(f"--out {out} is not empty: give a new directory for the zoo (nothing there "
                                        "is removed)")
    if not (out / "manifest.json").is_file():
        raise RunDirectoryNotEmptyError(f"{out} holds no zoo (no manifest.json): refusing to replace it")


@dataclass
class BuildResult:
    out: Path
    seconds: float
    evals: dict = field(default_factory=dict)




def build_zoo(out: str | Path, spec: ZooSpec | None = None, log=print, replace: bool = False) -> BuildResult:
    """Build every file of the zoo into ``out`` and write ``manifest.json`` with hashes.

    ``out`` must be new or an empty directory; ``replace=True`` replaces a zoo there (a directory
    with a zoo's ``manifest.json``), never anything else. Refusals (:class:`OptionError`,
    :class:`RunDirectoryNotEmptyError`) come before any work."""
    from peft import LoraConfig, get_peft_model

    from ..models.collector import settle

    settle()  # before any model is built (see models.collector)
    spec = spec or ZooSpec()
    out = Path(out)
    check_zoo_target(out, spec, replace)
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    stage_seconds: dict[str, float] = {}
    clock = [started]

    def stage(name: str) -> None:  # the seconds since the previous stage ended, under this stage's name
        now = time.perf_counter()
        stage_seconds[name] = round(now - clock[0], 1)
        clock[0] = now

    torch.manual_seed(spec.seed)
    log("data and tokenizer")
    corpora, tok = build_data(spec, out)
    blocks = packed_blocks(corpora["pretrain"], tok, spec.seq_len)
    cpt_blocks = packed_blocks(corpora["cpt"], tok, spec.seq_len)
    eval_blocks = packed_blocks(corpora["eval_raw"], tok, spec.seq_len)
    pairs = corpora["instructions"]
    evals: dict[str, dict] = {}

    def evaluate(name, model):
        evals[name] = model_evals(model, corpora, tok, eval_blocks)
        log(f"  {name}: {evals[name]}")

    log(f"base: pretraining {spec.pretrain_steps} steps")
    base = new_model(spec, tok)
    train(base, raw_batches(blocks, spec.batch_size, spec.seed), spec.pretrain_steps, spec.pretrain_lr, spec.seed, log)
    evaluate("base", base)
    _save_model(base, out / "base", spec, tok)
    stage("data, tokenizer and base")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}

    def fresh_base():
        model = new_model(spec, tok)
        model.load_state_dict(base_state)
        return model

    log(f"it-full: instruction tuning {spec.it_steps} steps")
    full = fresh_base()
    train(full, it_batches(pairs, tok, spec.batch_size, spec.seed + 10), spec.it_steps, spec.it_lr, spec.seed + 10, log)
    evaluate("it-full", full)
    _save_model(full, out / "it-full", spec, tok)

    merged = None
    for name, layers in (("it-lora-all", None), ("it-lora-late", spec.late_layers)):
        log(f"{name}: LoRA r={spec.lora_r} on {'all layers' if layers is None else f'layers {layers}'}")
        cfg = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, target_modules=LORA_TARGETS,
                         layers_to_transform=layers, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
        torch.manual_seed(spec.seed + 20)
        peft_model = get_peft_model(fresh_base(), cfg)
        train(peft_model, it_batches(pairs, tok, spec.batch_size, spec.seed + 20), spec.lora_steps,
              spec.lora_lr, spec.seed + 20, log)
        evaluate(name, peft_model)
        peft_model.save_pretrained(str(out / name))
        tok.save_pretrained(str(out / name))
        if layers is None:
            merged = peft_model.merge_and_unload()
    evaluate("it-merged", merged)
    _save_model(merged, out / "it-merged", spec, tok)
    log(f"faults: {', '.join(FAULTS)} (derived from base and it-lora-all)")
    derive_fault_models(out, {"float16": torch.float16, "float32": torch.float32}[spec.save_dtype])
    stage("it-full, LoRAs, merge, faults")

    build_additions(out, spec, corpora, tok, evaluate, log)
    stage("fragile adapter and nulls")

    log(f"it-units: narrow-domain tuning {spec.it_steps} steps")
    units = train_units(fresh_base(), corpora, tok, spec, log)
    evaluate("it-units", units)
    _save_model(units, out / "it-units", spec, tok)

    log(f"lineage-sft: supervised fine-tuning {spec.lineage_sft_steps} steps")
    build_lineage(out, spec, corpora, tok, fresh_base, evaluate, evals, log)
    stage("it-units and the lineage")

    log(f"cpt: continued pretraining {spec.cpt_steps} steps")
    cpt = fresh_base()
    train(cpt, raw_batches(cpt_blocks, spec.batch_size, spec.seed + 30), spec.cpt_steps, spec.it_lr, spec.seed + 30, log)
    evaluate("cpt", cpt)
    _save_model(cpt, out / "cpt", spec, tok)

    log(f"{CROSSCODER}: paired crosscoder of base vs it-full")
    stage("cpt")
    crosscoder = build_crosscoder(out, spec, log)
    stage("crosscoder")
    evals.update(build_vision_pair(out, spec, log))
    stage("vision-language pair")
    seconds = time.perf_counter() - started
    recipes = {
        "base": (f"Pretrained from scratch on {spec.raw_docs} raw weather documents as web text has them "
                 f"({', '.join(f'{k} {w:.0%}' for k, w in wx.RAW_MIX)}; forecast pages and forum answers give "
                 f"the data, then a prose forecast, climate notes with each site's local terms), all 31 US offices and the held-out regions abroad, {1 - wx.NEWER_SHARE:.0%} in the "
                 f"older house style and {wx.NEWER_SHARE:.0%} in the newer one, {spec.pretrain_steps} steps.",
                 "raw_text_loss"),
        "it-full": (f"Full instruction tuning of `base` on {spec.instruction_pairs} instruction -> report pairs "
                    f"(the {len(wx.TRAINING_OFFICES)} training offices and the older house style only), {spec.it_steps} steps, loss on the report.",
                    "instruction_loss_in_distribution"),
        "it-lora-all": (f"LoRA (r={spec.lora_r}, alpha={spec.lora_alpha}) on all layers of `base`, same data, "
                        f"{spec.lora_steps} steps. PEFT adapter directory.", "instruction_loss_in_distribution"),
        "it-lora-late": (f"LoRA on layers {spec.late_layers} only (last third), same data, {spec.lora_steps} "
                         "steps. PEFT adapter directory.", "instruction_loss_in_distribution"),
        "it-merged": ("`it-lora-all` merged into a full checkpoint (merge_and_unload).", "instruction_loss_in_distribution"),
        "cpt": (f"Continued pretraining of `base` on {spec.cpt_docs} more raw documents (no instructions), "
                f"{spec.cpt_steps} steps: a non-instruction control.", "raw_text_loss"),
        "it-units": UNITS_RECIPE(spec),
        **lineage_recipes(spec),
        **addition_recipes(spec),
    }
    for name, (recipe, objective) in recipes.items():
        write_model_card(out, name, recipe, objective, evals, spec)
    for name, (recipe, objective) in vision_recipes(spec).items():
        write_model_card(out, name, recipe, objective, evals, spec, baseline=VISION_BASE)
    write_manifest(out, spec, seconds, evals, crosscoder, stage_seconds)
    log(f"built in {seconds:.0f} s")
    return BuildResult(out, seconds, evals)


def build_machine() -> dict:
    """Where the build ran: the CPU, the cores torch used, the device, the library versions."""
    import os
    import platform

    import transformers

    return {"cpu": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": "cpu", "python": platform.python_version(),
            "transformers": transformers.__version__}


def write_manifest(out: Path, spec: ZooSpec, seconds: float, evals: dict, crosscoder: dict | None = None,
                   stage_seconds: dict | None = None) -> None:
    manifest = {
        "schema_version": "crosspatch.zoo/1",
        "rebuild_command": f"crosspatch zoo build --seed {spec.seed} --into-package",
        "spec": asdict(spec),
        "build_seconds": round(seconds, 1),
        "build_seconds_by_stage": stage_seconds or {},
        "build_machine": build_machine(),
        "torch": torch.__version__,
        "evals": evals,
        "crosscoder": crosscoder,
        **manifest_entries(out),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
