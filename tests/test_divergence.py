"""First-divergence search equals lockstep greedy decoding of both models."""

from __future__ import annotations

import pytest
import torch

from crosspatch.core.divergence import DivergenceConfig, find_divergences
from crosspatch.execution import greedy_rollout
from crosspatch.inputs.prompts import as_prompts
from crosspatch.models import masked_argmax, tokenize_once
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


def test_greedy_rollout_in_bounded_batches_halves_a_batch_that_runs_out_of_memory(prompts, monkeypatch):
    """preflight and splice decoded every prompt in one batch (hundreds at once) with no way out of
    memory but a traceback: ``max_rows`` bounds the batch, a batch that runs out of memory is
    halved, and one prompt that does not fit alone is the named DeviceMemoryError."""
    from crosspatch.errors import DeviceMemoryError
    from crosspatch.execution import search

    pair = make_pair("gpt2")
    ids = [tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, p["id"], p["prompt"]) for p in prompts]
    whole = greedy_rollout(pair.it, ids, 12, pair)
    assert greedy_rollout(pair.it, ids, 12, pair, max_rows=2) == whole
    sizes, greedy = [], search._greedy

    def out_of_memory_above(rows):
        def decode(decoder, part, *a, **k):
            sizes.append(len(part))
            if len(part) > rows:
                raise torch.OutOfMemoryError(f"simulated: {len(part)} rows")
            return greedy(decoder, part, *a, **k)
        return decode

    monkeypatch.setattr(search, "_greedy", out_of_memory_above(1))
    assert greedy_rollout(pair.it, ids, 12, pair, max_rows=4) == whole
    assert sizes[:3] == [min(4, len(ids)), 2, 1] and max(sizes[3:]) == 1  # halved, then kept under what failed
    monkeypatch.setattr(search, "_greedy", out_of_memory_above(0))
    with pytest.raises(DeviceMemoryError, match="one prompt of .* tokens alone"):
        greedy_rollout(pair.it, ids, 12, pair)


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


def _prompts_of_very_different_lengths(pair) -> list[list[int]]:
    texts = ["a", "report the wind for denver today please and the rain", "hi", "the quick brown fox jumps",
             "x", "forecast for the coast: sunny, then a chance of showers late"]
    return [tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, f"q{k}", t) for k, t in enumerate(texts)]


