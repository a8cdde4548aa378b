"""Zoo descendants that show what the demo could not before: a fragile adapter and two nulls.

Each is trained from the *saved* ``base`` (as every later build reads it back), so
``crosspatch zoo build`` and :func:`build_additions` on a built zoo give the same weights:

- ``it-lora-fragile``: a LoRA on every layer whose late layers were trained to read features that
  only its own early layers write. The instruction loss is minimised with the whole adapter on,
  while two KL terms keep the model equal to the base with only the late half of the adapter on
  (tuned late layers over base upstream state) and with only the early half on. Neither half does
  anything alone; together they write the reports. Crosspatch should find it
  ``upstream-dependent``: its late gain disappears on base upstream state — the fragile adapter
  the tool exists to find.
- ``it-full-seed2``: ``it-full``'s recipe and data with another seed: how far the numbers move
  between two runs of the same fine-tune (the demo reads it as the seed yardstick).
- ``lora-generic``: a LoRA of the instruction LoRAs' size trained on generic raw weather text (no
  instructions): a harmless fine-tune, the null the verdict's yardstick scores on the same events.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

FRAGILE_ADAPTER = "it-lora-fragile"
SEED_TWIN = "it-full-seed2"
GENERIC_LORA = "lora-generic"
ADDITIONS = (FRAGILE_ADAPTER, SEED_TWIN, GENERIC_LORA)


def fragile_boundary(spec) -> int:
    """Where the fragile adapter's early half ends: the demo's headline boundary (60% of depth)."""
    from ..core.cells import resolve_boundary

    return resolve_boundary(0.6, spec.num_layers)


def recipes(spec) -> dict[str, tuple[str, str]]:
    b = fragile_boundary(spec)
    return {
        FRAGILE_ADAPTER: (
            f"A fragile adapter by construction: LoRA (r={spec.lora_r}) on every layer, {spec.fragile_steps} steps on the "
            f"instruction pairs, with the whole adapter minimising the report loss while KL terms (weight "
            f"{spec.fragile_kl_weight}) keep the model equal to `base` with only layers {b}..{spec.num_layers - 1}'s LoRA on "
            f"(tuned late layers over base upstream state) and with only layers 0..{b - 1}'s on. Its late layers read what "
            "only its own early layers write: intended verdict `upstream-dependent`.", "instruction_loss_in_distribution"),
        SEED_TWIN: (f"`it-full`'s recipe and data (full instruction tuning, {spec.it_steps} steps) with seed "
                    f"{spec.seed + spec.twin_seed_offset}: the seed yardstick (how far the numbers move between two runs "
                    "of one fine-tune).", "instruction_loss_in_distribution"),
        GENERIC_LORA: (f"LoRA (r={spec.lora_r}, alpha={spec.lora_alpha}) on all layers of `base`, {spec.lora_steps} steps "
                       "on generic raw weather text (no instructions): the size of the instruction LoRA and none of its "
                       "task, the null the verdict's yardstick scores.", "raw_text_loss"),
    }


def _load_base(out: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out / "base"), dtype=torch.float32)


def _layer_of(name: str) -> int:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1])


def train_fragile_adapter(out: Path, spec, pairs: list[dict], tok, log=print):
    """The fragile adapter (module docstring): a PEFT model."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from .build import ADAM_BETAS, LORA_TARGETS, MAX_GRAD_NORM, WEIGHT_DECAY, it_batches, warmup_steps

    b = fragile_boundary(spec)
    cfg = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, target_modules=LORA_TARGETS, lora_dropout=0.0,
                     bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(spec.seed + 60)
    model = get_peft_model(_load_base(out), cfg)
    halves = {"early": [], "late": []}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            halves["early" if _layer_of(name) < b else "late"].append(module)

    def only(half: str, on: bool) -> None:  # switch one half's LoRA off for a forward pass
        for module in halves[half]:
            module._disable_adapters = not on  # PEFT's per-layer switch; enable_adapters() would also touch grads

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lora_lr, weight_decay=WEIGHT_DECAY, betas=ADAM_BETAS)
    steps, warm = spec.fragile_steps, warmup_steps(spec.fragile_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
    batches = it_batches(pairs, tok, spec.batch_size, spec.seed + 61)
    torch.manual_seed(spec.seed + 61)
    model.train()
    for step in range(steps):
        ids, mask, labels = batches(step)
        report_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        with torch.no_grad(), model.disable_adapter():
            reference = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits[mask.bool()], -1)
        keep_base = 0.0
        for half in ("early", "late"):
            only(half, False)
            alone = model(input_ids=ids, attention_mask=mask).logits[mask.bool()]
            only(half, True)
            keep_base = keep_base + F.kl_div(F.log_softmax(alone, -1), reference, log_target=True, reduction="batchmean")
        loss = report_loss + spec.fragile_kl_weight * keep_base
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        sched.step()
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"  step {step + 1}/{steps} report loss {report_loss.item():.3f} keep-base KL {float(keep_base):.4f}")
    model.eval()
    return model


