"""Dispatched models (accelerate device maps): hooks on layers, injected tensors, same numbers."""

from __future__ import annotations

import copy

from crosspatch.core.cells import CELLS, READOUTS
from crosspatch.execution import pair_from_models
from crosspatch.runner.pipeline import run
from crosspatch.testing import char_tokenizer, perturb_layers, tiny_model

from ..conftest import PROMPTS


def _dispatch_two_parts(model, offload_dir):
    """Layers 0-1 (and embeddings) in memory, layers 2-3 + norm + head offloaded to disk: the
    second part runs through accelerate's AlignDevicesHook, as a model split across devices does."""
    from accelerate import dispatch_model

    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "cpu", "model.layers.2": "disk", "model.layers.3": "disk",
                  "model.norm": "disk", "lm_head": "disk"}
    return dispatch_model(model, device_map=device_map, offload_dir=str(offload_dir), main_device="cpu")


def test_two_part_device_map_gives_the_same_cells(tmp_path):
    base = tiny_model("llama")
    child = perturb_layers(base, range(4), scale=0.2)
    plain = run(pair_from_models(copy.deepcopy(base), copy.deepcopy(child), char_tokenizer()), PROMPTS,
                boundaries=[1, 2, 3], max_new_tokens=10, bootstrap=0, progress=False)
    d_base = _dispatch_two_parts(copy.deepcopy(base), tmp_path / "b")
    d_child = _dispatch_two_parts(copy.deepcopy(child), tmp_path / "c")
    assert hasattr(d_base.model.layers[3], "_hf_hook")  # really dispatched
    mapped = run(pair_from_models(d_base, d_child, char_tokenizer()), PROMPTS,
                 boundaries=[1, 2, 3], max_new_tokens=10, bootstrap=0, progress=False)
    assert [r.key for r in mapped.records] == [r.key for r in plain.records] and plain.records
    worst = max(abs(a.cells[n][c] - b.cells[n][c]) for a, b in zip(mapped.records, plain.records)
                for n in READOUTS for c in CELLS)
    assert worst <= 1e-5


def test_a_model_offloaded_whole_gives_the_same_cells(tmp_path):
    """accelerate's ``cpu_offload`` (every weight, the input embeddings' too, on the meta device
    under hooks that bring it in for each pass): the token ids went to the meta device and the
    first pass failed ("Cannot copy out of meta tensor")."""
    from accelerate import cpu_offload

    base = tiny_model("llama")
    child = perturb_layers(base, range(4), scale=0.2)
    plain = run(pair_from_models(copy.deepcopy(base), copy.deepcopy(child), char_tokenizer()), PROMPTS,
                boundary=2, max_new_tokens=8, bootstrap=0, progress=False)
    offloaded = [cpu_offload(copy.deepcopy(m), execution_device="cpu") for m in (base, child)]
    assert offloaded[1].get_input_embeddings().weight.is_meta
    mapped = run(pair_from_models(*offloaded, char_tokenizer()), PROMPTS, boundary=2, max_new_tokens=8,
                 bootstrap=0, progress=False)
    assert [r.key for r in mapped.records] == [r.key for r in plain.records] and plain.records
    assert max(abs(a.cells[n][c] - b.cells[n][c]) for a, b in zip(mapped.records, plain.records)
               for n in READOUTS for c in CELLS) <= 1e-5


def test_a_model_whose_weights_were_never_loaded_is_named():
    """A model built on the meta device and never given its weights (no hook brings them in)."""
    import pytest
    import torch
    from transformers import AutoModelForCausalLM

    from crosspatch.errors import ModelLoadError

    base = tiny_model("llama")
    with torch.device("meta"):
        empty = AutoModelForCausalLM.from_config(base.config)
    with pytest.raises(ModelLoadError, match="tuned: its weight model.embed_tokens.weight is on the meta device"):
        pair_from_models(base, empty, char_tokenizer())
