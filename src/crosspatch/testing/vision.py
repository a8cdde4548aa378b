"""Tiny random-init vision-language pairs (LLaVA layout) and generated weather charts."""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny import VOCAB_PADDING, char_tokenizer, perturb_layers

IMAGE_TOKEN = "<image>"
IMAGE_SIZE, PATCH = 32, 8  # 16 image tokens per image


def vision_tokenizer():
    """The character tokenizer with an ``<image>`` placeholder token."""
    tok = char_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tok


def vision_processor(tokenizer=None):
    """A LLaVA processor: 32x32 images, 8x8 patches -> 16 image tokens."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    images = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer or vision_tokenizer(), patch_size=PATCH,
                          vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
                          num_additional_image_tokens=1)


def tiny_llava(layers: int = 4, seed: int = 0, init_scale: float = 4.0):
    """A random-init LLaVA (CLIP vision tower, Llama language model) in eval mode."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tok = vision_tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok) + VOCAB_PADDING, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(init_scale)
        model.model.multi_modal_projector.linear_2.weight.mul_(init_scale)  # images that matter
    return model.eval()


def tiny_llava_pair(layers: int = 4, perturb=None, seed: int = 0, scale: float = 0.5):
    """(base, descendant, processor): the descendant perturbs language layers ``perturb`` (default all)."""
    from ..models.anatomy import find_anatomy

    base = tiny_llava(layers, seed)
    idx = range(layers) if perturb is None else perturb
    child = perturb_layers(base, idx, scale=scale, seed=seed + 1)
    assert find_anatomy(child).num_layers == layers
    return base, child, vision_processor()


def save_llava_pair(root: Path, layers: int = 4, perturb=None, seed: int = 0, scale: float = 0.5) -> tuple[Path, Path]:
    """Write base/ and tuned/ (weights, tokenizer, processor) under ``root``."""
    base, child, processor = tiny_llava_pair(layers, perturb, seed, scale)
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
