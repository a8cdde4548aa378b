"""Pair checks: each incompatibility is a named error that says what differs."""

from __future__ import annotations

import json
import re

import pytest
import torch

from crosspatch.errors import (
    ArchitectureMismatchError,
    HiddenSizeMismatchError,
    LayerCountMismatchError,
    ModelLoadError,
    PickleWeightsRefusedError,
    PromptTokenizationMismatchError,
    SpecialTokensMismatchError,
    VocabularyMismatchError,
)
from crosspatch.execution import load_pair, pair_from_models
from crosspatch.models import build_real_vocabulary, capture_forward, readout, tokenize_once
from crosspatch.testing import ARCHITECTURES, char_tokenizer, tiny_model


def _tokenizer(bos_template=True, eos="</s>", swap=None, extra=None, pad="<pad>"):
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    base = char_tokenizer()
    vocab = dict(base.get_vocab())
    if swap:
        a, b = swap
        vocab[a], vocab[b] = vocab[b], vocab[a]
    if extra:
        vocab[extra] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    if bos_template:
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token=eos,
                                   pad_token=pad, unk_token="<unk>")


def test_architecture_mismatch():
    with pytest.raises(ArchitectureMismatchError, match="LlamaForCausalLM.*Qwen2ForCausalLM"):
        pair_from_models(tiny_model("llama"), tiny_model("qwen2"), char_tokenizer())


def test_layer_count_mismatch():
    with pytest.raises(LayerCountMismatchError, match="PT has 4 decoder layers, IT has 6"):
        pair_from_models(tiny_model("llama", 4), tiny_model("llama", 6), char_tokenizer())


def test_hidden_size_mismatch():
    from transformers import LlamaConfig, LlamaForCausalLM

    wide = LlamaForCausalLM(LlamaConfig(vocab_size=110, hidden_size=64, intermediate_size=64,
                                        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(HiddenSizeMismatchError, match="PT 32, IT 64"):
        pair_from_models(tiny_model("llama"), wide, char_tokenizer())


def test_models_in_memory_of_different_dtypes_are_named():
    """A float32 base and a float16 descendant failed inside the first patched pass (a matmul of
    two dtypes)."""
    with pytest.raises(ModelLoadError, match="differ in dtype .base float32, tuned float16."):
        pair_from_models(tiny_model(), tiny_model().to(torch.float16), char_tokenizer())


@pytest.mark.parametrize("option", [{"device": "cuda"}, {"dtype": "bf16"}, {"residency": "sequential"},
                                    {"revision": "main"}])
def test_loading_options_that_disagree_with_models_in_memory_are_refused_not_ignored(option):
    """They were recorded in the run's config as if they had acted, on models left as given."""
    from crosspatch.errors import OptionError

    with pytest.raises(OptionError, match="models given in memory are used where and as they are .float32 on cpu"):
        pair_from_models(tiny_model(), tiny_model(), char_tokenizer(), **option)


def test_loading_options_that_say_what_models_in_memory_are_are_accepted():
    for option in ({"residency": "both"}, {"device": "cpu"}, {"dtype": "fp32"}, {"dtype": torch.float32},
                   {"device": "auto", "dtype": "auto"}):
        assert pair_from_models(tiny_model(), tiny_model(), char_tokenizer(), **option).residency == "both"


def test_vocabulary_id_conflict():
    with pytest.raises(VocabularyMismatchError, match="different ids"):
        pair_from_models(tiny_model(), tiny_model(), char_tokenizer(), _tokenizer(swap=("a", "b")))


def test_special_tokens_mismatch_is_an_error_unless_allowed():
    tok_it = _tokenizer(eos="<unk>")
    with pytest.raises(SpecialTokensMismatchError, match="eos_token"):
        pair_from_models(tiny_model(), tiny_model(), char_tokenizer(), tok_it)
    pair = pair_from_models(tiny_model(), tiny_model(), char_tokenizer(), tok_it, allow_special_token_mismatch=True)
    assert any("eos_token" in w for w in pair.warnings)


def test_a_pad_token_alone_that_differs_is_recorded_not_refused():
    """Fine-tunes often set ``pad_token = eos_token`` over a base without one: padding is masked
    and zeroed, the method never reads the pad id, so the pair runs (without the flag) and the
    difference is in its warnings. With another EOS as well, the EOS is still refused."""
    for pad in ("</s>", None):
        pair = pair_from_models(tiny_model(), tiny_model(), char_tokenizer(), _tokenizer(pad=pad))
        (warning,) = [w for w in pair.warnings if "pad_token" in w]
        assert "of no consequence" in warning and "never reads it" in warning
    with pytest.raises(SpecialTokensMismatchError, match="eos_token.*pad_token"):
        pair_from_models(tiny_model(), tiny_model(), char_tokenizer(), _tokenizer(eos="<unk>", pad="</s>"))


@pytest.mark.parametrize("residency", ["both", "sequential"])
def test_special_tokens_that_differ_are_named_before_any_weight_loads(tmp_path, monkeypatch, residency):
    """A base and its instruct model whose EOS differs (Llama 3.1 and its Instruct) loaded both
    models (minutes at 8B) before being refused; the tokenizers alone now decide it."""
    import crosspatch.execution.opening as opening
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path)
    _tokenizer(eos="<unk>").save_pretrained(root / "tuned")
    monkeypatch.setattr(opening, "load_causal_lm", lambda *a, **k: pytest.fail("a model's weights were loaded"))
    monkeypatch.setattr(opening.SequentialSet, "load_handle", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SpecialTokensMismatchError, match="eos_token"):
        load_pair(str(root / "base"), tuned=str(root / "tuned"), residency=residency)


@pytest.mark.parametrize("arch, layers, error", [("qwen2", 4, "ArchitectureMismatchError"),
                                                  ("llama", 6, "LayerCountMismatchError")])
def test_a_descendant_of_another_shape_is_named_from_its_config(tmp_path, monkeypatch, arch, layers, error):
    """Another architecture or layer count is told from the two config.json files, before any
    weight loads (it was told once both models had loaded)."""
    import crosspatch.errors as errors
    import crosspatch.execution.opening as opening
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path)
    tiny_model(arch, layers).save_pretrained(tmp_path / "other")
    char_tokenizer().save_pretrained(tmp_path / "other")
    monkeypatch.setattr(opening, "load_causal_lm", lambda *a, **k: pytest.fail("a model's weights were loaded"))
    with pytest.raises(getattr(errors, error)):
        load_pair(str(root / "base"), tuned=str(tmp_path / "other"))


def test_prompt_tokenization_mismatch_names_the_prompt():
    with pytest.raises(PromptTokenizationMismatchError, match="'q7'.*first difference at index 0"):
        tokenize_once(char_tokenizer(), _tokenizer(bos_template=False), "q7", "Rain")


