"""Engines: where chunks of prompts are processed. Any analysis runs under any engine.

A *chunk function* ``fn(models, payload, item)`` processes one chunk (``item``) on a
:class:`ModelSet` and returns a picklable result; ``payload`` is what every chunk shares (the
analyses and their options). ``local`` runs chunks here, one after the other; ``ray`` runs them
on actors that each load the same model set from its load spec (or joins the cluster in
``RAY_ADDRESS``), streaming each result back as soon as it is done, so the caller can store it
at once. ``--shard i/n`` is the third way to split work: it selects prompts before any engine.
Install Ray with ``pip install 'crosspatch[ray]'``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

from ..errors import CrosspatchError, EngineWorkerError, first_line
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


class ChunkWorker:
    """A Ray actor: one copy of the model set; runs the chunks it is given."""

    def __init__(self, spec: dict, fn: ChunkFn, payload) -> None:
        import torch

        from ..models.loading import LoadOptions
        from .opening import load_models

        torch.set_num_threads(1)
        options = LoadOptions(**spec["options"])
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
        Worker = ray.remote(num_cpus=1)(ChunkWorker)
        actors = [Worker.remote(spec, fn, payload) for _ in range(max(1, min(workers, len(items))))]
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
