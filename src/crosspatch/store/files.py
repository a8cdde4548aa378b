"""The files of a run directory, below :class:`~crosspatch.store.rundir.RunStore`: the markers
that make a directory a run (or a collection of runs), the environment and fingerprint recorded
with a run, guarded JSON and JSONL reading and writing (a torn last line cut off, a damaged file
a named error), and the schema checks of ``config.json`` and ``summary.json``."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Callable

from ..core.records import READOUTS
from ..errors import CorruptRunFileError, IncompleteRunError, RunDirectoryError, RunSchemaError, RunWriteError
from .schemas import check_document
from .workflow_schemas import kind_problems, workflow_output_kind

CONFIG_SCHEMA = "crosspatch.config/1"
SUMMARY_SCHEMA = "crosspatch.summary/1"
EVENTS_FILE, NO_DIV_FILE = "events.jsonl", "no_divergence.jsonl"
# The rules by which this crosspatch turns the same models, prompts and options into records
# (which events are found, against which base, how cells are computed). Part of every run's
# fingerprint: bump it with any change that alters a record of the same inputs, so that a run
# directory written by an older crosspatch is neither resumed into nor mixed with this one's
# records (the run then says so and asks for --overwrite or another --out).
RESULT_RULES = "2026-12-05"


def environment(device: str | None = None) -> dict:
    """Versions and machine facts recorded with every run; ``cuda_device`` names the GPU the models
    load on (``device``: ``cuda:N``, else the current GPU; under ``map`` every GPU; none on the CPU)."""
    import torch

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    for name in ("transformers", "peft", "accelerate", "safetensors", "crosspatch"):
        env[name] = package_version(name)
    name = str(device or "cuda").strip().lower()
    if torch.cuda.is_available() and name != "cpu":
        indices = range(torch.cuda.device_count()) if name == "map" else \
            [torch.device(name).index if name.startswith("cuda:") else torch.cuda.current_device()]
        env["cuda_device"] = ", ".join(torch.cuda.get_device_name(i) for i in indices)
    return env


def package_version(name: str) -> str | None:
    """An installed distribution's version (None when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


MARKER = ".crosspatch-run"  # written first into every run directory: what makes it one
COLLECTION_MARKER = ".crosspatch-collection"  # a compare's or lineage's --out: run directories + a report


def mark_collection(path: str | Path, kind: str) -> None:
    """Mark ``path`` (created) as crosspatch's ``kind`` output ("compare", "lineage"), which
    holds run directories and a report, so that the same command may resume into it."""
    path = Path(path)
    with _guard_write(path):
        path.mkdir(parents=True, exist_ok=True)
    write_whole(path / COLLECTION_MARKER, json.dumps({"kind": kind}) + "\n")


def step_dirs(out: Path) -> dict[int, Path]:
    """The run directories ``step-<N>`` of a training callback's ``out``, by step."""
    if not out.is_dir():
        return {}
    return {int(p.name[5:]): p for p in out.glob("step-*") if p.is_dir() and p.name[5:].isdigit()}


def not_a_run_message(path: Path) -> str:
    """Why ``path`` (a directory without config.json) is no run, naming the runs inside a
    compare's or lineage's output."""
    if not path.exists():
        return f"{path} does not exist: no run directory is there"
    if not path.is_dir():
        return f"{path} is a file, not a run directory"
    kind = collection_kind(path)
    if kind is None:
        steps = step_dirs(path)
        if steps and (path / "steps.jsonl").is_file():  # the training callback's out (workflows.training_out)
            return (f"{path} holds a training callback's diagnostics, not one run: give one of its step "
                    f"directories (the last: {steps[max(steps)]})")
        workflow = workflow_output_kind(path)
        if workflow is not None:  # (its command's exit code is its gate; open_run reads it)
            inside = sorted(str(c.parent) for c in [*path.glob("*/config.json"), *path.glob("*/*/config.json")])
            return (f"{path} holds the output of crosspatch {workflow} ({workflow}.json), not a run: its result is "
                    "that file (crosspatch.open_run reads it)"
                    + ("; `crosspatch preflight` itself exits 1 when a check fails" if workflow == "preflight" else "")
                    + (f"; the run directories inside: {', '.join(inside[:5])}" if inside else ""))
        return f"{path} is not a crosspatch run directory (no config.json)"
    runs = [r for r in collection_runs(path, kind) if (r / "config.json").exists()]
    return (f"{path} is the output of a crosspatch {kind}, not one run: give one of its run directories "
            f"({', '.join(str(r) for r in runs[:5]) or 'none finished'})")