def test_ids_not_shared_are_masked_and_recorded():
    tok_it = _tokenizer(extra="<|im_end|>")
    real = build_real_vocabulary(char_tokenizer(), tok_it, len(tok_it) + 4)
    new_id = tok_it.convert_tokens_to_ids("<|im_end|>")
    assert not real.mask[new_id]
    assert real.masked_counts["not_shared"] == 1
    assert real.masked_counts["beyond_tokenizer"] == 4
    assert real.masked_counts["placeholder:gemma_unused"] == 2
    assert r"^<unused\d+>$" in real.patterns_matched


@pytest.mark.parametrize("token, pattern", [
    ("<unused7>", "gemma_unused"), ("<|reserved_special_token_3|>", "llama3_reserved"),
    ("[control_12]", "mistral_control"), ("<SPECIAL_40>", "tekken_special"), ("<|placeholder2|>", "phi3_placeholder"),
    ("<｜place▁holder▁no▁5｜>", "deepseek_placeholder"), ("<|reserved_200012|>", "generic_reserved"),
])
def test_never_trained_placeholders_of_each_family_are_masked(token, pattern):
    """Reserved tokens a family's tokenizer ships but never trained are no argmax candidates."""
    tok, without = _tokenizer(extra=token), _tokenizer()
    real = build_real_vocabulary(tok, tok, len(tok))
    assert not real.mask[tok.convert_tokens_to_ids(token)]
    key = f"placeholder:{pattern}"
    assert real.masked_counts.get(key) == build_real_vocabulary(without, without, len(without)).masked_counts.get(key, 0) + 1


def test_a_checkpoint_of_gguf_weights_says_what_they_are_and_how_to_convert_them(tmp_path):
    from crosspatch.models.paths import check_model_path

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 4}))
    (tmp_path / "model-Q4_K_M.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"holds GGUF weights \(model-Q4_K_M.gguf\).*gguf_file='model-Q4_K_M.gguf'"):
        check_model_path(str(tmp_path), "tuned")
    # as llama.cpp users keep them: a folder of GGUF files alone, or the file itself given as the model
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no config.json.*GGUF weights.*gguf_file='model-Q4_K_M.gguf'"):
        check_model_path(str(tmp_path), "tuned")
    with pytest.raises(ModelLoadError, match=r"is a GGUF file.*from_pretrained\(.*gguf_file='model-Q4_K_M.gguf'"):
        check_model_path(str(tmp_path / "model-Q4_K_M.gguf"), "base")


def test_weights_saved_as_a_variant_or_under_other_names_are_named_before_loading(tmp_path):
    """save_pretrained(variant="fp16") writes model.fp16.safetensors (sharded: model.fp16-0000k-of-0000n
    and model.safetensors.index.fp16.json), which loading without the variant does not read: it
    failed with transformers' "no file named model.safetensors" after the other models had loaded.
    A directory with the default weights beside a variant loads as before."""
    import torch
    from safetensors.torch import save_file

    from crosspatch.models.paths import check_model_path

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 4}))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.fp16.safetensors"))
    with pytest.raises(ModelLoadError, match=r"variant 'fp16' only \(model.fp16.safetensors.*from_pretrained\(DIR, "
                                             r"variant='fp16'\).save_pretrained\(NEW_DIR\)"):
        check_model_path(str(tmp_path), "tuned")
    (tmp_path / "model.fp16.safetensors").rename(tmp_path / "model.fp16-00001-of-00001.safetensors")
    (tmp_path / "model.safetensors.index.fp16.json").write_text(json.dumps(
        {"weight_map": {"w": "model.fp16-00001-of-00001.safetensors"}}))
    with pytest.raises(ModelLoadError, match=r"variant 'fp16' only"):
        check_model_path(str(tmp_path), "tuned")
    for other in tmp_path.glob("model.*"):
        other.unlink()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))  # a name of one's own
    with pytest.raises(ModelLoadError, match=r"names loading does not read \(weights.safetensors\).*model.safetensors"):
        check_model_path(str(tmp_path), "tuned")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    check_model_path(str(tmp_path), "tuned")  # the default weights are there: loaded as ever


@pytest.mark.parametrize("copy_as_quantization_config", [False, True])  # newer mlx_lm writes both keys
def test_a_checkpoint_quantized_by_mlx_is_named_before_loading(tmp_path, copy_as_quantization_config):
    """mlx_lm's quantized checkpoints (packed uint32 weights beside scales and biases) read as a
    config.json that is not the checkpoint's own when transformers tried them."""
    from crosspatch.models.paths import check_model_path
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    config = json.loads((root / "tuned" / "config.json").read_text())
    config["quantization"] = {"group_size": 64, "bits": 4}
    if copy_as_quantization_config:
        config["quantization_config"] = dict(config["quantization"])
    (root / "tuned" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"quantized by MLX \(.*4 bits, groups of 64\)"):
        check_model_path(str(root / "tuned"), "tuned")


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module."])
def test_a_state_dict_saved_from_a_wrapped_model_names_the_prefix(tmp_path, prefix):
    """Weights saved with ``save_file(model.state_dict())`` of a torch.compile'd or DDP-wrapped
    model carry the wrapper's prefix: every weight reads as missing, which is not an incomplete
    checkpoint."""
    from safetensors.torch import load_file, save_file

    from crosspatch.execution import load_pair
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    weights = load_file(root / "tuned" / "model.safetensors")
    save_file({prefix + k: v for k, v in weights.items()}, root / "tuned" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=rf"under the prefix '{re.escape(prefix)}'.*save_pretrained"):
        load_pair(str(root / "base"), tuned=str(root / "tuned"))


def test_a_distributed_trainers_sharded_checkpoint_says_how_to_consolidate_its_weights(tmp_path):
    """A Trainer checkpoint saved under DeepSpeed ZeRO-3 (without gathering) or FSDP's sharded
    state dict has a config.json and each rank's state, but no model weights: named as such, with
    the consolidation command, not as an incomplete download."""
    from crosspatch.models.paths import check_model_path

    zero, fsdp, empty = tmp_path / "zero", tmp_path / "fsdp", tmp_path / "empty"
    for folder in (zero, fsdp, empty):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 4}))
    (zero / "global_step100").mkdir()
    (zero / "global_step100" / "mp_rank_00_model_states.pt").write_bytes(b"")
    (zero / "zero_to_fp32.py").write_text("")
    (fsdp / "pytorch_model_fsdp_0").mkdir()
    with pytest.raises(ModelLoadError, match=r"DeepSpeed ZeRO checkpoint \(global_step100/\).*zero_to_fp32.py"):
        check_model_path(str(zero), "tuned")
    with pytest.raises(ModelLoadError, match=r"FSDP sharded checkpoint.*accelerate merge-weights .*pytorch_model_fsdp_0"):
        check_model_path(str(fsdp), "tuned")
    (zero / "zero_to_fp32.py").unlink()  # (a checkpoint saved without DeepSpeed's script beside it)
    with pytest.raises(ModelLoadError, match=r"python -m deepspeed.utils.zero_to_fp32 "):
        check_model_path(str(zero), "tuned")
    with pytest.raises(ModelLoadError, match="an incomplete download or copy"):
        check_model_path(str(empty), "tuned")


