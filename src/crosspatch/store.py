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

import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Iterable

from .cells import CELLS, READOUTS, CellRecord
from .divergence import NoDivergence
from .errors import RunDirectoryError

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
        try:
            from importlib.metadata import version

            env[name] = version(name)
        except Exception:  # not installed
            env[name] = None
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(0)
    return env


def fingerprint(parts: dict) -> str:
    """Stable hash of the options that change results (used to refuse mixing runs)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _repair_tail(path: Path) -> None:
    """Cut a torn final line (a write interrupted by a kill) so appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        fh.truncate(data.rfind(b"\n") + 1)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # torn line from an interrupted write; its prompt is redone on resume
    return rows


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- config -----------------------------------------------------------------------------
    def start(self, config: dict, resume: bool = True) -> tuple[list[CellRecord], list[NoDivergence]]:
        """Create the directory or check it belongs to this configuration. Returns the records
        and no-divergence outcomes of earlier sessions, read once. Records of prompts left
        incomplete by an interruption are dropped, so that redoing them adds no duplicate line."""
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_path = self.path / "config.json"
        if cfg_path.exists():
            old = json.loads(cfg_path.read_text())
            if old.get("fingerprint") != config.get("fingerprint"):
                raise RunDirectoryError(
                    f"{self.path} holds a run with different settings (fingerprint "
                    f"{old.get('fingerprint')} vs {config.get('fingerprint')}); use another --out"
                )
            if not resume:
                raise RunDirectoryError(f"{self.path} already holds this run; pass --resume to finish it")
        _write_json(cfg_path, config)
        for name in (EVENTS_FILE, NO_DIV_FILE):
            _repair_tail(self.path / name)
        records, no_div = self.load_records(), self.load_no_divergence()
        done = completed_prompts(records, no_div, config.get("resolved_boundaries") or [])
        kept = [r for r in records if r.prompt_id in done]
        if len(kept) != len(records):
            path = self.path / EVENTS_FILE
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r.to_record(), default=str) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, path)
        return kept, no_div

    def config(self) -> dict:
        path = self.path / "config.json"
        if not path.exists():
            raise RunDirectoryError(f"{self.path} is not a crosspatch run directory (no config.json)")
        return json.loads(path.read_text())

    # -- records ----------------------------------------------------------------------------
    def _append(self, name: str, rows: Iterable[dict]) -> None:
        text = "".join(json.dumps(r, default=str) + "\n" for r in rows)
        if not text:
            return
        with open(self.path / name, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def append_records(self, records: Iterable[CellRecord]) -> None:
        self._append(EVENTS_FILE, (r.to_record() for r in records))

    def append_no_divergence(self, items: Iterable[NoDivergence]) -> None:
        self._append(NO_DIV_FILE, (x.to_record() for x in items))

    def append_rows(self, name: str, rows: Iterable) -> None:
        """Append an analysis's records (dicts or objects with ``to_record``) to ``name``."""
        self._append(name, (r.to_record() if hasattr(r, "to_record") else r for r in rows))

    def write_rows(self, name: str, rows: Iterable[dict]) -> None:
        """Replace ``name`` with ``rows`` (a merged run's analysis records)."""
        path = self.path / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, path)

    def load_rows(self, name: str) -> list[dict]:
        """An analysis's records, de-duplicated by ``key`` where they have one (a resumed chunk
        may have written some twice); a torn last line is cut first."""
        _repair_tail(self.path / name)
        seen, out = set(), []
        for row in _read_jsonl(self.path / name):
            key = row.get("key") if isinstance(row, dict) else None
            if key is None or key not in seen:
                seen.add(key)
                out.append(row)
        return out

    def load_records(self) -> list[CellRecord]:
        seen, out = set(), []
        for row in _read_jsonl(self.path / EVENTS_FILE):
            if row["key"] not in seen:
                seen.add(row["key"])
                out.append(CellRecord.from_record(row))
        return out

    def load_no_divergence(self) -> list[NoDivergence]:
        seen, out = set(), []
        for row in _read_jsonl(self.path / NO_DIV_FILE):
            if row["prompt_id"] not in seen:
                seen.add(row["prompt_id"])
                out.append(NoDivergence(**row))
        return out


    def write_complete(self, config: dict, records: list[CellRecord], no_div: list[NoDivergence]) -> None:
        """Write a whole run at once (merged shards): config and both record files, replaced."""
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.path / "config.json", config)
        for name, rows in ((EVENTS_FILE, records), (NO_DIV_FILE, no_div)):
            (self.path / name).unlink(missing_ok=True)
            self._append(name, (r.to_record() for r in rows))

    # -- outputs ----------------------------------------------------------------------------
    def write_summary(self, summary: dict) -> None:
        _write_json(self.path / "summary.json", summary)

    def summary(self) -> dict:
        path = self.path / "summary.json"
        if not path.exists():
            raise RunDirectoryError(f"{self.path} has no summary.json (the run did not finish)")
        return json.loads(path.read_text())

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        target.write_text(text, encoding="utf-8")
        return target

    def write_parquet(self, records: list[CellRecord]) -> Path:
        target = self.path / "events.parquet"
        events_frame(records).to_parquet(target, index=False)
        return target


def completed_prompts(records: Iterable[CellRecord], no_div: Iterable[NoDivergence], boundaries: list[int]) -> set[str]:
    """Prompts fully recorded: the first divergence scored at every boundary, or a no-divergence
    outcome."""
    need = set(boundaries)
    per_prompt: dict[str, set[int]] = {}
    for r in records:
        if r.kind == "first_diff":  # other kinds are written before it: it marks completion
            per_prompt.setdefault(r.prompt_id, set()).add(r.boundary)
    return {p for p, bs in per_prompt.items() if need <= bs} | {x.prompt_id for x in no_div}


def events_frame(records: Iterable[CellRecord]):
    """One row per (event, boundary): identity columns, ``Y`` per readout and cell, and the
    per-event effects ``<readout>.E_PT``, ``.E_IT``, ``.interaction``."""
    import pandas as pd

    rows = []
    for r in records:
        row = {k: v for k, v in r.to_record().items() if k not in ("cells", "extra")}
        row.update({k: v for k, v in r.extra.items() if k not in row})  # --group-by fields
        for name in READOUTS:
            y = r.cells[name]
            for c in CELLS:
                row[f"{name}.{c}"] = y[c]
            row[f"{name}.E_PT"] = y["upt_lit"] - y["upt_lpt"]
            row[f"{name}.E_IT"] = y["uit_lit"] - y["uit_lpt"]
            row[f"{name}.interaction"] = row[f"{name}.E_IT"] - row[f"{name}.E_PT"]
        rows.append(row)
    return pd.DataFrame(rows)
