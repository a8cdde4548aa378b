"""Decoding with KV caches: greedy rollouts and the first-divergence search.

Two strategies give the same outcomes (tested against naive lockstep decoding):

- *interleaved* (both models usable at once): the rollout model decodes a chunk of tokens
  greedily (1, 2, 4, ... up to ``chunk_size``), the other consumes the same tokens in one cached
  call, like speculative-decoding verification; the first mismatch ends the row and finished
  rows leave both caches;
- *phased* (one model at a time): the rollout model decodes the whole budget, then the other is
  teacher-forced over prompt + rollout in one pass.

Because attention is causal, the first position where the checking model's argmax differs from
the rollout token is exactly where lockstep greedy decoding of both models would first disagree.
"""

from __future__ import annotations

import contextlib
from typing import cast

import torch

from ..models.forward import EventStates, ModelHandle, StateRecorder, cache_keyword, capture_forward, readout, step_logits
from ..models.vocab import NON_FINITE, masked_argmax
from .passes import SearchOutcome


def _new_cache(handle: ModelHandle):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=handle.anatomy.model.config)  # pyright: ignore[reportArgumentType] - a PreTrainedModel's config
    except TypeError:  # transformers 4.x
        return DynamicCache()


class CachedDecoder:
    """One model stepping through a left-padded batch with its own KV cache.

    ``start`` consumes the prompts; ``feed`` appends tokens ``[live rows, k]`` and returns the
    logits after each of them; ``select`` drops finished rows from the cache so they cost
    nothing more. With ``capture`` boundaries, the states of every consumed position are kept
    per row (``event_states``), so no separate full pass is needed later."""

    def __init__(self, handle: ModelHandle, models, capture: list[int] | None = None, keep_on=None) -> None:
        self.handle, self.models = handle, models
        self.capture: list[int] = capture if capture is not None else []  # boundaries whose states are kept
        self.cache = _new_cache(handle)
        self.kw = cache_keyword(handle)
        self.recorder = StateRecorder(handle.anatomy, capture, keep_on) if capture is not None else None
        self.non_finite: set[int] = set()  # original rows whose decoding stopped at NaN/inf logits

    def _call(self, ids, keep: int, real_tokens: int) -> torch.Tensor:
        with self.recorder or contextlib.nullcontext():
            logits = step_logits(self.handle, keep, real_tokens, input_ids=ids, attention_mask=self.mask,
                                 position_ids=self.positions, use_cache=True, **{self.kw: self.cache})
        if self.recorder is not None:
            final = self.recorder.final.pop()
            bounds = {b: self.recorder.boundary[b].pop() for b in self.capture}
            for k, row in enumerate(self.rows):
                self.kept[row]["final"].append(final[k])
                for b in self.capture:
                    self.kept[row][b].append(bounds[b][k])
        return logits

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        """Consume the prompts; returns next-token logits ``[batch, V]``."""
        pad, device = self.models.pad_id, self.handle.input_device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        self.rows = list(range(len(prompts)))
        self.offsets = [width - len(p) for p in prompts]
        self.kept = [{"final": [], **{b: [] for b in self.capture}} for _ in prompts]
        self.mask = mask.to(device)
        self.positions = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        self.next_position: torch.Tensor = self.positions[:, -1:] + 1
        return self._call(ids.to(device), 1, int(mask.sum()))[:, 0]

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` ``[live rows, k]``; returns logits ``[live rows, k, V]``."""
        k = tokens.shape[1]
        device = self.mask.device
        self.mask = torch.cat([self.mask, torch.ones((tokens.shape[0], k), dtype=torch.long, device=device)], 1)
        self.positions = self.next_position + torch.arange(k, device=device)[None, :]
        self.next_position = self.next_position + k
        return self._call(tokens.to(device), k, tokens.numel())

    def select(self, keep: list[int]) -> None:
        """Keep only the rows of the current batch at indices ``keep``."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.next_position = self.mask[idx], self.next_position[idx]
        self.rows = [self.rows[i] for i in keep]

    def row_states(self, row: int) -> EventStates:
        """This model's states over every position consumed for original row ``row`` (boundary
        states and final-norm inputs, both ``[n, d]``; left padding removed)."""
        kept, off = self.kept[row], self.offsets[row]
        seq = {key: torch.cat([t.reshape(-1, t.shape[-1]) for t in parts])[off:] for key, parts in kept.items()}
        return EventStates({b: seq[b] for b in self.capture}, seq["final"])

    def event_states(self, row: int, length: int) -> EventStates:
        """This model's states over the first ``length`` positions of original row ``row``."""
        kept, off = self.kept[row], self.offsets[row]
        seq = {key: torch.cat([t.reshape(-1, t.shape[-1]) for t in parts]) for key, parts in kept.items()}
        return EventStates({b: seq[b][off : off + length] for b in self.capture}, seq["final"][off + length - 1])


def greedy_rollout(
    handle: ModelHandle, prompts: list[list[int]], max_new_tokens: int, models
) -> list[list[int]]:
    """Greedy continuations over the real vocabulary; each row stops after an EOS."""
    return _greedy(CachedDecoder(handle, models), prompts, max_new_tokens, models)


def _greedy(decoder: CachedDecoder, prompts: list[list[int]], max_new_tokens: int, models) -> list[list[int]]:
    """Greedy decoding of every row until its EOS or the budget; a row that has ended leaves the
    batch (and the cache), so it costs nothing more while the others go on. A row whose logits
    are NaN or infinite ends there, without a token, and is listed in ``decoder.non_finite``."""
    logits = decoder.start(prompts)
    eos = models.eos_ids
    outputs: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))  # original rows still decoding, in batch order
    for step in range(max_new_tokens):
        tokens = masked_argmax(logits, models.real_vocab).tolist()
        for row, tok in zip(live, tokens):
            if tok == NON_FINITE:
                decoder.non_finite.add(row)
            else:
                outputs[row].append(tok)
        keep = [k for k, tok in enumerate(tokens) if tok not in eos and tok != NON_FINITE]
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(live):
            decoder.select(keep)
            live, tokens = [live[k] for k in keep], [tokens[k] for k in keep]
        logits = decoder.feed(torch.tensor([[t] for t in tokens]))[:, 0]
    return outputs


def _search_batch(
    models, roll: ModelHandle, check: ModelHandle, prompts: list[list[int]],
    budget: int, chunk_size: int, capture: list[int] | None, keep_on=None,
):
    """Chunked search: ``roll`` decodes a chunk of tokens greedily (1, 2, 4, ... up to
    ``chunk_size``: most divergences come early), then ``check`` consumes the same tokens in one
    cached call (like speculative-decoding verification); the first mismatch ends the row and
    finished rows leave both caches. A chunk's first token is checked against the prediction
    ``check`` already made, so a row that diverges there costs ``check`` nothing. Returns per row
    ``(i, t_roll, t_check)`` or ``(None, reason, n_generated)``, the accepted tokens, the role
    whose logits were NaN or infinite for each row that ended so (reason ``non_finite_logits``:
    no token is that model's choice there, so the search cannot go on), and the two decoders
    (for their states)."""
    real, eos, pad = models.real_vocab, models.eos_ids, models.pad_id
    dec_r, dec_c = CachedDecoder(roll, models, capture, keep_on), CachedDecoder(check, models, capture, keep_on)
    logits_r = dec_r.start(prompts)
    n = len(prompts)
    pred_c = [[int(t)] for t in masked_argmax(dec_c.start(prompts), real).tolist()]  # check's pick per position
    gen: list[list[int]] = [[] for _ in range(n)]
    outcome: list[tuple | None] = [None] * n
    culprit: dict[int, str] = {}
    live = list(range(n))  # original rows still in both caches, in batch order

    def end_non_finite(r: int, role: str) -> None:
        outcome[r] = (None, "non_finite_logits", len(gen[r]))
        culprit[r] = role

    def retire(live, logits_r):
        keep = [k for k, r in enumerate(live) if outcome[r] is None]
        if len(keep) < len(live):
            live = [live[k] for k in keep]
            if live:
                dec_r.select(keep)
                dec_c.select(keep)
                logits_r = logits_r[torch.tensor(keep, device=logits_r.device)]
        return live, logits_r

    chunk_len = 1
    while live:
        chunk: dict[int, list[int]] = {r: [] for r in live}
        stopped: set[int] = set()  # rows whose rollout logits were not finite in this chunk

        def extending(r: int, stopped=stopped, chunk=chunk) -> bool:  # this iteration's sets
            return r not in stopped and len(gen[r]) + len(chunk[r]) < budget and not (chunk[r] and chunk[r][-1] in eos)

        for _ in range(chunk_len):
            picks = masked_argmax(logits_r, real).tolist()
            growing = [extending(r) for r in live]
            for r, pick, grow in zip(live, picks, growing):
                if grow and pick == NON_FINITE:
                    stopped.add(r)
                elif grow:
                    chunk[r].append(pick)
            if not any(extending(r) for r in live):
                break
            feed = [[chunk[r][-1] if grow and r not in stopped else pad] for r, grow in zip(live, growing)]
            logits_r = dec_r.feed(torch.tensor(feed))[:, 0]
        chunk_len = min(2 * chunk_len, chunk_size)
        for r in live:
            i = len(gen[r])
            if pred_c[r][i] == NON_FINITE:
                end_non_finite(r, check.role)
            elif chunk[r] and pred_c[r][i] != chunk[r][0]:
                outcome[r] = (i, chunk[r][0], pred_c[r][i])
            elif not chunk[r]:  # the rollout's first pick of this chunk was not finite
                end_non_finite(r, roll.role)
        live, logits_r = retire(live, logits_r)
        if not live:
            break
        width = max(len(chunk[r]) for r in live)
        tokens = torch.tensor([chunk[r] + [pad] * (width - len(chunk[r])) for r in live])
        checked = masked_argmax(dec_c.feed(tokens), real).tolist()
        for k, r in enumerate(live):
            for j, tok in enumerate(chunk[r]):
                i = len(gen[r])
                if pred_c[r][i] == NON_FINITE:
                    end_non_finite(r, check.role)
                    break
                if pred_c[r][i] != tok:
                    outcome[r] = (i, tok, pred_c[r][i])
                    break
                gen[r].append(tok)
                pred_c[r].append(checked[k][j])
                if tok in eos:
                    outcome[r] = (None, "agreed_eos", len(gen[r]))
                    break
            if outcome[r] is None and r in stopped:
                end_non_finite(r, roll.role)
            elif outcome[r] is None and len(gen[r]) >= budget:
                outcome[r] = (None, "budget_exhausted", len(gen[r]))
        live, logits_r = retire(live, logits_r)
    return cast(list[tuple], outcome), gen, culprit, dec_r, dec_c  # every row has its outcome now


def _outcomes(prompts, outcome, gen, states_of, culprit: dict[int, str]) -> list[SearchOutcome]:
    """Raw per-row results as :class:`SearchOutcome` (``states_of(row, length)``: both models'
    states over the first ``length`` positions, or None; ``culprit``: per row that ended at
    non-finite logits, whose)."""
    result = []
    for row, (p, (i, a, b)) in enumerate(zip(prompts, outcome)):
        if i is None:
            result.append(SearchOutcome(None, gen[row][:b], reason=a, non_finite=culprit.get(row)))
        else:
            result.append(SearchOutcome(i, gen[row][:i], t_roll=a, t_check=b, states=states_of(row, len(p) + i)))
    return result


def search_interleaved(models, roll: ModelHandle, check: ModelHandle, prompts: list[list[int]], max_new_tokens: int,
                       chunk_size: int = 8, capture: list[int] | None = None, keep_on=None) -> list[SearchOutcome]:
    """First divergence with both models in use at once (chunked decode + cached verification).

    A row that ended at NaN/inf logits is searched again one token per call: in a call over
    several tokens, a NaN key at a later position reaches the earlier positions' attention
    through the masked scores (NaN + -inf is NaN), so the position where the logits first stop
    being finite, or an event before it, is only exact token by token (as lockstep decoding)."""
    outcome, gen, culprit, dec_r, dec_c = _search_batch(models, roll, check, prompts, max_new_tokens, chunk_size,
                                                        capture, keep_on)
    source = {row: (dec_r, dec_c, row) for row in range(len(prompts))}
    redo = [row for row, o in enumerate(outcome) if o[0] is None and o[1] == "non_finite_logits"]
    if redo and chunk_size > 1:
        again, gen2, culprit2, dec_r2, dec_c2 = _search_batch(models, roll, check, [prompts[r] for r in redo],
                                                              max_new_tokens, 1, capture, keep_on)
        for k, row in enumerate(redo):
            outcome[row], gen[row], source[row] = again[k], gen2[k], (dec_r2, dec_c2, k)
            culprit.pop(row, None)
            if k in culprit2:
                culprit[row] = culprit2[k]

    def states_of(row, length):
        if capture is None:
            return None
        rolling, checking, at = source[row]
        return {roll.role: rolling.event_states(at, length), check.role: checking.event_states(at, length)}

    return _outcomes(prompts, outcome, gen, states_of, culprit)


def rollout_states(models, handle: ModelHandle, prompts: list[list[int]], max_new_tokens: int,
                   capture: list[int] | None = None, keep_on=None):
    """Greedy rollouts of ``handle`` (and, with ``capture``, the decoder holding its states)."""
    decoder = CachedDecoder(handle, models, capture, keep_on)
    return _greedy(decoder, prompts, max_new_tokens, models), decoder


def first_mismatch(models, check: ModelHandle, prompts: list[list[int]], rollouts: list[list[int]],
                   capture: list[int] | None = None, keep_on=None, stopped: dict[int, str] | None = None):
    """Teacher-force ``check`` over prompt + rollout; per row ``(i, t_roll, t_check)`` at the first
    position where ``check``'s argmax differs from the rollout, or ``(None, reason, n)``, reason
    ``non_finite_logits`` where ``check``'s logits are NaN or infinite first, or where the rollout
    of a row in ``stopped`` (row -> rollout role) ended at its own; whose logits those were, per
    such row; and ``states(row, length)``: ``check``'s states over a row's first ``length``
    positions. A row whose logits are not finite somewhere is fed again one token per call (see
    :func:`search_interleaved`: in one call, a NaN at a later position reaches earlier ones)."""
    seqs = [p + r for p, r in zip(prompts, rollouts)]
    cap = capture_forward(check, seqs, capture or [], models.pad_id, keep_on=keep_on)
    outcome, culprit, alone = [], {}, {}
    for row, (p, r) in enumerate(zip(prompts, rollouts)):
        finals = cap.final_states[row, len(p) - 1 : len(p) - 1 + len(r)]
        picks = masked_argmax(readout(check, finals), models.real_vocab).tolist() if r else []
        if NON_FINITE in picks:
            alone[row] = CachedDecoder(check, models, capture, keep_on)
            picks = _picks_token_by_token(alone[row], models, p, r)
        i = next((j for j, (a, b) in enumerate(zip(r, picks)) if a != b), None)
        if i is not None and picks[i] == NON_FINITE:
            outcome.append((None, "non_finite_logits", i))
            culprit[row] = check.role
        elif i is not None:
            outcome.append((i, r[i], picks[i]))
        elif stopped and row in stopped:
            outcome.append((None, "non_finite_logits", len(r)))
            culprit[row] = stopped[row]
        else:
            reason = "agreed_eos" if r and r[-1] in models.eos_ids else "budget_exhausted"
            outcome.append((None, reason, len(r)))

    def states(row: int, length: int) -> EventStates:
        if row in alone:
            return alone[row].event_states(0, length)
        return cap.event_states(row, length, capture or [])

    return outcome, culprit, states


def _picks_token_by_token(decoder: CachedDecoder, models, prompt: list[int], rollout: list[int]) -> list[int]:
    """``decoder``'s model's picks at each rollout position, fed one token per call and stopped at
    the first pick that differs from the rollout (a mismatch or :data:`NON_FINITE`)."""
    picks = [int(masked_argmax(decoder.start([prompt]), models.real_vocab)[0])]
    for tok in rollout[:-1]:
        if picks[-1] != tok:
            break
        picks.append(int(masked_argmax(decoder.feed(torch.tensor([[tok]]))[:, 0], models.real_vocab)[0]))
    return picks


def _history_batch(models, roll: ModelHandle, check: ModelHandle, prompts: list[list[int]], budget: int,
                   chunk_size: int, done) -> tuple[list[list[int]], list[list[int]], set[int]]:
    """Chunked history: ``roll`` decodes a chunk greedily (1, 2, 4, ... up to ``chunk_size``
    tokens), ``check`` consumes it in one cached call (its pick after every token); a row ends at
    its EOS, the budget, a non-finite pick of either model, or when ``done`` says its consumer has
    what it needs. Returns the rollouts, the picks (one per rollout token) and the rows that ended
    at non-finite logits."""
    real, eos, pad = models.real_vocab, models.eos_ids, models.pad_id
    dec_r, dec_c = CachedDecoder(roll, models), CachedDecoder(check, models)
    logits_r = dec_r.start(prompts)
    n = len(prompts)
    picks: list[list[int]] = [[int(t)] for t in masked_argmax(dec_c.start(prompts), real).tolist()]
    gen: list[list[int]] = [[] for _ in range(n)]
    ended, non_finite = [False] * n, set()
    live = list(range(n))
    chunk_len = 1
    while live:
        chunk: dict[int, list[int]] = {r: [] for r in live}
        stopped: set[int] = set()

        def extending(r: int, stopped=stopped, chunk=chunk) -> bool:
            return r not in stopped and len(gen[r]) + len(chunk[r]) < budget and not (chunk[r] and chunk[r][-1] in eos)

        for _ in range(chunk_len):
            growing = [extending(r) for r in live]
            for r, pick, grow in zip(live, masked_argmax(logits_r, real).tolist(), growing):
                if grow and pick == NON_FINITE:
                    stopped.add(r)
                elif grow:
                    chunk[r].append(pick)
            if not any(extending(r) for r in live):
                break
            feed = [[chunk[r][-1] if grow and r not in stopped else pad] for r, grow in zip(live, growing)]
            logits_r = dec_r.feed(torch.tensor(feed))[:, 0]
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
            if live:
                index = torch.tensor(keep, device=logits_r.device)
                dec_r.select(keep)
                dec_c.select(keep)
                logits_r = logits_r[index]
    return gen, [p[: len(g)] for p, g in zip(picks, gen)], non_finite


def history_interleaved(models, roll: ModelHandle, check: ModelHandle, prompts: list[list[int]], max_new_tokens: int,
                        chunk_size: int = 8, done=None) -> list[tuple[list[int], list[int]]]:
    """Per prompt ``(rollout, picks)`` with both models in use at once (:class:`History`): the
    rollout is ``roll``'s greedy decoding (as :func:`greedy_rollout`), ``picks[j]`` ``check``'s
    argmax given the prompt and ``rollout[:j]``; a row ends early when ``done(row, rollout,
    picks)``. A row that met non-finite logits is decoded again one token per call (a NaN key at a
    later position of a multi-token call reaches the earlier positions' attention)."""
    gen, picks, bad = _history_batch(models, roll, check, prompts, max_new_tokens, chunk_size, done)
    redo = sorted(bad)
    if redo and chunk_size > 1:
        again, again_picks, _ = _history_batch(models, roll, check, [prompts[r] for r in redo], max_new_tokens, 1,
                                               None if done is None else (lambda k, g, p: done(redo[k], g, p)))
        for k, row in enumerate(redo):
            gen[row], picks[row] = again[k], again_picks[k]
    return list(zip(gen, picks))