def test_a_checkpoint_asking_for_an_attention_kernel_this_machine_lacks_loads_with_sdpa(tmp_path):
    """A config.json saved from a GPU run asking for ``flash_attention_2`` (the key transformers 4
    reads, ``_attn_implementation``, or the one transformers 5 reads, ``attn_implementation``) made
    loading fail without the flash-attn package; the kernel changes speed and rounding only."""
    from transformers import AutoModelForCausalLM

    from crosspatch.runner.pipeline import run
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    config = json.loads((root / "tuned" / "config.json").read_text())
    (root / "tuned" / "config.json").write_text(json.dumps(
        {**config, "attn_implementation": "flash_attention_2", "_attn_implementation": "flash_attention_2"}))
    try:  # does this transformers refuse it? (each release reads one of the two keys)
        AutoModelForCausalLM.from_pretrained(str(root / "tuned"))
        refused = False
    except ImportError:
        refused = True
    pair = load_pair(str(root / "base"), tuned=str(root / "tuned"))
    assert any("attention kernel that is not installed" in w and "sdpa" in w for w in pair.warnings) == refused
    prompts = [{"id": f"p{k}", "prompt": f"the weather in city {k} is"} for k in range(4)]
    got = run(pair, prompts, max_new_tokens=8, bootstrap=0, progress=False).records
    (root / "tuned" / "config.json").write_text(json.dumps(config))
    expected = run(load_pair(str(root / "base"), tuned=str(root / "tuned")), prompts, max_new_tokens=8, bootstrap=0,
                   progress=False).records
    assert [(r.prompt_id, r.position, r.t_pt, r.t_it) for r in got] == [(r.prompt_id, r.position, r.t_pt, r.t_it)
                                                                         for r in expected]


def test_pickle_weights_are_refused_unless_allowed(tmp_path):
    model, tok = tiny_model(), char_tokenizer()
    for name in ("base", "tuned"):  # transformers 5 only writes safetensors: make a pickle checkpoint
        model.save_pretrained(tmp_path / name)
        (tmp_path / name / "model.safetensors").unlink()
        torch.save(model.state_dict(), tmp_path / name / "pytorch_model.bin")
        tok.save_pretrained(tmp_path / name)
    with pytest.raises(PickleWeightsRefusedError, match="--allow-pickle"):
        load_pair(str(tmp_path / "base"), tuned=str(tmp_path / "tuned"))
    pair = load_pair(str(tmp_path / "base"), tuned=str(tmp_path / "tuned"), allow_pickle=True)
    assert pair.num_layers == 4


def test_exactly_one_descendant_is_required(tmp_path):
    with pytest.raises(ModelLoadError, match="exactly one"):
        load_pair(str(tmp_path), tuned=None, adapter=None)


def test_missing_adapter_config_is_a_load_error(tmp_path):
    model, tok = tiny_model(), char_tokenizer()
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    (tmp_path / "notadapter").mkdir()
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        load_pair(str(tmp_path / "base"), adapter=str(tmp_path / "notadapter"))


def _saved_pair_with_tuned_weights(tmp_path, edit):
    from safetensors.torch import load_file, save_file

    model, tok = tiny_model(), char_tokenizer()
    for name in ("base", "tuned"):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    path = tmp_path / "tuned" / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return str(tmp_path / "base"), str(tmp_path / "tuned")


@pytest.mark.parametrize("residency", ["both", "sequential"])
def test_a_checkpoint_lacking_a_weight_is_refused_not_initialised_at_random(tmp_path, monkeypatch, residency):
    """Told from the two checkpoints' safetensors headers before any weight loads; a checkpoint
    with no reference of its layout (loaded alone) is refused by the loader."""
    import crosspatch.execution.opening as opening
    from crosspatch.models.loading import LoadOptions, load_causal_lm

    base, tuned = _saved_pair_with_tuned_weights(tmp_path, lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))
    with monkeypatch.context() as spy:
        spy.setattr(opening, "load_causal_lm", lambda *a, **k: pytest.fail("a model's weights were loaded"))
        with pytest.raises(ModelLoadError, match=r"lacks 1 weight.*model\.layers\.2\.mlp\.up_proj\.weight"):
            load_pair(base, tuned=tuned, residency=residency)
    with pytest.raises(ModelLoadError, match=r"lacks 1 weight.*model\.layers\.2\.mlp\.up_proj\.weight"):
        load_causal_lm(tuned, LoadOptions())


