"""The execution layer: one analysis, written once as passes, gives the same numbers under
every residency and engine; several models; at most one resident under ``sequential``."""

from __future__ import annotations

import pytest
import torch

from crosspatch.core.cells import CELLS, READOUTS
from crosspatch.execution import Capture, Edit, Executor, Late, load_models, load_pair, models_from_modules, pair_from_models
from crosspatch.execution import executor as executor_module
from crosspatch.execution.batching import kv_bytes_per_token, largest_batch_tokens, length_batches
from crosspatch.models.forward import counting_work
from crosspatch.runner.pipeline import run
from crosspatch.testing import BlendProbe, char_tokenizer, make_pair, perturb_layers, tiny_model

from ..conftest import PROMPTS, count_decoding_calls
from ..models.test_peft import MERGE_TOLERANCE, _lora_dirs

OPTIONS = dict(boundary=2, max_new_tokens=12, bootstrap=0, progress=False)


def _probe(result) -> dict[str, float]:
    return {r["key"]: r["logit_t_it"] for r in result.analyses["blend_probe"]}


def _close(a: dict, b: dict, tol: float) -> float:
    assert a and sorted(a) == sorted(b)
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst <= tol, worst
    return worst


@pytest.mark.slow
def test_a_toy_analysis_gives_the_same_numbers_under_every_residency_and_engine(tmp_path):
    from peft import PeftModel

    base, adapter, merged = _lora_dirs(tmp_path)
    probe = [BlendProbe(boundary=2)]
    merged_sets = {
        "both": load_pair(str(base), tuned=str(merged), residency="both"),
        "sequential": load_pair(str(base), tuned=str(merged), residency="sequential"),
    }
    out = {k: _probe(run(m, PROMPTS, analyses=probe, **OPTIONS)) for k, m in merged_sets.items()}
    pytest.importorskip("ray")
    out["ray"] = _probe(run(merged_sets["both"], PROMPTS, analyses=probe, engine="ray", workers=2, **OPTIONS))
    _close(out["sequential"], out["both"], 1e-5)
    _close(out["ray"], out["both"], 1e-5)
    # adapter residency (one copy of the base weights, adapter toggled) against the same
    # unmerged LoRA model held as a separate resident model: the residency changes nothing
    adapter_set = load_pair(str(base), adapter=str(adapter))
    assert adapter_set.residency == "adapter"
    unmerged = PeftModel.from_pretrained(tiny_model("llama").__class__.from_pretrained(str(base)), str(adapter))
    resident = pair_from_models(tiny_model("llama").__class__.from_pretrained(str(base)), unmerged, char_tokenizer())
    via_adapter = _probe(run(adapter_set, PROMPTS, analyses=probe, **OPTIONS))
    _close(via_adapter, _probe(run(resident, PROMPTS, analyses=probe, **OPTIONS)), 1e-5)
    _close(via_adapter, out["both"], MERGE_TOLERANCE)  # merged vs unmerged LoRA: rounding only


def test_blend_endpoints_are_the_natural_and_cross_cells():
    pair = make_pair("llama")
    result = run(pair, PROMPTS, analyses=[BlendProbe(2, alpha=0.0), BlendProbe(2, alpha=1.0, name="blend_1")],
                 plan="exact", **OPTIONS)
    assert result.records
    at_0 = {r["key"]: r["y"] for r in result.analyses["blend_probe"]}
    at_1 = {r["key"]: r["y"] for r in result.analyses["blend_1"]}
    for rec in (r for r in result.records if r.kind == "first_diff"):  # common-IT, as the probe reads with IT's head
        assert at_0[rec.key] == pytest.approx(rec.cells["common_it"]["upt_lpt"], abs=1e-5)
        assert at_1[rec.key] == pytest.approx(rec.cells["common_it"]["uit_lpt"], abs=1e-5)
    ex = Executor(pair)
    seqs = [[1, 40, 41, 42, 43], [1, 50, 51]]
    u_pt, = ex.run([Capture("base", seqs, [2])])
    natural = torch.stack([s.final for s in u_pt])
    (late,) = ex.run([Late("base", 2, [s.boundary[2] for s in u_pt], seqs)])
    assert torch.equal(torch.stack(late), natural)  # diagonal reconstruction, bit for bit


