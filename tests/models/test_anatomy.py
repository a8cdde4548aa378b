"""Every supported architecture: anatomy is found and the full pipeline is exact."""

from __future__ import annotations

import inspect
import types

import pytest
import torch
from torch import nn

from crosspatch.core.cells import score_events
from crosspatch.core.divergence import DivergenceEvent
from crosspatch.models import capture_forward, find_anatomy, late_forward, tokenize_once
from crosspatch.models.forward import _SkippedLayer, layer_output_hidden
from crosspatch.runner.pipeline import run
from crosspatch.testing import ARCHITECTURES, make_pair, tiny_model

EXPECTED = {"llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "olmo2", "gpt2", "gpt_neox", "phi3"}


def test_required_architectures_are_covered():
    assert EXPECTED <= set(ARCHITECTURES)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_full_pipeline_runs_and_diagonals_are_exact(arch, prompts):
    pair = make_pair(arch)
    anatomy = pair.it.anatomy
    assert anatomy.num_layers == 4 and anatomy.hidden_size == 32
    result = run(pair, prompts[:4], max_new_tokens=10, boundary=0.5, bootstrap=200, progress=False)
    assert result.summary["counts"]["events"] + sum(result.summary["counts"]["no_divergence"].values()) == 4
    assert result.records, "a perturbed descendant must diverge somewhere"
    for rec in result.records:
        with torch.inference_mode():
            ids = torch.tensor([result_prefix(pair, rec, prompts)])
            ref_it = pair.it.anatomy.model(input_ids=ids).logits[0, -1].float()
            ref_pt = pair.pt.anatomy.model(input_ids=ids).logits[0, -1].float()
        assert abs(rec.cells["common_it"]["uit_lit"] - float(ref_it[rec.t_it] - ref_it[rec.t_pt])) <= 1e-5
        assert abs(rec.cells["common_pt"]["upt_lpt"] - float(ref_pt[rec.t_it] - ref_pt[rec.t_pt])) <= 1e-5
        assert rec.natural_agrees


def result_prefix(pair, rec, prompts):
    """Rebuild the event prefix from the rollout (IT decodes; prefix = prompt + shared tokens)."""
    text = next(p["prompt"] for p in prompts if p["id"] == rec.prompt_id)
    ids = tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, rec.prompt_id, text)
    from crosspatch.execution import greedy_rollout

    return ids + greedy_rollout(pair.it, [ids], rec.position, pair)[0][: rec.position] if rec.position else ids


def test_gemma_softcap_and_gpt2_names_are_found():
    assert find_anatomy(tiny_model("gemma2")).logit_softcap == 5.0
    gpt2 = find_anatomy(tiny_model("gpt2"))
    assert gpt2.final_norm is gpt2.backbone.ln_f and gpt2.layers is gpt2.backbone.h
    neox = find_anatomy(tiny_model("gpt_neox"))
    assert neox.final_norm is neox.backbone.final_layer_norm


def test_opt_layers_in_its_decoder_are_found_and_its_350m_layout_is_refused_by_name():
    """OPT keeps its layers and final norm in ``model.decoder``: it was refused ("no decoder
    layer list found in OPTModel; add the architecture to ..._REGISTRY", which a user cannot
    do). Its sizes with a final norm are found (and run in every architecture test); OPT-350m's
    layout (no final norm, ``project_out`` after the last layer) is refused from its config.json,
    before any weight loads, and from a loaded model."""
    from transformers import AutoModelForCausalLM, OPTConfig

    from crosspatch.errors import UnsupportedArchitectureError
    from crosspatch.models.anatomy import check_supported

    opt = find_anatomy(tiny_model("opt"))
    assert opt.layers is opt.backbone.decoder.layers and opt.final_norm is opt.backbone.decoder.final_layer_norm
    post_norm = dict(model_type="opt", hidden_size=1024, word_embed_proj_dim=512, do_layer_norm_before=False)
    with pytest.raises(UnsupportedArchitectureError, match="OPT-350m"):
        check_supported(post_norm)
    small = {k: v for k, v in post_norm.items() if k != "model_type"} | dict(
        hidden_size=32, word_embed_proj_dim=16, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=64)
    with pytest.raises(UnsupportedArchitectureError, match="OPT-350m"):
        find_anatomy(AutoModelForCausalLM.from_config(OPTConfig(**small)))


