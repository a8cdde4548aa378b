"""An adapter that does not fit its base is named before any weight loads, from the two weight
files' headers (loading the base first cost minutes on a large model): a wider or narrower base,
a rank other than the configuration's, a module with one of its two LoRA matrices. Adapters PEFT
saves in every common form fit their own base."""

from __future__ import annotations

import json

import pytest

from crosspatch.errors import AdapterShapeMismatchError, ModelLoadError
from crosspatch.models.adapters import check_adapter_files
from crosspatch.testing import tiny_model


def _save(tmp_path, arch: str = "llama", **lora) -> tuple[str, str]:
    """A tiny base of ``arch`` and a PEFT LoRA adapter on it (``lora``: LoraConfig's settings)."""
    from peft import LoraConfig, get_peft_model

    base = tiny_model(arch)
    base.save_pretrained(str(tmp_path / "base"))
    model = get_peft_model(tiny_model(arch), LoraConfig(init_lora_weights=False, **lora))
    model.save_pretrained(str(tmp_path / "adapter"))
    return str(tmp_path / "adapter"), str(tmp_path / "base")


@pytest.mark.parametrize("arch, lora", [
    ("llama", dict(r=4, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])),
    ("llama", dict(r=4, target_modules="all-linear", bias="lora_only")),
    ("llama", dict(r=8, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2})),
    ("llama", dict(r=4, target_modules=["q_proj", "v_proj"], use_dora=True)),
    ("llama", dict(r=4, target_modules=["q_proj", "embed_tokens"], modules_to_save=["lm_head"])),
    ("gpt2", dict(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)),  # Conv1D: weights stored [in, out]
])
def test_adapters_peft_saves_fit_their_own_base(tmp_path, arch, lora):
    adapter, base = _save(tmp_path, arch, **lora)
    check_adapter_files(adapter, False, base)


def _edit(adapter: str, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = f"{adapter}/adapter_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_an_adapter_that_does_not_fit_is_named_before_any_weight_loads(tmp_path):
    adapter, base = _save(tmp_path, r=4, target_modules=["q_proj", "v_proj"])
    key = "base_model.model.model.layers.0.self_attn.q_proj"

    def widen(t):  # trained on a base with other input sizes
        t[f"{key}.lora_A.weight"] = t[f"{key}.lora_A.weight"].repeat(1, 2)

    _edit(adapter, widen)
    with pytest.raises(AdapterShapeMismatchError, match=rf"does not fit base .*{key} maps 64 inputs to 32 outputs in "
                                                        r"the adapter but its base weight has shape \[32, 32\]"):
        check_adapter_files(adapter, False, base)
    adapter, base = _save(tmp_path / "rank", r=4, target_modules=["q_proj", "v_proj"])
    config = json.loads((tmp_path / "rank" / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "rank" / "adapter" / "adapter_config.json").write_text(json.dumps(config | {"r": 8}))
    with pytest.raises(AdapterShapeMismatchError, match=r"does not match its own adapter_config.json: .* has rank 4 in "
                                                        r"its weights but the configuration .* gives rank 8"):
        check_adapter_files(adapter, False, base)
    adapter, base = _save(tmp_path / "half", r=4, target_modules=["q_proj"])
    _edit(adapter, lambda t: t.pop(f"{key}.lora_B.weight"))
    with pytest.raises(ModelLoadError, match=r"q_proj has its lora_A weight but no lora_B: the adapter file is incomplete"):
        check_adapter_files(adapter, False, base)


def test_a_quantized_base_is_left_to_the_loader(tmp_path):
    """A pre-quantized base stores packed integer weights of other shapes: no fit is told from them."""
    import torch
    from safetensors.torch import save_file

    adapter, base = _save(tmp_path, r=4, target_modules=["q_proj"])
    packed = {"model.layers.0.self_attn.q_proj.weight": torch.zeros(512, 1, dtype=torch.uint8)}
    save_file(packed, f"{base}/model.safetensors", metadata={"format": "pt"})
    check_adapter_files(adapter, False, base)  # packed integers are no shape to compare
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.zeros(16, 16)}, f"{base}/model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(AdapterShapeMismatchError):
        check_adapter_files(adapter, False, base)
    (tmp_path / "base" / "config.json").write_text(json.dumps(config | {"quantization_config": {"quant_method": "bnb"}}))
    check_adapter_files(adapter, False, base)


def test_an_output_lora_over_added_tokens_fits_a_vision_language_base(tmp_path):
    """A vision-language config keeps its vocabulary size in ``text_config``: an adapter trained
    after tokens were added (its output LoRA has more rows than the base's vocabulary) fits there
    as it fits a text-only base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    from crosspatch.testing.vision import tiny_vlm

    tiny_vlm().save_pretrained(str(tmp_path / "base"))
    assert "vocab_size" not in json.loads((tmp_path / "base" / "config.json").read_text())
    weights = load_file(str(tmp_path / "base" / "model.safetensors"))  # named as the modules are (Qwen2-VL's layout)
    weights["lm_head.weight"] = weights.pop("language_model.lm_head.weight")
    save_file(weights, str(tmp_path / "base" / "model.safetensors"), metadata={"format": "pt"})
    model = get_peft_model(tiny_vlm(), LoraConfig(r=4, target_modules=["lm_head", "q_proj"], init_lora_weights=False))
    model.save_pretrained(str(tmp_path / "adapter"))
    adapter, key = str(tmp_path / "adapter"), "base_model.model.lm_head.lora_B.weight"

    def add_two_tokens(t):
        t[key] = torch.cat([t[key], torch.zeros(2, t[key].shape[1])])

    _edit(adapter, add_two_tokens)
    check_adapter_files(adapter, False, str(tmp_path / "base"))
    _edit(adapter, lambda t: t.__setitem__(key, t[key][:-4]))  # fewer rows than the base's vocabulary
    with pytest.raises(AdapterShapeMismatchError, match="lm_head maps"):
        check_adapter_files(adapter, False, str(tmp_path / "base"))


def test_an_adapter_is_checked_against_a_base_saved_under_other_names_than_its_modules(tmp_path):
    """A LLaVA checkpoint keeps its older tensor names (``language_model.model.layers...``) while
    PEFT names the modules of the model transformers builds (``model.language_model.layers...``):
    the fit is told from the model the base's config describes."""
    from peft import LoraConfig, get_peft_model

    from crosspatch.models.adapters import checkpoint_shapes
    from crosspatch.testing.vision import tiny_vlm

    tiny_vlm().save_pretrained(str(tmp_path / "base"))
    base = str(tmp_path / "base")
    model = get_peft_model(tiny_vlm(), LoraConfig(r=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False))
    model.save_pretrained(str(tmp_path / "adapter"))
    adapter = str(tmp_path / "adapter")
    key = next(k for k in weight_shapes_of(adapter) if "layers.0.self_attn.q_proj.lora_A" in k)
    assert key.removeprefix("base_model.model.").replace(".lora_A", "") not in checkpoint_shapes(base)
    check_adapter_files(adapter, False, base)

    def widen(t):
        t[key] = t[key].repeat(1, 2)

    _edit(adapter, widen)
    with pytest.raises(AdapterShapeMismatchError, match=r"q_proj maps 64 inputs to 32 outputs"):
        check_adapter_files(adapter, False, base)


def weight_shapes_of(adapter: str) -> dict:
    from crosspatch.models.adapters import weight_shapes

    return weight_shapes([f"{adapter}/adapter_model.safetensors"])
