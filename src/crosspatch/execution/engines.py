"""Engines: where chunks of prompts are processed. Any analysis runs under any engine.

A *chunk function* ``fn(models, payload, item)`` processes one chunk (``item``) on a
:class:`ModelSet` and returns a picklable result; ``payload`` is what every chunk shares (the
analyses and their options). ``local`` runs chunks here, one after the other; ``ray`` runs them
on actors that each load the same model set from its load spec (or joins the cluster in
``RAY_ADDRESS``), streaming each result back as soon as it is done, so the caller can store it
at once. ``--shard i/n`` is the third way to split work: it selects prompts before any engine.
Install Ray with ``pip install 'crosspatch[ray]'``.

Each Ray worker asks for one CPU, and one GPU of its own when the models load on CUDA
(:func:`worker_resources`): Ray then places the workers on distinct GPUs, of one machine or of
many, and each worker loads its copy on the one GPU Ray shows it (``cuda``, whatever ``cuda:N``
the command gave). A cluster too small for the workers is a named error before any worker
starts (a worker that cannot be placed would wait for ever); accelerate's device map
(``--device map``, one copy over several GPUs) is not a Ray worker's layout and is refused.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

from ..errors import CrosspatchError, EngineWorkerError, OptionError, first_line
from .modelset import ModelSet

ENGINES = ("local", "ray")
ChunkFn = Callable[[ModelSet, Any, Any], Any]


def map_chunks(models: ModelSet, fn: ChunkFn, payload, items: list, engine: str = "local",
               workers: int = 2) -> Iterator:
    """Yield ``fn(models, payload, item)`` for every item; order follows completion under Ray."""
    if engine == "local":
        return (fn(models, payload, item) for item in items)
    if engine == "ray":
        return _ray_map(models, fn, payload, items, workers)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")


def check_engine_device(engine: str, device: str) -> None:
    """The device a run loads on, given the engine: the Ray engine's workers each hold one copy
    on one device, so accelerate's device map (one copy over several GPUs) is refused by name."""
    if engine == "ray" and str(device).strip().lower() == "map":
        raise OptionError("--device map with --engine ray: each Ray worker loads its own copy of the models on one "
                          "GPU; give --device cuda (each worker gets a GPU of its own), or run --device map with "
                          "--engine local (or split the prompts with --shard i/n)")


def worker_resources(device: str) -> dict[str, int]:
    """What one Ray worker asks of the cluster: a CPU, and a GPU of its own when the models load on
    CUDA (``cuda`` or ``cuda:N``); without it Ray would put every worker on the same visible GPU."""
    return {"num_cpus": 1, "num_gpus": 1 if str(device).strip().lower().startswith("cuda") else 0}


def worker_load_options(options: dict) -> dict:
    """A worker's load options: ``cuda:N`` is ``cuda``, the one GPU Ray shows the worker."""
    if str(options.get("device", "")).strip().lower().startswith("cuda:"):
        return {**options, "device": "cuda"}
    return options


def check_cluster_fits(workers: int, per_worker: dict[str, int], cluster) -> None:
    """A named error when the cluster's resources (``ray.cluster_resources()``) cannot place
    ``workers`` workers at once: the chunks given to a worker that never starts wait for ever."""
    for resource, unit in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
        need = per_worker.get(resource, 0) * workers
        have = int(cluster.get(unit, 0))
        if need > have:
            hint = (f"give --workers {have // per_worker[resource]}" if have >= per_worker[resource] else
                    "give --device cpu, or join a cluster with GPUs (RAY_ADDRESS)" if unit == "GPU" else
                    "join a cluster with CPUs (RAY_ADDRESS)")
            raise OptionError(f"--engine ray with {workers} workers needs {need} {unit}s (each worker holds its own copy "
                              f"of the models{' on a GPU of its own' if unit == 'GPU' else ''}); this Ray cluster has "
                              f"{have}: {hint}")


class ChunkWorker:
    """A Ray actor: one copy of the model set; runs the chunks it is given."""

    def __init__(self, spec: dict, fn: ChunkFn, payload) -> None:
        import torch

        from ..models.loading import LoadOptions
        from .opening import load_models

        torch.set_num_threads(1)
        options = LoadOptions(**worker_load_options(spec["options"]))
        self.models = load_models(spec["base"], tuned=spec["tuned"], adapters=spec["adapters"], options=options)
        self.fn, self.payload = fn, payload

    def process(self, item):
        return self.fn(self.models, self.payload, item)


def _ray_map(models: ModelSet, fn: ChunkFn, payload, items: list, workers: int) -> Iterator:
    try:
        import ray
    except ImportError as exc:
        raise CrosspatchError("the ray engine needs Ray: pip install 'crosspatch[ray]'") from exc
    spec = models.load_spec()
    if not items:
        return
    check_engine_device("ray", spec["options"].get("device", "cpu"))
    per_worker = worker_resources(spec["options"].get("device", "cpu"))
    count = max(1, min(workers, len(items)))
    models.release()  # the workers load their own copies: none stays resident here beside them
    started_here = not ray.is_initialized()
    if started_here:
        if os.environ.get("RAY_ADDRESS"):  # an existing cluster: its resources are its own
            ray.init(log_to_driver=False)
        else:  # a local cluster sized to the workers
            ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)
    try:
        import ray.exceptions

        lost = tuple(getattr(ray.exceptions, name) for name in  # what a dead worker raises
                     ("RayActorError", "WorkerCrashedError", "OutOfMemoryError", "ObjectLostError")
                     if hasattr(ray.exceptions, name))
        check_cluster_fits(count, per_worker, ray.cluster_resources())
        Worker = ray.remote(num_cpus=per_worker["num_cpus"], num_gpus=per_worker["num_gpus"])(ChunkWorker)
        actors = [Worker.remote(spec, fn, payload) for _ in range(count)]
        pending, queue = {}, list(items)
        for actor in actors:
            if queue:
                pending[actor.process.remote(queue.pop(0))] = actor
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(done[0])
            if queue:
                pending[actor.process.remote(queue.pop(0))] = actor
            try:
                result = ray.get(done[0])
            except lost as exc:
                first = first_line(exc, 300)
                raise EngineWorkerError(
                    f"a Ray worker was lost while it processed a chunk of prompts ({type(exc).__name__}: {first}). "
                    "The chunks finished before are stored: run the same command again to resume (with fewer "
                    "--workers, or --engine local, if the machine ran out of memory).") from None
            yield result
    finally:
        if started_here:
            ray.shutdown()