def test_xglm_and_biogpt_final_norms_are_found_and_ctrl_is_refused_by_name():
    """XGLM and BioGPT keep their final norm as ``layer_norm``: both were refused ("no final norm
    found"); they run exactly (every architecture test). CTRL's final ``layernorm`` is found too,
    but crosspatch's decoding of a tiny CTRL does not reproduce transformers' greedy continuations,
    so it is refused by name from its config.json rather than run inexactly."""
    from crosspatch.errors import UnsupportedArchitectureError
    from crosspatch.models.anatomy import check_supported

    for arch in ("xglm", "biogpt"):
        found = find_anatomy(tiny_model(arch))
        assert found.final_norm is found.backbone.layer_norm, arch
    with pytest.raises(UnsupportedArchitectureError, match="ctrl: .*refused rather than run inexactly"):
        check_supported({"model_type": "ctrl", "n_layer": 2})


def test_a_config_json_naming_its_architectures_oddly_is_read_as_transformers_reads_it():
    """``architectures`` is a list of class names; a config.json holding one name as text is still
    read (a classifier's is refused), and one holding a number raised TypeError before any model
    loaded: transformers loads by model_type, and so does crosspatch."""
    from crosspatch.errors import UnsupportedArchitectureError
    from crosspatch.models.anatomy import check_supported

    with pytest.raises(UnsupportedArchitectureError, match="a classifier's checkpoint"):
        check_supported({"model_type": "llama", "architectures": "LlamaForSequenceClassification"})
    for odd in (-1, 1.5, True, {}, "LlamaForCausalLM"):
        check_supported({"model_type": "llama", "architectures": odd})