def test_a_cache_known_not_to_join_consumes_prompts_of_very_different_lengths_in_one_pass(monkeypatch):
    """Sliding-window layers cannot be joined: where the fresh cache already shows them (its
    layers made from the config, transformers 5) the prompts go through one prefill, not a first
    group's prefill that is then thrown away; where only a filled cache can tell (transformers
    4), that first group is the only waste."""
    import transformers

    from crosspatch.execution import decoder as decoder_module
    from crosspatch.execution.caches import known_unjoinable, new_dynamic_cache
    from crosspatch.execution.decoder import CachedDecoder

    pair = make_pair("gemma2")
    ids = _prompts_of_very_different_lengths(pair)
    prefills = []
    real_start_all = CachedDecoder._start_all

    def spy(self, prompts, rows):
        prefills.append(len(prompts))
        return real_start_all(self, prompts, rows)

    monkeypatch.setattr(decoder_module, "pass_overhead", lambda handle: 1)  # padding always dearer
    monkeypatch.setattr(CachedDecoder, "_start_all", spy)
    decoder = CachedDecoder(pair.it, pair)
    logits = decoder.start(ids)
    assert logits.shape[0] == len(ids) and not decoder.can_add
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert known_unjoinable(new_dynamic_cache(pair.it))
        assert prefills == [len(ids)]
    else:
        assert prefills[-1] == len(ids) and len(prefills) <= 2


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prompts_of_very_different_lengths_are_consumed_in_groups_as_in_one_pass(arch, monkeypatch):
    """Where padding the short prompts to the long ones costs more than another pass, a decoder
    consumes them in groups of similar length and joins them in the order given: the logits, the
    steps after and the states kept are those of one pass (to float rounding: the padding
    differs)."""
    from crosspatch.execution import decoder as decoder_module
    from crosspatch.execution.decoder import CachedDecoder

    pair = make_pair(arch)
    ids = _prompts_of_very_different_lengths(pair)
    joined = []
    real_add = CachedDecoder.add

    def spy(self, prompts, rows):
        joined.append(list(rows))
        return real_add(self, prompts, rows)

    def decode(grouped: bool):
        monkeypatch.setattr(CachedDecoder, "prefill_in_groups", grouped)
        decoder = CachedDecoder(pair.it, pair, capture=[1])
        logits = [decoder.start(ids, rows=[10 + k for k in range(len(ids))])]
        for _ in range(3):
            logits.append(decoder.feed(masked_argmax(logits[-1], pair.real_vocab)[:, None])[:, 0])
        return decoder, torch.stack(logits)

    monkeypatch.setattr(decoder_module, "pass_overhead", lambda handle: 1)  # padding always dearer
    monkeypatch.setattr(CachedDecoder, "add", spy)
    grouped, got = decode(True)
    assert len(joined) >= 2  # several groups, joined into one cache
    one_pass, want = decode(False)
    assert grouped.rows == one_pass.rows == [10 + k for k in range(len(ids))]  # the order given
    assert torch.allclose(got, want, atol=1e-5)
    for row in grouped.rows:
        mine, its = grouped.row_states(row), one_pass.row_states(row)
        assert torch.allclose(mine.boundary[1], its.boundary[1], atol=1e-5)
        assert torch.allclose(mine.final, its.final, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_decoders_cache_grows_in_place_and_computes_what_a_concatenating_cache_does(arch, monkeypatch):
    """A decoder's KV cache writes each step's new positions into buffers with room to spare
    instead of concatenating the whole cache: through steps, rows leaving (a batch selection) and
    rows joining (continuous batching), its logits are those of Hugging Face's concatenating
    cache bit for bit, and the keys the model reads are views of the buffer, which grows only
    now and then."""
    from crosspatch.execution import caches
    from crosspatch.execution.caches import growing_layer_class
    from crosspatch.execution.decoder import CachedDecoder

    pair = make_pair(arch)
    texts = ["report the wind", "hi", "the quick brown fox jumps over", "x y", "rain later today"]
    ids = [tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, f"q{k}", t) for k, t in enumerate(texts)]
    real_new_cache = caches.new_dynamic_cache
    rooms: set[int] = set()

    def decode(growing: bool):
        monkeypatch.setattr(caches, "new_dynamic_cache", lambda handle: real_new_cache(handle, growing=growing))
        decoder = CachedDecoder(pair.it, pair)
        logits = [decoder.start(ids[:3])]
        for step in range(80):
            if step == 3:
                decoder.select([0, 2])
                logits.append(logits[-1][[0, 2]])
            if step == 5:
                logits.append(torch.cat([logits[-1], decoder.add(ids[3:], [3, 4])]))
            logits.append(decoder.feed(masked_argmax(logits[-1], pair.real_vocab)[:, None])[:, 0])
            if growing:
                layer = decoder.cache.layers[0]
                rooms.add(layer._key_room.data_ptr())
                assert layer.keys.data_ptr() == layer._key_room.data_ptr()  # a view of the buffer
        return decoder, logits

    grown, got = decode(True)
    assert all(type(layer) is growing_layer_class() for layer in grown.cache.layers)
    assert grown.can_add
    _, want = decode(False)
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))
    assert 2 <= len(rooms) <= 8  # a new buffer on a selection, a join and now and then as it grows: not per step


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


def lockstep_or_non_finite(pair, ids, max_new):
    """The reference with NaN/inf logits: lockstep decoding ends, without an event, at the first
    position where either model's logits hold no finite choice (``("non_finite", i, role)``)."""
    from crosspatch.models.vocab import NON_FINITE

    seq = list(ids)
    for i in range(max_new):
        picks = {}
        for handle in (pair.pt, pair.it):
            with torch.inference_mode():
                logits = handle.anatomy.model(input_ids=torch.tensor([seq])).logits[0, -1]
            picks[handle.role] = int(masked_argmax(logits, pair.real_vocab))
        bad = [role for role, t in picks.items() if t == NON_FINITE]
        if bad:
            return "non_finite", i, bad[0]
        t_pt, t_it = picks[pair.pt.role], picks[pair.it.role]
        if t_pt != t_it:
            return "event", i, t_pt, t_it
        if t_pt in pair.eos_ids:
            return None
        seq.append(t_pt)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("rollout_model", ["IT", "PT"])
