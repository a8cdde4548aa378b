"""Output directories of the practitioner workflows (``preflight``, ``splice``): one JSON
document, a Markdown and an HTML rendering of the same sections, written under the directory's
lock, never over another workflow's or another input's results.

A directory holding the same workflow's document for the same inputs (their fingerprint) is a
finished result: it is read back, no model loads (resume). Anything else in the directory is
refused with a named error before any model loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.registry import Section
from ..errors import CorruptRunFileError, RunDirectoryNotEmptyError, RunSettingsMismatchError

# prompts preflight and splice decode at once (a run's default --batch-size); halved where a batch runs out of memory
WORKFLOW_ROWS = 128


def fingerprint_of(inputs: dict) -> str:
    """The fingerprint of a workflow's ``inputs`` under this crosspatch's result rules
    (:data:`~crosspatch.store.RESULT_RULES`: a document an older crosspatch wrote is not read
    back as this version's result)."""
    from ..store import RESULT_RULES, fingerprint

    return fingerprint({"inputs": inputs, "result_rules": RESULT_RULES})


def finished_document(out: str | Path | None, kind: str, inputs: dict, allow_run_dir: bool = False,
                      own_entries: tuple[str, ...] = ()) -> dict | None:
    """The stored ``<kind>.json`` of ``out`` when it was written for these ``inputs`` (resume;
    one that does not match its schema is a :class:`CorruptRunFileError`), None for a new or empty directory; a :class:`RunDirectoryNotEmptyError` for a directory that
    holds anything else (a crosspatch run directory is accepted with ``allow_run_dir``: the
    workflow adds its file and a section to the run's reports) and a
    :class:`RunSettingsMismatchError` for the same workflow on other inputs. ``own_entries``: names
    the workflow itself writes before its document (an interrupted run's, resumed by their own
    logic), accepted in the directory, as are its pages without their document and its files that a
    kill cut short (``NAME.tmp``): a write of its outputs that was interrupted."""
    if out is None:
        return None
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise RunDirectoryNotEmptyError(f"{path} exists and is not a directory")
    document_path = path / f"{kind}.json"
    if document_path.exists():
        try:
            document = json.loads(document_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise CorruptRunFileError(f"{document_path} is not readable JSON ({exc}); remove it or choose "
                                      "another --out") from None
        if not isinstance(document, dict) or document.get("fingerprint") != fingerprint_of(inputs):
            old = document.get("inputs") if isinstance(document, dict) else None
            from ..store import settings_diff

            diff = settings_diff(old, inputs) if isinstance(old, dict) else ["not a crosspatch document"]
            what = f"of other inputs ({'; '.join(diff[:4])})" if diff else (
                "of these inputs written by another crosspatch, whose results this version would not reproduce "
                "(its result rules changed)")
            raise RunSettingsMismatchError(f"{path} holds a {kind} {what}; choose another --out, nothing was "
                                           "overwritten")
        from ..store.files import read_checked_document

        return read_checked_document(document_path)  # (a damaged one: named, never shown as the result)
    # this workflow's pages written before its document, or any of its files a kill cut short: an
    # interrupted write (the document, written last, marks a result done), rewritten now
    partial = {f"{kind}.md", f"{kind}.html"} | {f"{kind}.{ext}.tmp" for ext in ("json", "md", "html")}
    if path.is_dir() and any(p.name not in own_entries and p.name not in partial for p in path.iterdir()):
        from ..store import RunStore

        if not (allow_run_dir and RunStore(path).is_run()):
            raise RunDirectoryNotEmptyError(
                f"{path} is not empty and holds no {kind} result; choose a new directory for --out (nothing is "
                "written into a directory crosspatch did not make for this)")
    return None


def progress_function(progress):
    """A workflow's ``progress``: None or False (silent), True (each message printed to standard
    error, as ``run(progress=True)`` shows its progress) or a function of one message; anything
    else is an :class:`OptionError` before any work (not a TypeError at the first stage, after loading)."""
    import sys

    from ..errors import OptionError

    if progress is True:
        return lambda message: print(message, file=sys.stderr, flush=True)
    if progress is not None and progress is not False and not callable(progress):
        raise OptionError(f"progress must be a function of one message, True, False or None, not {progress!r}")
    return progress or (lambda message: None)


def stages(total: int, say):
    """Progress of a workflow as numbered stages with their total and the time left
    (``[3/7] generating: base (0:12 elapsed, about 0:16 left)``): a function of the message."""
    from ..runner.progress import StageClock

    return StageClock([1.0] * total, say or (lambda message: None)).stage


def warnings_sections(document: dict) -> list[Section]:
    """A workflow page's "Warnings" section: what loading its models found (an adapter on another
    base, a tokenizer difference, ...), recorded in its document's ``warnings``; none without."""
    warnings = document.get("warnings") or []
    return [Section("Warnings", [str(w) for w in warnings], [])] if warnings else []


def markdown_page(title: str, intro: list[str], sections: list[Section]) -> str:
    from ..report.mdtext import md_escape_prose
    from ..report.sections import section_markdown

    lines = [f"# {md_escape_prose(title)}", ""]
    for text in intro:
        lines += [md_escape_prose(text), ""]
    for section in sections:
        lines += section_markdown(section)
    return "\n".join(lines).rstrip() + "\n"


def html_page(title: str, intro: list[str], sections: list[Section], columns: list[dict] | None = None) -> str:
    """A self-contained page; every text is escaped by the template. ``columns``: side-by-side
    text blocks (``{"title", "header", "rows"}``, each cell ``{"before", "mark", "after"}``, the
    marked part highlighted)."""
    from ..report.mdtext import page_environment

    env = page_environment()
    return env.get_template("workflow.html.j2").render(
        title=title, intro=intro, columns=columns or [],
        sections=[{"title": s.title, "paragraphs": s.paragraphs, "figures": s.figures,
                   "tables": [{"header": t.header, "rows": t.rows} for t in s.tables]} for s in sections])


def write_outputs(out: str | Path, kind: str, document: dict, title: str, intro: list[str],
                  sections: list[Section], columns: list[dict] | None = None) -> Path:
    """Write ``<kind>.json``, ``<kind>.md`` and ``<kind>.html`` into ``out`` under its lock."""
    from ..store import RunStore, checked, json_document, write_whole
    from ..store.schemas import DOCUMENTS

    path = Path(out)
    if f"{kind}.json" in DOCUMENTS:  # (never a document its own reader would refuse)
        checked(f"{kind}.json", document)
    with RunStore(path).lock():
        write_whole(path / f"{kind}.md", markdown_page(title, intro, sections))
        write_whole(path / f"{kind}.html", html_page(title, intro, sections, columns))
        write_whole(path / f"{kind}.json", json_document(document))  # last: marks done
    return path
