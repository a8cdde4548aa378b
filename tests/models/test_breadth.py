"""More dense families and mixture-of-experts models: anatomy found, diagonal cells equal the
unpatched model, a late-only descendant has an interaction of exactly zero; MoE routing at the
boundary is recorded."""

from __future__ import annotations

import pytest
import torch

from crosspatch.runner.pipeline import run
from crosspatch.testing import ARCHITECTURES, MOE_ARCHITECTURES, make_pair

from ..conftest import PROMPTS
from .test_anatomy import EXPECTED, result_prefix

MORE = sorted(set(ARCHITECTURES) - EXPECTED)
OPTIONS = dict(boundary=2, max_new_tokens=8, bootstrap=0, progress=False, controls="none", event_kinds="first_diff")


def test_at_least_twenty_architectures_are_tested():
    assert len(ARCHITECTURES) >= 20
    assert set(MOE_ARCHITECTURES) <= set(ARCHITECTURES)


@pytest.mark.slow
@pytest.mark.parametrize("arch", MORE)
def test_diagonal_is_exact_and_late_only_interaction_is_zero(arch):
    prompts = [dict(p) for p in PROMPTS[:4]]
    pair = make_pair(arch)
    result = run(pair, prompts, **OPTIONS)
    assert result.records, "a perturbed descendant must diverge somewhere"
    for rec in result.records:
        with torch.inference_mode():
            ids = torch.tensor([result_prefix(pair, rec, prompts)])
            ref = pair.it.anatomy.model(input_ids=ids).logits[0, -1].float()
        assert abs(rec.cells["common_it"]["uit_lit"] - float(ref[rec.t_it] - ref[rec.t_pt])) <= 1e-5
    late = run(make_pair(arch, perturb=[2, 3]), prompts, plan="exact", **OPTIONS)
    for rec in late.records:
        y = rec.cells["common_it"]
        assert (y["uit_lit"] - y["uit_lpt"]) - (y["upt_lit"] - y["upt_lpt"]) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("arch", [a for a in MOE_ARCHITECTURES if a in ARCHITECTURES])
def test_moe_routing_at_the_boundary_is_recorded(arch):
    prompts = [dict(p) for p in PROMPTS[:4]]
    result = run(make_pair(arch), prompts, **OPTIONS)
    rows = result.analyses["routing"]
    assert rows and len(rows) == len(result.records)
    assert all(0.0 <= r["top_k_overlap"] <= 1.0 and r["js_divergence"] >= 0.0 for r in rows)
    assert result.summary["routing"]["n_events"] == len(rows)
    # perturbing only layer 3: at boundary 2 both models route the same state through the same router
    same = run(make_pair(arch, perturb=[3]), prompts, plan="exact", **OPTIONS)
    assert all(r["js_divergence"] == 0.0 and r["experts_pt"] == r["experts_it"] for r in same.analyses["routing"])


