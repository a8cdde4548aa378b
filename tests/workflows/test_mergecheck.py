"""crosspatch merge-check on mergekit configurations of the zoo: a passthrough splice is the
matching chimera (equal to the model mergekit builds from it), a linear merge of two descendants
is built, preflighted and diagnosed beside its parents; what it cannot evaluate is named."""

from __future__ import annotations

import json

import pytest

from crosspatch.zoo import zoo_path

pytest.importorskip("mergekit", reason="merge-check needs the [merge] extra (README's test command installs it)")

from crosspatch.workflows.mergecheck import UnsupportedMergeConfigError, merge_check, read_merge_config, splice_plan  # noqa: E402

Z = zoo_path()
PROMPTS = Z / "prompts" / "in_distribution.jsonl"


def _config(tmp_path, text: str):
    path = tmp_path / "merge.yml"
    path.write_text(text.replace("$Z", str(Z)))
    return path


PASSTHROUGH = """merge_method: passthrough
slices:
  - sources: [{model: $Z/base, layer_range: [0, 2]}]
  - sources: [{model: $Z/base, layer_range: [2, 4]}]
  - sources: [{model: $Z/it-full, layer_range: [4, 6]}]
dtype: float32
"""


@pytest.mark.slow
def test_passthrough_splice_is_the_chimera_mergekit_would_build(tmp_path):
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from crosspatch.execution import load_models
    from crosspatch.execution.search import greedy_rollout
    from crosspatch.workflows.splice import generate_chimera

    config = _config(tmp_path, PASSTHROUGH)
    plan = splice_plan(read_merge_config(config))
    assert (plan.early, plan.late, plan.boundary, plan.num_layers) == (str(Z / "base"), str(Z / "it-full"), 4, 6)
    document = merge_check(config, PROMPTS, out=tmp_path / "mc", max_new_tokens=16)
    assert document["this_chimera"] == "base early + tuned late" and document["diagnostic"]["n_events"] > 0
    assert "upstream state at layer 4" in document["receives"]
    assert (tmp_path / "mc" / "merge-check.html").exists() and (tmp_path / "mc" / "splice" / "splice.html").exists()
    # the chimera generates what the model mergekit builds from this configuration generates
    read = read_merge_config(config)
    run_merge(read, str(tmp_path / "built"), MergeOptions(quiet=True, write_model_card=False))
    models = load_models(str(Z / "base"), tuned={"tuned": str(Z / "it-full"), "built": str(tmp_path / "built")},
                         residency="both")
    ids = [models.tokenizer(json.loads(line)["prompt"])["input_ids"] for line in PROMPTS.read_text().splitlines()[:8]]
    with models.use("built") as built:
        expected = greedy_rollout(built, ids, 16, models)
    assert generate_chimera(models, "base", "tuned", 4, ids, 16, {"base": "base", "tuned": "tuned"}) == expected


@pytest.mark.slow
def test_linear_merge_of_two_descendants_is_built_preflighted_and_diagnosed(tmp_path):
    config = _config(tmp_path, """merge_method: linear
models:
  - model: $Z/it-full
    parameters: {weight: 0.5}
  - model: $Z/cpt
    parameters: {weight: 0.5}
dtype: float32
""")
    document = merge_check(config, PROMPTS, base=str(Z / "base"), out=tmp_path / "mc", max_new_tokens=16)
    assert document["kind"] == "weights" and set(document["diagnostic"]) == {"merge", "it-full", "cpt"}
    assert [c["name"] for c in document["preflight"]["checks"]][0] == "merged-changes"
    assert all("interaction" in v for v in document["diagnostic"].values())
    assert "The merge and its parents" in (tmp_path / "mc" / "merge-check.md").read_text()


@pytest.mark.slow
def test_a_slerp_written_as_slices_and_parents_in_directories_of_one_name_are_all_evaluated(tmp_path):
    """SLERP configurations are written as slices (mergekit's own examples), which merge-check
    refused ("slerp over slices or modules is not evaluated"); and of two parents in directories
    of the same name, the diagnostic kept one (a dict keyed by the directory's name)."""
    import shutil

    config = _config(tmp_path, """merge_method: slerp
base_model: $Z/base
slices:
  - sources: [{model: $Z/base, layer_range: [0, 3]}, {model: $Z/it-full, layer_range: [0, 3]}]
  - sources: [{model: $Z/base, layer_range: [3, 6]}, {model: $Z/it-full, layer_range: [3, 6]}]
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - value: 0.5
dtype: float32
""")
    document = merge_check(config, PROMPTS, out=tmp_path / "mc", max_new_tokens=16)
    assert document["kind"] == "weights" and document["parents"] == [str(Z / "base"), str(Z / "it-full")]
    assert set(document["diagnostic"]) == {"merge", "it-full"}
    for name, model in (("one", "it-full"), ("two", "cpt")):
        shutil.copytree(Z / model, tmp_path / name / "tuned")
    config = _config(tmp_path, f"""merge_method: ties
base_model: $Z/base
models:
  - model: {tmp_path / "one" / "tuned"}
    parameters: {{weight: 1.0, density: 0.5}}
  - model: {tmp_path / "two" / "tuned"}
    parameters: {{weight: 1.0, density: 0.5}}
dtype: float32
""")
    document = merge_check(config, PROMPTS, out=tmp_path / "ties", max_new_tokens=16)
    assert set(document["diagnostic"]) == {"merge", "tuned", "tuned-2"}
    assert [document["diagnostic"][role]["model"] for role in ("tuned", "tuned-2")] == \
        [str(tmp_path / "one" / "tuned"), str(tmp_path / "two" / "tuned")]