def test_weight_layout_checks_leave_alone_what_is_not_a_missing_weight(tmp_path):
    """The header comparison names only a descendant of its base's layout that lacks a matrix: a
    head tied to the embeddings and left out of the file, and a descendant whose weights are named
    otherwise (saved by another library version), are left to the loader."""
    from crosspatch.models.checks import compare_weight_layouts

    base, tuned = _saved_pair_with_tuned_weights(tmp_path / "tied", lambda t: t.pop("lm_head.weight"))
    config = json.loads((tmp_path / "tied" / "tuned" / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="lm_head.weight"):  # its config unties the head: it is missing
        compare_weight_layouts(base, tuned)
    for tie in (True, None):  # tied to the embeddings, or not said: the head is left out of the file
        (tmp_path / "tied" / "tuned" / "config.json").write_text(json.dumps(
            {k: v for k, v in config.items() if k != "tie_word_embeddings"} | ({"tie_word_embeddings": tie} if tie else {})))
        compare_weight_layouts(base, tuned)
    base, tuned = _saved_pair_with_tuned_weights(tmp_path / "null", lambda t: None)
    config = json.loads((tmp_path / "null" / "base" / "config.json").read_text())
    assert isinstance(config.get("head_dim"), int)
    (tmp_path / "null" / "base" / "config.json").write_text(json.dumps(config | {"head_dim": None}))
    compare_weight_layouts(base, tuned)  # a field one config leaves null (its default) is not a difference
    (tmp_path / "null" / "base" / "config.json").write_text(json.dumps(config | {"head_dim": 2 * config["head_dim"]}))
    with pytest.raises(ModelLoadError, match="head_dim"):
        compare_weight_layouts(base, tuned)
    base, tuned = _saved_pair_with_tuned_weights(
        tmp_path / "renamed", lambda t: t.update({"model.layers.0.mlp.fused.weight": t.pop("model.layers.0.mlp.up_proj.weight")}))
    compare_weight_layouts(base, tuned)


def test_a_descendant_quantized_in_its_text_config_is_left_to_the_loader(tmp_path):
    """A multimodal checkpoint may keep its ``quantization_config`` in ``text_config``: its packed
    integer weights are no shapes to read, so a quantized descendant does not lack the matrices its
    base has (it was refused as lacking them where only a top-level ``quantization_config`` was read)."""
    from safetensors.torch import load_file, save_file

    from crosspatch.models.checks import compare_weight_layouts
    from crosspatch.testing.vision import tiny_vlm

    base, tuned = str(tmp_path / "base"), str(tmp_path / "tuned")
    tiny_vlm().save_pretrained(base)
    tiny_vlm().save_pretrained(tuned)
    weights = load_file(f"{tuned}/model.safetensors")
    packed = [k for k in weights if ".self_attn." in k and k.endswith("proj.weight")]
    for key in packed:  # 4-bit packing: two values a byte
        weights[key] = torch.zeros(weights[key].numel() // 2, 1, dtype=torch.uint8)
    save_file(weights, f"{tuned}/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lacks"):  # read as a checkpoint of plain weights
        compare_weight_layouts(base, tuned)
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    config["text_config"]["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (tmp_path / "tuned" / "config.json").write_text(json.dumps(config))
    compare_weight_layouts(base, tuned)


@pytest.mark.parametrize("residency", ["both", "sequential"])
def test_weights_the_model_does_not_use_are_a_pair_warning(tmp_path, residency):
    base, tuned = _saved_pair_with_tuned_weights(tmp_path, lambda t: t.update({"model.extra.weight": torch.ones(2)}))
    pair = load_pair(base, tuned=tuned, residency=residency)
    notes = [w for w in pair.warnings if "not used" in w]
    assert len(notes) == 1 and "model.extra.weight" in notes[0] and tuned in notes[0]


@pytest.mark.parametrize("option, error", [
    ({"dtype": "int8"}, "OptionError"), ({"device": "gpu"}, "OptionError"), ({"residency": "weird"}, "OptionError"),
])
def test_load_options_are_checked_in_python_too(tmp_path, option, error):
    import crosspatch.errors as errors

    with pytest.raises(getattr(errors, error)):
        load_pair(str(tmp_path / "base"), tuned=str(tmp_path / "tuned"), **option)  # refused before the paths are read


def test_chat_turn_terminators_end_decoding_like_eos():
    """An instruct tokenizer's chat-turn terminator (a special token such as ``<|im_end|>``) is an
    end-of-sequence id of the pair, which ends decoding, even when no generation config lists
    it; the same text as an ordinary added token is not."""
    from crosspatch.models.loading import eos_token_ids

    tok = char_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>", "<|im_start|>"]})
    tok.add_tokens(["<end_of_turn>"])  # not special here: text, not a terminator
    im_end, start, eot = tok.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>", "<end_of_turn>"])
    assert eos_token_ids(tok, None) == {tok.eos_token_id, im_end}
    pair = pair_from_models(tiny_model("llama", vocab_size=len(tok) + 2), tiny_model("llama", vocab_size=len(tok) + 2,
                                                                                   seed=1), tok)
    assert im_end in pair.eos_ids and start not in pair.eos_ids and eot not in pair.eos_ids


@pytest.mark.parametrize("terminator", ["<|eot|>", "<|return|>", "<|END_OF_TURN_TOKEN|>", "<end_of_turn>", "<|end|>"])
def test_each_familys_chat_turn_terminator_ends_decoding(terminator):
    """Llama 4, GPT-OSS, Command-R, Gemma, Phi-3: a fine-tune saved without a generation config
    still stops at the end of its turn."""
    from crosspatch.models.loading import eos_token_ids

    tok = char_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [terminator]})
    assert tok.convert_tokens_to_ids(terminator) in eos_token_ids(tok, None)


def test_a_pair_that_names_no_end_of_sequence_token_is_warned_about():
    """Without any EOS id (tokenizer, generation config, terminators) every continuation runs to
    the budget, past where the models would stop: the pair's warnings say so; with one, nothing."""
    tok = char_tokenizer()
    assert not any("end-of-sequence" in w for w in pair_from_models(tiny_model("llama"), tiny_model("llama", seed=1),
                                                                     tok).warnings)
    tok.eos_token = None
    models = [tiny_model("llama"), tiny_model("llama", seed=1)]
    for m in models:
        m.generation_config.eos_token_id = None
    pair = pair_from_models(*models, tok)
    assert not pair.eos_ids
    assert any("no end-of-sequence token is known" in w for w in pair.warnings)


def test_weights_of_other_shapes_than_the_config_are_named(tmp_path):
    """A config.json that does not describe its weights (edited, or copied from another size) is a
    ModelLoadError naming the shapes (and, under transformers 5, the weights), not transformers' "see the report above"."""
    import json

    from crosspatch.errors import ModelLoadError
    from crosspatch.execution import load_pair
    from crosspatch.models.loading import LoadOptions, load_causal_lm
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path)
    config = json.loads((root / "tuned" / "config.json").read_text())
    config["intermediate_size"] = 48
    (root / "tuned" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"shapes its config.json gives.*64.*48"):
        load_causal_lm(str(root / "tuned"), LoadOptions())
    # in a pair it is told from its own config and its weights' headers before any weight loads
    import crosspatch.execution.opening as opening

    with pytest.MonkeyPatch.context() as spy:
        spy.setattr(opening, "load_causal_lm", lambda *a, **k: pytest.fail("a model's weights were loaded"))
        with pytest.raises(ModelLoadError, match=r"tuned: weights do not have the shapes its config.json gives "
                                                 r"\(model\.layers\.0\.mlp\.down_proj\.weight \[32, 64\] in the file, "
                                                 r"\[32, 48\] by the config"):
            load_pair(str(root / "base"), tuned=str(root / "tuned"))


@pytest.mark.parametrize("residency", ["both", "sequential"])
def test_a_checkpoint_saved_without_tokenizer_files_reads_with_the_base_tokenizer(tmp_path, residency):
    """``merge_and_unload().save_pretrained()`` writes no tokenizer: such a descendant is read with
    the base's tokenizer, and the pair says so."""
    from crosspatch.execution import load_pair
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (root / "tuned" / name).unlink(missing_ok=True)
    pair = load_pair(str(root / "base"), tuned=str(root / "tuned"), residency=residency)
    assert any("no tokenizer files" in w for w in pair.warnings)
    assert pair.tokenizers["tuned"].get_vocab() == pair.tokenizers["base"].get_vocab()


@pytest.mark.parametrize("base, tuned", [(None, "x"), (123, "x"), ("x", 5), ("x", ""), ("x", ["a", "b"]), ("  ", "x")])
def test_models_given_in_python_are_paths_or_hub_ids(base, tuned):
    """``None``, numbers, empty strings (the working directory) or a list where one path is
    expected are refused by name before anything is looked up."""
    from crosspatch.errors import OptionError
    from crosspatch.execution import load_pair

    with pytest.raises(OptionError, match="must be a model directory or a hub id"):
        load_pair(base, tuned=tuned)


