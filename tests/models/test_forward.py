"""Running a model's own forward: a model that a trainer prepared for mixed precision (accelerate
wraps its forward in an autocast) is scored as the same model unprepared, and keeps its
trainer's forward afterwards; so is a run inside a caller's autocast; a compiled model (or PEFT model)
is scored as the model inside."""

from __future__ import annotations

import copy
import json

import pytest

from crosspatch.core.cells import CELLS, READOUTS
from crosspatch.execution import pair_from_models, pair_from_peft_model
from crosspatch.runner.pipeline import run
from crosspatch.testing import char_tokenizer, perturb_layers, tiny_model

from ..conftest import PROMPTS

SETTINGS = dict(boundaries=[2], max_new_tokens=10, bootstrap=0, progress=False)


@pytest.fixture(scope="module")
def reference():
    """A tiny base, a descendant changed in every layer, and the run of the two as they are."""
    base = tiny_model("llama")
    child = perturb_layers(base, range(4), scale=0.2)
    return base, child, run(pair_from_models(copy.deepcopy(base), copy.deepcopy(child), char_tokenizer()), PROMPTS,
                            **SETTINGS)


def _prepared_for_bf16(model):
    """``model`` as Trainer/TRL leave it with ``bf16=True``: accelerate's mixed-precision forward."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        return Accelerator(mixed_precision="bf16", cpu=True).prepare_model(model)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # no accelerator state leaks into other tests


def test_a_model_prepared_for_mixed_precision_is_scored_by_its_own_forward(reference):
    base, child, plain = reference
    prepared = _prepared_for_bf16(copy.deepcopy(child))
    trainers_forward = prepared.forward
    assert "_original_forward" in prepared.__dict__  # really wrapped in the autocast
    scored = run(pair_from_models(copy.deepcopy(base), prepared, char_tokenizer()), PROMPTS, **SETTINGS)
    assert [r.key for r in scored.records] == [r.key for r in plain.records] and plain.records
    assert all(a.cells[n][c] == b.cells[n][c] for a, b in zip(scored.records, plain.records)
               for n in READOUTS for c in CELLS)
    assert prepared.forward == trainers_forward  # the training goes on under its autocast


def test_a_run_inside_a_callers_autocast_computes_in_the_weights_dtype_it_records(reference):
    """A training loop may call crosspatch inside its ``with torch.autocast(...)``: the run computes
    as outside it (the dtype it records), and the autocast is on again afterwards."""
    import torch

    base, child, plain = reference
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = run(pair_from_models(copy.deepcopy(base), copy.deepcopy(child), char_tokenizer()), PROMPTS, **SETTINGS)
        assert torch.is_autocast_enabled("cpu")
    assert [r.cells for r in inside.records] == [r.cells for r in plain.records] and plain.records


def test_a_compiled_or_parallel_wrapped_model_or_peft_model_is_scored_as_the_model_inside(reference):
    import torch
    from peft import LoraConfig, get_peft_model

    base, child, plain = reference
    compiled = run(pair_from_models(torch.compile(copy.deepcopy(base)), torch.compile(copy.deepcopy(child)),
                                    char_tokenizer()), PROMPTS, **SETTINGS)
    assert [r.cells for r in compiled.records] == [r.cells for r in plain.records] and plain.records

    class DeepSpeedEngine(torch.nn.Module):  # DeepSpeed's engine, by its name: the model as `module`
        def __init__(self, module):
            super().__init__()
            self.module = module

    wrapped = run(pair_from_models(DeepSpeedEngine(copy.deepcopy(base)),
                                   torch.nn.DataParallel(torch.compile(copy.deepcopy(child))), char_tokenizer()),
                  PROMPTS, **SETTINGS)
    assert [r.cells for r in wrapped.records] == [r.cells for r in plain.records]
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    as_peft = pair_from_peft_model(peft_model, char_tokenizer())
    compiled_peft = pair_from_peft_model(torch.compile(peft_model), char_tokenizer())
    assert compiled_peft.residency == as_peft.residency == "adapter"
    a, b = (run(p, PROMPTS, **SETTINGS).records for p in (as_peft, compiled_peft))
    assert [r.cells for r in a] == [r.cells for r in b] and a


def test_a_config_that_turns_return_dict_off_is_scored_as_it_would_be_otherwise(reference, tmp_path):
    """``"return_dict": false`` in a config makes transformers' models fail inside their own forward;
    crosspatch runs them with it on, from disk and in memory, and leaves a model's config as it was."""
    import crosspatch
    from crosspatch.testing import save_tiny_pair

    base, child, plain = reference
    off = [copy.deepcopy(base), copy.deepcopy(child)]
    for model in off:
        model.config.return_dict = False
    scored = run(pair_from_models(*off, char_tokenizer()), PROMPTS, **SETTINGS)
    assert [r.cells for r in scored.records] == [r.cells for r in plain.records] and plain.records
    assert all(model.config.return_dict is False for model in off)  # the user's config as it was

    root = save_tiny_pair(tmp_path)
    before = crosspatch.run(crosspatch.load_pair(str(root / "base"), tuned=str(root / "tuned")), PROMPTS, **SETTINGS)
    for folder in (root / "base", root / "tuned"):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "return_dict": False}))
    after = crosspatch.run(crosspatch.load_pair(str(root / "base"), tuned=str(root / "tuned")), PROMPTS, **SETTINGS)
    assert [r.cells for r in after.records] == [r.cells for r in before.records] and before.records


