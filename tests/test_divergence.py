"""First-divergence search equals lockstep greedy decoding of both models."""

from __future__ import annotations

import torch

from crosspatch.divergence import DivergenceConfig, find_divergences
from crosspatch.execution import greedy_rollout
from crosspatch.models import masked_argmax, tokenize_once
from crosspatch.prompts import as_prompts
from crosspatch.testing import make_pair


def lockstep(pair, ids, max_new):
    """Naive reference: both models step together, full recompute, no cache, no batching."""
    seq = list(ids)
    for i in range(max_new):
        picks = []
        for handle in (pair.pt, pair.it):
            with torch.inference_mode():
                logits = handle.anatomy.model(input_ids=torch.tensor([seq])).logits[0, -1]
            picks.append(int(masked_argmax(logits, pair.real_vocab)))
        if picks[0] != picks[1]:
            return i, picks[0], picks[1], seq
        if picks[0] in pair.eos_ids:
            return None
        seq.append(picks[0])
    return None


def _search(pair, prompts, **cfg):
    ps = as_prompts(prompts)
    ids = [tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, p.id, p.prompt) for p in ps]
    return ps, ids, find_divergences(pair, ps, ids, DivergenceConfig(**cfg))


def test_search_equals_lockstep_reference(prompts):
    pair = make_pair("llama", scale=0.15)  # a mild fine-tune: divergences at varied positions
    ps, ids, (events, none) = _search(pair, prompts, max_new_tokens=16, batch_size=4)
    by_id = {e.prompt_id: e for e in events}
    positions = set()
    for p, p_ids in zip(ps, ids):
        ref = lockstep(pair, p_ids, 16)
        if ref is None:
            assert p.id not in by_id and p.id in {x.prompt_id for x in none}
            continue
        ev = by_id[p.id]
        assert (ev.position, ev.t_pt, ev.t_it) == ref[:3]
        assert ev.prefix_ids == ref[3]
        positions.add(ev.position)
    assert len(positions) > 1  # the test exercises more than position 0


def test_rollout_by_pt_finds_the_same_events(prompts):
    pair = make_pair("llama", scale=0.15)
    _, _, (ev_it, _) = _search(pair, prompts, max_new_tokens=16, rollout_model="IT")
    _, _, (ev_pt, _) = _search(pair, prompts, max_new_tokens=16, rollout_model="PT")
    assert [e.to_record() for e in ev_it] == [e.to_record() for e in ev_pt]


def test_identical_pair_has_no_divergence_and_every_prompt_is_counted(prompts):
    pair = make_pair("llama", perturb=[])
    _, _, (events, none) = _search(pair, prompts, max_new_tokens=10)
    assert events == []
    assert sorted(x.prompt_id for x in none) == sorted(p["id"] for p in prompts)
    assert {x.reason for x in none} <= {"agreed_eos", "budget_exhausted"}


def test_greedy_rollout_batched_equals_single_on_absolute_positions(prompts):
    pair = make_pair("gpt2")
    ids = [tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, p["id"], p["prompt"]) for p in prompts]
    batched = greedy_rollout(pair.it, ids, 12, pair)
    single = [greedy_rollout(pair.it, [x], 12, pair)[0] for x in ids]
    assert batched == single


def test_rows_that_end_leave_the_batch_and_the_others_decode_as_alone(prompts):
    """A row that emits EOS stops costing anything; the rows still decoding, and the states kept
    for every row (sequential residency's rollouts), are those of each row decoded alone."""
    from crosspatch.execution.search import rollout_states

    pair = make_pair("llama")
    ids = [tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, p["id"], p["prompt"]) for p in prompts]
    free = greedy_rollout(pair.it, ids, 12, pair)
    pair.eos_ids = set(pair.eos_ids) | {free[0][2], free[1][0]}  # two rows now end early, at different steps
    batched, decoder = rollout_states(pair, pair.it, ids, 12, capture=[2])
    assert len(batched[1]) == 1 and len(batched[0]) <= 3 and max(map(len, batched)) == 12
    for row, x in enumerate(ids):
        alone, one = rollout_states(pair, pair.it, [x], 12, capture=[2])
        assert batched[row] == alone[0]
        mine, its = decoder.row_states(row), one.row_states(0)
        assert mine.boundary[2].shape[0] == len(x) + len(batched[row]) - 1  # the last token is never fed
        assert torch.allclose(mine.boundary[2], its.boundary[2], atol=1e-5)
        assert torch.allclose(mine.final, its.final, atol=1e-5)


def test_rollout_never_picks_masked_ids(prompts):
    pair = make_pair("llama")
    ids = [tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, p["id"], p["prompt"]) for p in prompts]
    # make a masked row (vocabulary padding) the model's favourite; greedy must still skip it
    padded_row = pair.real_vocab.mask.numel() - 1
    assert not pair.real_vocab.mask[padded_row]
    head = pair.it.anatomy.lm_head.weight
    saved = head.data[padded_row].clone()
    head.data[padded_row] = head.data.abs().max() * 50
    try:
        for tokens in greedy_rollout(pair.it, ids, 8, pair):
            assert padded_row not in tokens
    finally:
        head.data[padded_row] = saved


def test_eos_agreed_by_both_is_a_no_event():
    pair = make_pair("llama", perturb=[])
    eos = pair.tokenizer_it.eos_token_id
    with torch.no_grad():  # make EOS the top token everywhere for both (identical) models
        for handle in (pair.pt, pair.it):
            handle.anatomy.lm_head.weight[eos] = handle.anatomy.lm_head.weight.abs().max() * 100
            handle.anatomy.lm_head.weight.requires_grad_(False)
    _, _, (events, none) = _search(pair, [{"id": "a", "prompt": "Rain"}], max_new_tokens=10)
    assert events == [] and none[0].reason == "agreed_eos" and 1 <= none[0].generated_tokens < 10
