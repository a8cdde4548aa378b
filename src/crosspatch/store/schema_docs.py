"""docs/schemas.md, rendered from the TypedDicts of :mod:`crosspatch.store.schemas` (a test
keeps the page in sync: ``python -c "from crosspatch.store.schema_docs import render_schema_docs as r;
print(r())" > docs/schemas.md``)."""

from __future__ import annotations

from .schemas import (
    DOCUMENTS,
    BoundaryResults,
    Cells,
    CompareRow,
    ControlDetails,
    ControlRow,
    Counts,
    EffectBlock,
    Effects,
    LabelSwapTest,
    LineageStage,
    ModelEntry,
    ModelsRecord,
    NoDivergencePrompt,
    PreflightCheck,
    ReadoutAgreement,
    ReadoutResults,
    RealVocabulary,
    SpliceBoundary,
    SpliceChimera,
    SplicePrompts,
    Stat,
    VerdictRecord,
)


def _type_name(tp) -> str:
    text = getattr(tp, "__name__", None) if not getattr(tp, "__args__", None) else None
    return text or str(tp).replace("typing.", "").replace("crosspatch.store.schemas.", "")


def render_schema_docs() -> str:
    """docs/schemas.md: every documented file and record type, its keys and their types."""
    from typing import get_type_hints

    lines = ["# File schemas", "",
             "The JSON files crosspatch writes, as the TypedDicts of `crosspatch.store.schemas` describe them. Each is "
             "checked when written and when read (a key marked required must be there; the others may be absent); keys "
             "not listed are allowed (a registered analysis adds its "
             "block to `summary.json` under its `summary_key`). The JSON documents (`config.json`, "
             "`summary.json`, `compare.json`, `lineage.json`, an analysis' or a workflow's `.json`, and `--json` "
             "output) are strict JSON: a number that is not finite (NaN, infinity) is `null`. The JSON-lines "
             "records keep Python's `NaN` for a non-finite cell of an invalid event (`valid: false`); "
             "`events.parquet` holds it as a float. Generated from the code; a test keeps this page in sync.", ""]
    documents = {**{f"`{name}`": tp for name, tp in DOCUMENTS.items()},
                 **{f"`{tp.__name__}`": tp for tp in (
                     Counts, BoundaryResults, ReadoutResults, EffectBlock, Cells, Effects, Stat, ReadoutAgreement,
                     CompareRow, LineageStage, LabelSwapTest, ControlRow, ControlDetails, VerdictRecord, NoDivergencePrompt, RealVocabulary,
                     ModelsRecord, ModelEntry, PreflightCheck, SplicePrompts, SpliceBoundary, SpliceChimera)}}
    for title, tp in documents.items():
        lines += [f"## {title}", "", " ".join((tp.__doc__ or "").split()), "", "| key | type |", "|---|---|"]
        for key, hint in get_type_hints(tp).items():
            written = tp.__annotations__.get(key, "")  # (postponed: kept as text, a ForwardRef here)
            required = str(getattr(written, "__forward_arg__", written)).startswith("Required[")
            lines.append(f"| `{key}`{' (required)' if required else ''} | `{_type_name(hint)}` |")
        lines.append("")
    return "\n".join(lines)
