"""Any finished output directory read back as its result (:func:`open_run`, ``crosspatch.open_run``):
a run, a compare or a lineage (:func:`crosspatch.runner.directories.open_run_directory`), and the
practitioner workflows' own directories — a ``preflight`` (a :class:`PreflightResult`), a
``splice`` (a :class:`SpliceResult`) and a ``merge-check`` (a :class:`MergeCheckResult`) — from
their stored JSON alone, no model loaded."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..runner.compare import CompareResult
from ..runner.directories import open_run_directory
from ..runner.lineage import LineageResult
from ..runner.result import RunResult
from ..store import check_out_path
from ..store.files import read_checked_document
from ..store.workflow_schemas import WORKFLOW_OUTPUTS, workflow_output_kind
from .merge_result import MergeCheckResult
from .preflight_policy import PreflightResult
from .splice import SpliceResult

__all__ = ["open_run"]


def open_run(run_dir: str | Path) -> RunResult | CompareResult | LineageResult | PreflightResult | SpliceResult | \
        MergeCheckResult:
    """A finished output directory as what made it returned: a run's :class:`RunResult`, a
    compare's or lineage's result with its runs, a preflight's :class:`PreflightResult`, a
    splice's :class:`SpliceResult` or a merge-check's :class:`MergeCheckResult`, read from its files alone (no model loads, nothing is
    written). A preflight written into a run directory is part of that run (its report's
    section): the directory opens as the run. A directory that is none of these, a run that did
    not finish, or a damaged file is a named error (``NotARunDirectoryError``,
    ``IncompleteRunError``, ``CorruptRunFileError``)."""
    path = check_out_path(run_dir)
    kind = workflow_output_kind(path)
    if kind is None:
        return open_run_directory(path)
    module, result, _, _ = WORKFLOW_OUTPUTS[kind]
    document = read_checked_document(path / f"{kind}.json")
    return getattr(importlib.import_module(f"{__package__}.{module}"), result)(document, path)
