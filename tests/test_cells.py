"""The 2x2 factorial is exact: diagonals are the natural models, controls give exact zeros."""

from __future__ import annotations

import pytest
import torch

from crosspatch.core.cells import CELLS, READOUTS, resolve_boundary, score_events
from crosspatch.core.divergence import DivergenceEvent
from crosspatch.errors import BoundaryError
from crosspatch.models import capture_forward, late_forward, readout, tokenize_once
from crosspatch.runner.pipeline import run
from crosspatch.testing import make_pair


def forced_events(pair, texts, t_pt=40, t_it=50):
    out = []
    for k, text in enumerate(texts):
        ids = tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, str(k), text)
        out.append(DivergenceEvent(str(k), None, len(ids), 0, ids, t_pt, t_it))
    return out


def unpatched_logits(handle, ids):
    with torch.inference_mode(), handle.active():
        return handle.anatomy.model(input_ids=torch.tensor([ids])).logits[0, -1].float()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_diagonal_cells_equal_unpatched_forward(arch):
    pair = make_pair(arch)
    events = forced_events(pair, ["Rain in Boston", "Wind", "Sky cover tonight over Denver"])
    records = score_events(pair, events, [2])
    worst = 0.0
    for ev, rec in zip(events, records):
        for readout_name, handle, cell in (("common_pt", pair.pt, "upt_lpt"), ("common_it", pair.it, "uit_lit")):
            ref = unpatched_logits(handle, ev.prefix_ids)
            y_ref = float(ref[ev.t_it] - ref[ev.t_pt])
            worst = max(worst, abs(rec.cells[readout_name][cell] - y_ref))
    print(f"max abs diff diagonal vs unpatched ({arch}): {worst:.2e}")
    assert worst <= 1e-5


def test_late_pass_on_own_state_reproduces_the_model_bit_for_bit(llama_pair):
    pair = llama_pair
    seqs = [forced_events(pair, ["Forecast: rain"])[0].prefix_ids]
    cap = capture_forward(pair.it, seqs, [2], pair.pad_id)
    late = late_forward(pair.it, 2, cap.boundary_states[2], seqs, pair.pad_id)
    assert torch.equal(late, cap.final_states)


def test_identical_pair_forced_event_gives_exact_zero_effects():
    pair = make_pair("llama", perturb=[])
    records = score_events(pair, forced_events(pair, ["Rain in Boston", "Wind speed"]), [1, 2, 3])
    for rec in records:
        for name in READOUTS:
            y = rec.cells[name]
            assert y["upt_lit"] - y["upt_lpt"] == 0.0
            assert y["uit_lit"] - y["uit_lpt"] == 0.0
            assert len({y[c] for c in CELLS}) == 1


def test_descendant_changed_only_above_boundary_has_exactly_zero_interaction():
    b = 2
    pair = make_pair("llama", perturb=[2, 3])
    events = forced_events(pair, ["Rain in Boston", "Wind speed near 20 mph", "Sky"])
    seqs = [e.prefix_ids for e in events]
    u_pt = capture_forward(pair.pt, seqs, [b], pair.pad_id).boundary_states[b]
    u_it = capture_forward(pair.it, seqs, [b], pair.pad_id).boundary_states[b]
    assert torch.equal(u_pt, u_it)
    for rec in score_events(pair, events, [b]):
        for name in READOUTS:
            y = rec.cells[name]
            e_pt, e_it = y["upt_lit"] - y["upt_lpt"], y["uit_lit"] - y["uit_lpt"]
            assert e_pt == e_it
            assert e_it - e_pt == 0.0
            assert e_pt != 0.0  # the late stacks really differ: not a silent no-op


def test_descendant_changed_only_below_boundary_has_zero_late_effects():
    b = 2
    pair = make_pair("llama", perturb=[0, 1])
    for rec in score_events(pair, forced_events(pair, ["Rain in Boston", "Temperature"]), [b]):
        for name in READOUTS:
            y = rec.cells[name]
            assert y["upt_lit"] - y["upt_lpt"] == 0.0
            assert y["uit_lit"] - y["uit_lpt"] == 0.0
            assert y["uit_lit"] != y["upt_lpt"]  # upstream really differs


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_equals_one_at_a_time(arch, prompts):
    pair = make_pair(arch)
    batched = run(pair, prompts, max_new_tokens=12, batch_size=8, bootstrap=0, progress=False)
    single = run(pair, prompts, max_new_tokens=12, batch_size=1, bootstrap=0, progress=False)
    assert len({len(p["prompt"]) for p in prompts}) > 1  # different lengths really are padded
    assert [(r.prompt_id, r.position, r.t_pt, r.t_it) for r in batched.records] == [
        (r.prompt_id, r.position, r.t_pt, r.t_it) for r in single.records
    ]
    assert [x.prompt_id for x in batched.no_divergence] == [x.prompt_id for x in single.no_divergence]
    worst = max(
        abs(a.cells[n][c] - b.cells[n][c])
        for a, b in zip(batched.records, single.records) for n in READOUTS for c in CELLS
    )
    assert worst <= 1e-5