@pytest.mark.parametrize("one_model_at_a_time", [False, True])
def test_nan_logits_end_a_prompt_without_an_event_and_name_the_model(prompts, rollout_model, one_model_at_a_time):
    """A model whose logits turn NaN (here: the descendant's embedding of one token is NaN, so
    its logits are NaN once it has read that token) has no greedy choice there: the prompt gets
    no event, with reason ``non_finite_logits`` and that model named, at the position lockstep
    decoding reaches; the other prompts keep their events. Both search strategies, both
    rollout models."""
    pair = make_pair("llama", scale=0.15)
    _, ids, (clean, _) = _search(pair, prompts, max_new_tokens=16)
    # a token both decode at generated position 2 of an event at 4 or later, not read before it:
    # verified in a chunk of two tokens (positions 1-2), where a NaN key reaches position 1
    late = next(e for e in clean if e.position >= 4 and e.prefix_ids[e.prompt_len + 2] not in e.prefix_ids[:e.prompt_len + 2])
    poison = late.prefix_ids[late.prompt_len + 2]
    with torch.no_grad():
        pair.it.anatomy.model.get_input_embeddings().weight[poison] = float("nan")
    prompts.append({"id": "poisoned prompt", "prompt": "Rain" + pair.tokenizer_it.decode([poison])})
    if one_model_at_a_time:
        pair.can_hold = lambda roles: len(set(roles)) <= 1  # the phased search (sequential residency)
    ps, ids, (events, none) = _search(pair, prompts, max_new_tokens=16, batch_size=4, rollout_model=rollout_model)
    found = {e.prompt_id: ("event", e.position, e.t_pt, e.t_it) for e in events}
    found |= {x.prompt_id: ("non_finite", x.generated_tokens, x.model) for x in none if x.reason == "non_finite_logits"}
    expected = {p.id: ref for p, p_ids in zip(ps, ids) if (ref := lockstep_or_non_finite(pair, p_ids, 16))}
    assert found == expected
    assert expected[late.prompt_id] == ("non_finite", 3, "tuned")  # NaN once it has read the token
    assert expected["poisoned prompt"] == ("non_finite", 0, "tuned")
    assert any(kind == "event" for kind, *_ in expected.values())


