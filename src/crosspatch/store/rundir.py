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
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from ..core.records import CellRecord, NoDivergence
from ..errors import (
    CorruptRunFileError,
    ForeignRecordsError,
    IncompleteRunError,
    NotARunDirectoryError,
    RunDirectoryError,
    RunDirectoryNotEmptyError,
    RunSettingsMismatchError,
)
from .files import (
    _ADDED_OUTPUTS,
    _FEATURES_DIR,
    _FEATURES_OUTPUTS,
    _OUTPUTS,
    CONFIG_SCHEMA,
    EVENTS_FILE,
    MARKER,
    NO_DIV_FILE,
    SUMMARY_ADVICE,
    _guard_write,
    _read_jsonl,
    _write_json,
    check_out_path,
    check_schema,
    check_summary_shape,
    checked,
    cut_torn_tail,
    json_line,
    not_a_run_message,
    read_json_object,
    write_whole,
)
from .identity import other_settings, record_fingerprint, retag_records
from .schemas import check_document
from .tables import completed_prompts, records_frame


def _records_file(path: Path) -> bool:
    """Whether ``path`` (a ``*.jsonl`` in a run directory) holds crosspatch's records: the events
    or no-divergence file, an empty file, one whose first line is an object tagged with a run
    (``run``: :class:`RunStore` tags every line it writes), or one whose only line a kill cut
    short (``{"`` and no line end). A JSON lines file of the user's own kept beside the run (its
    prompts, say) is none of these: it is never read as records, repaired or removed."""
    if path.name in (EVENTS_FILE, NO_DIV_FILE):
        return True
    try:
        with open(path, encoding="utf-8") as fh:
            line = fh.readline()
    except (OSError, UnicodeDecodeError):
        return False
    if not line.strip():
        return True
    if not line.endswith("\n"):  # the only line, torn by a kill during the first append
        return line.startswith('{"')
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(row, dict) and "run" in row


