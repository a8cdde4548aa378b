"""A hub id whose whole checkpoint is in the local Hugging Face cache is checked before any model
loads as a local directory is (crosspatch.models.cached): the boundary, the configs and the
residency are read from its snapshot; a snapshot that lacks a shard or holds only pickle weights
is left to the loaded model."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from crosspatch.cli import app
from crosspatch.models.cached import cached_checkpoint, checkable
from crosspatch.testing import char_tokenizer, tiny_model

COMMIT = "0" * 40


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline local hub cache; ``add(repo, source)`` puts a checkpoint directory in it."""
    import huggingface_hub.constants

    root = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # (read once, at import)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import transformers.utils.hub as transformers_hub  # transformers 4.x keeps its own copies, read at import

    for name, value in (("TRANSFORMERS_CACHE", str(root)), ("_is_offline_mode", True)):
        if hasattr(transformers_hub, name):
            monkeypatch.setattr(transformers_hub, name, value)

    def add(repo, source, commit=COMMIT, branch="main"):
        entry = root / f"models--{repo.replace('/', '--')}"
        shutil.copytree(source, entry / "snapshots" / commit)
        (entry / "refs").mkdir(exist_ok=True)
        (entry / "refs" / branch).write_text(commit)
        return entry / "snapshots" / commit

    return add


def _saved(tmp_path, name, layers=4, seed=0, **save):
    target = tmp_path / "saved" / name
    tiny_model("llama", layers, seed=seed).save_pretrained(target, **save)
    char_tokenizer().save_pretrained(target)
    return target


def test_a_whole_cached_snapshot_is_read_and_a_partial_one_is_not(tmp_path, hub):
    whole = hub("org/whole", _saved(tmp_path, "whole"))
    assert cached_checkpoint("org/whole") == str(whole) == checkable("org/whole")
    assert cached_checkpoint("org/whole", "main") == str(whole) and cached_checkpoint("org/whole", "v2") is None
    tagged = hub("org/tagged", _saved(tmp_path, "tagged"), commit="1" * 40, branch="v2")
    assert cached_checkpoint("org/tagged", "v2") == str(tagged) and cached_checkpoint("org/tagged") is None

    sharded = hub("org/sharded", _saved(tmp_path, "sharded", max_shard_size="20KB"))
    assert cached_checkpoint("org/sharded") == str(sharded)
    next(sharded.glob("model-00002-of-*.safetensors")).unlink()  # a download stopped part way
    assert cached_checkpoint("org/sharded") is None and checkable("org/sharded") == "org/sharded"

    pickled = hub("org/pickled", _saved(tmp_path, "pickled"))
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")  # the Hub may hold safetensors too
    assert cached_checkpoint("org/pickled") is None
    assert cached_checkpoint("org/absent") is None and checkable("org/absent") == "org/absent"
    local = _saved(tmp_path, "local")
    assert checkable(str(local)) == str(local)  # a local directory is read as given


def _run(*args):
    return CliRunner().invoke(app, ["run", "--max-new-tokens", "4", "--quiet", *args])


def test_a_cached_hub_pair_is_checked_before_any_model_loads(tmp_path, hub, monkeypatch):
    """A hub id's boundary, depth and configs were checked only once its weights had loaded (for
    a 32B pair: minutes, then "boundary 40 ... outside 1..3"), and `--dry-run` passed them; the
    residency of a pair too large for memory was "both" ("model sizes unknown (hub ids)"), which
    loads both and runs out of memory. From the cached snapshot, all are decided before loading."""
    from crosspatch import execution
    from crosspatch.execution import choose_residency, opening
    from crosspatch.models.options import LoadOptions

    hub("org/base", _saved(tmp_path, "base"))
    hub("org/tuned", _saved(tmp_path, "tuned", seed=1))
    hub("org/deeper", _saved(tmp_path, "deeper", layers=6, seed=1))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "Rain in Boston"}) + "\n")
    import crosspatch

    def loaded(*args, **kwargs):
        pytest.fail("a model was loaded")

    # (the package's export first: read while execution's is patched, it would keep the stand-in for good)
    monkeypatch.setattr(crosspatch, "load_models", loaded)
    monkeypatch.setattr(execution, "load_models", loaded)
    common = ["--prompts", str(prompts), "--out", str(tmp_path / "r")]
    for extra, named in ((["--tuned", "org/tuned", "--boundary", "40"], "BoundaryError"),
                         (["--tuned", "org/deeper"], "LayerCountMismatchError")):
        for dry in ([], ["--dry-run"]):
            res = _run("--base", "org/base", *extra, *common, *dry)
            assert res.exit_code == 2 and named in res.output, res.output
    res = _run("--base", "org/base", "--tuned", "org/tuned", *common, "--dry-run")
    assert res.exit_code == 0 and "boundaries: 2 of 4 layers" in res.output, res.output
    assert not (tmp_path / "r").exists()

    from crosspatch.errors import LayerCountMismatchError

    monkeypatch.setattr(opening, "load_tokenizer", lambda *a, **k: pytest.fail("loading began"))
    with pytest.raises(LayerCountMismatchError):  # the Python API: the same checks before loading
        opening.load_models("org/base", tuned="org/deeper", device="cpu")

    options = LoadOptions(device="cpu", dtype="float32")
    monkeypatch.setattr(opening, "_available_bytes", lambda options: 1 << 10)  # less than the two models
    residency, reason = choose_residency("org/base", "org/tuned", None, options)
    assert residency == "sequential" and "2 models need" in reason, reason


