"""Sharded runs merged equal one unsharded run."""

from __future__ import annotations

import pytest

from crosspatch.errors import RunDirectoryError
from crosspatch.runner.pipeline import merge_runs, run
from crosspatch.testing import make_pair

from .test_store import _strip, assert_same_summary, many_prompts


@pytest.mark.slow
def test_three_shards_merge_to_the_unsharded_result(tmp_path):
    pair = make_pair("llama", scale=0.15)
    prompts = many_prompts(14)
    whole = run(pair, prompts, boundaries=[1, 2], max_new_tokens=12, bootstrap=300, progress=False, out=tmp_path / "whole")
    dirs = []
    for i in range(3):
        run(pair, prompts, boundaries=[1, 2], max_new_tokens=12, bootstrap=300, progress=False,
            shard=f"{i}/3", out=tmp_path / f"s{i}")
        dirs.append(tmp_path / f"s{i}")
    merged = merge_runs(dirs, tmp_path / "merged")
    assert_same_summary(_strip(merged.summary), _strip(whole.summary))
    assert [r.key for r in merged.records] == [r.key for r in whole.records]  # the unsharded run's order
    assert merged.config["prompt_ids"] == whole.config["prompt_ids"]
    identity = ["prompt_id", "boundary", "kinds", "position", "t_pt", "t_it"]  # (cells: batched apart, to 1e-6)
    assert merged.events[identity].equals(whole.events[identity])
    assert (tmp_path / "merged" / "report.md").exists()
    # a shard is a part of a run: its report says so, and the gate does not pass or fail it as the run
    from crosspatch.workflows.gate import gate

    shard = gate(dirs[0])
    assert shard["exit_code"] == 2 and "shard 0/3 of a sharded run" in shard["reason"], shard
    assert any("shard 1/3 of a sharded run" in w for w in (tmp_path / "s1" / "report.md").read_text().splitlines())
    assert not any("sharded run" in w for w in merged.summary["warnings"])
    assert gate(tmp_path / "merged")["status"] == gate(tmp_path / "whole")["status"] != "unusable"


@pytest.mark.slow
def test_merge_refuses_incomplete_or_foreign_shards(tmp_path):
    pair = make_pair("llama", scale=0.15)
    prompts = many_prompts(6)
    for i in range(2):
        run(pair, prompts, boundary=2, max_new_tokens=8, bootstrap=0, progress=False, shard=f"{i}/2", out=tmp_path / f"s{i}")
    run(pair, prompts, boundary=1, max_new_tokens=8, bootstrap=0, progress=False, shard="1/2", out=tmp_path / "other")
    with pytest.raises(RunDirectoryError, match="do not cover 0/2 .. 1/2 exactly once: missing: 1/2$"):
        merge_runs([tmp_path / "s0"], tmp_path / "m")
    with pytest.raises(RunDirectoryError, match=r"given twice: 0/2 \(.*s0 and .*s0\); missing: 1/2$"):
        merge_runs([tmp_path / "s0", tmp_path / "s0"], tmp_path / "m")
    with pytest.raises(RunDirectoryError, match="not shards of one run"):
        merge_runs([tmp_path / "s0", tmp_path / "other"], tmp_path / "m")
    with pytest.raises(RunDirectoryError, match="a list of the shards"):
        merge_runs(str(tmp_path / "s0"), tmp_path / "m")  # type: ignore[arg-type] - (one string, not its letters)
    with pytest.raises(RunDirectoryError, match="a new directory"):
        merge_runs([tmp_path / "s0", tmp_path / "s1"], None)  # type: ignore[arg-type]


def test_bad_shard_spec_is_refused():
    pair = make_pair("llama")
    with pytest.raises(ValueError, match="i/n"):
        run(pair, many_prompts(2), shard="1-2", progress=False, bootstrap=0, max_new_tokens=4)
    with pytest.raises(ValueError, match="0 <= i < n"):
        run(pair, many_prompts(2), shard="2/2", progress=False, bootstrap=0, max_new_tokens=4)