def test_a_model_in_memory_given_where_a_path_is_expected_says_how_to_give_it():
    """preflight, splice and load_pair read checkpoints from disk: a model object given there was
    refused with its whole repr (every layer) as the 'value'; it is named by its class, with the
    way to give it (its saved directory, or pair_from_models for a run)."""
    from crosspatch.errors import OptionError
    from crosspatch.execution import load_pair
    from crosspatch.testing import tiny_model
    from crosspatch.workflows.preflight import preflight

    model = tiny_model("llama")
    for call in (lambda: load_pair(model, tuned="x"), lambda: preflight("x", merged=model)):
        with pytest.raises(OptionError, match=r"not a model in memory \(LlamaForCausalLM\): save it with "
                                              r"save_pretrained\(DIR\).*pair_from_models") as info:
            call()
        assert len(str(info.value)) < 300


def test_load_options_given_in_python_are_never_changed_by_a_load():
    from crosspatch.errors import OptionError
    from crosspatch.models.options import LoadOptions

    mine = LoadOptions(dtype="auto")
    copy = LoadOptions.with_overrides(mine, residency="sequential")
    assert copy is not mine and copy.residency == "sequential"
    assert mine.residency is None and mine.dtype == "auto"
    with pytest.raises(OptionError, match="LoadOptions"):
        LoadOptions.with_overrides({"dtype": "auto"})  # type: ignore[arg-type]


def test_a_misspelt_option_is_named_with_the_options_it_is_close_to():
    from crosspatch.models.options import LoadOptions
    from crosspatch.runner.config import RunConfig

    with pytest.raises(TypeError, match="unknown load option 'dtyp' \\(did you mean 'dtype'\\?\\)"):
        LoadOptions.with_overrides(None, dtyp="bf16")
    with pytest.raises(TypeError, match="'boundries' \\(did you mean 'boundaries' or 'boundary'\\?\\)"):
        RunConfig.with_overrides(None, boundries=2)
    with pytest.raises(TypeError, match="unknown run option 'zzz'$"):
        RunConfig.with_overrides(None, zzz=2)
    with pytest.raises(TypeError, match="'dtype': it is a load option, given where the models are loaded"):
        RunConfig.with_overrides(None, dtype="bf16")


@pytest.mark.parametrize("field, value", [("trust_remote_code", "no"), ("allow_pickle", "no"), ("hash_weights", 1),
                                          ("verbose", "x"), ("allow_special_token_mismatch", "no"), ("revision", 5),
                                          ("revision", ""), ("device", None)])
def test_load_switches_are_booleans_so_no_string_asks_for_remote_code(field, value):
    from crosspatch.errors import OptionError
    from crosspatch.models.loading import validate_load_options
    from crosspatch.models.options import LoadOptions

    with pytest.raises(OptionError, match=field if field != "device" else "device and dtype"):
        validate_load_options(LoadOptions.with_overrides(None, **{field: value}))


def test_a_torch_dtype_and_a_torch_device_read_as_their_names():
    import torch

    from crosspatch.models.loading import validate_load_options
    from crosspatch.models.options import LoadOptions

    options = LoadOptions.with_overrides(None, dtype=torch.float32, device=torch.device("cpu"))
    validate_load_options(options)  # a torch.device was "device and dtype must be strings"
    assert (options.dtype, options.device) == ("float32", "cpu")


def test_text_holding_tokens_only_the_descendant_has_is_refused_with_the_reason():
    """A chat fine-tune's tokenizer often adds its markup (``<|im_start|>``) as special tokens the
    base's lacks: text holding them (what its chat template writes) splits apart under the two
    tokenizers, which the message names, with the tokens and what to do."""
    from crosspatch.errors import PromptTokenizationMismatchError
    from crosspatch.models.vocab import tokenize_once

    tok_pt, tok_it = char_tokenizer(), char_tokenizer()
    tok_it.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    assert tokenize_once(tok_pt, tok_it, "a", "rain") == tok_pt("rain")["input_ids"]  # raw text: alike
    with pytest.raises(PromptTokenizationMismatchError,
                       match=r"'<\|im_start\|>'.*tokens the descendant's tokenizer has and the base's lacks "
                             r"\(<\|im_start\|>\).*without --chat-template"):
        tokenize_once(tok_pt, tok_it, "a", "<|im_start|>rain", add_special_tokens=False)


def test_a_trainers_state_beside_the_weights_is_neither_hashed_nor_sized_as_weights(tmp_path):
    """A Trainer's checkpoint-N directory holds optimizer.pt (twice the weights under Adam),
    scheduler.pt, rng_state.pth and training_args.bin beside the weights: a run records and hashes
    the weight files only, and sizes the model (for the residency it chooses) by them."""
    from crosspatch.execution.opening import _weights_bytes
    from crosspatch.models.loading import provenance, weight_files
    from crosspatch.models.options import LoadOptions
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path)
    checkpoint = root / "tuned"
    weights = (checkpoint / "model.safetensors").stat().st_size
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "scaler.pt"):
        (checkpoint / name).write_bytes(b"\0" * (2 * weights))
    assert [f.name for f in weight_files(str(checkpoint))] == ["model.safetensors"]
    assert list(provenance(str(checkpoint), LoadOptions())["weights"]) == ["model.safetensors"]
    assert _weights_bytes(str(checkpoint)) == weights


def test_a_hub_id_is_checked_at_the_revision_asked_for_and_its_snapshot_recorded(tmp_path, monkeypatch):
    """Offline, a hub id cached only at main is refused at once when another revision is asked
    for (not after a tokenizer's retries); the snapshot (commit) a cached id resolves to is what
    a run records of it."""
    import huggingface_hub.constants

    from crosspatch.errors import HubUnavailableError
    from crosspatch.models.paths import check_model_path, hub_snapshot

    entry = tmp_path / "hub" / "models--org--tiny"
    (entry / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (entry / "snapshots" / ("a" * 40) / "config.json").write_text("{}")
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(entry / "snapshots" / ("a" * 40) / "model.safetensors"))  # (cached whole)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_model_path("org/tiny", "base")
    check_model_path("org/tiny", "base", revision="main")
    with pytest.raises(HubUnavailableError, match="at revision 'v2' while HF_HUB_OFFLINE=1"):
        check_model_path("org/tiny", "base", revision="v2")
    assert hub_snapshot("org/tiny") == hub_snapshot("org/tiny", "main") == "a" * 40
    assert hub_snapshot("org/tiny", "v2") is None and hub_snapshot("org/other") is None


def _saved(tmp_path, name, shard_size=None):
    target = tmp_path / name
    tiny_model("llama", 2).save_pretrained(target, **({"max_shard_size": shard_size} if shard_size else {}))
    return target


@pytest.mark.parametrize("damage, named", [
    ("no weights", "has no weight files"),
    ("truncated", "is not a whole safetensors file"),
    ("missing shard", "names 1 shard(s) the directory lacks: model-00002-of-"),
])
def test_missing_or_truncated_weight_files_are_named_before_any_model_loads(tmp_path, monkeypatch, damage, named):
    # a 32B base is not loaded to learn that its descendant's download is incomplete
    import transformers

    from crosspatch.models.paths import check_model_path

    target = _saved(tmp_path, "tuned", shard_size="20KB" if damage == "missing shard" else None)
    if damage == "no weights":
        (target / "model.safetensors").unlink()
    elif damage == "truncated":
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        next(target.glob("model-00002-of-*.safetensors")).unlink()
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ModelLoadError, match=named.replace("(", r"\(").replace(")", r"\)")):
        check_model_path(str(target), "tuned")
    check_model_path(str(_saved(tmp_path, "whole", shard_size="20KB")), "tuned")  # a whole sharded checkpoint