def test_an_untrained_adapter_in_the_hub_cache_is_named_too(tmp_path, hub):
    """An adapter given by hub id (a training job's push_to_hub) is read from its cached snapshot
    for the check that it changes nothing (every lora_B zero), as a local adapter directory is."""
    from peft import LoraConfig, get_peft_model

    from crosspatch.models.checks import inert_adapter
    from crosspatch.testing.contract import save_tiny_lora

    fresh = tmp_path / "fresh"
    get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(fresh)
    hub("org/fresh", fresh)
    hub("org/trained", save_tiny_lora(tmp_path / "t")[1])
    assert "the descendant (org/fresh) changes nothing: all 4 of its lora_B" in inert_adapter("org/fresh", "the descendant")
    assert inert_adapter("org/trained") is None and inert_adapter("org/absent-adapter") is None


def test_a_hub_id_cached_only_in_part_is_named_before_any_model_loads_while_offline(tmp_path, hub, monkeypatch):
    """A snapshot with config.json but no weights (only the config fetched, or a download stopped
    part way), or a shard its index names missing, failed offline only as it loaded (after the
    base, for a 32B pair minutes); it is named before any model loads. Online, loading fetches what
    is missing, so nothing is refused then."""
    import crosspatch
    from crosspatch import execution
    from crosspatch.errors import HubUnavailableError
    from crosspatch.models import paths
    from crosspatch.models.paths import check_model_path

    for owner in (crosspatch, execution):  # (the package's export first, as above)
        monkeypatch.setattr(owner, "load_models", lambda *a, **k: pytest.fail("a model was loaded"))
    hub("org/base", _saved(tmp_path, "base"))
    config_only = hub("org/config-only", _saved(tmp_path, "config-only", seed=1))
    (config_only / "model.safetensors").unlink()
    sharded = hub("org/sharded", _saved(tmp_path, "sharded", seed=1, max_shard_size="20KB"))
    next(sharded.glob("model-00002-of-*.safetensors")).unlink()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "Rain in Boston"}) + "\n")
    for repo, lacks in (("org/config-only", "but no weights (model.safetensors or pytorch_model.bin)"),
                        ("org/sharded", "but not every shard its index names")):
        res = _run("--base", "org/base", "--tuned", repo, "--prompts", str(prompts), "--out", str(tmp_path / "r"))
        output = " ".join(res.output.split())
        assert res.exit_code == 2 and f"HubUnavailableError: --tuned {repo} is cached only in part" in output, output
        assert lacks in output and f"hf download {repo}" in output, output
    with pytest.raises(HubUnavailableError, match="cached only in part.*no weights"):
        check_model_path("org/config-only", "tuned")
    check_model_path("org/base", "base")  # a whole snapshot passes
    monkeypatch.setattr(paths, "hub_offline", lambda: False)  # online: loading fetches what is missing
    monkeypatch.setattr(paths, "hub_reachable", lambda timeout=2.0: True)
    check_model_path("org/config-only", "tuned")


