"""How the executor cuts work into batches, and what a batch costs in KV cache (for the dry-run
plan and the benchmarks: batching changes memory and speed, never results)."""

from __future__ import annotations

import functools
from typing import TypeVar, cast

from ..models.config_dicts import config_hidden_size, text_config

T = TypeVar("T")


def free_memory() -> None:
    """What a pass that ran out of memory held, given back: Python's garbage, and torch's cached
    device blocks (called outside the exception's handler, whose traceback holds the tensors)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def length_batches(n_items: int, lengths: list[int], batch_size: int, max_tokens: int | None = None,
                   overhead_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding), in a stable order: at most
    ``batch_size`` items, and with ``max_tokens`` at most that many padded tokens (rows x the
    longest length) per batch, which bounds a batch's activations and KV cache whatever the
    lengths. An item longer than ``max_tokens`` goes alone (a sequence is never split).

    Without ``overhead_tokens``: the fewest batches (each filled in length order). With it, what
    one more forward pass costs, in padded tokens: the batches minimise the sum over batches of
    ``overhead_tokens + rows x longest length`` (an exact dynamic programme over the items in
    length order), so a batch of short sequences is not padded to the longest ones where a pass
    of its own is cheaper (see :func:`pass_overhead_tokens`)."""
    if overhead_tokens is None:
        return _fewest_batches(n_items, lengths, batch_size, max_tokens)
    return [list(b) for b in _cheapest_batches(tuple(lengths[:n_items]), batch_size, max_tokens, overhead_tokens)]


def _fewest_batches(n_items: int, lengths: list[int], batch_size: int, max_tokens: int | None) -> list[list[int]]:
    order = sorted(range(n_items), key=lambda k: (lengths[k], k))
    batches: list[list[int]] = []
    for k in order:
        batch = batches[-1] if batches else None
        # sorted ascending, so the newcomer sets the batch's padded width
        if batch is None or len(batch) >= batch_size or (
                max_tokens is not None and (len(batch) + 1) * lengths[k] > max_tokens):
            batches.append([k])
        else:
            batch.append(k)
    return batches


@functools.lru_cache(maxsize=64)  # the passes of one event set ask for the same lengths again and again
def _cheapest_batches(lengths: tuple[int, ...], batch_size: int, max_tokens: int | None,
                      overhead_tokens: int) -> tuple[tuple[int, ...], ...]:
    order = sorted(range(len(lengths)), key=lambda k: (lengths[k], k))
    width = [lengths[k] for k in order]
    n = len(order)
    # cost[j]: the cheapest batches of the j shortest items; start[j]: where the last of them starts
    cost = [0] + [0] * n
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = width[j - 1]  # sorted: the last item sets the batch's padded width
        rows_allowed = batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // max(longest, 1)))
        best_i, best = j - 1, cost[j - 1] + overhead_tokens + longest
        for i in range(j - 2, max(-1, j - 1 - rows_allowed), -1):
            c = cost[i] + overhead_tokens + (j - i) * longest
            if c <= best:  # ties: the larger batch (fewer passes)
                best_i, best = i, c
        cost[j], start[j] = best, best_i
    batches: list[tuple[int, ...]] = []
    j = n
    while j > 0:
        i = start[j]
        batches.append(tuple(order[i:j]))
        j = i
    return tuple(reversed(batches))


