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


def _same(a, b, path=""):
    """Two result dicts equal, floats to 1e-6 (passes batched in other company round differently)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{k}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6), path
    else:
        assert a == b, path


@pytest.mark.slow
def test_the_feature_study_gives_one_result_for_any_chunking_and_engine(saved):
    """The feature study and the closure rank on all train events at once, however the events
    are chunked: one chunk, three local chunks and two Ray actors give the same result."""
    import torch

    from crosspatch.analyses.features.crosscoder import Crosscoder, CrosscoderConfig
    from crosspatch.analyses.features.study import Closure, FeatureStudy
    from crosspatch.core.analysis import EventSet
    from crosspatch.core.divergence import DivergenceEvent
    from crosspatch.execution import Executor
    from crosspatch.runner.gathered import drive_gathered

    pair = load_pair(str(saved / "base"), tuned=str(saved / "tuned"))
    h = pair.hidden_size
    torch.manual_seed(0)
    crosscoder = Crosscoder(CrosscoderConfig(d_in=2 * h, n_latents=32, k=4, layers=[2, 3], hidden_size=h))
    with torch.no_grad():
        for p in crosscoder.parameters():
            p.normal_(0, 0.3)
    events = [DivergenceEvent(f"p{k}", None, 3, 0, [1, 40 + k, 41 + k, 7 + k], 5 + k, 6 + k) for k in range(14)]
    analyses = [FeatureStudy(crosscoder, 2, ks=(2, 5, 10)), Closure(2, ranks=(1, 2, 8))]
    ex = Executor(pair, 4)
    whole = [ex.drive(a.program(ex, EventSet(events, "base", "tuned"))) for a in analyses]
    assert whole[0]["n_train"] and whole[0]["n_heldout"] and whole[1]["by_rank"]
    options = {"batch_size": 4}
    for engine, chunks in (("local", 3), ("ray", None)):
        _same(drive_gathered(pair, analyses, events, options, engine=engine, workers=2, chunks=chunks), whole)