def test_a_hub_id_cached_with_pickle_weights_only_is_refused_before_loading_while_offline(tmp_path, hub, monkeypatch):
    """A snapshot holding only pytorch_model.bin was left to the loaded model (it is no whole
    safetensors checkpoint to read): offline, with no --allow-pickle, it was refused once the base
    had loaded. It is refused before any model loads, as a local directory of pickle weights is."""
    import crosspatch
    from crosspatch import execution
    from crosspatch.models.cached import check_weight_format

    for owner in (crosspatch, execution):  # (the package's export first, as above)
        monkeypatch.setattr(owner, "load_models", lambda *a, **k: pytest.fail("a model was loaded"))
    hub("org/base", _saved(tmp_path, "base"))
    pickled = hub("org/pickled", _saved(tmp_path, "pickled", seed=1))
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")  # (what save_pretrained wrote before 4.35)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "Rain in Boston"}) + "\n")
    res = _run("--base", "org/base", "--tuned", "org/pickled", "--prompts", str(prompts), "--out", str(tmp_path / "r"))
    output = " ".join(res.output.split())
    assert res.exit_code == 2 and "PickleWeightsRefusedError: org/pickled: its snapshot" in output, output
    assert "holds only pickle weights (pytorch_model.bin)" in output and "--allow-pickle" in output
    check_weight_format("org/pickled", allow_pickle=True)  # asked for: loading goes on
    check_weight_format("org/base", allow_pickle=False)  # safetensors: nothing to refuse


def test_the_python_api_names_a_cached_hub_id_the_method_cannot_run_before_loading(tmp_path, hub, monkeypatch):
    """``crosspatch run`` named a cached hub id saved as a classifier (a reward model) before any
    model loaded; ``load_models`` loaded the base's tokenizer and weights first. Both now run one
    list of checks before loading (:func:`crosspatch.models.preload.check_checkpoints`)."""
    from crosspatch.errors import UnsupportedArchitectureError
    from crosspatch.execution import opening

    hub("org/base", _saved(tmp_path, "base"))
    reward = hub("org/reward", _saved(tmp_path, "reward", seed=1))
    config = json.loads((reward / "config.json").read_text())
    (reward / "config.json").write_text(json.dumps(config | {"architectures": ["LlamaForSequenceClassification"]}))
    monkeypatch.setattr(opening, "load_tokenizer", lambda *a, **k: pytest.fail("loading began"))
    with pytest.raises(UnsupportedArchitectureError, match="a classifier's checkpoint"):
        opening.load_models("org/base", tuned="org/reward", device="cpu")


def test_a_hub_id_at_a_revision_of_its_own_is_read_as_that_revisions_snapshot(tmp_path, hub):
    """``REPO@REVISION``: the intermediate checkpoints a training run publishes as revisions of one
    repository (Pythia's ``step1000``, OLMo's stages), each at its own revision where ``--revision``
    reads every checkpoint at one. It was "no such directory"; it is read as that revision's
    snapshot in the cache, named as given (its role, the record), reloaded as given (a resume)."""
    from crosspatch.errors import HubUnavailableError
    from crosspatch.execution import load_models
    from crosspatch.models.cached import revision_snapshot
    from crosspatch.models.paths import split_hub_revision
    from crosspatch.testing import perturb_layers

    assert split_hub_revision("EleutherAI/pythia-160m@step1000") == ("EleutherAI/pythia-160m", "step1000")
    assert split_hub_revision("org/run@refs/pr/1") == ("org/run", "refs/pr/1")
    for not_one in ("org/run", "org/run@", "./runs/a@b", "org/run@../x", "org/run@step 1"):
        assert split_hub_revision(not_one) is None, not_one
    from crosspatch.models.paths import looks_local

    assert not looks_local("org/run@refs/pr/1") and not looks_local("org/run@step1") and looks_local("./runs/a@b")
    base = tiny_model("llama")
    snapshots = {}
    for k, model in enumerate([base, perturb_layers(base, range(4), 0.3, seed=1), perturb_layers(base, [3], 0.3)]):
        model.save_pretrained(tmp_path / "saved" / f"step{k}")
        char_tokenizer().save_pretrained(tmp_path / "saved" / f"step{k}")
        snapshots[f"step{k}"] = hub("org/run", tmp_path / "saved" / f"step{k}", commit=str(k + 1) * 40,
                                    branch=f"step{k}")
    assert revision_snapshot("org/run@step1") == str(snapshots["step1"]) and checkable("org/run@step1") == str(
        snapshots["step1"])
    with pytest.raises(HubUnavailableError, match="--tuned org/run@step9: revision 'step9' of org/run is not in the "
                                                  "local Hugging Face cache.*HF_HUB_OFFLINE=1"):
        revision_snapshot("org/run@step9", "--tuned")
    assert revision_snapshot("org/run@step9", fetch=False) == "org/run@step9" == checkable("org/run@step9")

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n"
                               for i, t in enumerate(["Rain in Boston", "Snow over Denver", "Fog at dawn"])))
    args = ["--base", "org/run@step0", "--tuned", "org/run@step1", "--prompts", str(prompts),
            "--out", str(tmp_path / "r"), "--bootstrap", "0"]
    res = _run(*args)
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["models"]["base"]["given"] == "org/run@step0" and config["models"]["base"]["local"]
    assert config["models"]["tuned"]["path"] == str(snapshots["step1"])
    assert config["load_spec"]["tuned"] == {"tuned": "org/run@step1"}  # (reloaded as given: fetched where it runs)
    report = (tmp_path / "r" / "report.md").read_text() + (tmp_path / "r" / "report.html").read_text()
    assert "org/run@step0" in report and "org/run@step1" in report and "snapshots" not in report  # named as given
    again = _run(*args)  # the same command: the finished run, read back (the settings match)
    assert again.exit_code == 0 and "finished" in again.output.lower(), again.output

    models = load_models("org/run@step0", tuned=["org/run@step1", "org/run@step2"], device="cpu")
    assert models.roles == ("base", "run-step1", "run-step2")


