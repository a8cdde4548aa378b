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

from pathlib import Path

from ..errors import ModelLoadError
from .paths import _cached_file, check_checkpoint_files, looks_local

__all__ = ["cached_checkpoint", "checkable"]


def cached_checkpoint(repo: str, revision: str | None = None) -> str | None:
    """The local cache's snapshot directory of hub id ``repo`` (at ``revision``, else its main
    branch) when it holds config.json and sound safetensors weights, every shard an index names
    among them (:func:`~crosspatch.models.paths.check_checkpoint_files`); None otherwise."""
    try:
        config = _cached_file(repo, "config.json", revision)
    except Exception:  # noqa: BLE001 - no hub library, or an id it refuses to parse: nothing cached
        return None
    if config is None:
        return None
    root = Path(config).parent
    try:  # (the checks a local directory gets: every shard an index names present, whole safetensors files)
        check_checkpoint_files(root, repo)
    except ModelLoadError:
        return None
    whole = (root / "model.safetensors.index.json").is_file() or (root / "model.safetensors").is_file()
    return str(root) if whole else None


def checkable(path: str, revision: str | None = None) -> str:
    """Where the checks before loading read a model's files: a local path as given, a hub id's
    whole cached snapshot (:func:`cached_checkpoint`), else the hub id (checked once loaded)."""
    if looks_local(str(path)):
        return path
    return cached_checkpoint(str(path), revision) or path
