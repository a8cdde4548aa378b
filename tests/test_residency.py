"""Residency modes: both, sequential (one model at a time) and adapter give the same numbers."""

from __future__ import annotations

import pytest

from crosspatch.core.cells import CELLS, READOUTS
from crosspatch.errors import ModelLoadError
from crosspatch.execution import choose_residency, load_pair
from crosspatch.models.loading import LoadOptions
from crosspatch.runner.pipeline import run

from .conftest import PROMPTS, count_decoding_calls
from .models.test_peft import _lora_dirs


def _same(a, b, tol=1e-4):
    assert [(r.key, r.t_pt, r.t_it) for r in a.records] == [(r.key, r.t_pt, r.t_it) for r in b.records]
    assert [x.prompt_id for x in a.no_divergence] == [x.prompt_id for x in b.no_divergence]
    worst = max(abs(x.cells[n][c] - y.cells[n][c]) for x, y in zip(a.records, b.records) for n in READOUTS for c in CELLS)
    assert worst <= tol, worst
    return worst


@pytest.mark.slow
def test_three_residencies_give_the_same_numbers(tmp_path):
    base, adapter, merged = _lora_dirs(tmp_path)
    pairs = {
        "adapter": load_pair(str(base), adapter=str(adapter)),
        "both": load_pair(str(base), tuned=str(merged), residency="both"),
        "sequential": load_pair(str(base), tuned=str(merged), residency="sequential"),
    }
    assert {k: p.residency for k, p in pairs.items()} == {k: k for k in pairs}
    results = {k: run(p, PROMPTS, boundaries=[1, 3], max_new_tokens=12, bootstrap=0, progress=False)
               for k, p in pairs.items()}
    assert results["both"].records
    _same(results["both"], results["sequential"], tol=1e-5)
    _same(results["both"], results["adapter"], tol=1e-4)  # merged vs unmerged LoRA rounding


@pytest.mark.slow
def test_static_decoding_gives_every_residency_the_eager_numbers(tmp_path):
    """``decode="static"`` (what ``auto`` picks on CUDA) decodes through every residency's phases
    (one model resident, or one model with its adapter switched) and finds what eager decoding
    finds: the same events, no-divergence prompts and cells, every event kind included."""
    base, adapter, merged = _lora_dirs(tmp_path)
    pairs = {"adapter": load_pair(str(base), adapter=str(adapter)),
             "sequential": load_pair(str(base), tuned=str(merged), residency="sequential")}
    options = dict(boundaries=[1, 3], max_new_tokens=12, bootstrap=0, progress=False, event_kinds="all")
    for name, pair in pairs.items():
        eager = run(pair, PROMPTS, decode="eager", **options)
        static = run(pair, PROMPTS, decode="static", **options)
        assert static.summary["cost_this_session"]["decode"]["mode"] == "static", name
        assert eager.records, name
        _same(eager, static, tol=1e-5)


@pytest.mark.slow
def test_sequential_holds_one_model_at_a_time(tmp_path):
    base, _, merged = _lora_dirs(tmp_path)
    pair = load_pair(str(base), tuned=str(merged), residency="sequential")
    # opening reads each model once (its readout head and facts) and leaves the descendant resident
    assert pair.loads == 2 and pair.resident_role == "tuned"
    result = run(pair, PROMPTS, boundary=2, max_new_tokens=10, bootstrap=0, progress=False,
                 controls="none", event_kinds="first_diff")
    assert result.records
    # weak references to every model loaded: never two alive at once (measured, not assumed)
    assert pair.peak_live_models == 1
    # minimal plan: rollout (IT, already resident), check (PT), then the late passes starting with PT: 2 loads
    assert pair.loads - 2 == 2
    assert pair.resident_role is None  # a finished run frees the model it last used
    # with every control and event kind: their passes are grouped by role across analyses
    loads = pair.loads
    everything = run(pair, PROMPTS, boundary=2, max_new_tokens=10, bootstrap=0, progress=False, controls="all")
    assert {r.kind for r in everything.records} >= {"first_diff"}
    assert pair.peak_live_models == 1 and pair.loads - loads <= 10