def test_bad_run_options_are_refused_before_anything_is_written(tmp_path):
    pair = make_pair("llama")
    for bad in ({"plan": "fast"}, {"engine": "spark"}, {"rollout_model": "both"}):  # ("it" reads as "IT", as --rollout-model it)
        with pytest.raises(ValueError):
            run(pair, many_prompts(2), out=tmp_path / "r", progress=False, bootstrap=0, **bad)
    assert not (tmp_path / "r").exists()


def test_a_shard_without_prompts_finishes_and_says_so(tmp_path):
    prompts = [{"id": f"p{k}", "prompt": f"Rain in city {k}"} for k in range(4)]
    result = run(make_pair("llama"), prompts, shard="5/8", out=tmp_path / "s5", max_new_tokens=4, bootstrap=0,
                 progress=False)
    assert result.summary["counts"]["prompts"] == 0 and not result.records
    assert "holds no prompt" in result.summary["verdict"]["reason"]


def test_a_merged_run_carries_every_shards_warnings(tmp_path):
    """Each shard warns about its own prompts; the merged run is all of them, so it says what
    every shard said (once each), not only the first shard's."""
    prompts = [{"id": "tokyo", "prompt": "Rain in 東京"}, {"id": "plain", "prompt": "Snow in Denver"}]
    for i in range(2):
        run(make_pair("llama"), prompts, shard=f"{i}/2", out=tmp_path / f"s{i}", max_new_tokens=4, bootstrap=0,
            progress=False)
    merged = merge_runs([tmp_path / "s1", tmp_path / "s0"], tmp_path / "merged")
    assert sum("'tokyo' (2)" in w for w in merged.summary["warnings"]) == 1


@pytest.mark.slow
def test_one_run_is_one_run_however_its_model_directories_are_spelt_or_placed(tmp_path, monkeypatch):
    """A run names a local model by its weight and defining files, not by the path's spelling:
    shards run on machines where the models lie elsewhere merge, and a run resumed with
    ``./base/`` for ``base`` is the same run; a changed config.json is another run, named."""
    import json
    import shutil

    from crosspatch import load_pair
    from crosspatch.errors import RunSettingsMismatchError
    from crosspatch.testing import save_tiny_pair

    def run_on(base: str, tuned: str, **more):
        return run(load_pair(base, tuned=tuned), prompts, **options, **more)

    root = save_tiny_pair(tmp_path / "machine_a", scale=0.3)
    shutil.copytree(root, tmp_path / "machine_b")
    prompts = many_prompts(4)
    options = dict(boundary=2, max_new_tokens=6, bootstrap=0, progress=False, event_kinds="first_diff", controls="none")
    monkeypatch.chdir(tmp_path)
    run_on(str(root / "base"), str(root / "tuned"), shard="0/2", out=tmp_path / "s0")
    run_on("machine_b/base/", "./machine_b/tuned", shard="1/2", out=tmp_path / "s1")
    merged = merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    assert merged.summary["counts"]["prompts"] == 4
    whole = run_on("machine_a/base", "machine_a/tuned", out=tmp_path / "whole")
    again = run_on(str(root / "base") + "/", str(root / "tuned"), out=tmp_path / "whole")
    assert again.summary["cost_this_session"]["prompts_processed"] == 0  # resumed, nothing redone
    assert sorted(r.key for r in again.records) == sorted(r.key for r in whole.records)

    config = json.loads((tmp_path / "machine_b" / "base" / "config.json").read_text())
    (tmp_path / "machine_b" / "base" / "config.json").write_text(json.dumps(config | {"rms_norm_eps": 1e-3}))
    with pytest.raises(RunSettingsMismatchError, match=r"models\.base\.files\.config\.json"):
        run_on("machine_b/base", "machine_b/tuned", out=tmp_path / "whole")
    run_on("machine_b/base", "machine_b/tuned", shard="1/2", out=tmp_path / "s1b")
    with pytest.raises(RunDirectoryError, match=r"not shards of one run: .*s0 and .*s1b differ in models\.base\.files"):
        merge_runs([tmp_path / "s0", tmp_path / "s1b"], tmp_path / "merged2")
