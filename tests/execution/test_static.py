"""Static decoding with continuous batching (``execution.static``): a row taken into the slot of
a row that ended computes what it would alone, and the search takes the next prompts into free
slots of a static cache, as it does into a growing one; padding that runs past the cache's end
or the model's last position (a row that ended while a later one goes on) harms no real token."""

from __future__ import annotations

import pytest
import torch

from crosspatch.execution import Executor
from crosspatch.execution.decoder import CachedDecoder
from crosspatch.execution.modes import decoding, new_decoder, static_mismatch
from crosspatch.execution.static import SlotDecoder
from crosspatch.runner.pipeline import run
from crosspatch.testing import ARCHITECTURES, make_pair

from ..conftest import PROMPTS, count_decoding_calls

QUICK = ("llama", "gpt2")


def _alone(handle, pair, prompt: list[int], chunks: list[list[int]]) -> list[torch.Tensor]:
    """The eager decoder's logits for one row alone: after its prompt, then after each chunk."""
    decoder = CachedDecoder(handle, pair)
    out = [decoder.start([prompt])[0]]
    for chunk in chunks:
        out.append(decoder.feed(torch.tensor([chunk]))[0])
    return out


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), float((got - want).abs().max())


@pytest.mark.parametrize("arch", [pytest.param(a, marks=[] if a in QUICK else [pytest.mark.slow])
                                  for a in sorted(ARCHITECTURES)])
def test_a_row_taken_into_a_free_slot_computes_what_it_would_alone(arch):
    """Two rows start together; one ends and a third prompt is prefilled apart and copied into its
    slot; then both live rows are fed chunks of 1, 2 and 3 tokens, each at its own cache
    position. Every logit of both rows is the row's own, decoded alone (to float rounding: the
    static cache attends over its whole, masked, length). A cache that cannot take rows
    (sliding windows) says so."""
    pair = make_pair(arch)
    handle = pair.it
    tokenizer = pair.tokenizer
    first, second, third = (tokenizer(p["prompt"])["input_ids"] for p in PROMPTS[1:4])
    with decoding("static", budget=12):
        decoder = new_decoder(handle, pair)
    if not isinstance(decoder, SlotDecoder):  # eager, for a recorded reason (XGLM's mask on transformers 4.x)
        assert "fails with a static cache" in (static_mismatch(handle, pair, 12) or "")
        return
    decoder.start([first, second], [0, 1])
    decoder.feed(torch.tensor([[5], [6]]))
    decoder.select([1])  # the first row ended
    if not decoder.can_add:  # sliding windows, or layers that are no plain keys and values (GLM-5's indexed cache)
        from transformers.cache_utils import StaticLayer

        assert decoder.cache.layers and any(getattr(layer, "is_sliding", False) or type(layer) is not StaticLayer
                                            for layer in decoder.cache.layers)
        return
    assert decoder.joinable([third]) == 1
    joined = decoder.add([third], [2])
    chunks_second, chunks_third = [[7], [8, 9], [10, 11, 12]], [[13], [14, 15], [16, 17, 18]]
    steps = [joined[0]]
    for a, b in zip(chunks_second, chunks_third):
        logits = decoder.feed(torch.tensor([a, b]))
        steps.append((logits[0], logits[1]))
    alone_third = _alone(handle, pair, third, chunks_third)
    alone_second = _alone(handle, pair, second, [[6]] + chunks_second)
    _close(steps[0], alone_third[0])
    for k, (got_second, got_third) in enumerate(steps[1:]):
        _close(got_third, alone_third[k + 1])
        _close(got_second, alone_second[k + 2])
    assert decoder.rows == [1, 2]


def test_a_static_cache_has_no_slot_or_room_for_more_than_it_holds():
    """A row joins only into a free slot and where the cache has room for its prompt and its whole
    budget; a prompt expected later (``expect``) gets that room in a fresh cache."""
    pair = make_pair("llama")
    with decoding("static", budget=40):
        decoder = new_decoder(pair.it, pair)
        roomy = new_decoder(pair.it, pair)
    short, long = [1, 5, 6], list(range(1, 30))
    decoder.start([short, short], [0, 1])
    assert decoder.joinable([short]) == 0  # no free slot
    decoder.select([0])
    assert decoder.joinable([short, short]) == 1  # one free slot
    assert decoder.length < len(long) + 40 + 1 and decoder.joinable([long]) == 0  # no room for its budget
    roomy.expect(len(long))
    roomy.start([short, short], [0, 1])
    roomy.select([0])
    assert roomy.joinable([long]) == 1
    with pytest.raises(ValueError, match="cannot join"):
        decoder.add([long], [2])


