"""Gathered analyses (:class:`~crosspatch.core.analysis.GatheredAnalysis`: the feature study,
the closure) over chunks of events on an engine: every chunk's ``gather`` (on Ray actors, or
here), one ``decide`` on the parts in event order, every chunk's ``measure``, one ``combine``.
The chunking never changes the result: ``decide`` and ``combine`` see per-event rows in the same
order however the events were cut."""

from __future__ import annotations

import math

from ..core.analysis import EventSet, GatheredAnalysis, image_parts
from ..core.divergence import DivergenceEvent
from ..execution import Executor, ModelSet, map_chunks

__all__ = ["drive_gathered"]


def _chunk_phase(models: ModelSet, payload: tuple, item: tuple) -> tuple[int, list]:
    """One chunk of one phase (a module-level function, so that Ray can ship it)."""
    phase, analyses, plans, options, base, tuned = payload
    index, events = item
    with models.media.only(e.prompt_id for e in events):  # this piece's images
        ex = Executor.for_run(models, options)
        evset = EventSet(list(events), base, tuned, None)  # analyses run side by side on the chunk
        if phase == "gather":
            programs = [analysis.gather(ex, evset) for analysis in analyses]
        else:
            programs = [analysis.measure(ex, evset, plan) for analysis, plan in zip(analyses, plans)]
        return index, ex.drive_all(programs)


def drive_gathered(models: ModelSet, analyses: list[GatheredAnalysis], events: list[DivergenceEvent],
                   options: dict, engine: str = "local", workers: int = 2, chunks: int | None = None) -> list:
    """Each analysis' result over ``events`` (descendant ``models.roles[1]`` against the base),
    batching as the run's recorded ``options``; ``chunks`` pieces (default: one locally, one per
    Ray worker), each phase spread over ``engine``."""
    count = max(1, chunks if chunks is not None else (1 if engine == "local" else workers))
    size = max(1, math.ceil(len(events) / count))
    # pieces of consecutive events; prompts with the same tokens and different images in different pieces
    pieces = [[events[start + k] for k in part] for start in range(0, len(events), size)
              for part in image_parts(events[start:start + size], models.media)]
    items = list(enumerate(pieces)) or [(0, [])]
    base, tuned = models.base, models.roles[1]

    def phase(name: str, plans) -> list[list]:
        payload = (name, analyses, plans, options, base, tuned)
        done = sorted(map_chunks(models, _chunk_phase, payload, items, engine, workers), key=lambda r: r[0])
        return [parts for _, parts in done]

    gathered = phase("gather", None)
    plans = [analysis.decide([parts[j] for parts in gathered]) for j, analysis in enumerate(analyses)]
    measured = phase("measure", plans)
    return [analysis.combine(plan, [parts[j] for parts in measured])
            for j, (analysis, plan) in enumerate(zip(analyses, plans))]