class _TupleLayer(nn.Module):
    """A transformers-4.x-style decoder layer: returns ``(hidden_states,)``."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, hidden_states, **kwargs):
        return (self.inner(hidden_states, **kwargs),)


def _tuple_style_llama():
    """A Llama whose layers return tuples and whose loop indexes ``[0]`` (the 4.x contract)."""
    from transformers.masking_utils import create_causal_mask
    from transformers.modeling_outputs import BaseModelOutputWithPast

    model = tiny_model("llama")
    backbone = model.model
    backbone.layers = nn.ModuleList(_TupleLayer(layer) for layer in backbone.layers)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=False, **kw):
        h = self.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = torch.arange(h.shape[1])[None]
        params = inspect.signature(create_causal_mask).parameters  # renamed across 5.x releases
        extra = {"inputs_embeds": h, "cache": None} if "inputs_embeds" in params else \
            {"input_embeds": h, "past_key_values": None, "cache_position": torch.arange(h.shape[1])}
        mask = create_causal_mask(config=self.config, attention_mask=attention_mask, position_ids=position_ids, **extra)
        pe = self.rotary_emb(h, position_ids)
        for layer in self.layers:
            h = layer(h, attention_mask=mask, position_embeddings=pe, position_ids=position_ids)[0]
        return BaseModelOutputWithPast(last_hidden_state=self.norm(h))

    backbone.forward = types.MethodType(forward, backbone)
    return model


@pytest.mark.skipif(__import__("transformers").__version__.startswith("4."),
                    reason="transformers 4.x layers return tuples already: every architecture test covers them")
def test_tuple_returning_layers_are_handled():
    reference = tiny_model("llama")
    model = _tuple_style_llama()
    from crosspatch.execution import pair_from_models
    from crosspatch.testing import char_tokenizer

    pair = pair_from_models(model, reference, char_tokenizer())
    ids = tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, "a", "Rain in Boston")
    cap = capture_forward(pair.pt, [ids], [2], pair.pad_id)
    assert pair.pt.anatomy.layer_output_items == 1  # (hidden states,), learned from the first pass
    late = late_forward(pair.pt, 2, cap.boundary_states[2], [ids], pair.pad_id)
    assert torch.equal(late, cap.final_states)
    # same weights, different layer contract: the cells agree with the tensor-returning model
    rec = score_events(pair, [DivergenceEvent("a", None, len(ids), 0, ids, 40, 50)], [2])[0]
    for cell in ("upt_lpt", "upt_lit", "uit_lpt", "uit_lit"):
        assert abs(rec.cells["common_it"][cell] - rec.cells["common_it"]["upt_lpt"]) <= 1e-5


def test_skipped_layer_mirrors_the_layer_contract():
    x = torch.randn(1, 3, 4)
    assert _SkippedLayer(nn.Identity(), output_items=0)(x) is x
    out = _SkippedLayer(nn.Identity(), output_items=1)(x, attention_mask=None)
    assert isinstance(out, tuple) and len(out) == 1 and layer_output_hidden(out) is x
    out = _SkippedLayer(nn.Identity(), output_items=2)(x)  # as long as the real layers' (GLM-DSA's top-k indices)
    assert len(out) == 2 and out[0] is x and out[1] is None
    assert layer_output_hidden(x) is x


def test_models_the_method_cannot_run_exactly_are_refused_by_name():
    from transformers import MambaConfig, MambaForCausalLM, T5Config

    from crosspatch.errors import UnsupportedArchitectureError
    from crosspatch.models.anatomy import check_supported

    with pytest.raises(UnsupportedArchitectureError, match="encoder-decoder"):
        check_supported(T5Config(num_layers=2))
    with pytest.raises(UnsupportedArchitectureError, match="state-space"):
        check_supported({"model_type": "jamba"})  # a parsed config.json, before any model loads
    mamba = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, state_size=4))
    with pytest.raises(UnsupportedArchitectureError, match="state-space"):
        find_anatomy(mamba)  # a loaded model: refused before any pass runs
    with pytest.raises(UnsupportedArchitectureError, match="multimodal rotary"):
        check_supported({"model_type": "qwen2_vl", "vision_config": {"depth": 1}, "text_config": {}})
    check_supported({"model_type": "llama"})
    check_supported({"model_type": "llava", "vision_config": {}, "text_config": {"model_type": "llama"}})


def test_models_batching_or_a_late_stack_cannot_run_exactly_are_refused_from_their_config_whatever_their_type():
    """A hybrid family crosspatch has never heard of (Qwen3.5, OLMo hybrid, ...) is told by its
    config's ``layer_types``: any layer keeping a recurrent state instead of keys and values over
    positions (linear attention, Mamba, convolution), or attending over compressed blocks of
    positions that left padding would shift (DeepSeek-V4), refuses the model before it loads; so
    does a residual stream of several streams (Gemma 3n's AltUp) or layers reading earlier layers'
    keys and values (its shared KV cache): a late stack cannot run on another model's state."""
    from crosspatch.errors import UnsupportedArchitectureError
    from crosspatch.models.anatomy import check_supported

    hybrid = {"model_type": "a_future_hybrid", "layer_types": ["linear_attention", "linear_attention", "full_attention"]}
    with pytest.raises(UnsupportedArchitectureError, match="linear_attention layers keep a recurrent or compressed state"):
        check_supported(hybrid)
    with pytest.raises(UnsupportedArchitectureError, match="compressed_sparse_attention, heavily_compressed_attention"):
        check_supported({"model_type": "deepseek_v4", "layer_types": ["heavily_compressed_attention",
                                                                      "compressed_sparse_attention"]})
    with pytest.raises(UnsupportedArchitectureError, match="conv layers"):
        check_supported({"model_type": "a_future_vlm", "vision_config": {},
                         "text_config": {"model_type": "a_future_text", "layer_types": ["conv", "full_attention"]}})
    with pytest.raises(UnsupportedArchitectureError, match=r"several streams \(altup_num_inputs = 4\)"):
        check_supported({"model_type": "gemma3n", "vision_config": {}, "audio_config": {},
                         "text_config": {"model_type": "gemma3n_text", "altup_num_inputs": 4}})
    with pytest.raises(UnsupportedArchitectureError, match="last 2 layers attend with the keys and values of earlier"):
        check_supported({"model_type": "a_kv_sharing_model", "num_kv_shared_layers": 2})
    check_supported({"model_type": "llama", "num_kv_shared_layers": 0, "altup_num_inputs": 1})
    check_supported({"model_type": "a_future_dense", "layer_types": ["sliding_attention", "full_attention",
                                                                     "chunked_attention"]})
