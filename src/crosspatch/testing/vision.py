"""Tiny random-init vision-language pairs (LLaVA and Gemma 3 layouts) and generated weather charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .tiny import VOCAB_PADDING, char_tokenizer, perturb_layers

IMAGE_SIZE, PATCH = 32, 8  # LLaVA: 16 image tokens per image; Gemma 3: 4 (pooled)
VLM_ARCHITECTURES = ("llava", "gemma3_vision")  # names as in the compatibility matrix
_GEMMA3_TOKENS = {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"}


def vision_tokenizer(arch: str = "llava"):
    """The character tokenizer with the architecture's image tokens."""
    from transformers import PreTrainedTokenizerFast

    tok = char_tokenizer()
    if arch == "llava":
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
        return tok
    tok.add_special_tokens({"additional_special_tokens": list(_GEMMA3_TOKENS.values())})
    return PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", extra_special_tokens=dict(_GEMMA3_TOKENS))


def vision_processor(arch: str = "llava", tokenizer=None, **image_options):
    """The architecture's own processor over 32x32 images."""
    import transformers as t

    tokenizer = tokenizer or vision_tokenizer(arch)
    if arch == "llava":
        images = t.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                      crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, **image_options)
        return t.LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=PATCH,
                                vision_feature_select_strategy="default", image_token="<image>",
                                num_additional_image_tokens=1)
    images = t.Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, **image_options)
    return t.Gemma3Processor(image_processor=images, tokenizer=tokenizer, image_seq_length=4)


def tiny_vlm(arch: str = "llava", layers: int = 4, seed: int = 0, init_scale: float = 4.0):
    """A random-init vision-language model in eval mode: LLaVA (CLIP vision tower, Llama
    language model) or Gemma 3 (SigLIP, Gemma 3 text model with bidirectional image attention)."""
    import transformers as t

    tok = vision_tokenizer(arch)
    common: dict[str, Any] = dict(vocab_size=len(tok) + VOCAB_PADDING, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    vision: dict[str, Any] = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=PATCH)
    torch.manual_seed(seed)
    if arch == "llava":
        config = t.LlavaConfig(vision_config=t.CLIPVisionConfig(**vision, projection_dim=32),
                               text_config=t.LlamaConfig(**common, tie_word_embeddings=False),
                               image_token_id=tok.convert_tokens_to_ids("<image>"),  # pyright: ignore[reportCallIssue] - a config kwarg
                               vision_feature_select_strategy="default", vision_feature_layer=-1)
        model = t.LlavaForConditionalGeneration(config)
        projector = model.model.multi_modal_projector.linear_2.weight
    else:
        ids: dict[str, Any] = {k: tok.convert_tokens_to_ids(v) for k, v in _GEMMA3_TOKENS.items()}  # one id per token
        config = t.Gemma3Config(vision_config=t.SiglipVisionConfig(**vision),
                                text_config=t.Gemma3TextConfig(
                                    **common, head_dim=8, sliding_window=8,
                                    layer_types=["sliding_attention", "full_attention"] * (layers // 2)
                                    + ["sliding_attention"] * (layers % 2)),
                                mm_tokens_per_image=4, boi_token_index=ids["boi_token"],
                                eoi_token_index=ids["eoi_token"], image_token_index=ids["image_token"])
        model = t.Gemma3ForConditionalGeneration(config)
        projector = model.model.multi_modal_projector.mm_input_projection_weight
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(init_scale)  # pyright: ignore[reportCallIssue, reportOptionalMemberAccess]
        if not projector.abs().sum():  # Gemma 3 initialises its image projection at zero
            projector.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(seed))
        projector.mul_(init_scale)  # images that matter
    return model.eval()


def tiny_vlm_pair(arch: str = "llava", layers: int = 4, perturb=None, seed: int = 0, scale: float = 0.5):
    """(base, descendant, processor): the descendant perturbs language layers ``perturb`` (default all)."""
    from ..models.anatomy import find_anatomy

    base = tiny_vlm(arch, layers, seed)
    idx = range(layers) if perturb is None else perturb
    child = perturb_layers(base, idx, scale=scale, seed=seed + 1)
    assert find_anatomy(child).num_layers == layers
    return base, child, vision_processor(arch)


def save_vlm_pair(root: Path, arch: str = "llava", layers: int = 4, perturb=None, seed: int = 0,
                  scale: float = 0.5) -> tuple[Path, Path]:
    """Write base/ and tuned/ (weights, tokenizer, processor) under ``root``."""
    base, child, processor = tiny_vlm_pair(arch, layers, perturb, seed, scale)
    dirs = Path(root) / "base", Path(root) / "tuned"
    for model, d in zip((base, child), dirs):
        model.save_pretrained(d)
        processor.save_pretrained(d)
    return dirs


def weather_chart(path: Path, seed: int = 0, kind: str = "line") -> Path:
    """A small weather chart (temperature line or rain bars) drawn with matplotlib, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen = torch.Generator().manual_seed(seed)
    values = (torch.rand(7, generator=gen) * 20 + 5).tolist()
    fig, ax = plt.subplots(figsize=(1, 1), dpi=48)
    if kind == "line":
        ax.plot(range(7), values, color="tab:red", linewidth=3)
    else:
        ax.bar(range(7), values, color="tab:blue")
    ax.set_axis_off()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
