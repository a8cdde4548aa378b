"""``crosspatch report`` on a practitioner workflow's directory (:func:`rerender_workflow`): its
pages rendered again from its stored document alone, torch-free like the rest of ``report`` (the
workflow's own module, which renders the pages, is imported only for such a directory)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CorruptRunFileError
from ..store import check_out_path
from ..store.files import read_checked_document
from ..store.workflow_schemas import WORKFLOW_OUTPUTS, workflow_output_kind

__all__ = ["rerender_workflow"]


def rerender_workflow(path: str | Path) -> list[Path] | None:
    """``crosspatch report`` on a workflow's directory (a preflight's, splice's or merge-check's):
    its pages rendered again from its stored document alone (checked: a damaged one is a
    ``CorruptRunFileError``), and so are the workflows' and runs' directories inside it (a
    splice's diagnostic run, a merge-check's splice or runs). Returns the files written; None for
    a directory that is no workflow's (a run, whose own preflight section its report holds)."""
    import importlib

    path = check_out_path(path)
    kind = workflow_output_kind(path)
    if kind is None:
        return None
    _, _, module, writer = WORKFLOW_OUTPUTS[kind]
    name = f"{kind}.json"
    document = read_checked_document(path / name)
    try:
        getattr(importlib.import_module(f"{__package__}.{module}"), writer)(path, document)
    except (LookupError, TypeError, ValueError, AttributeError) as exc:  # (a part its pages show, lacking or damaged)
        raise CorruptRunFileError.unrenderable(path / name, exc) from None
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