def test_a_run_counts_reports_and_resumes_prompts_lost_to_nan_logits(tmp_path, prompts):
    """Prompts that end at NaN logits are counted, named with the model in the summary and the
    reports, kept in no_divergence.jsonl (a resumed run reads them back), and a run where every
    prompt ended so says that, not that the models decode alike."""
    from crosspatch.runner.pipeline import run

    pair = make_pair("llama", scale=0.15)
    with torch.no_grad():
        pair.it.anatomy.model.get_input_embeddings().weight[pair.tokenizer_it.bos_token_id] = float("nan")
    kw = dict(boundary=2, max_new_tokens=8, bootstrap=0, progress=False, controls="none", event_kinds="first_diff")
    result = run(pair, prompts, out=tmp_path / "run", **kw)
    summary = result.summary
    assert summary["counts"]["no_divergence"]["non_finite_logits"] == len(prompts)
    assert summary["no_divergence_prompts"][0] == {"prompt_id": "p0", "reason": "non_finite_logits", "model": "tuned"}
    assert any("NaN or infinite" in w and "tuned: 6" in w for w in summary["warnings"])
    assert "NaN or infinite logits" in summary["verdict"]["reason"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "NaN or infinite logits before a disagreement: 6" in report and "non_finite_logits (tuned)" in report
    again = run(pair, prompts, out=tmp_path / "run", **kw)
    assert again.summary["no_divergence_prompts"] == summary["no_divergence_prompts"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_continuous_batching_refills_rows_and_finds_the_same_events(arch):
    """With more prompts than rows, a row that finds its event makes room for the next prompt in
    the same caches (left-padded to one length): every event is the lockstep reference's, and the
    states the search keeps for the cells are those of the batch-at-once search (to float
    rounding: the padding differs)."""
    from crosspatch.execution import search as search_module
    from crosspatch.execution.search import CachedDecoder

    pair = make_pair(arch, scale=0.15)
    prompts = [{"id": f"q{k}", "prompt": text} for k, text in enumerate(
        ["the quick brown fox", "a", "report the wind for denver today please", "hello there", "x y z",
         "forecast: sunny", "one two three four five six seven", "ok"])]
    merged = []
    real_add = CachedDecoder.add

    def spy(self, new_prompts, rows):
        merged.append(bool(self.rows))
        return real_add(self, new_prompts, rows)

    def search(batch_size):
        ps = as_prompts(prompts)
        ids = [tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, p.id, p.prompt) for p in ps]
        natural: dict = {}
        found = find_divergences(pair, ps, ids, DivergenceConfig(max_new_tokens=12, batch_size=batch_size,
                                                                 capture_boundaries=[1, 2]), natural=natural)
        return ps, ids, found, natural

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search_module.CachedDecoder, "add", spy)
        ps, ids, (events, none), states = search(2)
    assert any(merged)  # rows joined live rows in the same caches
    by_id = {e.prompt_id: e for e in events}
    for p, p_ids in zip(ps, ids):
        ref = lockstep(pair, p_ids, 12)
        assert (None if ref is None else ref[:3]) == (None if p.id not in by_id else
                                                       (by_id[p.id].position, by_id[p.id].t_pt, by_id[p.id].t_it))
    _, _, (at_once, _), states_at_once = search(16)
    assert [e.key for e in at_once] == [e.key for e in events] and events
    assert set(states) == set(states_at_once)
    for key, roles in states.items():
        for role, got in roles.items():
            want = states_at_once[key][role]
            assert torch.allclose(got.final, want.final, atol=1e-5)
            for b in want.boundary:
                assert torch.allclose(got.boundary[b], want.boundary[b], atol=1e-5)


@pytest.mark.slow
def test_static_decoding_on_the_zoo_and_in_bfloat16():
    """On the zoo's instruction-tuned pair, static decoding finds the eager events with
    bit-identical cells (exact plan) and cells to float rounding (minimal plan, whose states come
    from the decoders); in bfloat16 the events are the same but where a model's own top-1/top-2
    margin is a recorded near tie (a quarter logit: a few bfloat16 steps at these logit sizes; at
    0.05 a bfloat16 logit of 8 cannot even show the margin)."""
    from crosspatch.execution import load_pair
    from crosspatch.inputs.prompts import load_prompts
    from crosspatch.runner.pipeline import run
    from crosspatch.zoo import zoo_path

    zoo = zoo_path()
    items = load_prompts(zoo / "prompts" / "in_distribution.jsonl")[:24]
    options = dict(boundary=0.6, max_new_tokens=24, bootstrap=0, progress=False, controls="none")
    pair = load_pair(str(zoo / "base"), tuned=str(zoo / "it-full"), hash_weights=False)
    for plan in ("exact", "minimal"):
        eager = run(pair, items, decode="eager", plan=plan, **options)
        static = run(pair, items, decode="static", plan=plan, **options)
        assert [(r.key, r.position, r.t_pt, r.t_it) for r in static.records] == \
            [(r.key, r.position, r.t_pt, r.t_it) for r in eager.records] and eager.records
        if plan == "exact":
            assert [r.cells for r in static.records] == [r.cells for r in eager.records]
        worst = max(abs(a.cells[n][c] - b.cells[n][c]) for a, b in zip(static.records, eager.records)
                    for n in a.cells for c in a.cells[n])
        assert worst <= 1e-4
    low = load_pair(str(zoo / "base"), tuned=str(zoo / "it-full"), dtype="bfloat16", hash_weights=False)
    options.update(event_kinds="first_diff", near_tie_threshold=0.25)
    eager = {r.prompt_id: r for r in run(low, items, decode="eager", **options).records}
    static = {r.prompt_id: r for r in run(low, items, decode="static", **options).records}
    for pid in eager.keys() | static.keys():
        a, b = eager.get(pid), static.get(pid)
        if a is None or b is None or (a.position, a.t_pt, a.t_it) != (b.position, b.t_pt, b.t_it):
            assert any(r is not None and r.near_tie for r in (a, b)), pid  # moved only at a recorded near tie