def test_a_quantized_checkpoint_whose_package_is_missing_is_named_before_any_model_loads(tmp_path, monkeypatch):
    # transformers' own environment check of the method, asked up front: a QLoRA user's 4-bit base
    # is not refused after minutes of loading the other model
    import importlib.util
    import json

    import transformers

    from crosspatch.models.paths import check_model_path

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here: nothing is missing")
    target = _saved(tmp_path, "tuned")
    config = json.loads((target / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (target / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("a model was loaded"))
    # (transformers' own words for the missing package differ between versions; each names it)
    with pytest.raises(ModelLoadError, match=r"--tuned .* is a bitsandbytes checkpoint, and loading it needs a "
                                             r"package this environment lacks: .*bitsandbytes"):
        check_model_path(str(target), "tuned")
    config["quantization_config"] = {"quant_method": "no-such-method"}  # the loader names what it does not know
    (target / "config.json").write_text(json.dumps(config))
    check_model_path(str(target), "tuned")


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architectures_own_save_fits_its_config(tmp_path, arch):
    """The check of a checkpoint against its own config.json names nothing in what transformers
    saves, whatever the architecture (tied heads, fused or renamed layouts left to the loader)."""
    from crosspatch.models.checks import check_weights_fit_config

    tiny_model(arch).save_pretrained(tmp_path / "own")
    check_weights_fit_config(str(tmp_path / "own"))
    tied = tiny_model(arch)  # its head tied to the embeddings (then left out of the file)
    tied.config.tie_word_embeddings = True
    tied.tie_weights()
    tied.save_pretrained(tmp_path / "tied")
    check_weights_fit_config(str(tmp_path / "tied"))


def test_a_base_lacking_a_weight_or_not_described_by_its_config_is_named_before_any_weight_loads(tmp_path, monkeypatch):
    """A base has no other checkpoint to be compared with: its safetensors headers are checked
    against the model its own config.json describes (built on the meta device)."""
    from safetensors.torch import load_file, save_file

    import crosspatch.execution.opening as opening
    from crosspatch.models.checks import check_weights_fit_config

    base, tuned = _saved_pair_with_tuned_weights(tmp_path, lambda t: None)
    monkeypatch.setattr(opening, "load_causal_lm", lambda *a, **k: pytest.fail("a model's weights were loaded"))
    weights = load_file(f"{base}/model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "model.layers.1.self_attn.v_proj.weight"},
              f"{base}/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"base lacks 1 weight\(s\) that its LlamaForCausalLM needs "
                                             r"\(model\.layers\.1\.self_attn\.v_proj\.weight\)"):
        load_pair(base, tuned=tuned)
    save_file(weights, f"{base}/model.safetensors", metadata={"format": "pt"})
    check_weights_fit_config(base)
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    (tmp_path / "base" / "config.json").write_text(json.dumps(config | {"hidden_size": 2 * config["hidden_size"]}))
    with pytest.raises(ModelLoadError, match=r"base: weights do not have the shapes its config.json gives"):
        load_pair(base, tuned=tuned)


def test_a_config_building_fewer_layers_than_its_weights_hold_is_named_before_any_weight_loads(tmp_path, monkeypatch):
    """Both config.json files edited to fewer layers (so the pair still agrees): transformers would
    drop the last layer's weights with a warning and run a shallower model than the checkpoints'.
    It is named from the safetensors headers before any weight loads."""
    import crosspatch.execution.opening as opening

    base, tuned = _saved_pair_with_tuned_weights(tmp_path, lambda t: None)
    for path in (base, tuned):
        config = json.loads((tmp_path / path / "config.json").read_text())
        (tmp_path / path / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 3}))
    monkeypatch.setattr(opening, "load_causal_lm", lambda *a, **k: pytest.fail("a model's weights were loaded"))
    with pytest.raises(ModelLoadError, match=r"base holds weights of block\(s\) 3 that its config.json does not build "
                                             r"\(model\.layers\.3\..*\): its LlamaForCausalLM would load without them"):
        load_pair(base, tuned=tuned)


def test_a_gpt2_checkpoint_is_checked_against_its_config_too(tmp_path):
    """GPT-2's model class holds the weight names it drops as it loads in a set, not a list: its
    checkpoints are checked before loading like any other (a missing weight, surplus layers)."""
    from safetensors.torch import load_file, save_file

    from crosspatch.models.checks import check_weights_fit_config

    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path)
    check_weights_fit_config(str(tmp_path))
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "transformer.h.1.mlp.c_fc.weight"}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"lacks 1 weight\(s\) that its GPT2LMHeadModel needs \(transformer\.h\.1\.mlp"):
        check_weights_fit_config(str(tmp_path))
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model.config.n_layer -= 1
    model.config.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"holds weights of block\(s\) 3 that its config.json does not build"):
        check_weights_fit_config(str(tmp_path))


def test_a_checkpoint_named_otherwise_than_its_model_is_left_to_the_loader(tmp_path):
    """Tensor names that are not the model's (another library version's layout, a conversion
    mapping) say nothing about missing weights: nothing is named before loading."""
    from safetensors.torch import load_file, save_file

    from crosspatch.models.checks import check_weights_fit_config

    tiny_model().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights = {k.replace("model.", "transformer.", 1): v for k, v in weights.items() if "layers.1.mlp" not in k}
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    check_weights_fit_config(str(tmp_path))


def test_a_buffer_an_older_version_saved_does_not_hide_a_missing_weight(tmp_path):
    """Older Llama checkpoints hold each layer's rotary ``inv_freq`` beside the weights (transformers
    drops it as it loads): the layout is still the model's, and a missing weight is still named."""
    from safetensors.torch import load_file, save_file

    from crosspatch.models.checks import check_weights_fit_config

    tiny_model().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    check_weights_fit_config(str(tmp_path))
    weights.pop("model.layers.0.mlp.up_proj.weight")
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"lacks 1 weight\(s\).*model\.layers\.0\.mlp\.up_proj\.weight"):
        check_weights_fit_config(str(tmp_path))


@pytest.mark.parametrize("tied", [True, False])
def test_a_head_tied_to_the_embeddings_is_not_needed_in_the_file(tmp_path, tied):
    """A config that ties the output head to the embeddings saves no ``lm_head.weight``: that is
    complete; the same file under a config that unties the head lacks it."""
    from safetensors.torch import load_file

    from crosspatch.models.checks import check_weights_fit_config

    model = tiny_model()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    if tied:
        check_weights_fit_config(str(tmp_path))
        return
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"tie_word_embeddings": False}))
    with pytest.raises(ModelLoadError, match=r"lacks 1 weight\(s\).*\(lm_head\.weight\)"):
        check_weights_fit_config(str(tmp_path))