def test_the_search_takes_the_next_prompts_into_free_slots_with_the_eager_events_and_exact_cells(monkeypatch):
    """With more prompts than a batch holds, a static search no longer runs batch after batch: rows
    join the slots of rows that ended, in fewer decoding steps, with the eager search's events and,
    under the exact plan, bit-identical cells."""
    pair = make_pair("llama")
    prompts = [dict(p) for p in PROMPTS]
    options = dict(boundary=2, max_new_tokens=8, bootstrap=0, progress=False, controls="none", plan="exact",
                   event_kinds="first_diff", batch_size=2, max_batch_tokens=None)
    joins, real_add = [], SlotDecoder.add

    def add(self, new, rows):
        if self.rows:
            joins.append(len(new))
        return real_add(self, new, rows)

    monkeypatch.setattr(SlotDecoder, "add", add)
    eager = run(pair, prompts, decode="eager", **options)
    steps = count_decoding_calls(monkeypatch)
    static = run(pair, prompts, decode="static", **options)
    joined_steps = steps["n"]
    assert joins and static.summary["cost_this_session"]["decode"]["mode"] == "static"
    assert [(r.key, r.position, r.t_pt, r.t_it, r.cells) for r in static.records] == \
        [(r.key, r.position, r.t_pt, r.t_it, r.cells) for r in eager.records] and eager.records
    steps["n"] = 0
    monkeypatch.setattr(Executor, "continuous_batching", False)  # batch after batch
    apart = run(pair, prompts, decode="static", **options)
    assert [r.cells for r in apart.records] == [r.cells for r in static.records]
    assert joined_steps < steps["n"]


def test_a_row_at_the_end_of_the_cache_keeps_its_tokens_when_padding_runs_past_it():
    """A row fed its last tokens beside a longer chunk of another row is padded to that chunk's
    width, and the padding can run past the cache's end: it goes to the last position, which none
    of the row's real tokens reads, and the real tokens keep their own positions."""
    from crosspatch.execution.caches import static_length

    pair = make_pair("llama")
    prompt = pair.tokenizer(PROMPTS[1]["prompt"])["input_ids"]
    budget = static_length(len(prompt) + 1) - len(prompt) - 1  # prompt + budget + 1 fill the cache exactly
    with decoding("static", budget=budget):
        decoder = new_decoder(pair.it, pair)
    decoder.start([prompt, prompt], [0, 1])
    decoder.feed(torch.tensor([[5], [5]]))
    decoder.select([1])
    decoder.add([prompt], [2])
    assert decoder.length == len(prompt) + budget + 1
    tokens = [5 + k % 20 for k in range(budget)]
    for k in range(0, budget - 1, 3):  # both rows: chunks of up to three tokens, budget - 1 in all
        chunk = tokens[k:min(k + 3, budget - 1)]
        decoder.feed(torch.tensor([chunk, chunk]))
    # the joined row's last real token (at the cache's last position but one), padded to the other
    # row's chunk of four: the padding runs two positions past the end
    last = decoder.feed(torch.tensor([[0] * 4, [tokens[-1]] + [0] * 3]))
    alone = _alone(pair.it, pair, prompt, [tokens[:-1], tokens[-1:]])
    _close(last[1, 0], alone[-1][0])