def test_an_identity_edit_is_an_exact_no_op_and_a_real_edit_moves_the_output():
    pair = make_pair("llama")
    ex = Executor(pair, batch_size=2)
    seqs = [[1, 40, 41, 42, 43], [1, 50, 51], [1, 60]]
    (caps,) = ex.run([Capture("base", seqs, [2])])
    upstream = [s.boundary[2] for s in caps]
    plain, same, zeroed = ex.run([
        Late("tuned", 2, upstream, seqs),
        Late("tuned", 2, upstream, seqs, [Edit(3, "mlp", lambda h, items: h)]),
        Late("tuned", 2, upstream, seqs, [Edit(3, "mlp", lambda h, items: torch.zeros_like(h))]),
    ])
    for a, b, c in zip(plain, same, zeroed):
        assert torch.equal(a, b)
        assert (a - c).abs().max() > 1e-3
    seen = []
    ex.run([Late("tuned", 2, upstream, seqs, [Edit(2, "residual", lambda h, items: seen.append(items) or h)])])
    assert sorted(k for items in seen for k in items) == [0, 1, 2]  # edits learn which items a batch holds
    with pytest.raises(Exception, match="outside the late stack"):
        ex.run([Late("tuned", 2, upstream, seqs, [Edit(1, "mlp", lambda h, items: h)])])


def _three_models(root):
    """A base and two descendants: one perturbed only above boundary 2, one only below."""
    tok = char_tokenizer()
    base = tiny_model("llama")
    models = {"base": base, "late": perturb_layers(base, [2, 3], 0.5, seed=5),
              "early": perturb_layers(base, [0, 1], 0.5, seed=6)}
    for name, model in models.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return models, tok


@pytest.mark.slow
def test_three_models_sequential_hold_one_at_a_time_and_match_resident(tmp_path):
    modules, tok = _three_models(tmp_path)
    paths = {r: str(tmp_path / r) for r in ("late", "early")}
    sequential = load_models(str(tmp_path / "base"), tuned=paths, residency="sequential")
    resident = models_from_modules(modules, tok)
    assert sequential.roles == resident.roles == ("base", "late", "early")
    for role in ("late", "early"):
        got = run(sequential, PROMPTS, tuned=role, boundaries=[1, 2], **{k: v for k, v in OPTIONS.items() if k != "boundary"})
        want = run(resident, PROMPTS, tuned=role, boundaries=[1, 2], **{k: v for k, v in OPTIONS.items() if k != "boundary"})
        assert [r.key for r in got.records] == [r.key for r in want.records] and got.records
        worst = max(abs(x.cells[n][c] - y.cells[n][c]) for x, y in zip(got.records, want.records)
                    for n in READOUTS for c in CELLS)
        assert worst <= 1e-5
        at2 = [r for r in got.records if r.boundary == 2]
        inter = [(r.cells["common_it"]["uit_lit"] - r.cells["common_it"]["uit_lpt"])
                 - (r.cells["common_it"]["upt_lit"] - r.cells["common_it"]["upt_lpt"]) for r in at2]
        if role == "late":  # the two upstream states are the same: no interaction
            assert max(abs(i) for i in inter) <= 1e-4
    assert sequential.peak_live_models == 1  # measured with weak references to every loaded model


def test_work_is_counted_once_per_pass():
    pair = make_pair("llama", layers=4)
    ex = Executor(pair, batch_size=2)
    seqs = [[1, 40, 41], [1, 50, 51, 52, 53]]
    ex.run([Capture("tuned", [[1]], [0])])  # the first pass of a model learns its layer output type
    with counting_work() as work:
        (caps,) = ex.run([Capture("base", seqs, [2])])
        ex.run([Late("tuned", 2, [s.boundary[2] for s in caps], seqs)])
    assert work.token_layers == 8 * 4 + 8 * 2  # a full pass (4 layers), then a late-only pass (2)


