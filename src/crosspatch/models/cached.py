"""A hub id's checkpoint in the local Hugging Face cache, read before loading as a local directory is.

The checks made before any weight loads (the architecture, a depth the boundary must fit, the
positions a prompt and its budget must fit, two configs and weight layouts that must agree, pickle
weights, model code shipped with a checkpoint) read a checkpoint's files. A local directory has
them; a hub id has them too once it is in the local cache (``hf download``, an earlier
run), where the checks read its snapshot. A snapshot is read only when it holds the whole
checkpoint in safetensors: with part of it, or only pickle weights (the Hub may hold safetensors a
load would fetch), the checks are left to the loaded model, as for a hub id not in the cache.

A checkpoint given as ``REPO@REVISION`` (a hub id at a branch, tag or commit of its own, as training
runs publish their intermediate checkpoints: Pythia's ``step1000``) is read as that revision's
snapshot directory (:func:`revision_snapshot`), fetched from the Hub where it can be reached and read
from the cache where not: every check and load then reads it as a local checkpoint, while
``--revision`` stays every other hub id's.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HubUnavailableError, ModelLoadError, ModelPathNotFoundError
from .paths import (
    _cached_file,
    _snapshot_lacks_weights,
    check_checkpoint_files,
    hub_offline,
    hub_reachable,
    looks_local,
    some_of,
    split_hub_revision,
    weight_files,
)

__all__ = ["cached_checkpoint", "check_weight_format", "checkable", "revision_snapshot"]

# what a REPO@REVISION's fetch takes of the revision: what loading a checkpoint or adapter reads,
# never its pickle weights
FETCHED = ("*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken", "*.py")


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
    if split_hub_revision(path) is not None:  # (its cached snapshot; not cached: checked once loaded, as a hub id)
        return revision_snapshot(path, fetch=False)
    if looks_local(str(path)):
        return path
    return cached_checkpoint(str(path), revision) or path


def revision_snapshot(path: str, named: str | None = None, fetch: bool = True) -> str:
    """``path`` itself, or for ``REPO@REVISION`` that revision's snapshot directory in the local
    Hugging Face cache: fetched from the Hub where it can be reached (its safetensors, JSON,
    tokenizer and template files: what the cache lacks; a branch as it is now), else the cached one
    where it holds a checkpoint's (or an adapter's) weights; with ``fetch`` False (the checks before
    loading) the cached one, or ``path`` itself where the cache lacks it. Offline or out of
    reach and not cached, a revision the repository lacks, or no such repository: a named error
    (``named``: how the user gave it, e.g. ``--tuned``)."""
    split = split_hub_revision(path)
    if split is None:
        return path
    repo, revision = split
    named = f"{named} {path}" if named else str(path)
    snapshot = None
    for marker in ("config.json", "adapter_config.json"):
        try:
            cached = _cached_file(repo, marker, revision)
        except Exception:  # noqa: BLE001 - an id or revision the hub library refuses to parse: the fetch names it
            cached = None
        if cached is not None and _snapshot_lacks_weights(Path(cached).parent, marker, named) is None:
            snapshot = str(Path(cached).parent)
            break
    if not fetch:
        return snapshot or path
    if hub_offline() or not hub_reachable():  # (online, a branch is read where it is now, as from_pretrained does)
        if snapshot is not None:
            return snapshot
        raise HubUnavailableError(
            f"{named}: revision {revision!r} of {repo} is not in the local Hugging Face cache with its weights, and the "
            f"Hub cannot be reached ({'HF_HUB_OFFLINE=1' if hub_offline() else 'no network'}): download it first "
            f"(hf download {repo} --revision {revision}) or give a local directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        local = Path(snapshot_download(repo, revision=revision, allow_patterns=list(FETCHED)))
    except RevisionNotFoundError as exc:
        raise ModelPathNotFoundError(f"{named}: {repo} has no revision {revision!r} on the Hub") from exc
    except RepositoryNotFoundError as exc:
        raise ModelPathNotFoundError(f"{named}: no Hub repository {repo} (or it is private or gated)") from exc
    except Exception as exc:  # noqa: BLE001 - the hub library raises many types (network, disk, permissions)
        raise HubUnavailableError(f"{named}: revision {revision!r} of {repo} could not be fetched "
                                  f"({type(exc).__name__}: {exc})") from exc
    marker = "config.json" if (local / "config.json").exists() else "adapter_config.json"
    if _snapshot_lacks_weights(local, marker, named) is not None:
        raise ModelLoadError(f"{named}: revision {revision!r} of {repo} holds no safetensors weights, and pickle weights "
                             f"are not fetched (pickle can run code when loaded): download them (hf download {repo} "
                             f"--revision {revision} --local-dir DIR) and give DIR with --allow-pickle if you trust them")
    return str(local)


def check_weight_format(path: str, allow_pickle: bool, revision: str | None = None) -> None:
    """A checkpoint with pickle weights only loads only with ``allow_pickle`` (pickle can run code
    when loaded): a PickleWeightsRefusedError before any weight loads. Read for a local directory,
    and for a hub id whose cached snapshot holds only pickle weights while the Hub cannot be reached
    to fetch safetensors it may hold (HF_HUB_OFFLINE=1, or no network). A hub id not cached, or
    reachable: loading decides."""
    if allow_pickle:
        return
    root = Path(str(path)).expanduser()
    local = root.exists()
    if local:
        where = f"{path} has only pickle weights"
        remedy = "Convert to safetensors, or pass --allow-pickle if you trust it."
    elif looks_local(str(path)):
        return
    else:
        try:
            cached = _cached_file(str(path), "config.json", revision)
        except Exception:  # noqa: BLE001 - no hub library, or an id it refuses to parse: loading names it
            return
        if cached is None:
            return
        root = Path(cached).parent
        where = f"{path}: its snapshot in the local Hugging Face cache holds only pickle weights"
        remedy = ("The Hub cannot be reached to fetch safetensors. Pass --allow-pickle if you trust it, or download "
                  "its safetensors where there is network.")
    weights = [f.name for f in weight_files(str(root))]
    if not weights or any(name.endswith(".safetensors") for name in weights):
        return
    if not local and not hub_offline() and hub_reachable():  # (the Hub may hold safetensors a load fetches)
        return
    from ..errors import PickleWeightsRefusedError

    raise PickleWeightsRefusedError(f"{where} ({some_of(weights)}); pickle can run arbitrary code when loaded. {remedy}")

