"""The Ray engine on a local 2-CPU cluster gives the local engine's result."""

from __future__ import annotations

import json

import pytest

from crosspatch.execution import load_pair
from crosspatch.runner.pipeline import run
from crosspatch.testing import save_tiny_pair

from .test_store import _strip, assert_same_summary, many_prompts

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_tiny_pair(tmp_path_factory.mktemp("ray"), scale=0.15)


@pytest.mark.slow
def test_ray_engine_equals_local_engine(saved, tmp_path):
    pair = load_pair(str(saved / "base"), tuned=str(saved / "tuned"))
    prompts = many_prompts(24)
    local = run(pair, prompts, boundaries=[1, 3], max_new_tokens=12, batch_size=2, bootstrap=200,
                progress=False, out=tmp_path / "local")
    distributed = run(pair, prompts, boundaries=[1, 3], max_new_tokens=12, batch_size=2, bootstrap=200,
                      progress=False, out=tmp_path / "ray", engine="ray", workers=2)
    assert_same_summary(_strip(distributed.summary), _strip(local.summary))
    keys = [json.loads(line)["key"] for line in (tmp_path / "ray" / "events.jsonl").read_text().splitlines()]
    assert sorted(keys) == sorted(r.key for r in local.records) and len(keys) == len(set(keys))
    assert distributed.summary["cost_this_session"]["token_layers_executed"] == \
        local.summary["cost_this_session"]["token_layers_executed"]


def test_ray_engine_needs_paths():
    from crosspatch.errors import CrosspatchError
    from crosspatch.testing import make_pair

    with pytest.raises(CrosspatchError, match="loaded from paths"):
        run(make_pair("llama"), many_prompts(10), engine="ray", bootstrap=0, progress=False, max_new_tokens=4)


@pytest.mark.slow
def test_a_lost_ray_worker_is_a_named_error(saved):
    """A worker that dies mid-chunk (killed, out of host memory) stops the run with a named error
    that says the finished chunks are kept, not a Ray traceback."""
    import os

    from crosspatch.errors import EngineWorkerError
    from crosspatch.execution import map_chunks

    pair = load_pair(str(saved / "base"), tuned=str(saved / "tuned"))

    def chunk(models, payload, item):
        if item == "dies":
            os._exit(3)
        return item

    with pytest.raises(EngineWorkerError, match="resume"):
        list(map_chunks(pair, chunk, None, ["a", "dies", "b"], engine="ray", workers=2))
