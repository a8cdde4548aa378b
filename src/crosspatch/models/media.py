"""Image prompts of vision-language models.

A prompt with an ``image`` goes through the model's own processor, which expands the image
placeholder into image tokens; those tokens are part of the shared prefix like any other, so
the boundary state, the divergence search and the cells cover the image positions too. Passes
work on token ids only: a :class:`MediaRegistry` maps each image prompt's token ids to its
processed image, and a forward pre-hook on the multimodal backbone hands the image to every
full pass whose rows start with a registered prompt (decoding steps after the prompt and
late-only passes carry no image tokens and need none). A row's image is found from the prompt
it starts with: prompts with the same tokens and different images (one question asked of many
images) go to different pieces of work (:func:`media_chunks`), each of which looks up its own
prompts' images alone (:meth:`MediaRegistry.only`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
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
    """Processed images of the image prompts, found again from a row's leading tokens.

    Prompts with the same tokens and different images (one question asked of many charts) are
    told apart by the prompts a piece of work holds: :meth:`only` limits the lookups to them, and
    :func:`media_chunks` cuts work so that no piece holds two such prompts."""

    def __init__(self) -> None:
        # prompt length -> prompt tokens -> prompt id -> (image digest, per-image inputs)
        self._by_len: dict[int, dict[tuple[int, ...], dict[str, tuple[str, dict]]]] = {}
        self._keys: dict[str, tuple[int, ...]] = {}  # prompt id -> its tokens
        self._active: frozenset[str] | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def register(self, prompt_id: str, ids: list[int], inputs: dict[str, torch.Tensor]) -> None:
        """Remember ``inputs`` (per-image processor outputs, batch dimension 1) for prompt
        ``prompt_id`` of tokens ``ids`` (registered again: the last image counts)."""
        inputs = {k: v.detach().cpu() for k, v in inputs.items() if k not in _PER_TOKEN and torch.is_tensor(v)}
        key = tuple(int(t) for t in ids)
        if (earlier := self._keys.get(prompt_id)) is not None:
            self._by_len[len(earlier)][earlier].pop(prompt_id, None)
        self._by_len.setdefault(len(key), {}).setdefault(key, {})[prompt_id] = (_digest(inputs), inputs)
        self._keys[prompt_id] = key

    def conflict_key(self, prompt_id: str) -> tuple[tuple[int, ...], str] | None:
        """(tokens, image digest) of an image prompt whose tokens another registered prompt has
        with another image (work holding both must be cut apart); None for any other prompt."""
        key = self._keys.get(prompt_id)
        if key is None:
            return None
        same = self._by_len[len(key)][key]
        if len({digest for digest, _ in same.values()}) < 2:
            return None
        return key, same[prompt_id][0]

    @contextlib.contextmanager
    def only(self, prompt_ids: Iterable[str]) -> Iterator[None]:
        """Lookups see the images of ``prompt_ids`` alone for the duration (the prompts of one
        piece of work: a chunk of a run, a group of a finished run's events)."""
        before, self._active = self._active, frozenset(prompt_ids)
        try:
            yield
        finally:
            self._active = before

    def match(self, row: list[int]) -> dict | None:
        """The inputs of the longest registered prompt that ``row`` starts with (among the prompts
        :meth:`only` allows); a :class:`PromptImageError` where two of them have those tokens and
        different images (work that was not cut apart by :func:`media_chunks`)."""
        for n in sorted(self._by_len, reverse=True):
            if n > len(row):
                continue
            same = self._by_len[n].get(tuple(row[:n]))
            if not same:
                continue
            hits = {pid: hit for pid, hit in same.items() if self._active is None or pid in self._active}
            if len({digest for digest, _ in hits.values()}) > 1:
                a, b = sorted(hits)[:2]
                raise PromptImageError(
                    f"prompts {a!r} and {b!r} have the same tokens and different images in one pass: it cannot tell "
                    "their images apart (crosspatch cuts a run's work apart for such prompts; this path does not)")
            if hits:
                return next(iter(hits.values()))[1]
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
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:  # (bomb: past PIL's pixel limit)
        raise PromptImageError(f"prompt {prompt_id!r}: cannot read image {image_path!r} ({exc})") from None
    try:
        enc = processor(text=text, images=image, return_tensors="pt")
    except Exception as exc:  # processors raise many types for inputs they cannot take
        raise PromptImageError(f"prompt {prompt_id!r}: the processor refused the image: {exc}") from None
    ids = enc["input_ids"][0].tolist()
    return ids, {k: v for k, v in enc.items() if k not in _PER_TOKEN and torch.is_tensor(v)}


def media_chunks(prompt_ids: list[str], size: int, registry: MediaRegistry, contiguous: bool = False) -> list[list[int]]:
    """Positions of ``prompt_ids`` in pieces of at most ``size`` (>= 1), in order, such that no
    piece holds two prompts with the same tokens and different images (twins): each goes to the
    first piece with room and no twin of it, or with ``contiguous`` to the last piece or a new one
    (pieces of consecutive positions). Without twins: consecutive pieces of ``size`` either way.
    Twins are never batched together, so a prompt set of many twins runs in smaller batches."""
    pieces: list[list[int]] = []
    images: list[dict[tuple[int, ...], str]] = []  # per piece: the image of each twin's tokens in it
    start = 0  # the pieces before it are full (contiguous: closed)
    for k, prompt_id in enumerate(prompt_ids):
        conflict = registry.conflict_key(prompt_id)
        j = start
        while True:
            if j == len(pieces):
                pieces.append([])
                images.append({})
            fits = len(pieces[j]) < size and (conflict is None or images[j].get(conflict[0], conflict[1]) == conflict[1])
            if fits:
                break
            j += 1
        pieces[j].append(k)
        if conflict is not None:
            images[j][conflict[0]] = conflict[1]
        if contiguous:
            start = j
        while start < len(pieces) and len(pieces[start]) >= size:
            start += 1
    return pieces