def test_dense_models_record_no_routing():
    result = run(make_pair("llama"), [dict(p) for p in PROMPTS[:3]], **OPTIONS)
    assert result.analyses["routing"] == [] and "routing" not in result.summary


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_continuous_batching_finds_the_batch_at_once_events(arch):
    """Two rows at a time, each finished row's place taken by the next prompt in the same caches
    (or, where a cache cannot be padded, batch after batch): the same events as all prompts in
    one batch, and cells to float rounding."""
    prompts = [dict(p) for p in PROMPTS]
    pair = make_pair(arch)
    small = run(pair, prompts, batch_size=2, **OPTIONS)
    whole = run(pair, prompts, batch_size=16, **OPTIONS)
    assert [(r.key, r.position, r.t_pt, r.t_it) for r in small.records] == \
        [(r.key, r.position, r.t_pt, r.t_it) for r in whole.records]
    assert [x.prompt_id for x in small.no_divergence] == [x.prompt_id for x in whole.no_divergence]
    for a, b in zip(small.records, whole.records):
        assert all(abs(a.cells["common_it"][c] - b.cells["common_it"][c]) <= 1e-4 for c in a.cells["common_it"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_static_decoding_finds_the_eager_events_with_bit_identical_exact_cells(arch):
    """``decode="static"`` (a preallocated KV cache of fixed shape: what compiled steps and CUDA
    graphs need) finds the eager search's events, every event kind included; under the exact plan
    the cells come from the same full passes, so they are bit-identical."""
    prompts = [dict(p) for p in PROMPTS]
    pair = make_pair(arch)
    options = {**OPTIONS, "event_kinds": "all", "plan": "exact"}
    eager = run(pair, prompts, decode="eager", **options)
    static = run(pair, prompts, decode="static", **options)
    used = static.summary["cost_this_session"]["decode"]
    # or a recorded fallback: no static cache, or a forward that fails with one (XGLM on transformers 4.x)
    assert used["mode"] == "static" or "no static KV cache" in used["reason"] or \
        "fails with a static cache" in used["reason"]
    assert [(r.key, r.position, r.t_pt, r.t_it) for r in static.records] == \
        [(r.key, r.position, r.t_pt, r.t_it) for r in eager.records]
    assert [r.cells for r in static.records] == [r.cells for r in eager.records]


def test_a_boundary_at_a_layer_that_reuses_an_earlier_layers_sparse_selection_is_refused_by_name(tmp_path):
    """GLM-5's shared-indexer layers attend over the top-k positions an earlier layer of the same
    model selected: a late stack starting at one would run on the other model's selection too (HF
    raised a bare ValueError mid-run). Refused before the search (Python and the command line, before
    any weight loads) and by the late pass itself; a boundary at a layer with its own indexer runs."""
    import json

    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from crosspatch.cli import app
    from crosspatch.errors import BoundaryError
    from crosspatch.execution import pair_from_models
    from crosspatch.models import late_forward
    from crosspatch.testing import char_tokenizer, perturb_layers
    from crosspatch.testing.tiny import VOCAB_PADDING, _configs

    tokenizer = char_tokenizer()
    if "glm_moe_dsa" not in _configs(8, 4):
        pytest.skip("this transformers has no GLM-MoE-DSA")
    config = _configs(len(tokenizer) + VOCAB_PADDING, 4)["glm_moe_dsa"]()
    config.indexer_types = ["full", "full", "shared", "full"]
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config).eval()
    tuned = perturb_layers(base, [0, 1, 2, 3], 0.5)
    pair = pair_from_models(base, tuned, tokenizer)
    prompts = [dict(p) for p in PROMPTS[:3]]
    with pytest.raises(BoundaryError, match=r"boundary 2: layer 2 reuses the sparse-attention selection.*: 1, 3$"):
        run(pair, prompts, **{**OPTIONS, "boundary": 2})
    with pytest.raises(BoundaryError, match="indexer_types\\[2\\] = 'shared'"):
        late_forward(pair.it, 2, torch.zeros(1, 3, 32), [[1, 40, 41]], 0)
    assert run(pair, prompts, **{**OPTIONS, "boundary": 3}).records
    base.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    for name in ("base", "tuned"):
        tokenizer.save_pretrained(tmp_path / name)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    res = CliRunner().invoke(app, ["run", "--base", str(tmp_path / "base"), "--tuned", str(tmp_path / "tuned"),
                                   "--prompts", str(tmp_path / "p.jsonl"), "--boundary", "2", "--dry-run"])
    assert res.exit_code == 2 and "BoundaryError: boundary 2: layer 2 reuses" in res.output, res.output
    # splice: its chimeras run at such a layer (as a merge would); its diagnostic (a run there) cannot
    from crosspatch.workflows.splice import splice

    with pytest.raises(BoundaryError, match="or give --no-diagnostic"):
        splice(str(tmp_path / "base"), tuned=str(tmp_path / "tuned"), prompts=prompts, boundaries=[2], max_new_tokens=3)
    alone = splice(str(tmp_path / "base"), tuned=str(tmp_path / "tuned"), prompts=prompts, boundaries=[2],
                   max_new_tokens=3, run_diagnostic=False)
    assert list(alone.document["boundaries"]) == ["2"]


def _from_config(model_type: str, **extra):
    """A tiny random-init model of ``model_type`` (skipped where the installed transformers lacks
    it), every weight drawn anew so that its logits are decisive (NanoChat zero-initialises its
    output projections)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from crosspatch.testing import char_tokenizer
    from crosspatch.testing.tiny import VOCAB_PADDING

    try:
        config = AutoConfig.for_model(model_type, vocab_size=len(char_tokenizer()) + VOCAB_PADDING, hidden_size=32,
                                      intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=8, max_position_embeddings=256, bos_token_id=1,
                                      eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, **extra)
    except ValueError:
        pytest.skip(f"this transformers has no {model_type}")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


@pytest.mark.slow
def test_nanochat_whose_final_norm_also_normalises_the_embeddings_is_exact():
    """NanoChat calls its one norm module on the embeddings and after the last layer: the final
    state is the input of the call after the last layer (it was refused as a norm that runs twice)."""
    from crosspatch.execution import pair_from_models
    from crosspatch.testing import char_tokenizer, perturb_layers

    base = _from_config("nanochat")
    prompts = [dict(p) for p in PROMPTS[:4]]
    pair = pair_from_models(base, perturb_layers(base, [0, 1, 2, 3], 0.5), char_tokenizer())
    result = run(pair, prompts, **OPTIONS)
    assert result.records
    for rec in result.records:
        with torch.inference_mode():
            ids = torch.tensor([result_prefix(pair, rec, prompts)])
            ref = pair.it.anatomy.model(input_ids=ids).logits[0, -1].float()
        assert abs(rec.cells["common_it"]["uit_lit"] - float(ref[rec.t_it] - ref[rec.t_pt])) <= 1e-5
    late = run(pair_from_models(base, perturb_layers(base, [2, 3], 0.5), char_tokenizer()), prompts, plan="exact",
               **OPTIONS)
    assert late.records and all((r.cells["common_it"]["uit_lit"] - r.cells["common_it"]["uit_lpt"])
                                == (r.cells["common_it"]["upt_lit"] - r.cells["common_it"]["upt_lpt"]) for r in late.records)


def test_a_looped_model_whose_layers_run_several_times_per_pass_is_refused_by_name():
    """A recurrent-depth model (Dory) runs a block of layers several times per pass: the residual
    entering such a layer is no single state, and a late stack run from a boundary was inexact
    (interaction 1e-2 for a late-only descendant) once its final norm was read correctly."""
    from crosspatch.errors import UnsupportedArchitectureError
    from crosspatch.execution import pair_from_models
    from crosspatch.testing import char_tokenizer, perturb_layers

    base = _from_config("dory", n_input_layers=1, n_output_layers=1)
    with pytest.raises(UnsupportedArchitectureError, match=r"its layers \[1, 2\] run several times in one forward pass"):
        run(pair_from_models(base, perturb_layers(base, [2, 3], 0.5), char_tokenizer()), [dict(p) for p in PROMPTS[:2]],
            **OPTIONS)
