"""How a descendant's weights stand to its base's, read from their safetensors files before
any model loads: as far apart as an unrelated model's (:func:`unrelated_weights_warning`), or the
base's own (:func:`identical_weights_warning`: the same files, or the same tensors saved in other
files), in which case the descendant computes exactly the base and a run of it measures no fine-tune."""

from __future__ import annotations

from .config_dicts import local_config

# a fine-tune moves its weights by a few percent of their norm; two independently trained models of one
# shape differ by about sqrt(2) (141%): a median change past this is no descendant of the base
UNRELATED_WEIGHT_CHANGE = 1.0


def _checkpoint_dir(path: str, revision: str | None = None):
    """The local directory a checkpoint's files are read from: the path itself, or a hub id's
    snapshot in the local Hugging Face cache; None where neither holds it."""
    from pathlib import Path

    from .paths import _cached_file

    root = Path(path).expanduser()
    if root.is_dir():
        return root
    try:
        cached = _cached_file(path, "config.json", revision)
    except Exception:  # not a hub id the hub library parses, or no hub library: nothing to read
        return None
    return Path(cached).parent if cached else None


def _safetensors_pair(base: str, descendant: str, revision: str | None = None):
    """The two checkpoints' safetensors files (each sorted), read from this disk; None where either
    is not here (:func:`_checkpoint_dir`) or is quantized (its packed weights are no weights to compare)."""
    from .config_dicts import is_quantized

    roots = [r for r in (_checkpoint_dir(p, revision) for p in (base, descendant)) if r is not None]
    if len(roots) < 2 or any(is_quantized(local_config(str(r))) for r in roots):
        return None
    return tuple(sorted(r.glob("*.safetensors")) for r in roots)