def pass_overhead_tokens(device, params_per_layer: int | None = None) -> int:
    """What one more forward pass costs on ``device``, in padded tokens of work (the price
    :func:`length_batches` weighs padding against). On the CPU a pass's fixed cost (operator
    dispatch, reading the weights once) against a token's compute: measured on this project's
    2-core machine, about 300 tokens for the zoo's layers (53k parameters each) and 40 for the
    mid-size pair's (7.1M), fitted as ``40 + 1.4e7 / params_per_layer`` (256 when the layer
    size is unknown). On an accelerator a pass is bound by kernel launches or by reading the
    weights until it holds thousands of tokens: batches are split for padding only where it
    saves that many (8192)."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind != "cpu":
        return 8192
    if not params_per_layer:
        return 256
    return 40 + round(1.4e7 / params_per_layer)


def over_batch_tokens(lengths: list[int], max_tokens: int | None) -> str | None:
    """What to say when some sequences (``lengths``: prompt + generation budget) are longer than
    ``max_tokens`` alone: a sequence is never split, so each of them runs in a batch of its own,
    over the bound its user set; None when every one fits."""
    if not max_tokens:
        return None
    long = [n for n in lengths if n > max_tokens]
    if not long:
        return None
    return (f"{len(long)} prompt(s) with the generation budget are longer than --max-batch-tokens {max_tokens:,} "
            f"(up to {max(long):,} tokens): each runs in a batch of its own, over that bound (a sequence is never "
            "split); raise --max-batch-tokens or lower --max-new-tokens to keep within it")


def largest_batch_tokens(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> int:
    """Padded tokens (rows x the longest length) of the largest batch :func:`length_batches` makes."""
    batches = length_batches(len(lengths), lengths, batch_size, max_tokens)
    return max((len(b) * max(lengths[k] for k in b) for b in batches), default=0)


def kv_bytes_per_token(config: dict, itemsize: int) -> int | None:
    """Bytes one token adds to a model's KV cache (keys and values at every layer), from its
    config.json (a multimodal model's ``text_config``); None when the config does not say. An
    upper bound for models that cache less (sliding windows, compressed latents)."""
    cfg = text_config(config)
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    hidden = config_hidden_size(config)
    if not all(isinstance(x, int) and x > 0 for x in (layers, heads, hidden)):
        return None
    assert isinstance(hidden, int) and isinstance(heads, int) and isinstance(layers, int)  # checked just above
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    if not all(isinstance(x, int) and x > 0 for x in (kv_heads, head_dim)):
        return None
    return 2 * layers * kv_heads * head_dim * itemsize


def chunk_size(residency: str, batch_size: int, sequential_chunk: int) -> int:
    """Prompts per chunk of a run: with one model resident at a time (``sequential``), as many as
    a load cycle should serve; otherwise a few batches but at most 128 prompts (or one batch, when
    a batch is larger), so that records stream out, a killed run loses little and
    ``--until-ci-width`` checks often."""
    if residency == "sequential":
        return max(sequential_chunk, 1)
    batch_size = max(batch_size, 1)
    return min(4 * batch_size, max(batch_size, 128))


def state_cache_bytes(residency: str, tokens: int, hidden_size: int, itemsize: int, n_boundaries: int) -> int | None:
    """Upper bound of the CPU state cache of a chunk of ``tokens`` prompt + budget tokens: both
    models' boundary and final states, in the compute dtype; None when no states are cached
    between passes (every residency but ``sequential``)."""
    if residency != "sequential":
        return None
    return 2 * tokens * hidden_size * itemsize * (n_boundaries + 1)


def filled(out: list[T | None], what: str) -> list[T]:
    """``out`` once every item's batch has written its slot (a slot left empty is a defect of the
    batching, never a result: it is an error rather than a silent None)."""
    missing = [k for k, x in enumerate(out) if x is None]
    if missing:
        raise RuntimeError(f"{what}: item(s) {missing[:5]} got no result")
    return cast(list[T], out)


def fitting_rows(queue: list[int], prompts: list[list[int]], budget: int, fits, live: list[int]) -> int:
    """How many rows from the front of ``queue`` can join ``live`` (at least one when none is
    live: a prompt is never left out, alone it goes as the executor would send it; all of them
    without ``fits``)."""
    if fits is None:
        return len(queue)
    lengths = [len(prompts[r]) + budget for r in live]
    take = 0
    while take < len(queue) and fits(lengths + [len(prompts[queue[take]]) + budget]):
        lengths.append(len(prompts[queue[take]]) + budget)
        take += 1
    return max(take, 0 if live else 1)


def joining_rows(queue: list[int], prompts: list[list[int]], budget: int, fits, live: list[int], decoders) -> int:
    """How many prompts from the front of ``queue`` join ``live`` now: as many as the batch rules and
    every decoder's room allow, in groups of at least a quarter of the batch they make, or the rest of
    the queue (a join is a prompt pass, and a copy of a growing cache: one by one, they cost more)."""
    if not queue or (live and not all(d.can_add for d in decoders)):
        return 0
    take = fitting_rows(queue, prompts, budget, fits, live)
    if live and take:
        waiting = [prompts[r] for r in queue[:take]]
        take = min([take] + [d.joinable(waiting) for d in decoders])
        if take < len(queue) and 4 * take < len(live) + take:
            return 0
    return take