@pytest.mark.parametrize("text, message", [
    ("merge_method: passthrough\nslices:\n  - sources: [{model: $Z/base, layer_range: [0, 4]}]\n"
     "  - sources: [{model: $Z/it-full, layer_range: [2, 6]}]\n", "frankenmerge"),
    ("merge_method: passthrough\nslices:\n  - sources: [{model: $Z/base, layer_range: [0, 2]}]\n"
     "  - sources: [{model: $Z/it-full, layer_range: [2, 4]}]\n  - sources: [{model: $Z/base, layer_range: [4, 6]}]\n",
     "switch models 2 times"),
    ("merge_method: passthrough\nslices:\n  - sources: [{model: $Z/base, layer_range: [0, 4]}]\n", "layers"),
    ("merge_method: slerp\nbase_model: $Z/base\nslices:\n  - sources: [{model: $Z/base, layer_range: [0, 6]}, "
     "{model: $Z/it-full, layer_range: [0, 4]}]\nparameters: {t: 0.5}\n", "slice 1 merges layers 0..3 with 0..5"),
    ("merge_method: slerp\nbase_model: $Z/base\nslices:\n  - sources: [{model: $Z/base, layer_range: [0, 4]}, "
     "{model: $Z/it-full, layer_range: [0, 4]}]\nparameters: {t: 0.5}\n", "the slices give 4 layers, the models have 6"),
    ("merge_method: [not, a, method]\n", "mergekit accepts"),
    ("merge_method: linear\n", "Exactly one of 'models', 'slices'"),  # refused by a validator's RuntimeError
    ("", "mergekit accepts"),
    ("merge_method: linear\nmerge_method: ties\nmodels: []\n", "'merge_method' appears twice"),  # not the last kept
    # a method mergekit does not implement, named before the missing base_model (its build would fail late)
    ("merge_method: frobnicate\nmodels: [{model: $Z/it-full}, {model: $Z/it-merged}]\n",
     "'frobnicate' is not one mergekit implements .*linear.*ties"),
])
def test_configurations_it_cannot_evaluate_are_named(tmp_path, text, message):
    with pytest.raises(UnsupportedMergeConfigError, match=message):
        merge_check(_config(tmp_path, text), PROMPTS, out=tmp_path / "mc")
    assert not (tmp_path / "mc").exists()


def test_odd_python_arguments_are_named_before_any_work(tmp_path):
    from crosspatch.errors import OptionError
    from crosspatch.models.options import LoadOptions

    config = _config(tmp_path, PASSTHROUGH)
    for odd in ({"config_path": None}, {"config_path": 5}, {"base": 5}, {"max_new_tokens": 0}, {"options": 5},
                {"progress": 5}):
        with pytest.raises(OptionError):
            merge_check(**{"config_path": config, "prompts": PROMPTS, "out": tmp_path / "mc", **odd})
    assert not (tmp_path / "mc").exists()
    from crosspatch.errors import RunDirectoryError

    with pytest.raises(RunDirectoryError, match="a run directory is a path"):
        merge_check(config, PROMPTS, out=5)  # type: ignore[arg-type]
    mine = LoadOptions()
    with pytest.raises(OptionError):
        merge_check(config, PROMPTS, options=mine, max_new_tokens=0)
    assert mine == LoadOptions()  # not resolved in place


def test_a_splice_of_cached_hub_models_that_changes_the_depth_is_named_before_loading(tmp_path, monkeypatch):
    """mergekit configurations name hub ids: a passthrough whose slices give fewer layers than the
    models have was named only for local paths; a hub id whose checkpoint is whole in the local
    cache is read from its snapshot."""
    import shutil

    import huggingface_hub.constants

    entry = tmp_path / "hub" / "models--zoo--base"
    shutil.copytree(Z / "base", entry / "snapshots" / ("0" * 40))
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    text = ("merge_method: passthrough\nslices:\n  - sources: [{model: zoo/base, layer_range: [0, 2]}]\n"
            "  - sources: [{model: $Z/it-full, layer_range: [2, 4]}]\n")
    with pytest.raises(UnsupportedMergeConfigError, match="the slices give 4 layers, the models have 6"):
        splice_plan(read_merge_config(_config(tmp_path, text)))
