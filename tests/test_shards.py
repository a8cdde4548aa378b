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
    assert sorted(r.key for r in merged.records) == sorted(r.key for r in whole.records)
    assert (tmp_path / "merged" / "report.md").exists()


@pytest.mark.slow
def test_merge_refuses_incomplete_or_foreign_shards(tmp_path):
    pair = make_pair("llama", scale=0.15)
    prompts = many_prompts(6)
    for i in range(2):
        run(pair, prompts, boundary=2, max_new_tokens=8, bootstrap=0, progress=False, shard=f"{i}/2", out=tmp_path / f"s{i}")
    run(pair, prompts, boundary=1, max_new_tokens=8, bootstrap=0, progress=False, shard="1/2", out=tmp_path / "other")
    with pytest.raises(RunDirectoryError, match="do not cover"):
        merge_runs([tmp_path / "s0"], tmp_path / "m")
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
    for bad in ({"plan": "fast"}, {"engine": "spark"}, {"rollout_model": "it"}):
        with pytest.raises(ValueError):
            run(pair, many_prompts(2), out=tmp_path / "r", progress=False, bootstrap=0, **bad)
    assert not (tmp_path / "r").exists()


def test_a_shard_without_prompts_finishes_and_says_so(tmp_path):
    prompts = [{"id": f"p{k}", "prompt": f"Rain in city {k}"} for k in range(4)]
    result = run(make_pair("llama"), prompts, shard="5/8", out=tmp_path / "s5", max_new_tokens=4, bootstrap=0,
                 progress=False)
    assert result.summary["counts"]["prompts"] == 0 and not result.records
    assert "holds no prompt" in result.summary["verdict"]["reason"]