@pytest.mark.parametrize("device, expected", [("cuda", "static"), ("cpu", "eager")])
def test_auto_decoding_is_static_on_cuda_and_eager_elsewhere_never_compiled(device, expected, monkeypatch):
    """``decode="auto"`` picks what was measured fastest: static on CUDA (an H200: 0.94 s against
    1.49 s eager and 46 s compiled, which compiles every new shape of a run), eager on the CPU.
    Compiling is asked for, never chosen. The handle is made to report the device, and the static
    cache's check against the model's own pass (``static_mismatch``, its own test) to pass; no
    kernel runs."""
    from crosspatch.execution import modes
    from crosspatch.execution.modes import decoding, new_decoder
    from crosspatch.execution.static import StaticDecoder
    from crosspatch.models.forward import ModelHandle

    pair = make_pair("llama")
    handle = pair.handle(pair.roles[0])
    monkeypatch.setattr(ModelHandle, "input_device", property(lambda self: torch.device(device)))
    monkeypatch.setattr(modes, "static_mismatch", lambda *args: None)
    used: dict = {}
    with decoding("auto", 8, used):
        decoder = new_decoder(handle, pair)
    assert used == {"mode": expected, "reason": f"auto: {'CUDA' if device == 'cuda' else 'not on CUDA'}"}
    assert isinstance(decoder, StaticDecoder) == (expected == "static")
    assert not getattr(decoder, "compiled", False)


def test_a_compiled_decoding_step_has_one_shape_per_chunk_width_and_the_prompt_pass_runs_uncompiled(
        prompts, monkeypatch):
    """What ``decode="compiled"`` compiles (and on CUDA captures as CUDA graphs) is the decoding
    step, and every step of a batch gives it inputs of one shape, the mask spanning the whole
    static cache: a new shape only with another chunk width, never with each token decoded (each
    new shape is another trace and another graph). The prompt pass, whose width changes with
    every batch, runs uncompiled. The compiler is replaced by a recorder of what it is called
    with; the events and the exact plan's cells are the eager search's."""
    from transformers import Cache

    from crosspatch.execution import static as static_module
    from crosspatch.runner.pipeline import run

    seen: dict[int, list[tuple]] = {}  # per KV cache: the shapes of every compiled call
    caches_seen: list = []  # kept alive, so that no two caches share an id

    def recording_compile(model, **options):
        def step(**inputs):
            cache = next(v for v in inputs.values() if isinstance(v, Cache))
            caches_seen.append(cache)
            assert int(inputs["cache_position"][0]) > 0, "the prompt pass went through the compiled step"
            seen.setdefault(id(cache), []).append(
                (tuple(inputs["input_ids"].shape), tuple(inputs["attention_mask"].shape)))
            return model(**inputs)
        return step

    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setattr(static_module, "_COMPILED", static_module.weakref.WeakKeyDictionary())
    pair = make_pair("llama", scale=0.15)
    options = dict(boundary=0.5, max_new_tokens=16, bootstrap=0, progress=False, controls="none", plan="exact",
                   event_kinds="all")
    eager = run(pair, prompts, decode="eager", **options)
    compiled = run(pair, prompts, decode="compiled", **options)
    assert compiled.summary["cost_this_session"]["decode"]["mode"] == "compiled"
    assert [(r.key, r.position, r.t_pt, r.t_it, r.cells) for r in compiled.records] == \
        [(r.key, r.position, r.t_pt, r.t_it, r.cells) for r in eager.records] and eager.records
    assert sum(len(calls) for calls in seen.values()) > 2 * len(seen)  # several steps per cache
    for calls in seen.values():
        assert len({mask for _, mask in calls}) == 1  # one mask shape for every step of a cache
        assert len({ids for ids, _ in calls}) <= 4  # chunks of 1, 2, 4, 8 tokens at most (chunk_size 8)


