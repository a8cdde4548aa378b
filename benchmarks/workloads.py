"""Benchmark workloads, all generated locally (no downloads).

* ``zoo``: the embedded weather zoo's base and ``it-full`` on its raw-text prompts (events spread over positions).
* ``mid``: a random-init Llama pair of about 134M parameters per model (12 layers, d=768,
  vocabulary 32,000, untied head) whose descendant is the base plus a random LoRA update of
  every linear layer (saved both as a PEFT adapter and merged), and 256 prompts of 32-256
  tokens drawn from a Zipf law over a word-level vocabulary, so that every token is one word.

Both are written once under ``root`` and reused; ``describe`` returns what was built.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass
class MidSpec:
    layers: int = 12
    hidden: int = 768
    intermediate: int = 2048
    heads: int = 12
    vocab: int = 32000
    prompts: int = 256
    min_len: int = 32
    max_len: int = 256
    lora_rank: int = 16
    lora_std: float = 0.004  # std of the LoRA B matrices: sets how soon the pair disagrees
    seed: int = 0


SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
SPECS = {"mid": MidSpec(),  # ~134M parameters per model
         "large": MidSpec(layers=24, hidden=2048, intermediate=5632, heads=16, prompts=128),  # ~1.4B (untied embeddings and head)
         "7b": MidSpec(layers=32, hidden=4096, intermediate=11008, heads=32, prompts=64, lora_std=0.002)}  # ~6.7B, Llama-2-7B's shape
# the CPU dry run of the GPU check (CROSSPATCH_BENCH_TINY=1): the same code paths on models small
# enough to build and run on a laptop in seconds, so that GPU minutes go to measuring
TINY_SPEC = MidSpec(layers=4, hidden=64, intermediate=128, heads=4, vocab=512, prompts=16, min_len=8, max_len=48,
                    lora_std=0.05)


def spec_of(name: str) -> MidSpec:
    """The workload's spec (the tiny one for every random-init workload in a dry run)."""
    return TINY_SPEC if os.environ.get("CROSSPATCH_BENCH_TINY") else SPECS[name]


def workload_root(root, name: str) -> Path:
    return Path(root) / name


def word_tokenizer(vocab: int):
    """A word-level fast tokenizer: ``w<i>`` is token i, split on whitespace."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {tok: i for i, tok in enumerate(SPECIAL)}
    words.update({f"w{i}": i for i in range(len(SPECIAL), vocab)})
    core = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def mid_prompts(spec: MidSpec) -> list[dict]:
    gen = torch.Generator().manual_seed(spec.seed + 7)
    ranks = torch.arange(1, spec.vocab - len(SPECIAL) + 1, dtype=torch.float64)
    zipf = 1.0 / ranks  # Zipf law over the word vocabulary
    lengths = torch.randint(spec.min_len, spec.max_len + 1, (spec.prompts,), generator=gen)
    out = []
    for i, n in enumerate(lengths.tolist()):
        ids = torch.multinomial(zipf, n, replacement=True, generator=gen) + len(SPECIAL)
        out.append({"id": f"p{i:03d}", "prompt": " ".join(f"w{t}" for t in ids.tolist()),
                    "category": f"len{(n - 1) // 64}"})
    return out


def build_mid(root: Path, spec: MidSpec | None = None) -> dict:
    """Write base/, tuned/ (merged), adapter/ and prompts.jsonl under ``root`` (once)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = spec or MidSpec()
    root = Path(root)
    done = root / "workload.json"
    if done.exists() and json.loads(done.read_text())["spec"] == asdict(spec):
        return json.loads(done.read_text())
    root.mkdir(parents=True, exist_ok=True)
    tok = word_tokenizer(spec.vocab)
    cfg = LlamaConfig(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                      num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
                      max_position_embeddings=1024, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(spec.seed)
    if spec.hidden >= 2048 and torch.cuda.is_available():  # a large model on a GPU: built in place, in bf16
        # (initialising 1.4B parameters on the CPU took minutes of a GPU lease)
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            base = LlamaForCausalLM(cfg).eval()
        torch.set_default_dtype(torch.float32)
    else:
        base = LlamaForCausalLM(cfg).eval()
    if spec.hidden >= 2048:  # keep large checkpoints small on disk; computed in the benchmark's dtype
        base = base.to(torch.bfloat16)
    for name in ("base", "tuned", "adapter"):
        tok.save_pretrained(root / name)
    base.save_pretrained(root / "base")
    lora = LoraConfig(r=spec.lora_rank, lora_alpha=spec.lora_rank, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(base, lora)
    gen = torch.Generator().manual_seed(spec.seed + 1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen).to(p.device, p.dtype) * spec.lora_std)
    peft_model.save_pretrained(root / "adapter")
    peft_model.merge_and_unload().eval().save_pretrained(root / "tuned")
    prompts = mid_prompts(spec)
    with open(root / "prompts.jsonl", "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(p) + "\n")
    params = sum(p.numel() for p in base.parameters())
    info = {"spec": asdict(spec), "params": params,
            "model_mb": sum(f.stat().st_size for f in (root / "base").glob("*.safetensors")) / 2**20}
    done.write_text(json.dumps(info, indent=2))
    return info


def workload_paths(name: str, root: Path) -> dict:
    """{base, tuned, adapter (or None), prompts} of a workload."""
    if name == "zoo":
        from crosspatch.zoo import zoo_path

        z = zoo_path()
        return {"base": str(z / "base"), "tuned": str(z / "it-full"), "adapter": None,
                "prompts": str(z / "prompts" / "raw.jsonl")}
    root = workload_root(root, name)
    return {"base": str(root / "base"), "tuned": str(root / "tuned"), "adapter": str(root / "adapter"),
            "prompts": str(root / "prompts.jsonl")}
