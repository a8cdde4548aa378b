"""Reopening a finished run for later analyses (``crosspatch consequence``, ``crosspatch
features``): its models, loaded as the run recorded them, and its first-divergence events at
the headline boundary, rebuilt from the stored records."""

from __future__ import annotations

from .cells import CellRecord, headline_boundary
from .divergence import DivergenceEvent
from .errors import CorruptRunFileError


def reopen_models(config: dict):
    """The run's pair, loaded from the paths and load options in its ``config.json``."""
    from .execution import load_pair
    from .models.loading import LoadOptions

    models = config["models"]
    known = set(LoadOptions.__dataclass_fields__)
    options = LoadOptions(**{k: v for k, v in config.get("load_options", {}).items() if k in known and k != "residency"})
    return load_pair(models["base"]["path"], tuned=models.get("tuned", {}).get("path"),
                     adapter=models.get("adapter", {}).get("path"), options=options)


def first_events(store, config: dict) -> tuple[int, list[CellRecord], list[DivergenceEvent]]:
    """The headline boundary, its valid first-divergence records and their events."""
    b = headline_boundary(config["resolved_boundaries"], config["num_layers"])
    records = [r for r in store.load_records() if r.boundary == b and r.kind == "first_diff" and r.valid]
    if any(r.prefix_ids is None for r in records):
        raise CorruptRunFileError(f"{store.path}: its records lack prefix ids (made by an older crosspatch); "
                                  "run it again")
    events = [DivergenceEvent(r.prompt_id, r.category, r.prompt_len, r.position, r.prefix_ids, r.t_pt, r.t_it)
              for r in records]
    return b, records, events
