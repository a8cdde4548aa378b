"""Tiny random-init causal LMs of many architectures and a character tokenizer."""

from __future__ import annotations

import copy
import string
from typing import Any

import torch

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<unused0>", "<unused1>"]
VOCAB_PADDING = 6  # lm_head rows beyond the tokenizer, as real checkpoints often have


def char_tokenizer():
    """A character-level PreTrainedTokenizerFast with BOS prepended and two placeholder tokens."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c"))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _configs(vocab: int, layers: int):
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Olmo2Config,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    common: dict[str, Any] = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )
    return {
        "llama": lambda: LlamaConfig(**common),
        "qwen2": lambda: Qwen2Config(**common),
        "qwen3": lambda: Qwen3Config(**common, head_dim=8),
        "mistral": lambda: MistralConfig(**common, sliding_window=8),
        "gemma2": lambda: Gemma2Config(**common, head_dim=8, sliding_window=8, final_logit_softcapping=5.0,
                                       attn_logit_softcapping=20.0, query_pre_attn_scalar=8),
        "gemma3": lambda: Gemma3TextConfig(**common, head_dim=8, sliding_window=8, final_logit_softcapping=5.0,
                                           query_pre_attn_scalar=8),
        "olmo2": lambda: Olmo2Config(**common),
        "phi3": lambda: Phi3Config(**{k: v for k, v in common.items()}),
        "gpt2": lambda: GPT2Config(vocab_size=vocab, n_embd=32, n_layer=layers, n_head=4, n_positions=256,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False),
        **_more_configs(common, vocab, layers),
        "gpt_neox": lambda: GPTNeoXConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=layers, num_attention_heads=4,
                                          max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                                          pad_token_id=0, tie_word_embeddings=False),
    }


def _more_configs(common: dict, vocab: int, layers: int) -> dict:
    """Further dense families and mixture-of-experts models (tiny, from configs)."""
    import transformers as t

    moe: dict[str, Any] = dict(num_local_experts=4, num_experts_per_tok=2)
    table = {
        "gemma": ("GemmaConfig", dict(common, head_dim=8)),
        "cohere": ("CohereConfig", dict(common, logit_scale=0.5)),
        "falcon": ("FalconConfig", dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                                        new_decoder_architecture=True, num_kv_heads=2, max_position_embeddings=256)),
        "stablelm": ("StableLmConfig", dict(common)),
        "opt": ("OPTConfig", dict(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=layers,
                                  num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=32,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)),
        "xglm": ("XGLMConfig", dict(vocab_size=vocab, d_model=32, ffn_dim=64, num_layers=layers, attention_heads=4,
                                    max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                    tie_word_embeddings=False)),
        "biogpt": ("BioGptConfig", dict(common)),
        "granite": ("GraniteConfig", dict(common, logits_scaling=2.0, residual_multiplier=0.5,
                                          embedding_multiplier=2.0, attention_multiplier=0.2)),
        "smollm3": ("SmolLM3Config", dict(common, no_rope_layer_interval=2)),
        "olmo": ("OlmoConfig", dict(common)),
        "phi": ("PhiConfig", dict(common)),
        "starcoder2": ("Starcoder2Config", dict(common)),
        "glm4": ("Glm4Config", dict(common, head_dim=8)),
        "helium": ("HeliumConfig", dict(common, head_dim=8)),
        "mixtral": ("MixtralConfig", dict(common, **moe)),
        "qwen2_moe": ("Qwen2MoeConfig", dict(common, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                             shared_expert_intermediate_size=32, decoder_sparse_step=1)),
        "qwen3_moe": ("Qwen3MoeConfig", dict(common, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                             moe_intermediate_size=32, decoder_sparse_step=1)),
        "olmoe": ("OlmoeConfig", dict(common, num_experts=4, num_experts_per_tok=2)),
        "gpt_oss": ("GptOssConfig", dict(common, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
                                         sliding_window=8, layer_types=["sliding_attention", "full_attention"] * (layers // 2))),
        "granitemoe": ("GraniteMoeConfig", dict(common, **moe, logits_scaling=2.0)),
        "phimoe": ("PhimoeConfig", dict(common, **moe)),
        "flex_olmo": ("FlexOlmoConfig", dict(common, num_experts=4, num_experts_per_tok=2)),
        # GLM-5: multi-head latent attention with an indexed sparse selection, MoE; its layers return a pair
        "glm_moe_dsa": ("GlmMoeDsaConfig", dict(common, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=16,
                                                qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
                                                n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                                first_k_dense_replace=1, n_group=1, topk_group=1)),
    }
    return {name: (lambda cls=cls, kw=kw: getattr(t, cls)(**kw)) for name, (cls, kw) in table.items()
            if hasattr(t, cls)}


ARCHITECTURES = tuple(_configs(8, 2))  # those the installed transformers has
MOE_ARCHITECTURES = tuple(a for a in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "granitemoe", "phimoe",
                                      "flex_olmo", "glm_moe_dsa") if a in ARCHITECTURES)


def tiny_model(arch: str = "llama", layers: int = 4, seed: int = 0, vocab_size: int | None = None,
               init_scale: float = 4.0):
    """A random-init fp32 causal LM in eval mode; weights scaled up so logits are decisive."""
    from transformers import AutoModelForCausalLM

    vocab = vocab_size or (len(char_tokenizer()) + VOCAB_PADDING)
    config = _configs(vocab, layers)[arch]()
    config._attn_implementation = "eager" if arch in ("gemma2", "gpt_oss", "xglm") else "sdpa"  # (XGLM: no SDPA path)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(init_scale)
    return model.eval()


def perturb_layers(model, layer_indices, scale: float = 0.5, seed: int = 1):
    """A copy of ``model`` whose decoder layers in ``layer_indices`` get relative Gaussian noise."""
    from ..models.anatomy import find_anatomy

    child = copy.deepcopy(model)
    layers = find_anatomy(child).layers
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in layer_indices:
            for p in layers[i].parameters():
                noise = torch.randn(p.shape, generator=gen) * (p.std() if p.numel() > 1 else 1.0)
                p.add_(noise * scale)
    return child.eval()


def tiny_pair(arch: str = "llama", layers: int = 4, perturb=None, seed: int = 0, scale: float = 0.5):
    """(base, descendant, tokenizer): the descendant perturbs ``perturb`` layers (default all)."""
    base = tiny_model(arch, layers, seed)
    idx = range(layers) if perturb is None else perturb
    return base, perturb_layers(base, idx, scale=scale, seed=seed + 1), char_tokenizer()


def make_pair(arch: str = "llama", layers: int = 4, perturb=None, scale: float = 0.5, seed: int = 0):
    """A ready :class:`~crosspatch.models.ModelPair` of a tiny base and a perturbed descendant."""
    from ..execution import pair_from_models

    base, child, tok = tiny_pair(arch, layers, perturb, seed, scale)
    return pair_from_models(base, child, tok)


def save_tiny_pair(root, arch: str = "llama", layers: int = 4, scale: float = 0.3, seed: int = 0):
    """Write ``root/base`` and ``root/tuned`` (safetensors + tokenizer) for CLI-level tests;
    returns ``root``."""
    from pathlib import Path

    root = Path(root)
    base, child, tok = tiny_pair(arch, layers, None, seed, scale)
    for name, model in (("base", base), ("tuned", child)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root
