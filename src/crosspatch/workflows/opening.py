"""Any finished output directory read back as its result (:func:`open_run`, ``crosspatch.open_run``):
a run, a compare or a lineage (:func:`crosspatch.runner.directories.open_run_directory`), and the
practitioner workflows' own directories — a ``preflight`` (a :class:`PreflightResult`) and a
``splice`` (a :class:`SpliceResult`) — from their stored JSON alone, no model loaded."""

from __future__ import annotations

from pathlib import Path

from ..errors import CorruptRunFileError
from ..runner.compare import CompareResult
from ..runner.directories import open_run_directory
from ..runner.lineage import LineageResult
from ..runner.result import RunResult
from ..store import check_out_path, read_json_object
from .preflight_policy import PreflightResult
from .splice import SpliceResult

__all__ = ["open_run"]

# a workflow's document -> the keys it must hold, and its result class
_DOCUMENTS = {"preflight.json": (("passed", "checks"), PreflightResult),
              "splice.json": (("boundaries", "prompts"), SpliceResult)}


def open_run(run_dir: str | Path) -> RunResult | CompareResult | LineageResult | PreflightResult | SpliceResult:
    """A finished output directory as what made it returned: a run's :class:`RunResult`, a
    compare's or lineage's result with its runs, a preflight's :class:`PreflightResult` or a
    splice's :class:`SpliceResult`, read from its files alone (no model loads, nothing is
    written). A preflight written into a run directory is part of that run (its report's
    section): the directory opens as the run. A directory that is none of these, a run that did
    not finish, or a damaged file is a named error (``NotARunDirectoryError``,
    ``IncompleteRunError``, ``CorruptRunFileError``)."""
    path = check_out_path(run_dir)
    if not (path / "config.json").exists():
        for name, (keys, result) in _DOCUMENTS.items():
            if (path / name).is_file():
                return result(_document(path / name, keys), path)
    return open_run_directory(path)


def _document(path: Path, keys: tuple[str, ...]) -> dict:
    document = read_json_object(path, path.name)
    missing = [k for k in keys if k not in document]
    if missing:
        raise CorruptRunFileError(f"{path} is not a crosspatch {path.stem} document (no {', '.join(missing)})")
    return document