class RunStore:
    """Reads and writes one run directory. Every line it writes carries the run's fingerprint
    (``run``), so records of another run can never be adopted silently."""

    def __init__(self, path: str | Path) -> None:
        self.path = check_out_path(path)
        self.fingerprint: str | None = None

    # -- identity ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, create: bool = True) -> Iterator[None]:
        """Hold this run directory for the calling process while it writes: a second crosspatch
        process on the same directory gets a :class:`RunDirectoryError` instead of interleaving
        its records. An advisory lock on the directory itself (created here when new), released
        when the process ends however it ends, so a crashed run leaves nothing stale. Where the
        platform or file system has no ``flock`` (Windows, some network mounts), runs are not
        guarded. ``create=False`` (a command on a run that exists: report, consequence, features):
        a path that is no directory is a :class:`NotARunDirectoryError`, and nothing is created (a
        mistyped path used to be left behind as an empty directory)."""
        if not create and not self.path.is_dir():
            raise NotARunDirectoryError(not_a_run_message(self.path))
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

    def records_files(self) -> list[str]:
        """The ``*.jsonl`` files here that hold crosspatch's records (events, no-divergence
        outcomes, each analysis'), by name; a JSON lines file of the user's own is not one."""
        return sorted(p.name for p in self.path.glob("*.jsonl") if _records_file(p))

    def is_run(self) -> bool:
        """A directory crosspatch wrote: the marker, or a config.json of a crosspatch run."""
        if (self.path / MARKER).exists():
            return True
        cfg = self.path / "config.json"
        if cfg.exists():
            try:
                return str(json.loads(cfg.read_text(encoding="utf-8")).get("schema_version", "")).startswith(
                    "crosspatch.config")
            except (OSError, ValueError, AttributeError, RecursionError):
                return False
        return False

    def holds_only_a_cut_short_marker(self) -> bool:
        """Whether it holds only the marker's ``.tmp``: a run killed writing its first file, started afresh."""
        tmp = self.path / f"{MARKER}.tmp"
        return tmp.is_file() and not tmp.is_symlink() and [p.name for p in self.path.iterdir()] == [tmp.name]

    def _marker(self) -> dict:
        try:
            return json.loads((self.path / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}

    def clear(self) -> None:
        """Remove the files of the run held here (``--overwrite``), with what later commands added
        to it (a preflight, a feature study: they would be read back into the next run's summary
        and reports as if they were about it); files crosspatch did not write are never touched."""
        import shutil

        if not self.is_run():
            raise RunDirectoryNotEmptyError(f"{self.path} is not a crosspatch run directory; not clearing it")
        names = set(_OUTPUTS) | set(_ADDED_OUTPUTS) | set(self.records_files())
        names |= {f"{name}.tmp" for name in names | {MARKER, EVENTS_FILE, NO_DIV_FILE}}  # a write a kill cut short
        features = self.path / _FEATURES_DIR
        with _guard_write(self.path):
            for name in names:
                (self.path / name).unlink(missing_ok=True)
            for name in _FEATURES_OUTPUTS if features.is_dir() else ():
                target = features / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            if features.is_dir() and not any(features.iterdir()):
                features.rmdir()
            (self.path / MARKER).unlink(missing_ok=True)

    def prepare(self, fingerprint: str | None, overwrite: bool = False) -> None:
        """Make ``path`` a run directory for a new run: created, or empty, or (``overwrite``) a
        crosspatch run directory cleared. Anything else non-empty is refused."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryNotEmptyError(f"{self.path} exists and is not a directory")
        if self.holds_only_a_cut_short_marker():
            with _guard_write(self.path):
                (self.path / f"{MARKER}.tmp").unlink()
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
        write_whole(self.path / MARKER, json.dumps({"fingerprint": fingerprint}) + "\n")
        self.fingerprint = fingerprint

    # -- config -----------------------------------------------------------------------------
    def start(self, config: dict, resume: bool = True, overwrite: bool = False
              ) -> tuple[list[CellRecord], list[NoDivergence]]:
        """Create the run directory, or check it holds this very run and resume it. Returns the
        records and no-divergence outcomes of earlier sessions, read once. Records of prompts
        left incomplete by an interruption are dropped, so that redoing them adds no duplicate.

        ``resume=False`` refuses a directory that already holds the run; ``overwrite=True``
        replaces a crosspatch run directory's files (never files it did not write)."""
        fp, written = config.get("fingerprint"), None
        if overwrite or not (self.path.exists() and self.is_run()):
            self.prepare(fp, overwrite=overwrite)
        else:
            cfg_path = self.path / "config.json"
            old = read_json_object(cfg_path, "config.json") if cfg_path.exists() else None
            if isinstance(old, dict):  # a run of another file format is neither resumed nor mixed
                check_schema(old, CONFIG_SCHEMA, cfg_path)
            written = old_fp = self._marker().get("fingerprint")
            if old is not None and "fingerprint" in old:  # (under this crosspatch's naming of the same settings)
                written, old_fp = old["fingerprint"], record_fingerprint(old)
            if old_fp is not None and old_fp != fp:
                raise RunSettingsMismatchError(other_settings(self.path, old, config, old_fp, fp))
            if not resume:
                raise RunDirectoryError(
                    f"{self.path} already holds this run; run without --no-resume to finish it, or pass --overwrite "
                    "to start it afresh")
            self.fingerprint = fp
            if not (self.path / MARKER).exists() or written != fp:
                write_whole(self.path / MARKER, json.dumps({"fingerprint": fp}) + "\n")
        _write_json(self.path / "config.json", checked("config.json", config))
        for name in [EVENTS_FILE, NO_DIV_FILE] + self.records_files():
            cut_torn_tail(self.path / name)
            if written not in (None, fp):  # an earlier crosspatch's name of these very settings
                retag_records(self.path / name, written, fp)
        records, no_div = self.load_records(), self.load_no_divergence()
        done = completed_prompts(records, no_div, config.get("resolved_boundaries") or [])
        kept = [r for r in records if r.prompt_id in done]
        if len(kept) != len(records):
            self.write_rows(EVENTS_FILE, [r.to_record() for r in kept])
        return kept, no_div

    def config(self) -> dict:
        path = self.path / "config.json"
        if not self.path.is_dir() or not path.exists():
            raise NotARunDirectoryError(not_a_run_message(self.path))
        cfg = read_json_object(path, "config.json")
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
        return "".join(json_line({**r, "run": self.fingerprint} if self.fingerprint else r) for r in rows)

    def _append(self, name: str, rows: Iterable[dict]) -> None:
        text = self._tagged(rows)
        if not text:
            return
        path = self.path / name
        cut_torn_tail(path)  # (a command killed while it appended: its torn line is cut, its rows are redone)
        with _guard_write(path), open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def _rows(self, name: str, skip_torn_tail: bool = False) -> list[tuple[str, dict]]:
        """Rows of ``name`` without their run tag (a torn last line left out with ``skip_torn_tail``,
        for readers that write nothing); rows of another run are a named error."""
        if self.fingerprint is None and (self.path / "config.json").exists():
            self.config()
        out = []
        for lineno, row in _read_jsonl(self.path / name, skip_torn_tail):
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
        write_whole(self.path / name, self._tagged(rows))

    def load_rows(self, name: str, skip_torn_tail: bool = False) -> list[dict]:
        """An analysis's records, de-duplicated by ``key`` where they have one (a resumed chunk
        may have written some twice)."""
        seen, out = set(), []
        for where, row in self._rows(name, skip_torn_tail):
            key = row.get("key")
            if isinstance(key, (list, dict)):
                raise CorruptRunFileError(f"{where}: a record whose key is not a value ({key!r})"[:300])
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

    def check_records(self, torn_tails: bool = False) -> None:
        """Read every records file as a resume and the summary read them: a damaged line, a record
        that is not one, or a record of another run is its named error. With ``torn_tails``, a
        last line cut off by an interrupted write is let pass (a resume cuts it): for a check before
        the run starts (and before its models load)."""
        readers = {EVENTS_FILE: self.load_records, NO_DIV_FILE: self.load_no_divergence}
        for name in [EVENTS_FILE, NO_DIV_FILE] + [n for n in self.records_files() if n not in readers]:
            try:
                readers.get(name, lambda name=name: self.load_rows(name))()
            except CorruptRunFileError as exc:
                if not (torn_tails and getattr(exc, "torn_tail", False)):
                    raise

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
                raise NotARunDirectoryError(not_a_run_message(self.path))
            raise IncompleteRunError(f"{self.path} has no summary.json: the run did not finish (run the same "
                                     "command again to resume it)")
        try:
            summary = read_json_object(path, "summary.json")
        except CorruptRunFileError as exc:
            raise CorruptRunFileError(f"{exc}; {SUMMARY_ADVICE}") from None
        check_summary_shape(summary, path)
        return summary

    def write_page(self, name: str, text: str) -> Path:
        """Write ``name`` whole (UTF-8) or leave it as it was (:func:`write_whole`)."""
        return write_whole(self.path / name, text)

    def write_parquet(self, records: list[CellRecord]) -> Path:
        """``events.parquet``, written whole or not at all."""
        frame = records_frame(records)
        return write_whole(self.path / "events.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
