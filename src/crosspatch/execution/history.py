"""A rollout model's greedy history checked token by token by the other model, both models in
use at once (:class:`~crosspatch.execution.passes.History`): decoded in chunks like the
divergence search, each row ending once its consumer has what it needs."""

from __future__ import annotations

import torch

from ..models.forward import ModelHandle
from ..models.vocab import NON_FINITE, masked_argmax
from .decoder import first_rows, greedy_chunk, join_pair
from .modes import new_decoder

__all__ = ["history_interleaved"]


def _history_batch(models, roll: ModelHandle, check: ModelHandle, prompts: list[list[int]], budget: int,
                   chunk_size: int, done, fits=None) -> tuple[list[list[int]], list[list[int]], set[int]]:
    """Chunked history: ``roll`` decodes a chunk greedily (1, 2, 4, ... up to ``chunk_size``
    tokens), ``check`` consumes it in one cached call (its pick after every token); a row ends at
    its EOS, the budget, a non-finite pick of either model, or when ``done`` says its consumer has
    what it needs. Returns the rollouts, the picks (one per rollout token) and the rows that ended
    at non-finite logits. With ``fits`` (the batch rules), the prompts are a queue batched
    continuously, as in the divergence search."""
    real, eos, pad = models.real_vocab, models.eos_ids, models.pad_id
    dec_r, dec_c = new_decoder(roll, models), new_decoder(check, models)
    n = len(prompts)
    picks: list[list[int]] = [[] for _ in range(n)]
    gen: list[list[int]] = [[] for _ in range(n)]
    ended, non_finite = [False] * n, set()
    queue = list(range(n))
    live = first_rows(queue, prompts, budget, fits, (dec_r, dec_c))
    logits_r = dec_r.start([prompts[r] for r in live], live)
    for r, t in zip(live, masked_argmax(dec_c.start([prompts[r] for r in live], live), real).tolist()):
        picks[r] = [int(t)]
    chunk_len = 1
    while live:
        chunk, stopped, logits_r = greedy_chunk(dec_r, logits_r, live, gen, budget, chunk_len, models)
        chunk_len = min(2 * chunk_len, chunk_size)
        width, checked = max(len(chunk[r]) for r in live), []
        if width:
            tokens = torch.tensor([chunk[r] + [pad] * (width - len(chunk[r])) for r in live])
            checked = masked_argmax(dec_c.feed(tokens), real).tolist()
        for k, r in enumerate(live):
            gen[r] += chunk[r]
            if chunk[r]:
                picks[r] += checked[k][: len(chunk[r])]
            if r in stopped or NON_FINITE in picks[r][: len(gen[r])]:
                non_finite.add(r)
            if (r in stopped or not chunk[r] or len(gen[r]) >= budget or gen[r][-1] in eos or r in non_finite
                    or (done is not None and done(r, gen[r], picks[r][: len(gen[r])]))):
                ended[r] = True
        keep = [k for k, r in enumerate(live) if not ended[r]]
        if len(keep) < len(live):
            live = [live[k] for k in keep]
            dec_r.select(keep)
            dec_c.select(keep)
            logits_r = logits_r[torch.tensor(keep, dtype=torch.long, device=logits_r.device)]
        live, logits_r = join_pair(dec_r, dec_c, queue, prompts, budget, fits, live, logits_r, picks, real)
    return gen, [p[: len(g)] for p, g in zip(picks, gen)], non_finite


def history_interleaved(models, roll: ModelHandle, check: ModelHandle, prompts: list[list[int]], max_new_tokens: int,
                        chunk_size: int = 8, done=None, fits=None) -> list[tuple[list[int], list[int]]]:
    """Per prompt ``(rollout, picks)`` with both models in use at once (:class:`History`): the
    rollout is ``roll``'s greedy decoding (as :func:`greedy_rollout`), ``picks[j]`` ``check``'s
    argmax given the prompt and ``rollout[:j]``; a row ends early when ``done(row, rollout,
    picks)``. A row that met non-finite logits is decoded again one token per call (a NaN key at a
    later position of a multi-token call reaches the earlier positions' attention)."""
    gen, picks, bad = _history_batch(models, roll, check, prompts, max_new_tokens, chunk_size, done, fits)
    redo = sorted(bad)
    if redo and chunk_size > 1:
        again, again_picks, _ = _history_batch(models, roll, check, [prompts[r] for r in redo], max_new_tokens, 1,
                                               None if done is None else (lambda k, g, p: done(redo[k], g, p)), fits)
        for k, row in enumerate(redo):
            gen[row], picks[row] = again[k], again_picks[k]
    return list(zip(gen, picks))
