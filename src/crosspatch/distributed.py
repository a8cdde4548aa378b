"""The Ray engine: prompt chunks processed by Ray actors that each hold the model pair.

``run(..., engine="ray", workers=N)`` (CLI ``--engine ray --workers N``) starts N actors (or
joins a running cluster when ``RAY_ADDRESS`` is set); each loads the pair from the same paths
and options as the driver, chunks are handed out as actors free up, and each finished chunk is
streamed back and appended to the driver's run directory at once, so a resumed run skips it.
Install with ``pip install crosspatch[ray]``.
"""

from __future__ import annotations

from typing import Iterator

from .errors import CrosspatchError


def _load_spec(pair) -> dict:
    """What an actor needs to load the same pair the driver holds."""
    prov = pair.provenance
    if prov.get("base", {}).get("path") in (None, "<in-memory>"):
        raise CrosspatchError("the ray engine needs a pair loaded from paths (load_pair), not in-memory models")
    options = {k: v for k, v in prov.get("load_options", {}).items()}
    return {"base": prov["base"]["path"], "tuned": prov.get("tuned", {}).get("path"),
            "adapter": prov.get("adapter", {}).get("path"), "options": options}


class ChunkWorker:
    """Holds one copy of the pair; scores the chunks it is given."""

    def __init__(self, spec: dict, config, boundaries: list[int]) -> None:
        import torch

        from .models.loading import LoadOptions, load_pair

        torch.set_num_threads(1)
        options = LoadOptions(**{**spec["options"], "hash_weights": False})
        self.pair = load_pair(spec["base"], tuned=spec["tuned"], adapter=spec["adapter"], options=options)
        self.config, self.boundaries = config, boundaries

    def process(self, prompts, token_ids):
        from .pipeline import process_chunk

        return process_chunk(self.pair, prompts, token_ids, self.boundaries, self.config)


def ray_chunks(pair, prompts, token_ids, chunks: list[list[int]], boundaries: list[int], config) -> Iterator[tuple]:
    """Yield each chunk's (events, no-divergence, records, work) as soon as an actor finishes it."""
    try:
        import ray
    except ImportError as exc:
        raise CrosspatchError("the ray engine needs Ray: pip install 'crosspatch[ray]'") from exc
    if not chunks:
        return
    spec = _load_spec(pair)
    started_here = not ray.is_initialized()
    if started_here:
        import os

        if os.environ.get("RAY_ADDRESS"):  # an existing cluster: its resources are its own
            ray.init(log_to_driver=False)
        else:  # a local cluster sized to the workers
            ray.init(num_cpus=max(config.workers, 1), include_dashboard=False, log_to_driver=False)
    try:
        Worker = ray.remote(num_cpus=1)(ChunkWorker)
        actors = [Worker.remote(spec, config, boundaries) for _ in range(max(1, min(config.workers, len(chunks))))]
        pending, queue = {}, list(chunks)
        for actor in actors:
            if queue:
                idx = queue.pop(0)
                pending[actor.process.remote([prompts[k] for k in idx], [token_ids[k] for k in idx])] = actor
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(done[0])
            if queue:
                idx = queue.pop(0)
                pending[actor.process.remote([prompts[k] for k in idx], [token_ids[k] for k in idx])] = actor
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()