def test_a_revision_the_cache_lacks_is_fetched_without_pickle_weights(tmp_path, monkeypatch):
    """Online, ``REPO@REVISION`` is fetched (its safetensors, JSON and tokenizer files: never
    pickle weights); a revision the repository lacks is named."""
    import huggingface_hub
    from huggingface_hub.errors import RevisionNotFoundError

    from crosspatch.errors import ModelLoadError, ModelPathNotFoundError
    from crosspatch.models import cached

    fetched = _saved(tmp_path, "fetched")
    asked = {}

    def snapshot_download(repo, revision=None, allow_patterns=None, **kwargs):
        asked.update(repo=repo, revision=revision, patterns=allow_patterns)
        if revision == "nope":  # (built without a response: its constructor differs across hub library versions)
            error = RevisionNotFoundError.__new__(RevisionNotFoundError)
            Exception.__init__(error, "no such revision")
            raise error
        return str(fetched)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(cached, "hub_offline", lambda: False)
    monkeypatch.setattr(cached, "hub_reachable", lambda: True)
    monkeypatch.setattr(cached, "_cached_file", lambda *args: None)  # (nothing cached)
    assert cached.revision_snapshot("org/run@step5") == str(fetched)
    assert asked["repo"] == "org/run" and asked["revision"] == "step5"
    assert "*.safetensors" in asked["patterns"] and not any(p.endswith((".bin", ".pt")) for p in asked["patterns"])
    with pytest.raises(ModelPathNotFoundError, match="--base org/run@nope: org/run has no revision 'nope' on the Hub"):
        cached.revision_snapshot("org/run@nope", "--base")
    (fetched / "model.safetensors").unlink()  # a revision with pickle weights only
    with pytest.raises(ModelLoadError, match="holds no safetensors weights, and pickle weights are not fetched"):
        cached.revision_snapshot("org/run@step5")


def test_an_adapter_at_a_revision_of_its_own_loads_from_the_cache(tmp_path, hub):
    """An adapter given as ``REPO@REVISION`` (a training run's LoRA checkpoints as branches): its
    config, weights and tokenizer are read at that revision; scored as the same adapter given as
    a local directory."""
    from crosspatch.execution import load_pair
    from crosspatch.runner.pipeline import run
    from crosspatch.testing.contract import save_tiny_lora

    base, adapter, _ = save_tiny_lora(tmp_path / "saved")
    hub("org/lora", adapter, commit="5" * 40, branch="step40")
    prompts = [{"id": f"p{i}", "prompt": t} for i, t in enumerate(["Rain in Boston", "Snow over Denver"])]
    settings = dict(boundary=2, max_new_tokens=6, bootstrap=0, progress=False)
    given = run(load_pair(str(base), adapter="org/lora@step40", device="cpu"), prompts, **settings)
    local = run(load_pair(str(base), adapter=str(adapter), device="cpu"), prompts, **settings)
    assert [r.cells for r in given.records] == [r.cells for r in local.records] and local.records
    assert given.config["models"]["adapter"]["given"] == "org/lora@step40"
    file = tmp_path / "p.jsonl"
    file.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    res = _run("--base", str(base), "--adapter", "org/lora@step40", "--prompts", str(file), "--out", str(tmp_path / "r"),
               "--boundary", "2", "--bootstrap", "0")  # (the command's checks before loading read it too)
    assert res.exit_code == 0, res.output