def test_a_step_run_as_a_cuda_graph_keeps_none_of_its_outputs_that_the_next_replay_overwrites(prompts, monkeypatch):
    """A CUDA graph's replay writes its outputs into the memory of the replay before, and the
    search reads a step's logits after the other model's step and its kept states when events are
    scored: what outlives a step must be a copy. Simulated on the CPU: the compiled step below,
    run as if on CUDA graphs, overwrites with NaN at each call every output of the call before
    (its logits, and the states entering each layer and the final norm, which the state recorder
    keeps); the events and the exact plan's cells stay the eager search's."""
    from crosspatch.execution import static as static_module
    from crosspatch.models.anatomy import find_anatomy
    from crosspatch.runner.pipeline import run

    previous: list[torch.Tensor] = []  # one memory pool for every graph of the device, as CUDA graph trees share

    def graph_like_compile(model, **options):
        anatomy = find_anatomy(model)

        def step(**inputs):
            with torch.inference_mode():
                for t in previous:
                    t.fill_(float("nan"))  # the next replay reuses the memory of the last one's outputs
            previous.clear()
            taken = [m.register_forward_pre_hook(lambda m, args, kwargs: previous.append(
                args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
                for m in [*anatomy.layers, anatomy.final_norm]]
            try:
                out = model(**inputs)
            finally:
                for hook in taken:
                    hook.remove()
            previous.append(out.logits)
            return out
        return step

    monkeypatch.setattr(torch, "compile", graph_like_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)
    monkeypatch.setattr(static_module, "_graphs_on", lambda device: True)
    monkeypatch.setattr(static_module, "_COMPILED", static_module.weakref.WeakKeyDictionary())
    pair = make_pair("llama", scale=0.15)
    for plan in ("exact", "minimal"):  # the minimal plan scores first divergences on the states the search kept
        options = dict(boundary=0.5, max_new_tokens=16, bootstrap=0, progress=False, controls="none", plan=plan,
                       event_kinds="all")
        eager = run(pair, prompts, decode="eager", **options)
        graphs = run(pair, prompts, decode="compiled", **options)
        assert graphs.summary["cost_this_session"]["decode"]["mode"] == "compiled"
        assert [(r.key, r.position, r.t_pt, r.t_it) for r in graphs.records] == \
            [(r.key, r.position, r.t_pt, r.t_it) for r in eager.records] and eager.records
        worst = max(abs(a.cells[n][c] - b.cells[n][c]) for a, b in zip(graphs.records, eager.records)
                    for n in a.cells for c in a.cells[n])
        assert worst <= (0.0 if plan == "exact" else 1e-4)


def _history_search(pair, prompt_ids, budget, batch_size, done=None, phased=False):
    """The search with ``keep_history`` and a :class:`History` pass of the same roles over its
    events' prompts, on one executor."""
    from crosspatch.execution import Executor, History, Search

    if phased:
        pair.can_hold = lambda roles: len(set(roles)) <= 1  # the phased search (sequential residency)
    ex = Executor(pair, batch_size)
    roll, check = pair.roles[1], pair.roles[0]
    item_done = None if done is None else (lambda k, g, c: done(prompt_ids[k], g, c))
    (outcomes,) = ex.run([Search(roll, check, prompt_ids, budget, keep_history=True, history_done=item_done)])
    events = [k for k, o in enumerate(outcomes) if o.position is not None]
    (apart,) = ex.run([History(roll, check, [prompt_ids[k] for k in events], budget)])
    return outcomes, events, apart


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("phased", [False, True])
def test_the_search_keeps_each_events_history_as_a_history_pass_decodes_it(prompts, arch, phased):
    """With ``keep_history`` an event's row goes on past its event: its outcome carries the
    history (the rollout from the first generated token, the other model's pick at each
    position) that a :class:`History` pass of the same roles and budget decodes apart, token for
    token, whole (to EOS or the budget), with rows refilled two at a time or all at once; the
    events are those of the search without it."""
    pair = make_pair(arch, scale=0.15)
    prompts = prompts + [{"id": f"x{k}", "prompt": t} for k, t in enumerate(["a", "forecast: sunny", "x y z"])]
    ps = as_prompts(prompts)
    ids = [tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, p.id, p.prompt) for p in ps]
    _, _, (plain, _) = _search(pair, prompts, max_new_tokens=12, batch_size=2)
    for batch_size in (2, 16):
        outcomes, events, apart = _history_search(pair, ids, 12, batch_size, phased=phased)
        assert [ps[k].id for k in events] == [e.prompt_id for e in plain] and events
        for k, (rollout, picks) in zip(events, apart):
            o = outcomes[k]
            assert o.history is not None and o.history.whole
            assert (o.history.rollout, o.history.picks) == (rollout, picks)
            assert rollout[: o.position] == o.shared and rollout[o.position] == o.t_roll and picks[o.position] == o.t_check
        assert all(o.history is None for o in outcomes if o.position is None)


def test_a_kept_history_ends_once_its_consumers_are_done(prompts):
    """With ``history_done``, a row ends at the first check after its consumer is done (the
    history is then a prefix of the whole one, marked not whole, and ``done`` holds on it)."""
    pair = make_pair("llama", scale=0.15)
    ps = as_prompts(prompts)
    ids = [tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, p.id, p.prompt) for p in ps]

    def done(prompt, rollout, picks):
        return len(rollout) >= 4

    outcomes, events, apart = _history_search(pair, ids, 16, 16, done=done)
    shorter = 0
    for k, (rollout, picks) in zip(events, apart):
        h = outcomes[k].history
        assert h is not None and h.rollout == rollout[: len(h.rollout)] and h.picks == picks[: len(h.picks)]
        assert h.whole or done(ids[k], h.rollout, h.picks)
        shorter += len(h.rollout) < len(rollout)
    assert shorter  # some rows stopped before the budget