@pytest.mark.parametrize("base_has_them", [False, True])
def test_a_descendants_added_tokens_are_recorded_as_masked(tmp_path, base_has_them):
    """A descendant with tokens added in fine-tuning (embeddings resized) has ids the base lacks:
    no argmax picks them, and the record says so (it read "1024 of 1024 ids eligible; masked:
    none", counting only the rows both heads have). Where the base was saved with the
    descendant's tokenizer but never resized, both tokenizers list the ids, but the base's head
    has no row for them: they are masked all the same."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path)
    tuned = AutoModelForCausalLM.from_pretrained(root / "tuned")
    tokenizer = AutoTokenizer.from_pretrained(root / "tuned")
    rows = tuned.get_output_embeddings().weight.shape[0]
    count = rows + 2 - len(tokenizer)  # through the head's padding rows, and two beyond them
    tokenizer.add_special_tokens({"additional_special_tokens": [f"<|forecast_{k}|>" for k in range(count)]})
    tuned.resize_token_embeddings(rows + 2)
    tuned.save_pretrained(root / "tuned")
    tokenizer.save_pretrained(root / "tuned")
    if base_has_them:
        tokenizer.save_pretrained(root / "base")
    pair = load_pair(str(root / "base"), tuned=str(root / "tuned"))
    record = pair.real_vocab.as_record()
    assert record["total_ids"] == rows + 2
    assert not pair.real_vocab.for_rows(rows + 2)[rows:].any()  # beyond the base's head: never real
    assert record["masked_counts"]["not_shared"] == (2 if base_has_them else count)


def test_a_model_whose_logits_the_readout_would_not_reproduce_is_refused_by_name():
    """The cells are read out with the final norm and the output embeddings (and the known final
    scalings): a model computing its logits with something more (here a multiplier no config key
    names; ModernBERT-decoder's prediction head below) is refused by name rather than scored with
    logits it never computes. A final norm that also runs elsewhere in the pass (NanoChat normalises
    its embeddings with it) is read where it follows the last layer, and accepted."""
    from crosspatch.errors import UnsupportedArchitectureError

    base, tuned = tiny_model("llama"), tiny_model("llama", seed=1)
    tuned.register_forward_hook(lambda module, args, output: output.__class__(logits=output.logits * 1.5))
    with pytest.raises(UnsupportedArchitectureError, match="does not reproduce the model's own logits"):
        pair_from_models(base, tuned, char_tokenizer())
    twice = tiny_model("llama", seed=1)  # the final norm's module also normalises the embeddings (NanoChat)
    twice.model.embed_tokens.register_forward_hook(lambda module, args, output: twice.model.norm(output))
    pair = pair_from_models(base, twice, char_tokenizer())
    states = capture_forward(pair.it, [[1, 40, 41, 42]], [2], pad_id=0)
    assert states.final_states.shape[:2] == (1, 4)  # one final state per token, not the embeddings' call too
    with torch.inference_mode():
        want = twice(input_ids=torch.tensor([[1, 40, 41, 42]])).logits[0].float()
    assert torch.allclose(readout(pair.it, states.final_states[0]), want, atol=1e-5)
    pair_from_models(base, tiny_model("llama", seed=1), char_tokenizer())  # the same model, untouched: accepted


def test_a_prediction_head_between_the_final_norm_and_the_output_layer_is_refused_before_a_run(tmp_path):
    """ModernBERT-decoder, loaded from disk: its logits pass a dense layer and a norm after the final
    norm, which the readout would skip."""
    import transformers

    from crosspatch.errors import UnsupportedArchitectureError

    if not hasattr(transformers, "ModernBertDecoderConfig"):
        pytest.skip("this transformers has no ModernBERT-decoder")
    config = transformers.ModernBertDecoderConfig(
        vocab_size=len(char_tokenizer()) + 6, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    for name in ("base", "tuned"):
        model.save_pretrained(tmp_path / name)
        char_tokenizer().save_pretrained(tmp_path / name)
    with pytest.raises(UnsupportedArchitectureError, match="ModernBertDecoderForCausalLM.*prediction head"):
        load_pair(str(tmp_path / "base"), str(tmp_path / "tuned"))


def _indexed_sparse_pair(index_topk: int):
    import transformers

    if not hasattr(transformers, "DeepseekV32Config"):
        pytest.skip("this transformers has no DeepSeek-V3.2")
    from crosspatch.testing import perturb_layers

    config = transformers.DeepseekV32Config(
        vocab_size=len(char_tokenizer()) + 6, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, tie_word_embeddings=False, layer_types=["indexed_attention"] * 4,
        mlp_layer_types=["dense", "sparse", "sparse", "sparse"], n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_group=1, topk_group=1, index_n_heads=2,
        index_head_dim=16, index_topk=index_topk)
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        base.get_output_embeddings().weight.mul_(4)
    return base, perturb_layers(base, range(4), scale=0.3)


def test_indexed_sparse_attention_is_exact_within_its_top_k_and_refused_past_it():
    """An indexer (DeepSeek-V3.2) lets each token attend to its top-k keys: while a sequence has at
    most k tokens every key is picked and the model runs exactly like dense attention; past k the
    model's own cached decoding picks other keys than its full pass (measured: 7e-2 logits), so
    prompts that would reach past k are refused by name, naming index_topk."""
    _exact_within_and_refused_past(_indexed_sparse_pair, "indexed sparse attention picks .* index_topk")


def _exact_within_and_refused_past(make_pair, refusal: str) -> None:
    """``make_pair(bound)``: a pair exact up to ``bound`` tokens. Within 256 the cells reproduce the
    model's own logits; prompts that would reach past 12 are refused, the error matching ``refusal``."""
    from crosspatch.errors import PromptTooLongError
    from crosspatch.runner.pipeline import run

    from ..conftest import PROMPTS
    from .test_anatomy import result_prefix

    prompts = [dict(p) for p in PROMPTS[:4]]
    options = dict(boundary=2, max_new_tokens=8, bootstrap=0, progress=False, controls="none", event_kinds="first_diff")
    pair = pair_from_models(*make_pair(256), char_tokenizer())
    result = run(pair, prompts, **options)
    assert result.records
    for rec in result.records:
        with torch.inference_mode():
            ref = pair.it.anatomy.model(input_ids=torch.tensor([result_prefix(pair, rec, prompts)])).logits[0, -1]
        assert abs(rec.cells["common_it"]["uit_lit"] - float(ref[rec.t_it] - ref[rec.t_pt])) <= 1e-5
    with pytest.raises(PromptTooLongError, match=refusal):
        run(pair_from_models(*make_pair(12), char_tokenizer()), prompts, **options)


def test_the_keys_an_indexer_picks_are_read_from_config_json_before_any_model_loads(tmp_path):
    from crosspatch.models.config_dicts import local_sparse_topk

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deepseek_v32", "index_topk": 2048}))
    assert local_sparse_topk(str(tmp_path)) == 2048
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "a_vlm", "vision_config": {},
                                                      "text_config": {"index_topk": 512}}))
    assert local_sparse_topk(str(tmp_path)) == 512
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert local_sparse_topk(str(tmp_path)) is None


