"""The run directory: everything a report needs, written as the run goes.

::

    config.json          every option, the environment, model provenance, a fingerprint
    events.jsonl         one line per (event, boundary), append-only, keyed for resume
    no_divergence.jsonl  one line per prompt without an event (counted, never dropped)
    summary.json         statistics, versioned schema
    events.parquet       the events as a flat table (pandas/pyarrow)
    report.md            rendered from the files above alone

A run killed at any moment resumes: a torn last line is cut off before appending, records
are de-duplicated by key on load, and prompts already recorded are skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Iterable, Iterator

from .records import CELLS, READOUTS, CellRecord, NoDivergence
from .schemas import check_document
from .errors import (
    CorruptRunFileError, ForeignRecordsError, IncompleteRunError, NotARunDirectoryError, RunDirectoryError,
    RunDirectoryNotEmptyError, RunSchemaError, RunSettingsMismatchError, RunWriteError,
)

CONFIG_SCHEMA = "crosspatch.config/1"
SUMMARY_SCHEMA = "crosspatch.summary/1"
EVENTS_FILE, NO_DIV_FILE = "events.jsonl", "no_divergence.jsonl"


def environment() -> dict:
    """Versions and machine facts recorded with every run."""
    import torch

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    for name in ("transformers", "peft", "accelerate", "safetensors", "crosspatch"):
        env[name] = package_version(name)
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(0)
    return env


def package_version(name: str) -> str | None:
    """An installed distribution's version (None when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def fingerprint(parts: dict) -> str:
    """Stable hash of the options that change results (used to refuse mixing runs)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


MARKER = ".crosspatch-run"  # written first into every run directory: what makes it one
COLLECTION_MARKER = ".crosspatch-collection"  # a compare's or lineage's --out: run directories + a report


def mark_collection(path: str | Path, kind: str) -> None:
    """Mark ``path`` (created) as crosspatch's ``kind`` output ("compare", "lineage"), which
    holds run directories and a report, so that the same command may resume into it."""
    path = Path(path)
    with _guard_write(path):
        path.mkdir(parents=True, exist_ok=True)
        (path / COLLECTION_MARKER).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")


def not_a_run_message(path: Path) -> str:
    """Why ``path`` (a directory without config.json) is no run, naming the runs inside a
    compare's or lineage's output."""
    kind = collection_kind(path)
    if kind is None:
        return f"{path} is not a crosspatch run directory (no config.json)"
    runs = sorted(p.name for p in path.iterdir() if (p / "config.json").exists())
    return (f"{path} is the output of a crosspatch {kind}, not one run: give one of its run directories "
            f"({', '.join(str(path / r) for r in runs[:5]) or 'none finished'})")


def collection_kind(path: str | Path) -> str | None:
    """The kind :func:`mark_collection` wrote into ``path``, or None."""
    try:
        kind = json.loads((Path(path) / COLLECTION_MARKER).read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None
_OUTPUTS = ("config.json", "summary.json", "events.parquet", "report.md", "report.html", "sweep.png", "sweep.svg")


def _guard_write(path: Path):
    """Turn an OS failure while writing into a named error; what was written stays resumable."""
    import contextlib

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
    """``document`` if it matches the schema of file ``name`` (crosspatch.schemas), else a
    :class:`RunWriteError`: crosspatch never writes a file its own readers would refuse."""
    problems = check_document(name, document)
    if problems:
        raise RunWriteError(f"{name} to be written does not match its schema: {'; '.join(problems[:3])} "
                            "(a crosspatch bug: please report it)")
    return document


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with _guard_write(path):
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise CorruptRunFileError(f"{path}{f':{line}' if line else ''}: {what} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptRunFileError(f"{path}: {what} must be a JSON object, not {type(data).__name__}")
    return data


def _repair_tail(path: Path) -> None:
    """Cut a torn final line (a write interrupted by a kill) so appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with _guard_write(path), open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        fh.truncate(data.rfind(b"\n") + 1)


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` per non-empty line; a line that is not a JSON object is a
    named error (a torn last line is cut by ``_repair_tail`` before a run resumes)."""
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
        except json.JSONDecodeError as exc:
            advice = ("the last line was cut off: if the run was interrupted, run the same command again to resume it"
                      if lineno == last and not text.endswith("\n") else
                      "a line inside the file is damaged (not an interrupted write, which only cuts the last line): "
                      "restore the file from a copy, or delete that line and run the same command again to redo "
                      "its prompt, or start afresh with --overwrite")
            raise CorruptRunFileError(f"{path}:{lineno}: not valid JSON ({exc.msg}); {advice}") from None
        if not isinstance(row, dict):
            raise CorruptRunFileError(f"{path}:{lineno}: each line must be a JSON object")
        rows.append((lineno, row))
    return rows


def settings_diff(old, new, prefix: str = "") -> list[str]:
    """Human-readable differences between two fingerprint inputs (``key: old -> new``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += settings_diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if old != new:
        def show(value) -> str:
            return "not given" if value is None else json.dumps(value, default=str)[:80]
        return [f"{prefix or 'settings'}: {show(old)} -> {show(new)}"]
    return []


class RunStore:
    """Reads and writes one run directory. Every line it writes carries the run's fingerprint
    (``run``), so records of another run can never be adopted silently."""

    def __init__(self, path: str | Path) -> None:
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise RunDirectoryError(f"a run directory is a path (a non-empty string), not {path!r}")
        self.path = Path(path)
        self.fingerprint: str | None = None

    # -- identity ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this run directory for the calling process while it writes: a second crosspatch
        process on the same directory gets a :class:`RunDirectoryError` instead of interleaving
        its records. An advisory lock on the directory itself (created here when new), released
        when the process ends however it ends, so a crashed run leaves nothing stale. Where the
        platform or file system has no ``flock`` (Windows, some network mounts), runs are not
        guarded."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        if self.path.exists() and not self.path.is_dir():
            yield  # refused with its own error when the run starts
            return
        with _guard_write(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirectoryError(
                    f"{self.path} is in use by another crosspatch process writing a run there; wait for it to "
                    "finish (then run again to resume or reuse it), or choose another --out") from None
            except OSError:  # a file system without locks (some network mounts): run unguarded
                pass
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def is_run(self) -> bool:
        """A directory crosspatch wrote: the marker, or a config.json of a crosspatch run."""
        if (self.path / MARKER).exists():
            return True
        cfg = self.path / "config.json"
        if cfg.exists():
            try:
                return str(json.loads(cfg.read_text(encoding="utf-8")).get("schema_version", "")).startswith(
                    "crosspatch.config")
            except (OSError, ValueError, AttributeError):
                return False
        return False

    def _marker(self) -> dict:
        try:
            return json.loads((self.path / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def clear(self) -> None:
        """Remove the files of the run held here (``--overwrite``); files crosspatch did not
        write are never touched."""
        if not self.is_run():
            raise RunDirectoryNotEmptyError(f"{self.path} is not a crosspatch run directory; not clearing it")
        names = set(_OUTPUTS) | {p.name for p in self.path.glob("*.jsonl")} | {p.name for p in self.path.glob("*.tmp")}
        with _guard_write(self.path):
            for name in names:
                (self.path / name).unlink(missing_ok=True)
            (self.path / MARKER).unlink(missing_ok=True)

    def prepare(self, fingerprint: str, overwrite: bool = False) -> None:
        """Make ``path`` a run directory for a new run: created, or empty, or (``overwrite``) a
        crosspatch run directory cleared. Anything else non-empty is refused."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryNotEmptyError(f"{self.path} exists and is not a directory")
        if self.path.exists() and any(self.path.iterdir()):
            if not self.is_run():
                raise RunDirectoryNotEmptyError(
                    f"{self.path} holds files that crosspatch did not write; choose a new or empty --out "
                    "(crosspatch never deletes or mixes with files it did not write)")
            if not overwrite:
                raise RunDirectoryNotEmptyError(
                    f"{self.path} already holds a crosspatch run; choose another --out, or pass --overwrite to replace it")
            self.clear()
        with _guard_write(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / MARKER).write_text(json.dumps({"fingerprint": fingerprint}) + "\n", encoding="utf-8")
        self.fingerprint = fingerprint

    # -- config -----------------------------------------------------------------------------
    def start(self, config: dict, resume: bool = True, overwrite: bool = False
              ) -> tuple[list[CellRecord], list[NoDivergence]]:
        """Create the run directory, or check it holds this very run and resume it. Returns the
        records and no-divergence outcomes of earlier sessions, read once. Records of prompts
        left incomplete by an interruption are dropped, so that redoing them adds no duplicate.

        ``resume=False`` refuses a directory that already holds the run; ``overwrite=True``
        replaces a crosspatch run directory's files (never files it did not write)."""
        fp = config.get("fingerprint")
        if overwrite or not (self.path.exists() and self.is_run()):
            self.prepare(fp, overwrite=overwrite)
        else:
            old_fp = self._marker().get("fingerprint")
            cfg_path = self.path / "config.json"
            old = _read_json(cfg_path, "config.json") if cfg_path.exists() else None
            if isinstance(old, dict):  # a run of another file format is neither resumed nor mixed
                check_schema(old, CONFIG_SCHEMA, cfg_path)
            old_fp = (old or {}).get("fingerprint", old_fp)
            if old_fp is not None and old_fp != fp:
                changes = settings_diff((old or {}).get("fingerprint_inputs", {}), config.get("fingerprint_inputs", {}))
                raise RunSettingsMismatchError(
                    f"{self.path} holds a run with other settings ("
                    + ("; ".join(changes[:8]) if changes else f"fingerprint {old_fp} vs {fp}")
                    + "). Use another --out, or --overwrite to replace that run")
            if not resume:
                raise RunDirectoryError(
                    f"{self.path} already holds this run; run without --no-resume to finish it, or pass --overwrite "
                    "to start it afresh")
            self.fingerprint = fp
            if not (self.path / MARKER).exists():
                with _guard_write(self.path):
                    (self.path / MARKER).write_text(json.dumps({"fingerprint": fp}) + "\n", encoding="utf-8")
        _write_json(self.path / "config.json", checked("config.json", config))
        for name in [EVENTS_FILE, NO_DIV_FILE] + [p.name for p in self.path.glob("*.jsonl")]:
            _repair_tail(self.path / name)
        records, no_div = self.load_records(), self.load_no_divergence()
        done = completed_prompts(records, no_div, config.get("resolved_boundaries") or [])
        kept = [r for r in records if r.prompt_id in done]
        if len(kept) != len(records):
            self.write_rows(EVENTS_FILE, [r.to_record() for r in kept])
        return kept, no_div

    def config(self) -> dict:
        path = self.path / "config.json"
        if not self.path.is_dir():
            raise NotARunDirectoryError(f"{self.path} is not a directory")
        if not path.exists():
            raise NotARunDirectoryError(not_a_run_message(self.path))
        cfg = _read_json(path, "config.json")
        if isinstance(cfg, dict):
            check_schema(cfg, CONFIG_SCHEMA, path)
        for key in ("options", "resolved_boundaries", "num_layers"):
            if key not in cfg:
                raise CorruptRunFileError(f"{path}: config.json lacks {key!r} (not a crosspatch run config)")
        problems = check_document("config.json", cfg)
        if problems:
            raise CorruptRunFileError(f"{path}: config.json does not match its schema (docs/schemas.md): "
                                      f"{'; '.join(problems[:3])}")
        self.fingerprint = self.fingerprint or cfg.get("fingerprint")
        return cfg

    # -- records ----------------------------------------------------------------------------
    def _tagged(self, rows: Iterable[dict]) -> str:
        return "".join(json.dumps({**r, "run": self.fingerprint} if self.fingerprint else r, default=str) + "\n"
                       for r in rows)

    def _append(self, name: str, rows: Iterable[dict]) -> None:
        text = self._tagged(rows)
        if not text:
            return
        path = self.path / name
        with _guard_write(path), open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def _rows(self, name: str) -> list[tuple[str, dict]]:
        """Rows of ``name`` without their run tag; rows of another run are a named error."""
        if self.fingerprint is None and (self.path / "config.json").exists():
            self.config()
        out = []
        for lineno, row in _read_jsonl(self.path / name):
            tag = row.pop("run", None)
            if tag is not None and self.fingerprint is not None and tag != self.fingerprint:
                raise ForeignRecordsError(
                    f"{self.path / name}:{lineno}: a record of another run (fingerprint {tag}, this run "
                    f"{self.fingerprint}); records are never mixed: move that file away or use another --out")
            out.append((f"{self.path / name}:{lineno}", row))
        return out

    def append_records(self, records: Iterable[CellRecord]) -> None:
        self._append(EVENTS_FILE, (r.to_record() for r in records))

    def append_no_divergence(self, items: Iterable[NoDivergence]) -> None:
        self._append(NO_DIV_FILE, (x.to_record() for x in items))

    def append_rows(self, name: str, rows: Iterable) -> None:
        """Append an analysis's records (dicts or objects with ``to_record``) to ``name``."""
        self._append(name, (r.to_record() if hasattr(r, "to_record") else r for r in rows))

    def write_rows(self, name: str, rows: Iterable[dict]) -> None:
        """Replace ``name`` with ``rows`` (tagged with this run's fingerprint)."""
        path = self.path / name
        tmp = path.with_suffix(".tmp")
        with _guard_write(path):
            tmp.write_text(self._tagged(rows), encoding="utf-8")
            os.replace(tmp, path)

    def load_rows(self, name: str) -> list[dict]:
        """An analysis's records, de-duplicated by ``key`` where they have one (a resumed chunk
        may have written some twice)."""
        seen, out = set(), []
        for _, row in self._rows(name):
            key = row.get("key")
            if key is None or key not in seen:
                seen.add(key)
                out.append(row)
        return out

    def load_records(self) -> list[CellRecord]:
        seen, out = set(), []
        for where, row in self._rows(EVENTS_FILE):
            try:
                record = CellRecord.from_record(row)
            except (TypeError, KeyError, ValueError) as exc:
                raise CorruptRunFileError(f"{where}: not an event record ({exc})") from None
            if record.key not in seen:
                seen.add(record.key)
                out.append(record)
        return out

    def load_no_divergence(self) -> list[NoDivergence]:
        seen, out = set(), []
        for where, row in self._rows(NO_DIV_FILE):
            try:
                item = NoDivergence.from_record(row)
            except (TypeError, ValueError) as exc:
                raise CorruptRunFileError(f"{where}: not a no-divergence record ({exc})") from None
            if item.prompt_id not in seen:
                seen.add(item.prompt_id)
                out.append(item)
        return out

    def write_complete(self, config: dict, records: list[CellRecord], no_div: list[NoDivergence],
                       overwrite: bool = False) -> None:
        """Write a whole run at once (merged shards) into a new or empty directory (or, with
        ``overwrite``, in place of a crosspatch run)."""
        self.prepare(config.get("fingerprint"), overwrite=overwrite)
        _write_json(self.path / "config.json", checked("config.json", config))
        for name, rows in ((EVENTS_FILE, records), (NO_DIV_FILE, no_div)):
            self.write_rows(name, [r.to_record() for r in rows])

    # -- outputs ----------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        _write_json(self.path / "summary.json", checked("summary.json", summary))

    def summary(self) -> dict:
        path = self.path / "summary.json"
        if not path.exists():
            if not (self.path / "config.json").exists():
                raise NotARunDirectoryError(f"{self.path} is not a crosspatch run directory (no config.json)")
            raise IncompleteRunError(f"{self.path} has no summary.json: the run did not finish (run the same "
                                     "command again to resume it)")
        summary = _read_json(path, "summary.json")
        check_summary_shape(summary, path)
        return summary

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        with _guard_write(target):
            target.write_text(text, encoding="utf-8")
        return target

    def write_parquet(self, records: list[CellRecord]) -> Path:
        target = self.path / "events.parquet"
        with _guard_write(target):
            records_frame(records).to_parquet(target, index=False)
        return target


def check_schema(data: dict, expected: str, path) -> None:
    """A file's ``schema_version`` (when it has one) is the version this crosspatch writes and
    reads, else a :class:`RunSchemaError` (a newer or older format is never half-read)."""
    version = data.get("schema_version")
    if version is not None and version != expected:
        raise RunSchemaError(f"{path} is in format {version!r}; this crosspatch ({package_version('crosspatch') or 'source tree'}) "
                             f"reads {expected!r}: read it with the crosspatch version that wrote it (config.json names "
                             "it), or run again")


def check_summary_shape(summary, path) -> None:
    """The parts of a summary.json that reports and ``gate`` read have their types, else a
    :class:`CorruptRunFileError` (a damaged file must not surface as a Python error)."""
    def bad(what: str):
        return CorruptRunFileError(f"{path}: summary.json {what}; re-render it with `crosspatch report` from the "
                                   "run's records, or run again")
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
    return [p for p in prompt_ids if p not in completed_prompts(records, no_div, boundaries)]


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
    from .tokens import EVENT_KINDS, ordered_kinds

    long = records_frame(records)
    if long.empty:
        return long
    identity = ["prompt_id", "position", "t_pt", "t_it", "boundary"]
    kinds = long.groupby(identity, sort=False)["kind"].agg(lambda ks: ",".join(ordered_kinds(ks)))
    wide = long.drop_duplicates(identity).drop(columns=["key", "kind"]).set_index(identity)
    wide.insert(0, "kinds", kinds)
    for kind in ordered_kinds(set(long["kind"]) | set(EVENT_KINDS)):
        wide.insert(1 + sum(c.startswith("is_") for c in wide.columns), f"is_{kind}",
                    wide["kinds"].str.split(",").apply(lambda ks, k=kind: k in ks))
    return wide.reset_index()


def records_frame(records: Iterable[CellRecord]):
    """One row per record, i.e. per (event, event kind, boundary), as ``events.jsonl`` and
    ``events.parquet`` hold them: identity columns with ``kind``, ``Y`` per readout and cell, and
    the per-event effects ``<readout>.E_PT``, ``.E_IT``, ``.interaction``."""
    import pandas as pd

    rows = []
    for r in records:
        row = {k: v for k, v in r.to_record().items() if k not in ("cells", "extra")}
        row.update({k: v for k, v in r.extra.items() if k not in row})  # --group-by fields
        for name in READOUTS:
            y = r.cells[name]
            for c in CELLS:
                row[f"{name}.{c}"] = y[c]
            for effect, value in r.effects(name).items():
                row[f"{name}.{effect}"] = value
        rows.append(row)
    return pd.DataFrame(rows)
