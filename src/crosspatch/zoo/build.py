"""The weather-report zoo's recipes: data, tokenizer, training loops, the base, the first
descendants, the lineage, the crosscoder, model cards.

``crosspatch zoo build --out DIR`` runs them in order (:func:`crosspatch.zoo.assemble.build_zoo`,
with :mod:`.additions` and :mod:`.faults`); ``ZooSpec`` holds every size and step count, so a
smoke test can run each recipe for a few steps.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from . import data as wx

DESCENDANTS = ("it-full", "it-lora-all", "it-lora-late", "it-merged", "cpt")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ZooSpec:
    """Sizes, data amounts and recipes of the zoo (defaults: the committed zoo)."""

    seed: int = 1234
    vocab_size: int = 1024
    hidden_size: int = 64
    intermediate_size: int = 192
    num_layers: int = 6
    num_heads: int = 4
    seq_len: int = 128
    raw_docs: int = 24000
    cpt_docs: int = 12000
    instruction_pairs: int = 6000
    eval_docs: int = 400
    eval_pairs: int = 300
    batch_size: int = 32
    pretrain_steps: int = 2000
    it_steps: int = 400
    lora_steps: int = 400
    cpt_steps: int = 300
    pretrain_lr: float = 3e-3
    it_lr: float = 1e-3
    lora_lr: float = 1e-2
    lora_r: int = 8
    lora_alpha: int = 16
    save_dtype: str = "float16"
    prompts_per_aspect: int = 4  # the demo's prompt sets (per aspect/task, per split; they train nothing)
    raw_prompts_per_aspect: int = 2
    question_prompts_per_aspect: int = 2
    unit_prompts_per_task: int = 4
    lineage_sft_steps: int = 400  # the lineage: SFT -> rejection-sampling fine-tuning -> DPO
    dpo_steps: int = 60
    dpo_lr: float = 5e-5
    rft_steps: int = 100
    rft_prompts: int = 1024
    rft_samples: int = 4
    crosscoder_layers: int = 2  # the zoo's crosscoder of base vs it-full (the MLPs above the boundary)
    crosscoder_latents: int = 256
    crosscoder_k: int = 16  # (k = 8 explains < 0.76 of the IT branch's variance at layer 4: the gate's edge)
    crosscoder_steps: int = 3000
    crosscoder_prompts_per_aspect: int = 20  # 1920 training prompts (the held-out L0 misses k on ~150 events)
    fragile_steps: int = 400  # it-lora-fragile (zoo/additions.py)
    fragile_kl_weight: float = 1.0
    twin_seed_offset: int = 100  # it-full-seed2: it-full's recipe with seed + this
    vision_charts: int = 1500  # the vision-language pair (zoo/vision.py): training charts
    vision_eval_charts: int = 40
    vision_prompts: int = 40  # the demo's image prompts
    vision_pretrain_steps: int = 1000
    vision_it_steps: int = 600
    vision_lr: float = 2e-3

    @classmethod
    def from_manifest(cls, manifest: dict) -> ZooSpec:
        """The spec a built zoo's ``manifest.json`` records (keys this version does not know are
        left out; fields the manifest lacks take their defaults)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in manifest["spec"].items() if k in known})

    @property
    def late_layers(self) -> list[int]:
        """The last third of the layers (it-lora-late trains only these)."""
        n = self.num_layers
        return list(range(n - n // 3, n))


# --- data and tokenizer -----------------------------------------------------------------------
def build_corpora(spec: ZooSpec) -> dict[str, list]:
    """All text of the zoo, deterministic for ``spec.seed``."""
    s = spec.seed
    return {
        "pretrain": wx.raw_corpus(spec.raw_docs, s),
        "cpt": wx.raw_corpus(spec.cpt_docs, s + 1),
        "instructions": wx.instruction_pairs(spec.instruction_pairs, s + 2),
        "eval_raw": wx.raw_corpus(spec.eval_docs, s + 3),
        "eval_instructions": wx.instruction_pairs(spec.eval_pairs, s + 4),
        "eval_instructions_held_out": wx.instruction_pairs(spec.eval_pairs, s + 5, wx.HELD_OUT_REGIONS),
        "eval_instructions_held_out_offices": wx.instruction_pairs(spec.eval_pairs, s + 15, wx.HELD_OUT_OFFICES),
        "prompts": wx.prompt_set(s + 6, spec.prompts_per_aspect),
        "raw_prompts": wx.raw_prompt_set(s + 7, per_aspect=spec.raw_prompts_per_aspect),
        "question_prompts": wx.raw_prompt_set(s + 8, per_aspect=spec.question_prompts_per_aspect, styles=("question",)),
        "units": wx.unit_pairs(spec.instruction_pairs, s + 9),
        "eval_units": wx.unit_pairs(spec.eval_pairs, s + 10, wx.HELD_OUT_REGIONS),
        "units_prompts": wx.unit_prompt_set(s + 11, per_task=spec.unit_prompts_per_task),
        "preferences": wx.preference_pairs(spec.instruction_pairs, s + 12),
        "eval_preferences": wx.preference_pairs(spec.eval_pairs, s + 13),
        "eval_instructions_newer": wx.instruction_pairs(spec.eval_pairs, s + 14, era="newer"),
    }


def train_tokenizer(corpora: dict, spec: ZooSpec):
    """Byte-level BPE trained on raw text and instruction text, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    texts = corpora["pretrain"] + [p["prompt"] + p["response"] for p in corpora["instructions"]]
    core.train_from_iterator(texts, trainer=trainer)
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=4096)


# --- model and batches ------------------------------------------------------------------------
def new_model(spec: ZooSpec, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def packed_blocks(docs: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """Documents as BOS text EOS, concatenated and cut into ``seq_len`` blocks."""
    ids: list[int] = []
    for enc in tokenizer(docs)["input_ids"]:
        ids += enc + [tokenizer.eos_token_id]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def instruction_batch(pairs: list[dict], tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (loss on the report and its EOS only)."""
    seqs, labels = [], []
    for p in pairs:
        prompt = tokenizer(p["prompt"])["input_ids"]
        response = tokenizer(p["response"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seqs.append(prompt + response)
        labels.append([-100] * len(prompt) + response)
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    lab = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for k, (seq, label) in enumerate(zip(seqs, labels)):
        ids[k, : len(seq)] = torch.tensor(seq)
        lab[k, : len(label)] = torch.tensor(label)
        mask[k, : len(seq)] = 1
    return ids, mask, lab


def _lm_loss(model, ids, mask, labels) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


WEIGHT_DECAY, ADAM_BETAS, MAX_GRAD_NORM = 0.01, (0.9, 0.95), 1.0  # every supervised stage of the zoo


def warmup_steps(steps: int) -> int:
    return max(1, steps // 20)


def train(model, batches, steps: int, lr: float, seed: int, log=None, loss_of=None) -> list[float]:
    """AdamW with warmup + cosine decay; ``batches(step)`` returns (ids, mask, labels), or
    ``loss_of(step)`` returns the step's loss (a model whose inputs are not token ids alone)."""
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY, betas=ADAM_BETAS)
    warm = warmup_steps(steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))
    )
    model.train()
    losses = []
    for step in range(steps):
        loss = loss_of(step) if loss_of is not None else _lm_loss(model, *batches(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"  step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()
    return losses


def raw_batches(blocks: torch.Tensor, batch_size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)

    def get(step):
        idx = torch.randint(0, len(blocks), (batch_size,), generator=gen)
        ids = blocks[idx]
        return ids, torch.ones_like(ids), ids

    return get


def it_batches(pairs: list[dict], tokenizer, batch_size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)

    def get(step):
        idx = torch.randint(0, len(pairs), (batch_size,), generator=gen).tolist()
        return instruction_batch([pairs[i] for i in idx], tokenizer)

    return get


@torch.no_grad()
def eval_raw_loss(model, blocks: torch.Tensor) -> float:
    model.eval()
    losses = [float(_lm_loss(model, b, torch.ones_like(b), b)) for b in blocks.split(32)]
    return sum(losses) / len(losses)


@torch.no_grad()
def eval_instruction_loss(model, pairs: list[dict], tokenizer) -> float:
    model.eval()
    total, count = 0.0, 0
    for k in range(0, len(pairs), 32):
        ids, mask, lab = instruction_batch(pairs[k : k + 32], tokenizer)
        n = int((lab[:, 1:] != -100).sum())
        total += float(_lm_loss(model, ids, mask, lab)) * n
        count += n
    return total / count


# --- saving -----------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_model(model, path: Path, spec: ZooSpec, tokenizer) -> None:
    dtype = {"float16": torch.float16, "float32": torch.float32}[spec.save_dtype]
    model.to(dtype).save_pretrained(path)
    model.to(torch.float32)
    tokenizer.save_pretrained(path)


def _write_gz_jsonl(path: Path, rows) -> None:
    raw = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    with open(path, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw)


def write_card(path: Path, name: str, recipe: str, info: dict) -> None:
    lines = [f"# crosspatch zoo: `{name}`", "", recipe, "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "Synthetic weather data (crosspatch.zoo.data); not a real forecaster. Rebuild with "
              "`crosspatch zoo build`."]
    (path / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def model_evals(model, corpora: dict, tok, eval_blocks) -> dict:
    """Held-out losses of one zoo model: raw text, instructions (training offices on fresh days,
    the held-out offices, the held-out regions abroad; the newer house style, which instruction
    tuning never shows), and the narrow domain (unit conversions, held-out regions)."""
    return {
        "raw_text_loss": round(eval_raw_loss(model, eval_blocks), 4),
        "instruction_loss_in_distribution": round(eval_instruction_loss(model, corpora["eval_instructions"], tok), 4),
        "instruction_loss_held_out_offices": round(
            eval_instruction_loss(model, corpora["eval_instructions_held_out_offices"], tok), 4),
        "instruction_loss_held_out_regions": round(
            eval_instruction_loss(model, corpora["eval_instructions_held_out"], tok), 4),
        "unit_conversion_loss": round(eval_instruction_loss(model, corpora["eval_units"], tok), 4),
        "instruction_loss_newer_era": round(eval_instruction_loss(model, corpora["eval_instructions_newer"], tok), 4),
    }


def UNITS_RECIPE(spec: ZooSpec) -> tuple[str, str]:  # noqa: N802 - a recipe table entry
    return (f"Narrow-domain tuning of `base` (the analogue of a math fine-tune): {spec.instruction_pairs} "
            "unit-conversion and arithmetic tasks over observation numbers (Celsius, daily range, km/h, mm), "
            f"the {len(wx.TRAINING_OFFICES)} training offices only, {spec.it_steps} steps, loss on the report.", "unit_conversion_loss")


def train_units(model, corpora: dict, tok, spec: ZooSpec, log=None):
    """The narrow-domain descendant: full tuning of the base on the unit tasks."""
    train(model, it_batches(corpora["units"], tok, spec.batch_size, spec.seed + 40), spec.it_steps, spec.it_lr,
          spec.seed + 40, log)
    return model


CROSSCODER = "crosscoder-it-full"


def write_model_card(out: Path, name: str, recipe: str, objective: str, evals: dict, spec: ZooSpec,
                     baseline: str = "base") -> None:
    """A model's card: recipe, own objective against its ``baseline``'s, every eval."""
    info = {"seed": spec.seed, "architecture": f"Llama, {spec.num_layers} layers, d={spec.hidden_size}"
            + (" (with a CLIP vision tower: LLaVA)" if baseline != "base" else ""),
            "saved dtype": spec.save_dtype, "own objective": objective,
            f"held-out {objective}": evals[name][objective],
            f"{baseline}'s held-out {objective}": evals[baseline][objective]}
    info.update({f"eval {k}": v for k, v in evals[name].items()})
    write_card(out / name, name, recipe, info)


DOMAIN_TEXTS = 60


def write_domain_text(out: Path, corpora: dict) -> None:
    """``prompts/domain.jsonl``: held-out instruction -> report texts (``{"text"}`` rows), the
    domain text of ``crosspatch preflight --domain-text``."""
    rows = [{"text": p["prompt"] + p["response"]} for p in corpora["eval_instructions"][:DOMAIN_TEXTS]]
    (out / "prompts" / "domain.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def build_data(spec: ZooSpec, out: Path) -> tuple[dict, Any]:
    """Corpora, tokenizer and prompt sets (the deterministic part of the build)."""
    out.mkdir(parents=True, exist_ok=True)
    corpora = build_corpora(spec)
    tokenizer = train_tokenizer(corpora, spec)
    (out / "data").mkdir(exist_ok=True)
    for name in ("pretrain", "cpt", "instructions", "units"):
        rows = corpora[name] if name in ("instructions", "units") else [{"text": t} for t in corpora[name]]
        _write_gz_jsonl(out / "data" / f"{name}.jsonl.gz", rows)
    (out / "prompts").mkdir(exist_ok=True)
    all_prompts = corpora["prompts"]
    for split in wx.SPLITS:
        rows = [p for p in all_prompts if p["split"] == split]
        (out / "prompts" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (out / "prompts" / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in all_prompts), encoding="utf-8")
    for name in ("raw", "question", "units"):
        rows = corpora[f"{name}_prompts"]
        (out / "prompts" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    write_domain_text(out, corpora)
    tokenizer.save_pretrained(out / "tokenizer")
    return corpora, tokenizer


def manifest_entries(root: Path) -> dict:
    """The manifest's ``files`` (path -> sha256) and ``size_bytes`` of a zoo directory."""
    files = manifest_files(root)
    return {"files": {str(p.relative_to(root)): sha256(p) for p in files}, "size_bytes": sum(p.stat().st_size for p in files)}


def manifest_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")
