"""The KV caches the decoders step: Hugging Face's ``DynamicCache`` with layers that grow in
place (:func:`new_dynamic_cache`) and its ``StaticCache`` of a bucketed length
(:func:`new_static_cache`)."""

from __future__ import annotations

import functools
from typing import Any, cast

import torch

from ..models.forward import ModelHandle

__all__ = ["drop_leading_positions", "growing_layer_class", "joinable", "known_unjoinable", "new_dynamic_cache",
           "new_static_cache", "static_length"]


def new_dynamic_cache(handle: ModelHandle, growing: bool = True):
    """A fresh ``DynamicCache`` for ``handle``'s model; with ``growing``, its plain full-attention
    layers keep keys and values in buffers with room to spare (:func:`growing_layer_class`)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=handle.anatomy.model.config)  # pyright: ignore[reportArgumentType] - a PreTrainedModel's config
    except TypeError:  # transformers 4.x
        cache = DynamicCache()
    if growing:
        layer_class = growing_layer_class()
        for layer in getattr(cache, "layers", None) or []:
            if type(layer) is DynamicLayer:  # not sliding windows, recurrent or offloaded layers
                layer.__class__ = layer_class
        if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:  # layers made as the model asks
            cache.layer_class_to_replicate = layer_class  # pyright: ignore[reportAttributeAccessIssue]
    return cache


def _plain(layer) -> bool:
    """A plain full-attention layer: ``DynamicLayer`` or :func:`growing_layer_class`'s (not a
    sliding window, a recurrent state or an offloaded layer)."""
    from transformers.cache_utils import DynamicLayer

    return type(layer) in (DynamicLayer, growing_layer_class())


def joinable(cache) -> bool:
    """Whether new rows can be joined to ``cache`` by left-padding and concatenating its keys and
    values: every layer a plain full-attention layer holding them."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(_plain(layer) and getattr(layer, "keys", None) is not None for layer in layers)


def drop_leading_positions(cache, count: int) -> None:
    """Drop the first ``count`` positions of every layer of a :func:`joinable` cache (positions that
    are padding for every row left in it: their keys and values are never attended to)."""
    for layer in cache.layers:
        layer.keys = layer.keys[..., count:, :]
        layer.values = layer.values[..., count:, :]


def known_unjoinable(cache) -> bool:
    """Whether ``cache``'s layers already show that it can never be :func:`joinable`: one of them is
    not a plain full-attention layer. Read from the layers' kinds alone, so an empty cache tells as
    well as a filled one where the layers are made from the model's config (transformers 5); where
    they are made at the first forward (transformers 4), only a filled cache can tell (False)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and not all(_plain(layer) for layer in layers)


@functools.cache
def growing_layer_class() -> type:
    """Hugging Face's ``DynamicLayer`` with keys and values that grow inside buffers with room to
    spare: a decoding step writes its new positions in place, where ``DynamicLayer`` concatenates
    (a fresh allocation and a copy of the whole cache, at every step and every layer: a quarter of
    a step's time over ~90 rows on the CPU, and memory traffic that grows with the length on a
    GPU). The keys and values the model reads are views of the filled part, the same values as
    the concatenated tensors. Whatever else replaces them (a batch selection, a join, a crop) is
    noticed at the next update, which copies them into a fresh buffer."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        _key_room: torch.Tensor | None = None
        _value_room: torch.Tensor | None = None
        _view: torch.Tensor | None = None  # the keys as this layer last set them

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:  # the first update as Hugging Face's (its initialisation differs by release)
                return super().update(key_states, value_states, *args, **kwargs)
            held_keys, held_values = cast(torch.Tensor, self.keys), cast(torch.Tensor, self.values)
            filled = held_keys.shape[-2] if held_keys.dim() >= 2 else 0
            new = key_states.shape[-2]
            keys, values = self._key_room, self._value_room
            if keys is None or values is None or self.keys is not self._view or filled + new > keys.shape[-2] \
                    or keys.shape[:-2] != key_states.shape[:-2]:
                # room for an eighth of the length more (at least 32 positions): a copy every
                # eighth of the length at most, and at most an eighth more memory than the filled cache
                spare = filled + new + max(32, (filled + new) // 8)
                keys = key_states.new_empty((*key_states.shape[:-2], spare, key_states.shape[-1]))
                values = value_states.new_empty((*value_states.shape[:-2], spare, value_states.shape[-1]))
                if filled:
                    keys.narrow(-2, 0, filled).copy_(held_keys)
                    values.narrow(-2, 0, filled).copy_(held_values)
                self._key_room, self._value_room = keys, values
            keys.narrow(-2, filled, new).copy_(key_states)
            values.narrow(-2, filled, new).copy_(value_states)
            self.keys, self.values = keys.narrow(-2, 0, filled + new), values.narrow(-2, 0, filled + new)
            self._view = self.keys
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            keys, values = self._key_room, self._value_room
            if keys is None or values is None or self.keys is not self._view:
                return super().batch_select_indices(indices)
            filled = cast(torch.Tensor, self.keys).shape[-2]
            self._key_room, self._value_room = keys[indices], values[indices]
            self.keys = self._key_room.narrow(-2, 0, filled)
            self.values = self._value_room.narrow(-2, 0, filled)
            self._view = self.keys

    return GrowingLayer


def static_length(tokens: int, bucket: int = 64) -> int:
    """A static cache's length: ``tokens`` rounded up to a multiple of ``bucket``, so that a handful
    of shapes cover a run (each shape is one compilation / CUDA graph)."""
    return max(bucket, -(-tokens // bucket) * bucket)


def new_static_cache(handle: ModelHandle, batch: int, length: int):
    """A ``StaticCache`` of ``length`` positions for ``handle``'s model (``batch`` rows: transformers 4
    takes the batch, device and dtype up front; 5 sizes itself at the first update)."""
    from transformers import StaticCache

    config: Any = handle.anatomy.model.config
    try:
        return StaticCache(config=config, max_cache_len=length)
    except TypeError:  # transformers 4.x: the batch, device and dtype are given up front
        param = next(handle.anatomy.model.parameters())
        return StaticCache(config=config, max_batch_size=batch, max_cache_len=length,  # pyright: ignore[reportCallIssue]
                           device=param.device, dtype=param.dtype)
