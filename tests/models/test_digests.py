"""Weight files' sha256, remembered for large files across runs and hashed anew once changed."""

from __future__ import annotations

import hashlib
import json
import os

from crosspatch.models import digests
from crosspatch.models.digests import CACHE_FILE, sha256_file


def test_a_large_files_digest_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSPATCH_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 4096)
    truth = hashlib.sha256(b"a" * 4096).hexdigest()
    assert sha256_file(weights, cached_from=1024) == truth
    entries = json.loads((tmp_path / "cache" / CACHE_FILE).read_text())
    assert entries[str(weights.resolve())]["sha256"] == truth
    read = []
    monkeypatch.setattr(digests, "_hash", lambda path: read.append(path) or hashlib.sha256(path.read_bytes()).hexdigest())
    assert sha256_file(weights, cached_from=1024) == truth and read == []  # remembered: not read again
    stat = weights.stat()
    weights.write_bytes(b"b" * 4096)  # the same size, and its modification time set back
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert sha256_file(weights, cached_from=1024) == hashlib.sha256(b"b" * 4096).hexdigest() and read == [weights]


def test_small_files_and_a_cache_turned_off_or_broken_are_hashed_each_time(tmp_path, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"c" * 4096)
    truth = hashlib.sha256(b"c" * 4096).hexdigest()
    monkeypatch.setenv("CROSSPATCH_CACHE_DIR", str(tmp_path / "cache"))
    assert sha256_file(weights) == truth and not (tmp_path / "cache").exists()  # under the size worth caching
    monkeypatch.setenv("CROSSPATCH_CACHE_DIR", "")
    assert digests.cache_dir() is None and sha256_file(weights, cached_from=1) == truth
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / CACHE_FILE).write_text("{not json")
    monkeypatch.setenv("CROSSPATCH_CACHE_DIR", str(tmp_path / "broken"))
    assert sha256_file(weights, cached_from=1) == truth  # a damaged cache is ignored, then replaced
    assert json.loads((tmp_path / "broken" / CACHE_FILE).read_text())[str(weights.resolve())]["sha256"] == truth
    (tmp_path / "file").write_text("x")  # a cache directory that cannot be made: ignored
    monkeypatch.setenv("CROSSPATCH_CACHE_DIR", str(tmp_path / "file" / "cache"))
    assert sha256_file(weights, cached_from=1) == truth