def test_boundary_resolution():
    assert resolve_boundary(0.6, 32) == 19
    assert resolve_boundary(0.6, 36) == 22
    assert resolve_boundary(3, 8) == 3
    assert resolve_boundary(3.0, 8) == 3
    assert resolve_boundary(1, 8) == 1 and resolve_boundary(7, 8) == 7
    for bad in (8, -1, 1.5, 1.0001):
        with pytest.raises(BoundaryError):
            resolve_boundary(bad, 8)
    # 1..L-1, as a sweep uses them: at 0 the early stack is empty (the embeddings alone), and a
    # fraction that rounds to 0 says so
    for zero in (0, 0.0, 0.05):
        with pytest.raises(BoundaryError, match="leaves no early layers.*1..7"):
            resolve_boundary(zero, 8)
    with pytest.raises(BoundaryError, match="1 layer\\(s\\) has no boundary"):
        resolve_boundary(0.5, 1)
    assert resolve_boundary("3", 8) == 3  # a layer index given as text (a YAML or CLI value)
    for text in ("three", "", None, [3]):
        with pytest.raises(BoundaryError, match="neither a layer index nor a fraction"):
            resolve_boundary(text, 8)


def test_a_negative_boundary_is_named_as_negative_not_as_python_counting_from_the_end():
    from crosspatch.runner.checks import check_boundary_spec

    for negative in (-1, -5):
        with pytest.raises(BoundaryError, match=rf"^boundary layer {negative} is negative: .*1..L-1"):
            check_boundary_spec(negative)
    with pytest.raises(BoundaryError, match="leaves no early layers"):
        check_boundary_spec(0)


def test_readout_uses_final_logit_softcapping():
    pair = make_pair("gemma2")
    assert pair.it.anatomy.logit_softcap == 5.0
    seqs = [forced_events(pair, ["Rain"])[0].prefix_ids]
    cap = capture_forward(pair.it, seqs, [1], pair.pad_id)
    logits = readout(pair.it, cap.final_states[0, -1:])
    assert logits.abs().max() < 5.0


def test_non_finite_cells_are_flagged_counted_and_excluded(tmp_path):
    from crosspatch.core.stats import BootstrapConfig
    from crosspatch.runner.pipeline import build_summary
    from crosspatch.runner.prepare import build_config_record

    pair = make_pair("llama")
    events = forced_events(pair, ["Rain in Boston", "Wind"])
    with torch.no_grad():
        pair.it.anatomy.final_norm.weight[0] = float("nan")  # IT's head now reads out NaN
    records = score_events(pair, events, [2])
    assert all(not r.valid and "non-finite" in r.invalid_reason for r in records)
    config = build_config_record(pair, [], __import__("crosspatch").RunConfig(boundary=2), [2])
    summary = build_summary(config, records, [], 2, BootstrapConfig(50))
    assert summary["counts"]["invalid"] == 2 and summary["counts"]["events"] == 0
    assert any("non-finite" in w and "0" in w for w in summary["warnings"])
    assert summary["results"]["2"]["common_it"]["all"]["n_events"] == 0


@pytest.mark.parametrize("plan, tol", [("exact", 0.0), ("minimal", 1e-5)])
def test_controls_end_to_end_under_each_plan(plan, tol, prompts):
    """Through the whole pipeline: exactly zero with the exact plan, float rounding with minimal."""
    late_only = run(make_pair("llama", perturb=[2, 3]), prompts, boundary=2, plan=plan, max_new_tokens=10,
                    bootstrap=0, progress=False)
    early_only = run(make_pair("llama", perturb=[0, 1]), prompts, boundary=2, plan=plan, max_new_tokens=10,
                     bootstrap=0, progress=False)
    assert late_only.records and early_only.records
    for rec in late_only.records:
        y = rec.cells["common_it"]
        assert abs((y["uit_lit"] - y["uit_lpt"]) - (y["upt_lit"] - y["upt_lpt"])) <= tol
    for rec in early_only.records:
        y = rec.cells["common_it"]
        assert abs(y["upt_lit"] - y["upt_lpt"]) <= tol and abs(y["uit_lit"] - y["uit_lpt"]) <= tol