def train_seed_twin(out: Path, spec, pairs: list[dict], tok, log=print):
    """``it-full``'s recipe with another seed."""
    from .build import it_batches, train

    seed = spec.seed + spec.twin_seed_offset
    model = _load_base(out)
    train(model, it_batches(pairs, tok, spec.batch_size, seed + 10), spec.it_steps, spec.it_lr, seed + 10, log)
    return model


def train_generic_lora(out: Path, spec, blocks: torch.Tensor, log=print):
    """A LoRA of the instruction LoRAs' size on generic raw text."""
    from peft import LoraConfig, get_peft_model

    from .build import LORA_TARGETS, raw_batches, train

    cfg = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, target_modules=LORA_TARGETS, lora_dropout=0.0,
                     bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(spec.seed + 80)
    model = get_peft_model(_load_base(out), cfg)
    train(model, raw_batches(blocks, spec.batch_size, spec.seed + 80), spec.lora_steps, spec.lora_lr, spec.seed + 80, log)
    return model


def _forget_build_path(adapter) -> None:
    """An adapter records no base (as the zoo's other adapters): the build's own path to it (a
    temporary directory) would name a model no user has."""
    for config in adapter.peft_config.values():
        config.base_model_name_or_path = None
    adapter.base_model.model.__dict__.pop("name_or_path", None)  # (what PEFT's save fills an unnamed base from)


def build_additions(out: str | Path, spec, corpora: dict, tok, evaluate, log=print) -> None:
    """Train and save the three additions into the zoo at ``out`` (which has ``base`` saved);
    ``evaluate(name, model)`` records their evals. Cards are written by the caller."""
    from .build import _save_model, packed_blocks

    out = Path(out)
    log(f"{FRAGILE_ADAPTER}: the fragile adapter, {spec.fragile_steps} steps")
    fragile = train_fragile_adapter(out, spec, corpora["instructions"], tok, log)
    evaluate(FRAGILE_ADAPTER, fragile)
    _forget_build_path(fragile)
    fragile.save_pretrained(str(out / FRAGILE_ADAPTER))
    tok.save_pretrained(str(out / FRAGILE_ADAPTER))
    log(f"{SEED_TWIN}: it-full's recipe, seed {spec.seed + spec.twin_seed_offset}")
    twin = train_seed_twin(out, spec, corpora["instructions"], tok, log)
    evaluate(SEED_TWIN, twin)
    _save_model(twin, out / SEED_TWIN, spec, tok)
    log(f"{GENERIC_LORA}: LoRA on generic raw text, {spec.lora_steps} steps")
    generic = train_generic_lora(out, spec, packed_blocks(corpora["cpt"], tok, spec.seq_len), log)
    evaluate(GENERIC_LORA, generic)
    _forget_build_path(generic)
    generic.save_pretrained(str(out / GENERIC_LORA))
    tok.save_pretrained(str(out / GENERIC_LORA))


def extend_built_zoo(root: str | Path, log=print) -> None:
    """Add the three models to an already built zoo (the committed one, say) exactly as ``zoo
    build`` makes them: corpora and tokenizer from the manifest's spec, evals, cards, manifest."""
    import json
    from dataclasses import asdict

    from transformers import AutoTokenizer

    from .build import ZooSpec, build_corpora, model_evals, packed_blocks, write_model_card
    from .faults import refresh_manifest_files

    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    spec = ZooSpec.from_manifest(manifest)
    corpora = build_corpora(spec)
    tok = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    eval_blocks = packed_blocks(corpora["eval_raw"], tok, spec.seq_len)
    evals = manifest["evals"]

    def evaluate(name, model):
        evals[name] = model_evals(model, corpora, tok, eval_blocks)
        log(f"  {name}: {evals[name]}")

    build_additions(root, spec, corpora, tok, evaluate, log)
    for name, (recipe, objective) in recipes(spec).items():
        write_model_card(root, name, recipe, objective, evals, spec)
    manifest["spec"], manifest["evals"] = asdict(spec), evals
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    refresh_manifest_files(root)
