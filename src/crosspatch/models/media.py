"""Image prompts of vision-language models.

A prompt with an ``image`` goes through the model's own processor, which expands the image
placeholder into image tokens; those tokens are part of the shared prefix like any other, so
the boundary state, the divergence search and the cells cover the image positions too. Passes
work on token ids only: a :class:`MediaRegistry` maps each image prompt's token ids to its
processed image, and a forward pre-hook on the multimodal backbone hands the image to every
full pass whose rows start with a registered prompt (decoding steps after the prompt and
late-only passes carry no image tokens and need none). A prompt is identified by its tokens,
so two prompts with the same tokens and different images are refused by name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ..errors import PromptImageError

# processor outputs aligned with the tokens (rebuilt per batch), not per image
_PER_TOKEN = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "position_ids")


def image_token_id(config) -> int | None:
    """The placeholder token id of a vision-language config, a transformers config or a
    config.json read as a dict (None for a text-only model)."""
    get = config.get if isinstance(config, dict) else (lambda name: getattr(config, name, None))
    if get("vision_config") is None:
        return None
    for name in ("image_token_id", "image_token_index"):
        value = get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _digest(inputs: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(inputs):
        t = inputs[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


class MediaRegistry:
    """Processed images of the image prompts, found again from a row's leading tokens."""

    def __init__(self) -> None:
        self._by_len: dict[int, dict[tuple[int, ...], tuple[str, str, dict]]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_len.values())

    def register(self, prompt_id: str, ids: list[int], inputs: dict[str, torch.Tensor]) -> None:
        """Remember ``inputs`` (per-image processor outputs, batch dimension 1) for ``ids``."""
        inputs = {k: v.detach().cpu() for k, v in inputs.items() if k not in _PER_TOKEN and torch.is_tensor(v)}
        digest = _digest(inputs)
        table = self._by_len.setdefault(len(ids), {})
        key = tuple(int(t) for t in ids)
        if key in table and table[key][1] != digest:
            raise PromptImageError(
                f"prompts {table[key][0]!r} and {prompt_id!r} have the same tokens and different images; an image "
                "prompt is identified by its tokens, so make their texts differ (e.g. name the chart or the city)")
        table[key] = (prompt_id, digest, inputs)

    def match(self, row: list[int]) -> dict | None:
        """The inputs of the longest registered prompt that ``row`` starts with."""
        for n in sorted(self._by_len, reverse=True):
            if n <= len(row):
                hit = self._by_len[n].get(tuple(row[:n]))
                if hit is not None:
                    return hit[2]
        return None

    def batch_inputs(self, rows: list[list[int]], device) -> dict[str, torch.Tensor]:
        """Per-image inputs of the rows that hold image tokens, concatenated in row order (the
        order in which the model scatters image features into its placeholder positions)."""
        found = []
        for row in rows:
            hit = self.match(row)
            if hit is None:
                raise PromptImageError(
                    "a sequence holds image placeholder tokens but starts with no image prompt of this run "
                    "(give the prompt an 'image' field, or remove the placeholder from its text)")
            found.append(hit)
        keys = found[0].keys()
        return {k: torch.cat([f[k] for f in found]).to(device) for k in keys}


def takes_token_types(backbone: nn.Module) -> bool:
    """Whether a multimodal backbone builds its attention among image tokens from
    ``token_type_ids`` (Gemma 3): it then gets them, and late-only passes must run through it."""
    import inspect

    return "token_type_ids" in inspect.signature(backbone.forward).parameters


def install_media_hook(backbone: nn.Module, token_id: int, registry: MediaRegistry) -> object:
    """A forward pre-hook on the multimodal ``backbone``: a call with image tokens and no pixels
    gets the registered images of its rows (rows read through the attention mask; the prompt pass
    of a static cache too, its mask cut to the prompt's width), and models
    whose attention among image tokens follows ``token_type_ids`` (Gemma 3) get them from the
    placeholder positions, as their processor makes them. The registry is read from the backbone
    at each call (``_crosspatch_media_registry``, set here and by every set that takes the model
    again: :meth:`~crosspatch.execution.modelset.ModelSet.attach_media`), so a model in a second
    set (a set rebuilt with synthetic nulls, a pair made again in a notebook) finds that set's images."""
    wants_types = takes_token_types(backbone)
    setattr(backbone, "_crosspatch_media_registry", registry)  # noqa: B010 - a plain attribute on a torch module

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None or kwargs.get("pixel_values") is not None:
            return None
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.shape[-1] != ids.shape[-1]:
            # a call into a cache: a decoding step after the prompt (placeholders are never generated), or
            # the prompt pass of a static cache, whose padding mask runs over the cache's whole length
            # (a compiled call is always a step: the prompt pass runs uncompiled, and a step reads no value here)
            position = kwargs.get("cache_position")
            if torch.compiler.is_compiling() or mask.dim() != 2 or position is None or int(position[0]) != 0:
                return None
            mask = mask[:, : ids.shape[-1]]
        has_image = (ids == token_id).any(dim=-1)
        if not bool(has_image.any()):
            return None
        rows = []
        for r in torch.nonzero(has_image).flatten().tolist():
            row = ids[r] if mask is None else ids[r][mask[r].bool()]
            rows.append(row.tolist())
        kwargs.update(getattr(module, "_crosspatch_media_registry", registry).batch_inputs(rows, ids.device))
        if wants_types and kwargs.get("token_type_ids") is None:
            kwargs["token_type_ids"] = (ids == token_id).long()
        return args, kwargs

    return backbone.register_forward_pre_hook(hook, with_kwargs=True)


def image_placeholder(processor) -> str:
    """The text a prompt writes where its image goes: the processor's begin-of-image token when it
    has one (Gemma 3), else its image token (LLaVA's ``<image>``)."""
    return getattr(processor, "boi_token", None) or getattr(processor, "image_token", None) or "<image>"


def encode_image_prompt(processor, prompt_id: str, text: str, image_path: str) -> tuple[list[int], dict]:
    """Token ids and per-image inputs of one image prompt, through the model's own processor.
    The text may hold the processor's image placeholder; without one it is put first."""
    from PIL import Image, UnidentifiedImageError

    placeholder = image_placeholder(processor)
    if placeholder not in text:
        text = f"{placeholder}{text}"
    try:
        with Image.open(Path(image_path)) as img:
            image = img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise PromptImageError(f"prompt {prompt_id!r}: cannot read image {image_path!r} ({exc})") from None
    try:
        enc = processor(text=text, images=image, return_tensors="pt")
    except Exception as exc:  # processors raise many types for inputs they cannot take
        raise PromptImageError(f"prompt {prompt_id!r}: the processor refused the image: {exc}") from None
    ids = enc["input_ids"][0].tolist()
    return ids, {k: v for k, v in enc.items() if k not in _PER_TOKEN and torch.is_tensor(v)}