def test_opening_a_sequential_set_leaves_its_first_descendant_resident(tmp_path):
    """Opening reads every model once (its readout head and facts); the first descendant is read
    last and stays resident, as the model a run (a compare's first run) rolls out first."""
    import shutil

    from crosspatch.execution import load_models
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path)
    shutil.copytree(root / "tuned", root / "other")
    models = load_models(str(root / "base"), tuned={"first": str(root / "tuned"), "second": str(root / "other")},
                         residency="sequential")
    assert models.resident_role == "first" and models.loads == 3 and models.peak_live_models == 1
    assert list(models.heads) == list(models.facts) == ["base", "first", "second"]  # in the set's order of roles


def test_a_sequential_set_that_fails_to_open_keeps_no_model(tmp_path, monkeypatch):
    """Opening leaves the last model it read resident for the run; a set that is not returned
    (a check after loading refuses the pair) keeps none of them alive."""
    import gc
    import weakref

    from crosspatch.execution import opening

    base, _, merged = _lora_dirs(tmp_path)
    loaded = []
    read = opening.SequentialSet.load_handle

    def load_handle(self, role):
        handle = read(self, role)
        loaded.append(weakref.ref(handle.module))
        return handle

    def refuse(*args, **kwargs):
        raise ModelLoadError("refused after loading")

    monkeypatch.setattr(opening.SequentialSet, "load_handle", load_handle)
    monkeypatch.setattr(opening, "_check_set", refuse)
    with pytest.raises(ModelLoadError, match="refused after loading") as refused:
        load_pair(str(base), tuned=str(merged), residency="sequential")
    assert refused.traceback  # (the frames it holds keep the set itself alive)
    gc.collect()
    assert len(loaded) == 2 and all(model() is None for model in loaded)


@pytest.mark.slow
def test_sequential_scores_the_events_found_on_the_searched_history_without_a_full_pass(monkeypatch):
    """One model at a time, the search decodes each event's history whole and then teacher-forces
    the other model over it, recording both models' states at every position: the event kinds'
    events found there take their states from it (no full pass of either model, as the first
    divergence), so a default run asks for one late pass of each model after the search and loads
    each model once more; its records are those of both models resident."""
    import json

    from crosspatch.execution import executor
    from crosspatch.zoo import zoo_path

    zoo = zoo_path()
    prompts = [json.loads(line)["prompt"] for line in (zoo / "prompts" / "raw.jsonl").read_text().splitlines()[:16]]
    both = run(load_pair(str(zoo / "base"), tuned=str(zoo / "it-full")), prompts, max_new_tokens=48, bootstrap=0,
               progress=False, controls="none")
    full_passes = []
    capture = executor.Executor._capture
    monkeypatch.setattr(executor.Executor, "_capture", lambda self, p: (full_passes.append(p.role), capture(self, p))[1])
    pair = load_pair(str(zoo / "base"), tuned=str(zoo / "it-full"), residency="sequential")
    opened = pair.loads
    sequential = run(pair, prompts, max_new_tokens=48, bootstrap=0, progress=False, controls="none")
    assert {r.kind for r in sequential.records} > {"first_diff"}  # events of the later kinds, found on the history
    assert full_passes == [] and pair.loads - opened == 2  # the checking model, then the rollout model's late passes
    _same(both, sequential, tol=1e-4)


