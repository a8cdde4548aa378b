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
import time
from pathlib import Path

import torch

from ..errors import OptionError
from .crosscoder import Crosscoder, load_crosscoder, quality_gate, save_crosscoder, train_crosscoder
from .study import Closure, FeatureStudy, activations, split_events

__all__ = ["Crosscoder", "load_crosscoder", "quality_gate", "save_crosscoder", "train_crosscoder", "run_features",
           "features_frames"]


def cache_activations(ex, events, boundary, layers, directory: Path, shard_size: int = 64, log=print):
    """Paired activations of ``events`` in safetensors shards (resumable); returns (x_pt, x_it)."""
    from safetensors.torch import save_file

    from ..analysis import EventSet

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
            pairs = ex.drive(activations(ex, EventSet(chunk, ex.models.base, ex.models.roles[1], None), boundary, layers))
            shard = {"pt": torch.cat([p for p, _ in pairs]).contiguous(), "it": torch.cat([i for _, i in pairs]).contiguous()}
            partial = path.with_suffix(".partial")  # a shard is complete or absent, never half written
            save_file(shard, str(partial), metadata=meta)
            os.replace(partial, path)
        xs_pt.append(shard["pt"])
        xs_it.append(shard["it"])
    (directory / "metadata.json").write_text(json.dumps({"layers": layers, "hidden_size": d, "tokens": tokens,
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


def run_features(run_dir, crosscoder_dir=None, n_layers: int = 3, n_latents: int = 256, k: int = 8,
                 steps: int = 1500, train_only: bool = False, log=print) -> dict:
    """Train (or load) the crosscoder on a run's events, then mediation, rescue and closure
    (holding the run directory's lock; works on every run directory crosspatch writes)."""
    from ..store import RunStore

    store = RunStore(run_dir)
    with store.lock():  # one writer per run directory
        return _run_features(store, crosscoder_dir, n_layers, n_latents, k, steps, train_only, log)


def _run_features(store, crosscoder_dir, n_layers, n_latents, k, steps, train_only, log) -> dict:
    from ..analysis import EventSet
    from ..execution import Executor
    from ..finished import first_events, reopen_models, resummarize

    config = store.config()
    store.summary()  # the run must have finished
    boundary, _, events = first_events(store, config)
    train, held = split_events(events)
    needs = "a training half" if train_only else "a training and a held-out half"
    if (crosscoder_dir is None and not train) or (not train_only and not (train and held)):
        raise OptionError(
            f"{store.path}: the feature study needs first-divergence events for {needs} (split by prompt); this run has "
            f"{len(events)} valid event(s) at boundary {boundary} ({len(train)} training, {len(held)} held out). Run "
            "more prompts")
    pair = reopen_models(config)
    ex = Executor.for_run(pair, config["options"])
    out = store.path / "features"
    started = time.perf_counter()
    if crosscoder_dir is not None:
        cc = load_crosscoder(crosscoder_dir)
        layers = cc.config.layers or list(range(pair.num_layers - n_layers, pair.num_layers))
        if cc.config.d_in != len(layers) * pair.hidden_size or not all(boundary <= x < pair.num_layers for x in layers):
            raise OptionError(
                f"--crosscoder {crosscoder_dir} reads layers {layers} with {cc.config.d_in} inputs; this run's late "
                f"stack is layers {boundary}..{pair.num_layers - 1} of width {pair.hidden_size}: it was trained on "
                "another model or boundary")
    else:
        layers = list(range(max(boundary, pair.num_layers - n_layers), pair.num_layers))
        if len(layers) < n_layers:
            log(f"--layers {n_layers}: the crosscoder reads the {len(layers)} layer(s) above boundary {boundary} "
                f"({layers[0]}..{layers[-1]}), all there are")
        x_pt, x_it = cache_activations(ex, train, boundary, layers, out / "activations", log=log)
        cc = train_crosscoder(x_pt, x_it, layers, pair.hidden_size, n_latents=n_latents, k=k, steps=steps, log=log)
        save_crosscoder(cc, out / "crosscoder")
    h_pt, h_it = cache_activations(ex, held, boundary, layers, out / "activations_heldout", log=log) if held else (None, None)
    gate = quality_gate(cc, h_pt, h_it) if h_pt is not None and len(h_pt) else None
    result = {"boundary": boundary, "layers": layers, "n_latents": cc.config.n_latents, "k": cc.config.k,
              "source": cc.config.source, "quality_gate": gate, "train_seconds": round(time.perf_counter() - started, 1)}
    if not train_only:
        t, h = EventSet(train, pair.base, pair.roles[1], None), EventSet(held, pair.base, pair.roles[1], None)
        result["study"] = ex.drive(FeatureStudy(cc, boundary).program(ex, t, h))
        result["closure"] = ex.drive(Closure(boundary).program(ex, t, h))
        if gate is not None and not gate["passed"]:
            result["note"] = "the crosscoder failed its quality gate: read the mediation results with caution"
    pair.release()
    out.mkdir(parents=True, exist_ok=True)
    name = "train" if train_only else "mediate"  # each command's result kept beside the other's
    result["result"] = name
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    resummarize(store, config)  # the features plug-in reads the results into summary.json and the reports
    return result


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