def test_executor_refuses_a_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        Executor(make_pair("llama"), batch_size=0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        Executor(make_pair("llama"), max_batch_tokens=0)


def test_a_token_budget_bounds_every_batch_and_keeps_every_item():
    lengths = [5, 40, 7, 7, 90, 3, 12, 40, 200, 6]
    for rows, budget in [(4, None), (4, 60), (8, 100), (3, 1)]:
        batches = length_batches(len(lengths), lengths, rows, budget)
        assert sorted(k for b in batches for k in b) == list(range(len(lengths)))  # none lost, none twice
        for batch in batches:
            assert len(batch) <= rows
            widths = [lengths[k] for k in batch]
            assert widths == sorted(widths)  # similar lengths together, shortest first
            if budget is not None and len(batch) > 1:
                assert len(batch) * max(widths) <= budget  # padded tokens
    assert [8] in length_batches(len(lengths), lengths, 4, 60)  # longer than the budget: alone, never split
    assert length_batches(4, [3, 3, 3, 3], 8, 6) == [[0, 1], [2, 3]]
    assert length_batches(4, [3, 3, 3, 3], 8, None) == [[0, 1, 2, 3]]


def _cost(batches, lengths, overhead):
    return sum(overhead + len(b) * max(lengths[k] for k in b) for b in batches)


def _cheapest_by_brute_force(lengths, rows, budget, overhead):
    """Every way to cut the items, in length order, into runs that respect the bounds."""
    order = sorted(range(len(lengths)), key=lambda k: (lengths[k], k))
    best = None
    for mask in range(2 ** (len(order) - 1)):
        batches, current = [], [order[0]]
        for j in range(1, len(order)):
            if mask >> (j - 1) & 1:
                batches.append(current)
                current = []
            current.append(order[j])
        batches.append(current)
        if any(len(b) > rows or (budget is not None and len(b) > 1 and len(b) * lengths[b[-1]] > budget)
               for b in batches):
            continue
        cost = _cost(batches, lengths, overhead)
        best = cost if best is None else min(best, cost)
    return best


def test_sequences_longer_than_the_token_bound_alone_are_named():
    from crosspatch.execution.batching import over_batch_tokens

    assert over_batch_tokens([10, 20], None) is None and over_batch_tokens([10, 20], 20) is None
    said = over_batch_tokens([10, 25, 40], 20)
    assert said is not None and said.startswith("2 prompt(s)") and "up to 40 tokens" in said


def test_batches_weigh_padding_against_the_cost_of_another_pass():
    """With what a pass costs (in padded tokens), batches are the cheapest cut: short sequences
    go without the long ones' padding where a pass of their own costs less, never more passes
    than padding saves; every bound and every item kept."""
    rng = torch.Generator().manual_seed(0)
    for trial in range(40):
        n = int(torch.randint(1, 11, (1,), generator=rng))
        lengths = torch.randint(1, 80, (n,), generator=rng).tolist()
        rows, budget = [(3, None), (8, None), (4, 150), (10, 400)][trial % 4]
        for overhead in (0, 16, 64, 1000):
            batches = length_batches(n, lengths, rows, budget, overhead)
            assert sorted(k for b in batches for k in b) == list(range(n))
            for batch in batches:
                widths = [lengths[k] for k in batch]
                assert len(batch) <= rows and widths == sorted(widths)
                assert budget is None or len(batch) == 1 or len(batch) * max(widths) <= budget
            assert _cost(batches, lengths, overhead) == _cheapest_by_brute_force(lengths, rows, budget, overhead)
    bimodal = [8, 9, 10, 60, 62, 64] * 8
    assert len(length_batches(len(bimodal), bimodal, 128, None, 256)) == 2  # short ones apart from long ones
    assert len(length_batches(len(bimodal), bimodal, 128, None, 10**6)) == 1  # a pass too dear to split for
    assert all(len({bimodal[k] for k in b}) == 1 for b in length_batches(len(bimodal), bimodal, 128, None, 0))


def test_a_pass_costs_fewer_tokens_of_padding_the_larger_the_model_on_the_cpu():
    """On the CPU a token's compute grows with the layer while a pass's fixed cost grows less: the
    padding worth another pass shrinks with the model (the zoo's layers ~300 tokens, a 134M
    model's ~40); an accelerator splits only for thousands of tokens."""
    from crosspatch.execution.batching import pass_overhead_tokens
    from crosspatch.execution.decoder import pass_overhead

    assert pass_overhead_tokens("cpu", 53_376) == 302 and pass_overhead_tokens("cpu", 7_079_424) == 42
    assert pass_overhead_tokens("cpu") == 256 and pass_overhead_tokens(torch.device("cuda", 1), 53_376) == 8192
    handle = make_pair("llama").it
    layer = sum(p.numel() for p in handle.anatomy.layers[0].parameters())
    assert pass_overhead(handle) == pass_overhead_tokens("cpu", layer) > pass_overhead_tokens("cpu", 100 * layer) >= 40


def test_the_kv_cache_estimate_is_what_a_model_caches():
    model = tiny_model("llama")
    per_token = kv_bytes_per_token(model.config.to_dict(), 4)
    with torch.inference_mode():
        cache = model(input_ids=torch.randint(5, 50, (3, 11)), use_cache=True).past_key_values
    layers = getattr(cache, "layers", None)
    tensors = [t for layer in layers for t in (layer.keys, layer.values)] if layers is not None \
        else list(cache.key_cache) + list(cache.value_cache)  # transformers 4.x
    assert sum(t.numel() * t.element_size() for t in tensors) == 3 * 11 * per_token
    assert largest_batch_tokens([14, 11, 3], 2) == 2 * 11  # rows x the longest of the largest batch
    assert kv_bytes_per_token({"model_type": "custom"}, 4) is None  # a config that does not say


@pytest.mark.slow
@pytest.mark.parametrize("residency", ["both", "sequential"])
def test_a_token_budget_changes_batches_not_results(tmp_path, residency):
    """Decoding passes count each prompt with its generation budget: a budget below one prompt +
    budget puts every prompt alone, and the events and cells stay what they were."""
    base, _, merged = _lora_dirs(tmp_path)
    pair = load_pair(str(base), tuned=str(merged), residency=residency)
    budget = OPTIONS["max_new_tokens"] + 1
    batches = []
    real = executor_module.length_batches
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(executor_module, "length_batches", lambda *a: batches.append((a[1], real(*a))) or batches[-1][1])
        small = run(pair, PROMPTS, batch_size=8, max_batch_tokens=budget, **OPTIONS)
    searched = [b for lengths, bs in batches if min(lengths) > OPTIONS["max_new_tokens"] for b in bs]
    assert searched and all(len(b) == 1 for b in searched)  # prompt + budget > the budget: alone
    assert all(len(b) * max(lengths[k] for k in b) <= budget for lengths, bs in batches for b in bs if len(b) > 1)
    # the bound could not be kept: the run says so (each prompt ran alone, over it)
    assert any("longer than --max-batch-tokens" in w for w in small.summary["warnings"])
    whole = run(pair, PROMPTS, batch_size=8, **OPTIONS)
    assert not any("--max-batch-tokens" in w for w in whole.summary["warnings"])
    assert [r.key for r in small.records] == [r.key for r in whole.records] and whole.records
    worst = max(abs(x.cells[n][c] - y.cells[n][c]) for x, y in zip(small.records, whole.records)
                for n in READOUTS for c in CELLS)
    assert worst <= 1e-5


def _out_of_memory_above(mp, rows: int, error=lambda n: torch.OutOfMemoryError(f"simulated: {n} sequences")) -> list[int]:
    """Every batched primitive the executor calls runs out of memory (raises ``error(n)``) on more
    than ``rows`` sequences; returns the sizes that did (appended as they fail)."""
    failed = []
    for name, arg in (("capture_forward", 1), ("late_forward", 3), ("search_interleaved", 3),
                      ("rollout_states", 2), ("first_mismatch", 2)):
        def oom(*a, real=getattr(executor_module, name), arg=arg, **kw):
            n = len(a[arg])
            if kw.get("fits") is not None:  # a queue batching itself: the rows it decodes at once
                n = next((m for m in range(1, n + 1) if not kw["fits"]([1] * m)), n + 1) - 1
            if n > rows:
                failed.append(n)
                raise error(n)
            return real(*a, **kw)
        mp.setattr(executor_module, name, oom)
    return failed


@pytest.mark.slow
@pytest.mark.parametrize("residency", ["both", "sequential"])
def test_a_batch_that_runs_out_of_memory_is_split_and_the_results_stay(tmp_path, residency):
    """Out of device memory, a batch is halved and retried (and later batches stay under the
    size that failed) instead of losing the run: same events, same cells."""
    base, _, merged = _lora_dirs(tmp_path)
    pair = load_pair(str(base), tuned=str(merged), residency=residency)
    whole = run(pair, PROMPTS, batch_size=8, **OPTIONS)
    with pytest.MonkeyPatch.context() as mp:
        failed = _out_of_memory_above(mp, 2)
        split = run(pair, PROMPTS, batch_size=8, **OPTIONS)
    assert failed and max(failed) > 2 and failed.count(max(failed)) == 1  # one failure, then capped
    assert [r.key for r in split.records] == [r.key for r in whole.records] and whole.records
    assert [x.prompt_id for x in split.no_divergence] == [x.prompt_id for x in whole.no_divergence]
    worst = max(abs(x.cells[n][c] - y.cells[n][c]) for x, y in zip(split.records, whole.records)
                for n in READOUTS for c in CELLS)
    assert worst <= 1e-5


def test_the_cpu_allocator_running_out_of_memory_splits_batches_as_a_device_does():
    """torch's CPU allocator fails with a RuntimeError ("DefaultCPUAllocator: can't allocate
    memory", under a container's memory limit), not MemoryError: it surfaced as a traceback where
    a device's OOM halves the batch. Same events and cells; alone in its batch, the named error."""
    from crosspatch.errors import DeviceMemoryError

    def cpu_oom(n):
        return RuntimeError(f"[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                            f"memory: you tried to allocate {n * 10**12} bytes. Error code 12 (Cannot allocate memory)")

    pair = make_pair("llama", scale=0.2)
    whole = run(pair, PROMPTS, batch_size=8, **OPTIONS)
    with pytest.MonkeyPatch.context() as mp:
        failed = _out_of_memory_above(mp, 2, cpu_oom)
        split = run(pair, PROMPTS, batch_size=8, **OPTIONS)
    assert failed and [r.key for r in split.records] == [r.key for r in whole.records] and whole.records
    assert max(abs(x.cells[n][c] - y.cells[n][c]) for x, y in zip(split.records, whole.records)
               for n in READOUTS for c in CELLS) <= 1e-5
    with pytest.MonkeyPatch.context() as mp:
        _out_of_memory_above(mp, 0, cpu_oom)
        with pytest.raises(DeviceMemoryError, match="alone in its batch"):
            run(pair, PROMPTS, batch_size=8, **OPTIONS)
    with pytest.MonkeyPatch.context() as mp:  # any other RuntimeError is no memory to free: raised as it is
        _out_of_memory_above(mp, 0, lambda n: RuntimeError("shape mismatch"))
        with pytest.raises(RuntimeError, match="shape mismatch"):
            run(pair, PROMPTS, batch_size=8, **OPTIONS)


@pytest.mark.slow
def test_one_sequence_that_does_not_fit_alone_is_a_named_error(tmp_path):
    from crosspatch.errors import DeviceMemoryError

    base, _, merged = _lora_dirs(tmp_path)
    pair = load_pair(str(base), tuned=str(merged))
    with pytest.MonkeyPatch.context() as mp:
        _out_of_memory_above(mp, 0)
        with pytest.raises(DeviceMemoryError, match="alone in its batch.*resume"):
            run(pair, PROMPTS, batch_size=8, out=tmp_path / "run", **OPTIONS)


@pytest.mark.slow
def test_several_adapters_on_one_base_copy(tmp_path):
    """Two PEFT adapters on one copy of the base weights: each descendant's cells equal those of
    its merged checkpoint held resident."""
    first = _lora_dirs(tmp_path / "a")
    second = _lora_dirs(tmp_path / "b", seed=7)
    adapters = load_models(str(first[0]), adapters={"one": str(first[1]), "two": str(second[1])})
    assert adapters.residency == "adapter" and adapters.roles == ("base", "one", "two")
    assert adapters.handle("one").module is adapters.handle("two").module  # one copy of the weights
    merged = load_models(str(first[0]), tuned={"one": str(first[2]), "two": str(second[2])}, residency="both")
    for role in ("one", "two"):
        got = run(adapters, PROMPTS, tuned=role, **OPTIONS)
        want = run(merged, PROMPTS, tuned=role, **OPTIONS)
        assert [r.key for r in got.records] == [r.key for r in want.records] and got.records
        worst = max(abs(x.cells[n][c] - y.cells[n][c]) for x, y in zip(got.records, want.records)
                    for n in READOUTS for c in CELLS)
        assert worst <= MERGE_TOLERANCE
    one = run(adapters, PROMPTS, tuned="one", **OPTIONS)
    two = run(adapters, PROMPTS, tuned="two", **OPTIONS)
    assert [r.cells for r in one.records] != [r.cells for r in two.records]  # the adapters really differ


@pytest.mark.slow
def test_a_role_computes_with_its_own_adapter_even_when_peft_records_another(tmp_path):
    """PEFT can leave its model's record of the active adapter apart from what its adapter layers
    run (seen on the zoo demo's two adapters on one model): a role then still computes with its
    own adapter, because activation checks the layers too."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    first = _lora_dirs(tmp_path / "a")
    second = _lora_dirs(tmp_path / "b", seed=7)
    adapters = load_models(str(first[0]), adapters={"one": str(first[1]), "two": str(second[1])})
    one, two = adapters.handle("one"), adapters.handle("two")
    ids = torch.tensor([[1, 5, 9, 13, 17]])

    def logits(handle):
        with torch.inference_mode(), handle.active():
            return handle.anatomy.model(input_ids=ids).logits[0, -1].clone()

    want_one, want_two = logits(one), logits(two)
    assert not torch.equal(want_one, want_two)
    assert one.module.active_adapter == "two"
    for layer in one.module.modules():  # the layers run "two" while the model records "one"
        if isinstance(layer, BaseTunerLayer):
            layer.set_adapter("two")
    one.module.active_adapter = "one"
    assert one.module.active_adapter == "one"
    assert torch.equal(logits(one), want_one) and torch.equal(logits(two), want_two)


@pytest.mark.slow
def test_an_adapter_under_sequential_residency_matches_adapter_residency(tmp_path):
    base, adapter, _ = _lora_dirs(tmp_path)
    together = run(load_pair(str(base), adapter=str(adapter)), PROMPTS, **OPTIONS)
    sequential = load_pair(str(base), adapter=str(adapter), residency="sequential")
    apart = run(sequential, PROMPTS, **OPTIONS)
    want = {r.key: r for r in together.records}
    assert sorted(want) == sorted(r.key for r in apart.records) and apart.records
    worst = max(abs(want[r.key].cells[n][c] - r.cells[n][c]) for r in apart.records for n in READOUTS for c in CELLS)
    assert worst <= 1e-5 and sequential.peak_live_models == 1


def test_decoding_on_cuda_keeps_to_attention_backends_that_need_no_per_shape_plan():
    """cuDNN's attention plans every new shape, and a growing KV cache is a new shape each step
    (measured: 4x slower searches on an H200); decoding steps use the other backends there."""
    from crosspatch.models.forward import decoding_attention

    assert torch.backends.cuda.cudnn_sdp_enabled()
    with decoding_attention(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()  # restored
    with decoding_attention(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled()  # nothing changes off CUDA


def test_late_passes_of_the_same_states_through_the_same_stack_run_once(monkeypatch):
    """Late passes in one request that feed the same upstream tensors through the same role and
    boundary without edits (the 2x2's cross cell and the hybrid-state control's end point) run
    once and both get the result; equal values in other tensors, or an edit, run apart."""
    pair = make_pair("llama")
    seqs = [[1, 5, 6, 7], [1, 8, 9]]
    (states,) = Executor(pair).run([Capture(pair.roles[0], seqs, [2])])
    upstream = [s.boundary[2] for s in states]
    calls = []
    real = executor_module.late_forward
    monkeypatch.setattr(executor_module, "late_forward", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    tuned = pair.roles[1]
    same = [Late(tuned, 2, upstream, seqs), Late(tuned, 2, list(upstream), seqs)]
    a, b = Executor(pair).run(same)
    assert len(calls) == 1 and all(torch.equal(x, y) for x, y in zip(a, b))
    calls.clear()
    copies = [Late(tuned, 2, upstream, seqs), Late(tuned, 2, [u.clone() for u in upstream], seqs),
              Late(tuned, 2, upstream, seqs, [Edit(3, "mlp", lambda h, items: h)]), Late(pair.roles[0], 2, upstream, seqs)]
    results = Executor(pair).run(copies)
    assert len(calls) == 4
    assert all(torch.equal(x, y) for x, y in zip(results[0], results[1]))


def test_a_searched_history_gives_the_states_of_an_event_found_on_it():
    """The states a search recorded over a whole history (each model's, at every position) give
    an event at generated position ``j`` its prefix's boundary states and the final state at its
    last position; none where they were not recorded, a boundary is missing or ``j`` is past the
    history (the rollout model never consumed the history's last token)."""
    from crosspatch.execution.passes import SearchHistory
    from crosspatch.models.forward import EventStates

    d, prompt_len, rollout = 3, 2, [5, 6, 7]
    roll = EventStates({1: torch.randn(4, d)}, torch.randn(4, d))  # prompt + rollout less its last token
    check = EventStates({1: torch.randn(5, d)}, torch.randn(5, d))  # teacher-forced over prompt + rollout
    history = SearchHistory(rollout, [5, 6, 8], whole=True, states={"tuned": roll, "base": check})
    got = history.prefix_states(prompt_len, 2, [1])
    assert got is not None and set(got) == {"tuned", "base"}
    assert torch.equal(got["tuned"].boundary[1], roll.boundary[1][:4]) and torch.equal(got["tuned"].final, roll.final[3])
    assert torch.equal(got["base"].boundary[1], check.boundary[1][:4]) and torch.equal(got["base"].final, check.final[3])
    first = history.prefix_states(prompt_len, 0, [1])
    assert first is not None and torch.equal(first["base"].final, check.final[1])  # the prompt's last position
    assert history.prefix_states(prompt_len, 3, [1]) is None
    assert history.prefix_states(prompt_len, 1, [2]) is None
    assert SearchHistory(rollout, [5, 6, 8], whole=True).prefix_states(prompt_len, 1, [1]) is None


@pytest.mark.parametrize("decode", ["eager", "static"])
def test_a_history_pass_batches_continuously_with_the_histories_of_batch_after_batch(decode, monkeypatch):
    """A :class:`History` pass (both models in use) takes the next prompts into the caches as rows
    end (their EOS, the budget, or their consumer's ``done``), as the search does: the same
    rollouts and picks as batch after batch up to where each consumer is done (a row may decode on
    to the end of its chunk, whose length depends on the batching), in fewer decoding calls."""
    from crosspatch.execution import History
    from crosspatch.execution.modes import decoding
    from crosspatch.inputs.prompts import load_prompts
    from crosspatch.zoo import zoo_path

    zoo = zoo_path()
    pair = load_pair(str(zoo / "base"), tuned=str(zoo / "it-full"), hash_weights=False)
    prompts = [pair.tokenizer(x.prompt)["input_ids"] for x in load_prompts(zoo / "prompts" / "raw.jsonl")[:24]]
    calls = count_decoding_calls(monkeypatch)
    done = lambda k, rollout, picks: len(rollout) >= 4 + k % 7  # noqa: E731 - rows end at different lengths
    found = {}
    for continuous in (True, False):
        monkeypatch.setattr(Executor, "continuous_batching", continuous)
        calls["n"] = 0
        ex = Executor(pair, batch_size=4)
        with decoding(decode, 32):
            (found[continuous],) = ex.run([History(pair.roles[1], pair.roles[0], prompts, 32, done)])
        found[continuous, "calls"] = calls["n"]
    for k, ((roll_a, picks_a), (roll_b, picks_b)) in enumerate(zip(found[True], found[False])):
        need = next((n for n in range(1, len(roll_a) + 1) if done(k, roll_a[:n], picks_a[:n])), len(roll_a))
        assert (roll_a[:need], picks_a[:need]) == (roll_b[:need], picks_b[:need]) and len(roll_b) >= need
    assert found[True, "calls"] < found[False, "calls"]