def weight_change(base: str, descendant: str, revision: str | None = None, samples: int = 8,
                  max_elements: int = 1 << 26) -> tuple[float, int] | None:
    """``(median, k)``: the median relative change ``‖W_d − W_b‖ / ‖W_b‖`` over ``k`` (at most
    ``samples``) matrices that both checkpoints' safetensors files hold under one name and shape,
    spread evenly over the sorted names and read one at a time (none past ``max_elements``: no
    vocabulary-sized matrix is read whole); None where none can be compared (a checkpoint not on
    this disk, a quantized one, or another layout)."""
    import torch
    from safetensors import safe_open

    from .adapters import weight_locations

    files = _safetensors_pair(base, descendant, revision)
    if files is None:
        return None
    ours, theirs = (weight_locations(found) for found in files)
    common = sorted(k for k, (_, shape) in ours.items()
                    if len(shape) == 2 and k in theirs and theirs[k][1] == shape and shape[0] * shape[1] <= max_elements)
    if not common:
        return None
    chosen = [common[round(i * (len(common) - 1) / max(samples - 1, 1))] for i in range(min(samples, len(common)))]
    changes = []
    for key in dict.fromkeys(chosen):
        with safe_open(ours[key][0], framework="pt") as a, safe_open(theirs[key][0], framework="pt") as b:
            w_base, w_desc = a.get_tensor(key).float(), b.get_tensor(key).float()
        norm = float(w_base.norm())
        if norm > 0 and bool(torch.isfinite(w_desc).all()) and bool(torch.isfinite(w_base).all()):
            changes.append(float((w_desc - w_base).norm()) / norm)
    if not changes:
        return None
    changes.sort()
    return changes[len(changes) // 2], len(changes)


def unrelated_weights_warning(base: str, descendant: str, name: str, revision: str | None = None) -> str | None:
    """A warning where ``descendant``'s weights are as far from ``base``'s as an unrelated model's
    (:func:`weight_change` at least :data:`UNRELATED_WEIGHT_CHANGE`): a checkpoint of another
    pretraining run of the same shape (another model version, the instruct model of another base)
    is scored as if it descended from this base, and its effects mean nothing; None otherwise."""
    change = weight_change(base, descendant, revision)
    if change is None or change[0] < UNRELATED_WEIGHT_CHANGE:
        return None
    median, k = change
    return (f"{name}'s weights differ from the base's by a median {median:.0%} of their norm over {k} matrices (a "
            "fine-tune moves them by a few percent, two independently trained models differ by about 141%): is it a "
            "descendant of this base? Another version of the model, or the instruct model of another base, is the "
            "common slip; the effects of an unrelated pair mean nothing")


def identical_weights_warning(base: dict, descendant: dict, name: str, paths: tuple[str, str] | None = None,
                              revision: str | None = None) -> str | None:
    """A warning where ``descendant``'s weights are ``base``'s: its weight files byte for byte
    (their provenance records' sha256, file by file), or, given the two checkpoints' ``paths``,
    the same tensors saved in other files (:func:`same_tensors`: a base saved again with another
    shard size, a training run that changed nothing). The descendant is the base itself, and a run
    of it finds no divergence, which is no finding about a fine-tune. None otherwise, and where
    the weights were not hashed (``--no-hash-weights``: nothing is read whole)."""
    ours, theirs = base.get("weights") or {}, descendant.get("weights") or {}
    if not ours or not theirs or None in ours.values() or None in theirs.values():
        return None
    if sorted(ours.values()) == sorted(theirs.values()):
        said = "its weight files are the base's, byte for byte (the same sha256)"
    elif paths is not None and same_tensors(*paths, revision=revision):
        said = "its weights are the base's, tensor for tensor and byte for byte (saved in other files)"
    else:
        return None
    return (f"{name}: {said}, so it computes exactly the base and finding no divergence says nothing about a "
            "fine-tune; is this the checkpoint you meant?")


def same_tensors(base: str, descendant: str, revision: str | None = None, block: int = 1 << 24) -> bool:
    """Whether two checkpoints hold the same tensors, name for name and byte for byte, whatever
    files they are saved in (another shard size, another file name): their safetensors headers
    list the same names, dtypes and shapes, and every tensor's bytes are equal. Tensors are read
    one pair at a time in an order spread over the whole checkpoint, the vocabulary-sized ones
    last, each in slices of about ``block`` elements, so that a fine-tune of a few layers is told
    apart after a few small reads; only identical checkpoints are read whole. False where either
    is not on this disk as safetensors, or is quantized."""
    import math

    files = _safetensors_pair(base, descendant, revision)
    if files is None:
        return False
    ours, theirs = (_tensor_index(found) for found in files)
    if not ours or ours.keys() != theirs.keys() or any(ours[k][1:] != theirs[k][1:] for k in ours):
        return False
    names = sorted(ours)
    order = sorted(range(len(names)), key=lambda i: (math.prod(ours[names[i]][2]) > block,  # (large ones last)
                                                     (i * 0.6180339887) % 1.0))  # (a low-discrepancy order)
    return all(_same_tensor(names[i], ours[names[i]], theirs[names[i]], block) for i in order)


def _same_tensor(key: str, ours: tuple, theirs: tuple, block: int) -> bool:
    """Whether one tensor's bytes are equal in two files, read in slices of rows of about ``block`` elements."""
    import math

    import torch
    from safetensors import safe_open

    shape = ours[2]
    rows = shape[0] if shape else 1
    step = max(1, block // max(1, math.prod(shape[1:]))) if shape else 1
    with safe_open(ours[0], framework="pt") as a, safe_open(theirs[0], framework="pt") as b:
        if not shape:  # (a scalar)
            return torch.equal(_as_bytes(a.get_tensor(key)), _as_bytes(b.get_tensor(key)))
        x, y = a.get_slice(key), b.get_slice(key)
        for start in range(0, rows, step):
            if not torch.equal(_as_bytes(x[start:start + step]), _as_bytes(y[start:start + step])):
                return False
    return True


def _as_bytes(tensor):
    import torch

    return tensor.contiguous().reshape(-1).view(torch.uint8)


def _tensor_index(files) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """Every tensor's file, dtype and shape from safetensors headers; empty where one is unreadable."""
    from safetensors import safe_open

    found: dict[str, tuple[str, str, tuple[int, ...]]] = {}
    try:
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    tensor = handle.get_slice(key)
                    found[key] = (str(file), tensor.get_dtype(), tuple(tensor.get_shape()))
    except Exception:  # damaged or truncated: the loader's named error, later
        return {}
    return found