def collection_runs(path: Path, kind: str) -> list[Path]:
    """The run directories of a compare's output (the descendants compare.json lists, in its
    order, whether or not their directories are still there: a member removed is named by the
    gate and the report, never skipped; before compare.json is written, as when a compare was
    interrupted, every run found there) or of a lineage's (its one run). A run left there by an
    earlier compare of other descendants is not one of the compare's: its report and gate leave
    it out."""
    if kind == "lineage":
        return [path / "run"]
    found = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / "config.json").exists())
    try:
        listed = json.loads((path / "compare.json").read_text(encoding="utf-8")).get("descendants")
    except (OSError, ValueError, AttributeError, RecursionError):
        listed = None
    if not isinstance(listed, list):
        return [path / name for name in found]
    return [path / str(name) for name in listed]


def collection_kind(path: str | Path) -> str | None:
    """The kind :func:`mark_collection` wrote into ``path``, or None."""
    try:
        kind = json.loads((Path(path) / COLLECTION_MARKER).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return kind if isinstance(kind, str) else None
_OUTPUTS = ("config.json", "summary.json", "events.parquet", "report.md", "report.html", "sweep.png", "sweep.svg")
# what later commands add to a finished run directory, read back into its summary and reports:
# preflight --out RUN_DIR, consequence --allow-partial, and features train|mediate (under features/)
_ADDED_OUTPUTS = ("preflight.json", "preflight.md", "preflight.html", "consequence_partial.json")
_FEATURES_DIR, _FEATURES_OUTPUTS = "features", ("activations", "activations_heldout", "crosscoder", "mediate.json",
                                                "train.json", "features.json")


def _guard_write(path: Path):
    """Turn an OS failure while writing into a named error; what was written stays resumable."""

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except OSError as exc:
            raise RunWriteError(
                f"cannot write {path}: {exc.strerror or exc}. Records already written are kept; free space or fix "
                "permissions, then run the same command again to resume"
            ) from None

    return guard()


def checked(name: str, document: dict) -> dict:
    """``document`` if it matches the schema of file ``name`` (crosspatch.store.schemas), else a
    :class:`RunWriteError`: crosspatch never writes a file its own readers would refuse."""
    problems = check_document(name, document)
    if problems:
        raise RunWriteError(f"{name} to be written does not match its schema: {'; '.join(problems[:3])} "
                            "(a crosspatch bug: please report it)")
    return document


def write_whole(path: str | Path, content: str | bytes | Callable[[Path], object]) -> Path:
    """Write ``path`` whole or not at all: ``content`` (text, always UTF-8 whatever the locale;
    bytes; or a function that writes a file at the path it is given) goes into ``NAME.tmp`` beside
    it, which then replaces ``path`` in one rename. A write cut short (disk full, a kill) leaves the
    file as it was, never a torn one that a later command would take as finished, and no temporary
    file; an OS failure is a :class:`RunWriteError` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with _guard_write(path):
        try:
            if isinstance(content, str):
                tmp.write_text(content, encoding="utf-8")
            elif isinstance(content, bytes):
                tmp.write_bytes(content)
            else:
                content(tmp)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return path


def json_value(obj):
    """What a JSON file holds for a value JSON has no type for (``json.dumps(..., default=json_value)``):
    a number or a list for a numpy or torch scalar, array or tensor (an analysis' ``np.int64`` count
    is written as 3, not "3", and read back as a number), a sorted list for a set, else its text (a
    path, a dtype)."""
    if type(obj).__module__.split(".")[0] in ("numpy", "torch") and callable(getattr(obj, "tolist", None)):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def json_line(row: dict) -> str:
    """``row`` as one line of a JSON-lines file (numpy and torch values as numbers, :func:`json_value`)."""
    return json.dumps(row, default=json_value) + "\n"


def finite_values(obj):
    """``obj`` with every NaN or infinite number as ``None`` (numpy and torch values first made
    numbers and lists, :func:`json_value`): what a JSON document crosspatch writes holds, so that
    any JSON parser reads it (``NaN`` is Python's extension, which jq, JavaScript and most
    languages' parsers refuse)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):  # (a numpy key, as a plug-in's counts by value have, as the number it is)
        return {key.item() if type(key).__module__ == "numpy" and hasattr(key, "item") else key: finite_values(value)
                for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_values(value) for value in obj]
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if type(obj).__module__.split(".")[0] in ("numpy", "torch") or isinstance(obj, (set, frozenset)):
        return finite_values(json_value(obj))
    return obj


def json_document(obj, indent: int | None = 2) -> str:
    """``obj`` as the text of a JSON document (strict JSON: a non-finite number is ``null``,
    :func:`finite_values`; numpy and torch values as numbers), with a final newline."""
    return json.dumps(finite_values(obj), indent=indent, default=json_value, allow_nan=False) + "\n"


def _write_json(path: Path, obj) -> None:
    write_whole(path, json_document(obj))


def read_json_object(path: Path, what: str) -> dict:
    """``path`` as a JSON object; unreadable text, invalid JSON or another JSON value is a
    :class:`CorruptRunFileError` naming the file (and line)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as exc:  # (ValueError: invalid, or a number too long to read)
        line = getattr(exc, "lineno", None)
        raise CorruptRunFileError(f"{path}{f':{line}' if line else ''}: {what} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptRunFileError(f"{path}: {what} must be a JSON object, not {type(data).__name__}")
    return data


def cut_torn_tail(path: Path) -> None:
    """Cut a torn final line (a write interrupted by a kill) so appends start on a fresh line (one
    byte read where the file ends whole, as it almost always does)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with _guard_write(path), open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)


