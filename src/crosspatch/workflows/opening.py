"""Any finished output directory read back as its result (:func:`open_run`, ``crosspatch.open_run``):
a run, a compare or a lineage (:func:`crosspatch.runner.directories.open_run_directory`), and the
practitioner workflows' own directories — a ``preflight`` (a :class:`PreflightResult`), a
``splice`` (a :class:`SpliceResult`) and a ``merge-check`` (a :class:`MergeCheckResult`) — from
their stored JSON alone, no model loaded."""

from __future__ import annotations

from pathlib import Path

from ..errors import CorruptRunFileError
from ..runner.compare import CompareResult
from ..runner.directories import open_run_directory
from ..runner.lineage import LineageResult
from ..runner.result import RunResult
from ..store import check_out_path
from ..store.files import read_checked_document
from .merge_result import MergeCheckResult
from .preflight_policy import PreflightResult
from .splice import SpliceResult

__all__ = ["open_run", "rerender_workflow"]

# a workflow's document -> its result class
_DOCUMENTS = {"preflight.json": PreflightResult, "splice.json": SpliceResult, "merge-check.json": MergeCheckResult}


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
    if not (path / "config.json").exists():
        for name, result in _DOCUMENTS.items():
            if (path / name).is_file():
                return result(read_checked_document(path / name), path)
    return open_run_directory(path)


# a workflow's document -> the writer of its pages (module of this package, function), to render them again
_WRITERS = {"preflight.json": ("preflight", "write_preflight"), "splice.json": ("splice", "write_splice"),
            "merge-check.json": ("mergecheck", "write_merge_check")}


def rerender_workflow(path: str | Path) -> list[Path] | None:
    """``crosspatch report`` on a workflow's directory (a preflight's, splice's or merge-check's):
    its pages rendered again from its stored document alone (checked: a damaged one is a
    ``CorruptRunFileError``), and so are the workflows' and runs' directories inside it (a
    splice's diagnostic run, a merge-check's splice or runs). Returns the files written; None for
    a directory that is no workflow's (a run, whose own preflight section its report holds)."""
    import importlib

    path = check_out_path(path)
    name = next((n for n in _WRITERS if (path / n).is_file()), None)
    if name is None or (path / "config.json").exists():
        return None
    module, writer = _WRITERS[name]
    document = read_checked_document(path / name)
    try:
        getattr(importlib.import_module(f"{__package__}.{module}"), writer)(path, document)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # (a part its pages show, lacking or damaged)
        raise CorruptRunFileError(f"{path / name}: its pages cannot be rendered from it ({type(exc).__name__}: "
                                  f"{exc}): not the document crosspatch wrote; run the command again into a new "
                                  "directory") from None
    return [path / f"{name.removesuffix('.json')}.{ext}" for ext in ("md", "html")] + _inner_pages(path, 2)


def _inner_pages(path: Path, depth: int) -> list[Path]:
    """The pages of the workflows and finished runs inside ``path`` (to ``depth`` folders down), rendered again."""
    from ..runner.result import rerender_run

    files: list[Path] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        if (done := rerender_workflow(child)) is not None:
            files += done
        elif (child / "summary.json").is_file():
            files += rerender_run(child).files
        elif depth > 1:  # (a merge-check's runs/)
            files += _inner_pages(child, depth - 1)
    return files
