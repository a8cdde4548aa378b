"""Shared fixtures: tiny random-init pairs built from configs (no downloads)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from crosspatch.testing import char_tokenizer, make_pair

# the suite (and the commands it runs) keeps weight digests in a directory of its own, not in ~/.cache
os.environ.setdefault("CROSSPATCH_CACHE_DIR", tempfile.mkdtemp(prefix="crosspatch-test-cache-"))

PROMPTS = [
    {"id": "p0", "prompt": "Rain in Boston", "category": "precipitation"},
    {"id": "p1", "prompt": "Forecast for Denver, wind from the west:", "category": "wind"},
    {"id": "p2", "prompt": "Sky", "category": "sky"},
    {"id": "p3", "prompt": "Temperature high 71F, low", "category": "temperature"},
    {"id": "p4", "prompt": "Humidity near 80% in Miami", "category": "humidity"},
    {"id": "p5", "prompt": "Visibility", "category": "visibility"},
]


def count_decoding_calls(monkeypatch) -> dict:
    """Counts every decoder's decoding calls (``feed``) in ``["n"]``: once each, though a static
    decoder's call passes through the eager decoder's ``feed`` too."""
    from crosspatch.execution.decoder import CachedDecoder
    from crosspatch.execution.static import SlotDecoder

    calls = {"n": 0}

    def counting(feed, outermost):
        def counted(self, tokens):
            calls["n"] += outermost(self)
            return feed(self, tokens)
        return counted

    monkeypatch.setattr(CachedDecoder, "feed", counting(CachedDecoder.feed, lambda d: not isinstance(d, SlotDecoder)))
    monkeypatch.setattr(SlotDecoder, "feed", counting(SlotDecoder.feed, lambda d: True))
    return calls


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="session")
def llama_pair():
    return make_pair("llama")


@pytest.fixture
def prompts():
    return [dict(p) for p in PROMPTS]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Tests that need headless Chromium skip without it; say so once, loudly, at the end."""
    from crosspatch.report.browser import find_chromium

    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "chromium" in str(r.longrepr).lower()]
    if find_chromium() is None:
        terminalreporter.write_sep("!", "NO CHROMIUM: the browser tests of the HTML reports did not run", red=True,
                                   bold=True)
        terminalreporter.write_line(f"{len(skipped)} test(s) skipped for it. Install it (Debian: apt-get install "
                                    "chromium; or set CROSSPATCH_CHROMIUM=/path/to/chrome) to check the reports in a "
                                    "real browser.")
