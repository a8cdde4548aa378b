"""sha256 of model files, remembered across runs for the large ones.

A run records the sha256 of every local weight file (its provenance, and what tells a finished
run or a resumed one is the same model). Hashing reads every byte: about a minute per 64 GB
checkpoint, twice for a 32B pair, again for every command on the same base. So the digest of a
large file is kept in a small cache (``sha256.json`` in ``$CROSSPATCH_CACHE_DIR``, else
``$XDG_CACHE_HOME/crosspatch``, else ``~/.cache/crosspatch``) under its resolved path, with
what the file system says of it: size, modification and change times (nanoseconds) and inode.
Any write to the file changes its change time (which no tool can set back), so a changed file
is hashed anew. The cache is advisory: one that cannot be read or written is ignored, never an
error. ``CROSSPATCH_CACHE_DIR=""`` (empty) turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHED_FROM_BYTES = 64 << 20  # smaller files are hashed each time (milliseconds)
MAX_ENTRIES = 4096
CACHE_FILE = "sha256.json"


def cache_dir() -> Path | None:
    """Where the digests are kept; None when ``CROSSPATCH_CACHE_DIR`` is set empty (off)."""
    given = os.environ.get("CROSSPATCH_CACHE_DIR")
    if given is not None:
        return Path(given).expanduser() if given.strip() else None
    root = os.environ.get("XDG_CACHE_HOME")
    if not root:
        try:
            root = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):  # no home directory to be found: no cache
            return None
    return Path(root) / "crosspatch"


def _stamp(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, entries: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # a read-only home, a full disk: the next run hashes again
        pass


def _hash(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path, cached_from: int = CACHED_FROM_BYTES) -> str:
    """The sha256 of the file at ``path``: from the cache when a file of at least
    ``cached_from`` bytes is unchanged since it was hashed (same size, times and inode), else
    read and hashed (and, large, remembered)."""
    path = Path(path)
    stat = path.stat()
    where = cache_dir() if stat.st_size >= cached_from else None
    if where is None:
        return _hash(path)
    key, stamp = str(path.resolve()), _stamp(stat)
    entries = _read(where / CACHE_FILE)
    known = entries.get(key)
    if isinstance(known, dict) and known.get("stamp") == stamp and isinstance(known.get("sha256"), str):
        return known["sha256"]
    digest = _hash(path)
    entries = _read(where / CACHE_FILE)  # as it is now (another process may have added to it)
    entries.pop(key, None)
    entries[key] = {"stamp": stamp, "sha256": digest}
    while len(entries) > MAX_ENTRIES:  # the oldest first
        entries.pop(next(iter(entries)))
    _write(where / CACHE_FILE, entries)
    return digest