@pytest.mark.slow
def test_sequential_keeps_one_copy_of_a_readout_head_the_fine_tune_left_alone(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crosspatch.models.forward import readout

    base, _, merged = _lora_dirs(tmp_path)  # LoRA on attention and MLP: final norm and lm_head untouched
    pair = load_pair(str(base), tuned=str(merged), residency="sequential")
    assert pair.head("tuned").anatomy.lm_head is pair.head("base").anatomy.lm_head
    assert pair.head("tuned").anatomy.final_norm is pair.head("base").anatomy.final_norm
    states = torch.randn(3, pair.hidden_size)
    for part in ("lm_head", "norm"):  # a descendant whose head moved keeps its own, and reads out with it
        model = AutoModelForCausalLM.from_pretrained(str(merged))
        with torch.no_grad():
            (model.lm_head if part == "lm_head" else model.model.norm).weight[0] += 0.5
        model.save_pretrained(tmp_path / part)
        AutoTokenizer.from_pretrained(str(merged)).save_pretrained(tmp_path / part)
        moved = load_pair(str(base), tuned=str(tmp_path / part), residency="sequential")
        assert moved.head("tuned").anatomy.lm_head is not moved.head("base").anatomy.lm_head
        assert not torch.equal(readout(moved.head("tuned"), states), readout(moved.head("base"), states))


def test_residency_choice_and_its_reason(tmp_path):
    base, adapter, merged = _lora_dirs(tmp_path)
    assert choose_residency(str(base), None, str(adapter), LoadOptions())[0] == "adapter"
    kind, reason = choose_residency(str(base), str(merged), None, LoadOptions())
    assert kind == "both" and "fit" in reason
    with pytest.raises(ModelLoadError, match="needs --adapter"):
        choose_residency(str(base), str(merged), None, LoadOptions(residency="adapter"))


def test_the_free_memory_read_is_the_gpu_the_models_load_on(monkeypatch):
    """`--device cuda:3` read GPU 0's free memory (torch.device("cuda")), and `map` one GPU's of
    the several it spreads the models over: on a shared machine whose GPU 0 is busy the choice
    was `sequential` for a pair that fits, or `both` for one that does not fit the GPU it loads on.
    The machine's GPUs are stood in for: four, GPU i with i + 1 GiB free, the current one GPU 1."""
    import torch

    from crosspatch.execution import opening
    from crosspatch.store.files import environment

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device: (((1 if device.index is None else device.index) + 1) * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"GPU-{index}")
    free = {device: opening._available_bytes(LoadOptions(device=device)) for device in ("cuda:3", "cuda", "auto", "map")}
    assert free == {"cuda:3": 4 * gib, "cuda": 2 * gib, "auto": 2 * gib, "map": 10 * gib}
    assert opening._available_bytes(LoadOptions(device="cpu")) != 4 * gib  # the machine's RAM
    assert environment("cuda:3")["cuda_device"] == "GPU-3" and environment("cuda")["cuda_device"] == "GPU-1"
    assert environment("map")["cuda_device"] == "GPU-0, GPU-1, GPU-2, GPU-3" and "cuda_device" not in environment("cpu")


def test_a_checkpoint_saved_in_both_formats_counts_once_toward_the_residency(tmp_path):
    """A directory with safetensors and a pickle copy of the same weights (as many hub repos
    hold) counted both toward the models' size: twice the memory, `sequential` sooner. It counts
    the safetensors, which transformers loads."""
    import shutil

    from crosspatch.execution import opening
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path)
    one = opening._weights_bytes(str(root / "base"))
    shutil.copy(root / "base" / "model.safetensors", root / "base" / "pytorch_model.bin")  # (the size is what counts)
    assert one and opening._weights_bytes(str(root / "base")) == one
    (root / "base" / "model.safetensors").unlink()
    assert opening._weights_bytes(str(root / "base")) == one  # pickle only: that is what would load


@pytest.mark.parametrize("decode", ["eager", "static"])
def test_one_model_at_a_time_the_rollout_batches_continuously(decode, monkeypatch):
    """Under ``sequential`` the rollout is decoded whole before the other model is loaded; a row that
    ends (its EOS, the budget) now makes room for the next prompt in the same cache, as in the
    interleaved search (a static cache takes it into the free slot), instead of every batch
    waiting for its longest rollout: fewer decoding calls, the same events and cells."""
    from crosspatch.execution import Executor
    from crosspatch.inputs.prompts import load_prompts
    from crosspatch.zoo import zoo_path

    zoo = zoo_path()
    items = load_prompts(zoo / "prompts" / "raw.jsonl")[:24]
    pair = load_pair(str(zoo / "base"), tuned=str(zoo / "it-full"), residency="sequential", hash_weights=False)
    calls = count_decoding_calls(monkeypatch)
    options = dict(boundary=0.6, max_new_tokens=32, batch_size=4, max_batch_tokens=None, bootstrap=0, progress=False,
                   controls="none", decode=decode)
    continuous = run(pair, items, **options)
    joined = calls["n"]
    calls["n"] = 0
    monkeypatch.setattr(Executor, "continuous_batching", False)
    apart = run(pair, items, **options)
    assert continuous.records and joined < calls["n"]
    _same(continuous, apart, tol=1e-4)