def test_an_index_topk_that_a_dense_model_merely_carries_is_not_read(tmp_path):
    """Only a model with indexed layers picks keys: a config whose layer kinds are dense, or whose
    model type's config class has no indexer, is not held to the key it happens to carry."""
    from crosspatch.models.config_dicts import local_sparse_topk

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "index_topk": 4}))
    assert local_sparse_topk(str(tmp_path)) is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "a_future_model", "index_topk": 4,
                                                      "layer_types": ["full_attention", "sliding_attention"]}))
    assert local_sparse_topk(str(tmp_path)) is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "a_future_model", "index_topk": 4,
                                                      "layer_types": ["indexed_attention", "full_attention"]}))
    assert local_sparse_topk(str(tmp_path)) == 4


def _longrope_pair(original: int):
    """A tiny Phi-3 pair with a long-context RoPE (longrope) whose original context is ``original``."""
    import transformers

    from crosspatch.testing import perturb_layers

    config = transformers.Phi3Config(
        vocab_size=len(char_tokenizer()), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, pad_token_id=0, eos_token_id=2,
        original_max_position_embeddings=original,
        rope_scaling={"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [4.0] * 4})
    torch.manual_seed(0)
    base = transformers.Phi3ForCausalLM(config).eval()
    with torch.no_grad():
        base.get_output_embeddings().weight.mul_(4)
    return base, perturb_layers(base, range(4), scale=0.3)


def test_a_long_context_rope_is_exact_within_its_original_context_and_refused_past_it():
    """longrope (Phi-3/3.5 128k, Phi-4-mini) computes every position of a pass longer than its
    original context with its long-context frequencies, while generating computed the earlier ones
    with the short ones: sequences that would reach past it are refused by name; within it the
    cells reproduce the model's own logits."""
    _exact_within_and_refused_past(_longrope_pair, "original_max_position_embeddings.*longrope")


def test_a_long_context_ropes_original_context_is_read_from_config_json_before_any_model_loads(tmp_path):
    from crosspatch.models.config_dicts import local_rope_switch

    longrope = {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [4.0]}
    for config in ({"model_type": "phi3", "rope_parameters": dict(longrope, original_max_position_embeddings=4096)},
                   {"model_type": "phi3", "rope_scaling": dict(longrope, rope_type=None, type="longrope"),
                    "original_max_position_embeddings": 4096},  # as transformers 4 writes Phi-3's
                   {"model_type": "a_vlm", "vision_config": {}, "text_config": {
                       "rope_parameters": {"full_attention": dict(longrope, original_max_position_embeddings=4096)}}}):
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert local_rope_switch(str(tmp_path)) == 4096
    for config in ({"model_type": "llama"}, {"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                                                    "original_max_position_embeddings": 4096}}):
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert local_rope_switch(str(tmp_path)) is None


def test_two_computations_of_logits_differ_only_beyond_their_precision():
    """``logits_gap``: rounding spread over a whole vocabulary (bfloat16: a few hundredths on
    logits of size 20, some of them near zero) is no difference; a shift of a sizeable part of
    the logits' scale is, and so is one computation being finite where the other is not."""
    from crosspatch.models.checks import logits_gap

    want = torch.linspace(-20, 20, 4001)
    assert logits_gap(want + 0.08 * torch.sin(want * 7), want, torch.bfloat16) is None
    assert logits_gap(want + 1e-4, want, torch.float32) is None
    assert logits_gap(want * 1.1, want, torch.bfloat16) == pytest.approx(2.0, rel=1e-3)
    assert logits_gap(want + 0.05, want, torch.float32) == pytest.approx(0.05, rel=1e-3)
    shifted = want.clone()
    shifted[7] = float("nan")
    assert logits_gap(shifted, want, torch.float32) == float("inf")
    assert logits_gap(torch.full((3,), float("nan")), torch.full((3,), float("nan")), torch.float32) is None


@pytest.mark.parametrize("residency", ["both", "sequential"])
def test_a_descendant_as_far_from_the_base_as_an_unrelated_model_is_warned_about(tmp_path, residency):
    """A checkpoint of the same shape from another pretraining run (another model version, the
    instruct model of another base) loaded without a word and was scored as a descendant. Its
    weights differ from the base's by about 141% of their norm, a fine-tune's by a few percent:
    the set's warnings say so, and a true descendant gets no such warning."""
    from crosspatch.models.kinship import weight_change
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "pair", scale=0.3)
    stranger = tmp_path / "stranger"
    tiny_model("llama", seed=7).save_pretrained(stranger)
    char_tokenizer().save_pretrained(stranger)
    related = load_pair(str(root / "base"), tuned=str(root / "tuned"), residency=residency)
    assert not any("descendant of this base" in w for w in related.warnings)
    unrelated = load_pair(str(root / "base"), tuned=str(stranger), residency=residency)
    said = [w for w in unrelated.warnings if "descendant of this base" in w]
    assert len(said) == 1 and "median 14" in said[0], unrelated.warnings
    median, k = weight_change(str(root / "base"), str(root / "tuned"))  # type: ignore[misc]
    assert 0.2 < median < 0.4 and k == 8
    assert weight_change(str(root / "base"), "no-such/model-anywhere") is None  # nothing on this disk to read


def test_a_position_limit_that_is_no_positive_number_is_read_as_none_before_and_after_loading(tmp_path):
    """A config.json with max_position_embeddings -1 (or 0) read as no limit before any model
    loaded, and as a limit of -1 once it had: the run then refused every prompt as too long for
    "the model's -1 positions", after loading. Both read the first positive number, or none."""
    from crosspatch.models.checks import position_limit
    from crosspatch.models.config_dicts import local_max_positions

    model = tiny_model("llama")
    for odd in (-1, 0):
        model.config.max_position_embeddings = odd
        model.save_pretrained(str(tmp_path))
        assert position_limit(model) is None and local_max_positions(str(tmp_path)) is None, odd
    model.config.max_position_embeddings = 64
    assert position_limit(model) == 64


def test_a_revision_given_for_local_checkpoints_is_said_to_select_nothing(tmp_path):
    """--revision names a Hub revision; with every checkpoint a local directory it was silently
    ignored (a user pinning v2 of a model they hold locally gets whatever the folder holds)."""
    from crosspatch.execution import load_models
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    said = [w for w in load_models(str(root / "base"), tuned=str(root / "tuned"), revision="v2").warnings
            if "revision" in w]
    assert said == ["revision 'v2' (--revision) names a Hub revision, and every checkpoint here is a local "
                    "directory, read as it is: the revision selects nothing"]
    assert not [w for w in load_models(str(root / "base"), tuned=str(root / "tuned")).warnings if "revision" in w]
