"""Finished output directories read back as results (:func:`open_run_directory`): a run, a
compare or a lineage, whichever command wrote the directory (``crosspatch.open_run``,
:mod:`crosspatch.workflows.opening`, adds the workflows' directories)."""

from __future__ import annotations

from pathlib import Path

from ..store import check_out_path, collection_kind
from .compare import CompareResult, open_compare
from .lineage import LineageResult, open_lineage
from .result import RunResult, read_run

__all__ = ["open_run_directory"]


def open_run_directory(run_dir: str | Path) -> RunResult | CompareResult | LineageResult:
    """A finished run directory as a :class:`RunResult` (summary, records, prompts without an
    event, config, every analysis' records), read from its files alone, wherever it was made
    (a cluster's ``crosspatch run``, a shard merge): no model loads, nothing is written. The
    output directory of ``crosspatch compare`` or ``lineage`` opens as a :class:`CompareResult`
    or :class:`LineageResult` with its runs. A directory that is no run, a run that did not
    finish, or a damaged file is a named error (``NotARunDirectoryError``,
    ``IncompleteRunError``, ``CorruptRunFileError``)."""
    path = check_out_path(run_dir)
    kind = collection_kind(path)
    if kind == "compare":
        return open_compare(path)
    if kind == "lineage":
        return open_lineage(path)
    return read_run(path)
