"""A run's records as pandas tables (``events.parquet``, ``RunResult.events``), and which prompts
a run has accounted for (a first-divergence record at every boundary, or a no-divergence
outcome)."""

from __future__ import annotations

from typing import Iterable

from ..core.records import CELLS, READOUTS, CellRecord, NoDivergence, cell_effects
from ..errors import IncompleteRunError


def completed_prompts(records: Iterable[CellRecord], no_div: Iterable[NoDivergence], boundaries: list[int]) -> set[str]:
    """Prompts fully recorded: the first divergence scored at every boundary, or a no-divergence
    outcome."""
    need = set(boundaries)
    per_prompt: dict[str, set[int]] = {}
    for r in records:
        if r.kind == "first_diff":  # other kinds are written before it: it marks completion
            per_prompt.setdefault(r.prompt_id, set()).add(r.boundary)
    return {p for p, bs in per_prompt.items() if need <= bs} | {x.prompt_id for x in no_div}


def missing_prompts(prompt_ids: list[str], records: list[CellRecord], no_div: list[NoDivergence],
                    boundaries: list[int]) -> list[str]:
    """Prompts not accounted for: each prompt must have a first-divergence record at every
    boundary (valid or invalid) or a no-divergence outcome (events + no-divergence + invalid ==
    prompts)."""
    done = completed_prompts(records, no_div, boundaries)  # once: not once per prompt (quadratic in the run)
    return [p for p in prompt_ids if p not in done]


def check_complete(prompt_ids: list[str], records, no_div, boundaries, where: str) -> None:
    missing = missing_prompts(prompt_ids, records, no_div, boundaries)
    if missing:
        raise IncompleteRunError(
            f"{where}: {len(missing)} of {len(prompt_ids)} prompt(s) have no record ({', '.join(missing[:10])}"
            f"{', ...' if len(missing) > 10 else ''}); events + no-divergence + invalid must equal the prompts. "
            "If the run was interrupted or a file was truncated, run the same command again to redo them")


def events_frame(records: Iterable[CellRecord]):
    """One row per (event, boundary): an event is a prompt's divergence (generated position and
    token pair); ``kinds`` lists the event kinds that fall on it (comma-separated, in the order of
    ``tokens.EVENT_KINDS``) and ``is_<kind>`` says the same per kind; then the identity columns,
    ``Y`` per readout and cell and the per-event effects, as :func:`records_frame` (the long
    form, one row per event kind) has them without its ``key`` and ``kind``."""
    from ..core.tokens import EVENT_KINDS, ordered_kinds

    long = records_frame(records)
    identity = ["prompt_id", "position", "t_pt", "t_it", "boundary"]
    if long.empty:  # no event: the same columns, so that filtering and selecting work on any run
        rest = [c for c in long.columns if c not in identity and c not in ("key", "kind")]
        return long.reindex(columns=identity + ["kinds"] + [f"is_{k}" for k in EVENT_KINDS] + rest)
    kinds = long.groupby(identity, sort=False)["kind"].agg(lambda ks: ",".join(ordered_kinds(ks)))
    wide = long.drop_duplicates(identity).drop(columns=["key", "kind"]).set_index(identity)
    wide.insert(0, "kinds", kinds)
    for kind in ordered_kinds(set(long["kind"]) | set(EVENT_KINDS)):
        wide.insert(1 + sum(c.startswith("is_") for c in wide.columns), f"is_{kind}",
                    wide["kinds"].str.split(",").apply(lambda ks, k=kind: k in ks))
    return wide.reset_index()


def record_rows(records: Iterable[CellRecord]) -> list[dict]:
    """The rows of :func:`records_frame`, as plain dicts. A ``--group-by`` field whose values are
    of several kinds (numbers and text, say) is written as text, so that a table column holds one
    type (:func:`mixed_kinds`)."""
    rows, grouped = [], set()
    for r in records:
        row = {k: v for k, v in r.to_record().items() if k not in ("cells", "extra")}
        extra = {k: v for k, v in r.extra.items() if k not in row}  # --group-by fields
        grouped.update(extra)
        row.update(extra)
        for name in READOUTS:
            y = r.cells[name]
            for c in CELLS:
                row[f"{name}.{c}"] = y[c]
            for effect, value in r.effects(name).items():
                row[f"{name}.{effect}"] = value
        rows.append(row)
    for field in grouped:
        if mixed_kinds(row.get(field) for row in rows):
            for row in rows:
                if row.get(field) is not None:
                    row[field] = str(row[field])
    return rows


def mixed_kinds(values: Iterable) -> bool:
    """Whether ``values`` (None aside) are of more than one kind: numbers (ints and floats, not
    booleans), booleans, text, or any other type each a kind of its own."""
    def kind(v):
        if isinstance(v, bool):
            return "bool"
        return "number" if isinstance(v, (int, float)) else type(v).__name__
    return len({kind(v) for v in values if v is not None}) > 1


def records_frame(records: Iterable[CellRecord]):
    """One row per record, i.e. per (event, event kind, boundary), as ``events.jsonl`` and
    ``events.parquet`` hold them: identity columns with ``kind``, ``Y`` per readout and cell, and
    the per-event effects ``<readout>.E_PT``, ``.E_IT``, ``.interaction``."""
    import pandas as pd

    rows = record_rows(records)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=record_columns())


def record_columns() -> list[str]:
    """The columns of :func:`records_frame` (a ``--group-by`` field aside): what a table of no
    record still has."""
    from dataclasses import fields

    zero = dict.fromkeys(CELLS, 0.0)
    return ([f.name for f in fields(CellRecord) if f.name not in ("cells", "extra")]
            + [f"{name}.{c}" for name in READOUTS for c in [*CELLS, *cell_effects(zero)]])