def check_out_path(path) -> Path:
    """``path`` as a :class:`~pathlib.Path` where it is one (a non-blank string or path-like), a
    leading ``~`` expanded as model paths are (``--out=~/runs/x`` reaches crosspatch unexpanded);
    :class:`RunDirectoryError` otherwise (``""`` is not the current directory)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise RunDirectoryError(f"a run directory is a path (a non-empty string), not {path!r}")
    return Path(path).expanduser()


def read_collection_summary(path: Path, kind: str) -> dict:
    """``<kind>.json`` of a compare's or lineage's output directory ``path``, checked against its
    schema: :class:`IncompleteRunError` when it was never written (the command did not finish),
    :class:`CorruptRunFileError` when it is not what crosspatch writes."""
    name = f"{kind}.json"
    if not (path / name).is_file():
        raise IncompleteRunError(f"{path} has no {name}: the {kind} did not finish (run the same command again "
                                 "to resume it)")
    return read_checked_document(path / name)


_LISTED = {"lineage.json": ("stages", "by_stage"), "compare.json": ("descendants", "rows")}  # a list, what it indexes


def read_checked_document(path: Path) -> dict:
    """A collection's or workflow's JSON document (``compare.json``, ``lineage.json``,
    ``preflight.json``, ``splice.json``, ``merge-check.json``) checked against its schema, and what its pages walk
    against what they index: a damaged one is a :class:`CorruptRunFileError`, never a Python
    error where it is read."""
    data = read_json_object(path, path.name)
    problems = check_document(path.name, data)
    if not problems and path.name in _LISTED:
        listed, scored = _LISTED[path.name]
        absent = [x for x in data.get(listed) or [] if x not in (data.get(scored) or {})]
        if absent:
            problems.append(f"{listed} without their scores: {', '.join(map(str, absent[:5]))}")
    if not problems:  # (a merge-check's keys of its kind; a splice's every boundary with the first one's columns)
        problems += kind_problems(path.name, data)
    if problems:
        raise CorruptRunFileError(f"{path}: not a crosspatch {path.stem} document: it does not match its schema "
                                  f"(docs/schemas.md): {'; '.join(problems[:3])}")
    return data


def _read_jsonl(path: Path, skip_torn_tail: bool = False) -> list[tuple[int, dict]]:
    """``(line number, object)`` per non-empty line; a line that is not a JSON object is a
    named error (a torn last line is cut by ``cut_torn_tail`` before a run resumes; a reader that
    writes nothing passes ``skip_torn_tail`` to read the lines before it)."""
    if not path.exists():
        return []
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptRunFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = text.splitlines()
    last = max((k for k, line in enumerate(lines, start=1) if line.strip()), default=0)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:  # (invalid, a number too long to read, nested too deeply)
            if skip_torn_tail and lineno == last and not text.endswith("\n"):
                break
            advice = ("the last line was cut off: if the run was interrupted, run the same command again to resume it"
                      if lineno == last and not text.endswith("\n") else
                      "a line inside the file is damaged (not an interrupted write, which only cuts the last line): "
                      "restore the file from a copy, or delete that line and run the same command again to redo "
                      "its prompt, or start afresh with --overwrite")
            error = CorruptRunFileError(f"{path}:{lineno}: not valid JSON ({getattr(exc, 'msg', exc)}); {advice}")
            error.torn_tail = lineno == last and not text.endswith("\n")  # what a resume cuts off (cut_torn_tail)
            raise error from None
        if not isinstance(row, dict):
            raise CorruptRunFileError(f"{path}:{lineno}: each line must be a JSON object")
        rows.append((lineno, row))
    return rows


def check_schema(data: dict, expected: str, path) -> None:
    """A file's ``schema_version`` (when it has one) is the version this crosspatch writes and
    reads, else a :class:`RunSchemaError` (a newer or older format is never half-read)."""
    version = data.get("schema_version")
    if version is not None and version != expected:
        raise RunSchemaError(f"{path} is in format {version!r}; this crosspatch ({package_version('crosspatch') or 'source tree'}) "
                             f"reads {expected!r}: read it with the crosspatch version that wrote it (config.json names "
                             "it), or run again")


SUMMARY_ADVICE = ("summary.json is computed from the run's records: the run's command again recomputes it and the "
                  "reports (`crosspatch report` only renders it)")


def check_summary_shape(summary, path) -> None:
    """The parts of a summary.json that reports and ``gate`` read have their types, else a
    :class:`CorruptRunFileError` (a damaged file must not surface as a Python error)."""
    def bad(what: str):
        return CorruptRunFileError(f"{path}: summary.json {what}; {SUMMARY_ADVICE}")
    if not isinstance(summary, dict):
        raise bad("is not a JSON object")
    check_schema(summary, SUMMARY_SCHEMA, path)
    problems = check_document("summary.json", summary)
    if problems:
        raise bad(f"does not match its schema (docs/schemas.md): {'; '.join(problems[:3])}")
    for key in ("counts", "results", "boundaries"):
        if key not in summary:
            raise bad(f"lacks {key!r}")
    counts, results, boundaries = summary["counts"], summary["results"], summary["boundaries"]
    if not isinstance(counts, dict) or not all(type(counts.get(k, 0)) is int for k in ("prompts", "events", "invalid")):
        raise bad("has 'counts' that are not whole numbers")
    no_div = counts.get("no_divergence", {})
    if not isinstance(no_div, dict) or not all(type(v) is int for v in no_div.values()):
        raise bad("has 'counts.no_divergence' that are not whole numbers")
    if not isinstance(boundaries, list) or not boundaries:
        raise bad("has no list of 'boundaries'")
    if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
        raise bad("has 'results' that are not objects")
    for b, by_readout in results.items():
        for readout, block in by_readout.items():
            if readout in READOUTS and not (isinstance(block, dict) and isinstance(block.get("all"), dict)
                                            and isinstance(block["all"].get("effects"), dict)):
                raise bad(f"has no effects under results[{b!r}][{readout!r}]['all']")
            groups = {k: v for k, v in block.items() if k.startswith("by_")} if isinstance(block, dict) else {}
            for name, group in groups.items():  # (a --group-by field's groups, not named in the schema)
                if not isinstance(group, dict) or not all(isinstance(g, dict) and isinstance(g.get("effects"), dict)
                                                          for g in group.values()):
                    raise bad(f"has groups without effects under results[{b!r}][{readout!r}][{name!r}]")
    absent = [b for b in boundaries if b not in results]
    if absent:
        raise bad(f"lists boundaries without results: {', '.join(map(str, absent[:5]))}")
