"""How the executor cuts work into batches, and what a batch costs in KV cache (for the dry-run
plan and the benchmarks: batching changes memory and speed, never results)."""

from __future__ import annotations

from ..models.paths import text_config


def length_batches(n_items: int, lengths: list[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding), in a stable order: at most
    ``batch_size`` items, and with ``max_tokens`` at most that many padded tokens (rows x the
    longest length) per batch, which bounds a batch's activations and KV cache whatever the
    lengths. An item longer than ``max_tokens`` goes alone (a sequence is never split)."""
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
    hidden = cfg.get("hidden_size") or cfg.get("n_embd")
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
