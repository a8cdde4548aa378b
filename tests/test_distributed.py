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


def test_each_ray_worker_asks_for_a_gpu_of_its_own_when_the_models_load_on_cuda():
    """Every worker asked Ray for one CPU only: on a GPU machine every copy went to the same GPU
    (or none, where Ray hides the GPUs from a worker that asked for none), whatever --workers
    said. A worker on CUDA asks for a GPU of its own and loads on the one GPU Ray shows it."""
    from crosspatch.errors import OptionError
    from crosspatch.execution.engines import check_cluster_fits, check_engine_device, worker_load_options, worker_resources

    assert worker_resources("cuda") == worker_resources("cuda:3") == {"num_cpus": 1, "num_gpus": 1}
    assert worker_resources("cpu") == {"num_cpus": 1, "num_gpus": 0}
    assert worker_load_options({"device": "cuda:3", "dtype": "bfloat16"}) == {"device": "cuda", "dtype": "bfloat16"}
    assert worker_load_options({"device": "cpu"}) == {"device": "cpu"}
    check_cluster_fits(2, worker_resources("cuda"), {"CPU": 16.0, "GPU": 2.0})
    with pytest.raises(OptionError, match="needs 4 GPUs .* has 2: give --workers 2"):
        check_cluster_fits(4, worker_resources("cuda:1"), {"CPU": 16.0, "GPU": 2.0})
    with pytest.raises(OptionError, match="needs 1 GPUs .* has 0: give --device cpu"):
        check_cluster_fits(1, worker_resources("cuda"), {"CPU": 16.0})
    with pytest.raises(OptionError, match="needs 3 CPUs .* has 2: give --workers 2"):
        check_cluster_fits(3, worker_resources("cpu"), {"CPU": 2.0})
    check_engine_device("local", "map")
    with pytest.raises(OptionError, match="--device map with --engine ray"):
        check_engine_device("ray", "map")


@pytest.mark.slow
def test_a_ray_cluster_without_a_gpu_for_each_worker_is_named_before_any_worker_starts(saved):
    """Workers that cannot all be placed wait for ever (the chunks given to one that never starts
    never return): a cluster with one GPU and two workers on CUDA is a named error instead."""
    import copy

    from crosspatch.errors import OptionError
    from crosspatch.execution import map_chunks

    pair = load_pair(str(saved / "base"), tuned=str(saved / "tuned"))
    spec = copy.deepcopy(pair.provenance["load_spec"])
    spec["options"]["device"] = "cuda:1"  # as a GPU machine records it
    pair.provenance["load_spec"] = spec
    if ray.is_initialized():  # (a cluster another test left: this one is told of a GPU)
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)  # (a GPU Ray is told of)
    try:
        with pytest.raises(OptionError, match="needs 2 GPUs .* has 1: give --workers 1"):
            list(map_chunks(pair, lambda models, payload, item: item, None, ["a", "b", "c"], engine="ray", workers=2))
    finally:
        ray.shutdown()