@pytest.mark.parametrize("one_model_at_a_time", [False, True])
def test_event_kinds_read_the_searchs_histories_with_the_same_records(prompts, one_model_at_a_time):
    """A run whose event kinds read the histories the search kept finds the same events of every
    kind, with the same cells (to float rounding: rows stay longer in the search's batch), as
    one that decodes them apart, for less work; a history that met NaN logits past its event is
    decoded apart (here: the descendant's embedding of a token it writes after an event is NaN)."""
    import dataclasses

    from crosspatch.runner.pipeline import RunConfig, chunk_plan, process_chunk

    pair = make_pair("llama", scale=0.15)
    ps = as_prompts(prompts)
    ids = [tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, p.id, p.prompt) for p in ps]
    _, _, (clean, _) = _search(pair, prompts, max_new_tokens=16)
    if one_model_at_a_time:
        pair.can_hold = lambda roles: len(set(roles)) <= 1
    else:  # a token written two past an early event (the search kept its history): NaN from there
        ev = next(e for e in clean if e.position <= 8)
        whole = greedy_rollout(pair.it, [ev.prefix_ids[: ev.prompt_len]], 16, pair)[0]
        poison = next(t for t in whole[ev.position + 2:] if t not in ev.prefix_ids)
        with torch.no_grad():
            pair.it.anatomy.model.get_input_embeddings().weight[poison] = float("nan")
        outcomes, events, _ = _history_search(pair, ids, 16, 4)
        assert any(outcomes[k].history is None for k in events)  # that row's history is decoded apart
    config = RunConfig(max_new_tokens=16, batch_size=4, controls="none", bootstrap=0)
    plan = chunk_plan(config, [2], pair.num_layers)
    shared = process_chunk(pair, plan, (ps, ids))
    apart = process_chunk(pair, dataclasses.replace(plan, share_histories=False), (ps, ids))
    assert {r.kind for r in shared.records} >= {"first_diff", "first_nonformat_diff"}
    assert [(r.key, r.position, r.t_pt, r.t_it) for r in shared.records] == \
        [(r.key, r.position, r.t_pt, r.t_it) for r in apart.records]
    for a, b in zip(shared.records, apart.records):
        for readout, cells in a.cells.items():
            assert cells == pytest.approx(b.cells[readout], abs=1e-5)
    assert shared.token_layers < apart.token_layers


