"""Sparse final-MLP feature mediation with crosscoders (``crosspatch features train|mediate``).

On a finished run directory: the first-divergence events at the headline boundary are split by
prompt into a train and a held-out half; both models' outputs of the last ``n_layers`` MLPs over
the event prefixes are cached (``features/activations/shard_*.safetensors`` with metadata,
resumable); a paired BatchTopK crosscoder is trained (or loaded with ``--crosscoder DIR``) and
judged by its quality gate; then mediation, rescue and closure run (``study.py``) and
``features/train.json`` (``features train``: the crosscoder and its quality gate) or
``features/mediate.json`` (``features mediate``: the study), each kept when the other is written;
``summary.json`` → ``features`` and both reports are updated.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ...store import write_whole
from .crosscoder import Crosscoder, load_crosscoder, quality_gate, save_crosscoder, train_crosscoder
from .study import activations

__all__ = ["Crosscoder", "load_crosscoder", "quality_gate", "save_crosscoder", "train_crosscoder",
           "features_frames"]


def cache_activations(ex, events, boundary, layers, directory: Path, shard_size: int = 64, log=print):
    """Paired activations of ``events`` in safetensors shards (resumable); returns (x_pt, x_it)."""
    from safetensors.torch import save_file

    from ...core.analysis import EventSet, drive_apart

    directory.mkdir(parents=True, exist_ok=True)
    d = ex.models.hidden_size
    tokens = sum(len(e.prefix_ids) for e in events)
    log(f"activation cache: {tokens} tokens x {len(layers)} layers x {d} x 2 models x 4 bytes = "
        f"{tokens * len(layers) * d * 2 * 4 / 2**20:.1f} MiB in {directory}")
    xs_pt, xs_it = [], []
    for n, start in enumerate(range(0, len(events), shard_size)):
        path = directory / f"shard_{n:05d}.safetensors"
        chunk = events[start:start + shard_size]
        meta = {"layers": json.dumps(layers), "events": str(len(chunk)), "dtype": "float32",
                "event_keys": hashlib.sha256("\n".join(e.key for e in chunk).encode()).hexdigest()}
        shard = _cached_shard(path, meta)
        if shard is None:
            if path.exists():
                log(f"{path.name}: cached for other events or layers, or unreadable: computed again")
            pairs: list = [None] * len(chunk)
            evset = EventSet(chunk, ex.models.base, ex.models.roles[1], None)
            for positions, part in drive_apart(ex, evset, lambda p: activations(ex, p, boundary, layers), contiguous=False):
                for k, pair in zip(positions, part):
                    pairs[k] = pair
            shard = {"pt": torch.cat([p for p, _ in pairs]).contiguous(), "it": torch.cat([i for _, i in pairs]).contiguous()}
            partial = path.with_suffix(".partial")  # a shard is complete or absent, never half written
            save_file(shard, str(partial), metadata=meta)
            os.replace(partial, path)
        xs_pt.append(shard["pt"])
        xs_it.append(shard["it"])
    write_whole(directory / "metadata.json", json.dumps({"layers": layers, "hidden_size": d, "tokens": tokens,
                                                         "shards": len(xs_pt), "dtype": "float32"}, indent=2) + "\n")
    return torch.cat(xs_pt), torch.cat(xs_it)


def _cached_shard(path: Path, meta: dict) -> dict | None:
    """A cached activation shard whose metadata is ``meta`` (the same events and layers), or
    None: absent, unreadable (an interrupted write) or made for other events or layers."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}) != meta:
                return None
        shard = load_file(str(path))
    except Exception:  # safetensors raises its own error types for a damaged file
        return None
    return shard if {"pt", "it"} <= set(shard) else None


def features_frames(result: dict) -> dict:
    """The mediation curve, rescue and closure as pandas DataFrames."""
    import pandas as pd

    frames = {}
    study = result.get("study") or {}
    frames["mediation"] = pd.DataFrame([{"k": int(k), "set": name, **v} for k, g in study.get("mediation", {}).items()
                                        for name, v in g.items()])
    frames["rescue"] = pd.DataFrame([{"k": int(k), "set": name, **v} for k, g in study.get("rescue", {}).items()
                                     for name, v in g.items()])
    closure = result.get("closure") or {}
    frames["closure"] = pd.DataFrame([{"rank": int(r), "control": name, **v}
                                      for r, g in closure.get("by_rank", {}).items() for name, v in g.items()])
    return frames
