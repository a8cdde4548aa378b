"""A hub id's checkpoint in the local Hugging Face cache, read before loading as a local directory is.

The checks made before any weight loads (the architecture, a depth the boundary must fit, the
positions a prompt and its budget must fit, two configs and weight layouts that must agree, pickle
weights, model code shipped with a checkpoint) read a checkpoint's files. A local directory has
them; a hub id has them too once it is in the local cache (``huggingface-cli download``, an earlier
run), where the checks read its snapshot. A snapshot is read only when it holds the whole
checkpoint in safetensors: with part of it, or only pickle weights (the Hub may hold safetensors a
load would fetch), the checks are left to the loaded model, as for a hub id not in the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

from .paths import _cached_file, looks_local

__all__ = ["cached_checkpoint", "checkable"]


def cached_checkpoint(repo: str, revision: str | None = None) -> str | None:
    """The local cache's snapshot directory of hub id ``repo`` (at ``revision``, else its main
    branch) when it holds config.json and every safetensors weight file (a shard index and each
    shard it names, or ``model.safetensors``); None otherwise."""
    try:
        config = _cached_file(repo, "config.json", revision)
    except Exception:  # noqa: BLE001 - no hub library, or an id it refuses to parse: nothing cached
        return None
    if config is None:
        return None
    root = Path(config).parent
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return None
        shards = set(weight_map.values()) if isinstance(weight_map, dict) else set()
        return str(root) if shards and all((root / str(shard)).is_file() for shard in shards) else None
    return str(root) if (root / "model.safetensors").is_file() else None


def checkable(path: str, revision: str | None = None) -> str:
    """Where the checks before loading read a model's files: a local path as given, a hub id's
    whole cached snapshot (:func:`cached_checkpoint`), else the hub id (checked once loaded)."""
    if looks_local(str(path)):
        return path
    return cached_checkpoint(str(path), revision) or path