def test_random_later_reads_the_searchs_whole_histories():
    """The random-later control asks for whole histories of both rollouts: the one of the
    search's roles comes from the search (less work), with the same later disagreements."""
    import dataclasses

    from crosspatch.runner.pipeline import RunConfig, chunk_plan, process_chunk

    pair = make_pair("llama", scale=0.15)
    ps = as_prompts([{"id": f"r{k}", "prompt": t} for k, t in enumerate(
        ["the quick brown fox", "report the wind for denver today please", "hello there", "forecast: sunny"])])
    ids = [tokenize_once(pair.tokenizer_pt, pair.tokenizer_it, p.id, p.prompt) for p in ps]
    config = RunConfig(max_new_tokens=16, batch_size=4, controls="random_later", event_kinds="first_diff", bootstrap=0)
    plan = chunk_plan(config, [2], pair.num_layers)
    shared = process_chunk(pair, plan, (ps, ids))
    apart = process_chunk(pair, dataclasses.replace(plan, share_histories=False), (ps, ids))
    rows = [shared.analyses["control_random_later"], apart.analyses["control_random_later"]]
    assert rows[0] and [(r["key"], r["position"], r["t_pt"], r["t_it"]) for r in rows[0]] == \
        [(r["key"], r["position"], r["t_pt"], r["t_it"]) for r in rows[1]]
    assert shared.token_layers < apart.token_layers


def test_a_long_continuous_search_keeps_its_cache_to_the_live_rows():
    """Rows that join a running batch are padded to the cache's length, which grows at every
    step; positions that no live row uses any more are dropped, so that over many more prompts
    than rows the cache spans about one row's prompt and budget (what the batch rules count on),
    not every step since the batch started; the outcomes are the batch-at-once search's."""
    from crosspatch.execution import search as search_module
    from crosspatch.execution.search import search_interleaved

    pair = make_pair("llama", scale=0.15)
    ids = [pair.tokenizer_it(f"report {k} " + "wind " * (k % 5), add_special_tokens=True)["input_ids"] for k in range(24)]
    budget = 40
    widths = []
    real_feed = search_module.CachedDecoder.feed

    def spy(self, tokens):
        widths.append(self.mask.shape[1] + tokens.shape[1])
        return real_feed(self, tokens)

    def search(fits):
        return search_interleaved(pair, pair.it, pair.pt, ids, budget, fits=fits, keep_history=True)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search_module.CachedDecoder, "feed", spy)
        two_rows = search(lambda lengths: len(lengths) <= 2)
    span = max(len(p) for p in ids) + budget
    assert max(widths) <= span + max(32, span // 7) < len(ids) // 2 * budget  # without the drop: ~ every step of the run
    at_once = search(None)
    assert [(o.position, o.t_roll, o.t_check, o.history and o.history.rollout) for o in two_rows] == \
           [(o.position, o.t_roll, o.t_check, o.history and o.history.rollout) for o in at_once]


def test_a_row_decoding_on_for_its_history_keeps_no_more_states():
    """States are kept for what an event reads (prompt + the tokens before it): a row that decodes
    on past its event for the event kinds' history adds none (on a GPU they would pile up at every
    step), and the states its event reads are those of the search without histories (to float
    rounding: rows stay longer in the batch)."""
    from crosspatch.execution.search import _search_batch

    pair = make_pair("llama", scale=0.15)
    ids = [pair.tokenizer_it(text, add_special_tokens=True)["input_ids"]
           for text in ("the quick brown fox", "report the wind", "hello there", "x y z", "forecast: sunny")]
    budget, chunk = 24, 8

    def search(keep_history):
        return _search_batch(pair, pair.it, pair.pt, ids, budget, chunk, [1, 2], keep_history=keep_history)

    outcome, _, _, dec_r, dec_c, history = search(True)
    plain_outcome, _, _, plain_r, plain_c, _ = search(False)
    assert outcome == plain_outcome
    went_on = 0
    for r, (i, *_) in enumerate(outcome):
        if i is None:
            continue
        went_on += history[r] is not None and len(history[r].rollout) > i + chunk
        for dec, plain in ((dec_r, plain_r), (dec_c, plain_c)):
            kept = sum(t.reshape(-1, t.shape[-1]).shape[0] for t in dec.kept[r]["final"]) - dec.offsets[r]
            assert len(ids[r]) + i <= kept <= len(ids[r]) + i + chunk  # at most the chunk it diverged in
            got, want = dec.event_states(r, len(ids[r]) + i), plain.event_states(r, len(ids[r]) + i)
            assert torch.allclose(got.final, want.final, atol=1e-5)  # (other batches: float rounding)
            assert all(torch.allclose(got.boundary[b], want.boundary[b], atol=1e-5) for b in (1, 2))
    assert went_on  # some history went well past its event