def test_a_model_in_training_mode_is_scored_in_eval_mode_and_left_training(reference):
    """A training loop calls crosspatch on the model it trains (dropout on): every pass computes in
    eval mode, and each module is left in the mode it was in (training goes on with its dropout; a
    module its owner kept in eval mode stays there)."""
    base, child, plain = reference
    training = copy.deepcopy(child)
    for layer in training.model.layers:
        layer.self_attn.attention_dropout = 0.5  # (what config.attention_dropout sets)
    training.train()
    training.model.layers[0].mlp.eval()
    modes = {name: m.training for name, m in training.named_modules()}
    scored = run(pair_from_models(copy.deepcopy(base), training, char_tokenizer()), PROMPTS, **SETTINGS)
    assert [r.cells for r in scored.records] == [r.cells for r in plain.records] and plain.records
    assert {name: m.training for name, m in training.named_modules()} == modes


def test_a_peft_model_in_training_mode_is_scored_in_eval_mode_and_left_training(reference):
    import torch
    from peft import LoraConfig, get_peft_model

    base, _, _ = reference
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                lora_dropout=0.5))
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    peft_model.eval()
    evaluated = run(pair_from_peft_model(peft_model, char_tokenizer()), PROMPTS, **SETTINGS)
    peft_model.train()
    scored = run(pair_from_peft_model(peft_model, char_tokenizer()), PROMPTS, **SETTINGS)
    assert [r.cells for r in scored.records] == [r.cells for r in evaluated.records] and evaluated.records
    assert all(m.training for m in peft_model.modules())


def test_a_descendant_in_memory_that_computes_the_base_is_said_and_gated_unusable(tmp_path):
    """From disk, a copy of the base's weights or a LoRA adapter whose lora_B are all zero is
    named, and gate calls the run unusable; given in memory (the base passed twice, an exact
    copy, a PEFT model straight from get_peft_model) the run passed the gate as 'no-late-effect'."""
    import torch
    from peft import LoraConfig, get_peft_model

    from crosspatch.workflows.gate import gate

    base = tiny_model("llama")
    # the base passed twice is named as one module, with the commonest way to get there (a merge in place)
    for name, pair, said in (("twice", pair_from_models(base, base, char_tokenizer()), "it is the base's very module"),
                             ("copy", pair_from_models(base, copy.deepcopy(base), char_tokenizer()),
                              "its weights are an exact copy of the base's")):
        assert any(said in w for w in pair.warnings), (name, pair.warnings)
        assert ("merge_and_unload" in " ".join(pair.warnings)) is (name == "twice")
        run(pair, PROMPTS[:3], **{**SETTINGS, "out": tmp_path / name})
        outcome = gate(tmp_path / name)
        assert outcome["exit_code"] == 2 and "measured no fine-tune" in outcome["reason"], outcome
    fresh = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert any("changes nothing: all 8 of its lora_B matrices are zero" in w
               for w in pair_from_peft_model(fresh, char_tokenizer()).warnings)
    with torch.no_grad():  # one training step's worth: the adapter now changes the model
        next(p for n, p in fresh.named_parameters() if "lora_B" in n).add_(0.01)
    assert not any("changes nothing" in w for w in pair_from_peft_model(fresh, char_tokenizer()).warnings)
    assert not any("the base's" in w for w in pair_from_models(base, perturb_layers(base, [3]), char_tokenizer()).warnings)