@pytest.mark.parametrize("decode", ["eager", "static"])
def test_padding_past_the_models_last_position_takes_that_position(decode):
    """A row whose prompt and budget fill a model's positions (GPT-2's are learned: there is no
    embedding past them) ends at its budget while a row that joined later goes on; the padding
    it is then fed would run past the last position (an ``IndexError`` inside the model): it takes
    the last position instead, and the other row's logits are its own."""
    pair = make_pair("gpt2")
    prompt = pair.tokenizer(PROMPTS[1]["prompt"])["input_ids"]
    budget = pair.it.anatomy.model.config.n_positions - len(prompt)
    with decoding(decode, budget=budget):
        decoder = new_decoder(pair.it, pair)
    decoder.start([prompt, prompt], [0, 1])
    decoder.feed(torch.tensor([[5], [5]]))
    decoder.select([1])
    decoder.add([prompt], [2])
    tokens = [5 + k % 20 for k in range(budget)]
    for k in range(0, budget - 1, 3):
        chunk = tokens[k:min(k + 3, budget - 1)]
        decoder.feed(torch.tensor([chunk, chunk]))
    # row 1 is at its budget (fed padding past the last position); row 2 takes its last token
    last = decoder.feed(torch.tensor([[0] * 4, [tokens[-1]] + [0] * 3]))
    alone = _alone(pair.it, pair, prompt, [tokens[:-1], tokens[-1:]])
    _close(last[1, 0], alone[-1][0])


def _gpt_neo_pair():
    """A tiny GPT-Neo pair (local attention over a window of 8 in every other layer), whose
    attention slices its local mask by the cache's length: under a static cache longer than the
    window it attends to the wrong keys (transformers 5.25: other greedy tokens than its own)."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from crosspatch.execution import pair_from_models
    from crosspatch.testing import char_tokenizer, perturb_layers

    config = GPTNeoConfig(vocab_size=len(char_tokenizer()) + 6, hidden_size=32, num_layers=4, num_heads=4,
                          attention_types=[[["global", "local"], 2]], window_size=8, max_position_embeddings=256,
                          bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    base = GPTNeoForCausalLM(config).eval()
    with torch.no_grad():
        base.get_output_embeddings().weight.mul_(4)
    return pair_from_models(base, perturb_layers(base, range(4), scale=0.6), char_tokenizer())


def test_a_model_whose_static_cache_would_not_reproduce_its_logits_decodes_eagerly_and_says_why():
    """A static cache is checked against the model's own full pass (once per model and cache
    length, longer than its attention window) before a run decodes with it; where it would not
    reproduce the model's logits the run decodes eagerly, the reason recorded, and finds the eager
    events and cells."""
    from crosspatch.execution.modes import static_mismatch

    pair = _gpt_neo_pair()
    options = dict(boundary=2, max_new_tokens=12, bootstrap=0, progress=False, controls="none",
                   event_kinds="first_diff", plan="exact")
    eager = run(pair, PROMPTS[:6], decode="eager", **options)
    static = run(pair, PROMPTS[:6], decode="static", **options)
    assert [(r.prompt_id, r.position, r.t_pt, r.t_it) for r in static.records] == \
        [(r.prompt_id, r.position, r.t_pt, r.t_it) for r in eager.records]
    assert [r.cells for r in static.records] == [r.cells for r in eager.records]
    why = static_mismatch(pair.handle(pair.base), pair, 12)
    if why is not None:  # this transformers' GPT-Neo slices its masks by the cache's length
        assert static.summary["cost_this_session"]["decode"] == {"asked": "static", "mode": "eager", "reason": why}
    llama = make_pair("llama")
    assert static_mismatch(llama.handle(llama.base), llama, 12) is None  # a model whose static cache is exact


def test_a_model_whose_forward_fails_with_a_static_cache_decodes_eagerly_and_says_why(monkeypatch):
    """The static cache's check ran the model's forward unguarded: where it raised (XGLM under
    transformers 4.x builds its mask for the tokens seen, not the cache's length) the whole run
    stopped in the check. The run now decodes eagerly, the error recorded as the reason."""
    from crosspatch.execution import static

    def fails(self, *args, **kwargs):
        raise RuntimeError("The size of tensor a (64) must match the size of tensor b (4)")

    pair = make_pair("gpt2")
    monkeypatch.setattr(static.StaticDecoder, "start", fails)
    options = dict(boundary=2, max_new_tokens=8, bootstrap=0, progress=False, controls="none",
                   event_kinds="first_diff", plan="exact")
    result = run(pair, PROMPTS[:4], decode="static", **options)
    used = result.summary["cost_this_session"]["decode"]
    assert used["mode"] == "eager" and "GPT2LMHeadModel's forward fails with a static cache" in used["reason"]
    assert "RuntimeError: The size of tensor a (64)" in used["reason"]
    eager = run(make_pair("gpt2"), PROMPTS[:4], decode="eager", **options)
    assert [r.cells for r in result.records] == [r.cells for r in eager.records]
