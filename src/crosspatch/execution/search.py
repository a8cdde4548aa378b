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

from typing import cast

import torch

from ..models.forward import EventStates, ModelHandle, capture_forward, readout
from ..models.vocab import NON_FINITE, masked_argmax
from .batching import free_memory, joining_rows
from .decoder import CachedDecoder, first_rows, greedy_chunk, join_pair
from .history import history_interleaved
from .modes import new_decoder
from .passes import SearchHistory, SearchOutcome

__all__ = ["CachedDecoder", "first_mismatch", "greedy_rollout", "history_interleaved", "rollout_states",
           "search_interleaved"]


def greedy_rollout(
    handle: ModelHandle, prompts: list[list[int]], max_new_tokens: int, models, max_rows: int | None = None
) -> list[list[int]]:
    """Greedy continuations over the real vocabulary; each row stops after an EOS. The prompts go
    in batches of at most ``max_rows`` (all at once without); a batch that runs out of memory
    (:func:`~crosspatch.errors.is_out_of_memory`) is halved and decoded again, later batches staying
    under the size that failed, and one prompt that does not fit alone is a
    :class:`~crosspatch.errors.DeviceMemoryError`."""
    from ..errors import DeviceMemoryError, is_out_of_memory

    rows, outputs = max(1, max_rows or len(prompts)), []
    while len(outputs) < len(prompts):
        part = prompts[len(outputs):len(outputs) + rows]
        try:
            outputs += _greedy(new_decoder(handle, models), part, max_new_tokens, models)
            continue
        except Exception as exc:  # noqa: BLE001 - anything but running out of memory is raised again
            if not is_out_of_memory(exc):
                raise
        free_memory()
        if len(part) == 1:
            raise DeviceMemoryError(
                f"greedy decoding ran out of memory on one prompt of {len(part[0])} tokens alone in its batch: free "
                "memory (--dtype bfloat16 halves it), or shorten the prompts or --max-new-tokens")
        rows = (len(part) + 1) // 2
    return outputs


def _greedy(decoder: CachedDecoder, prompts: list[list[int]], max_new_tokens: int, models,
            fits=None) -> list[list[int]]:
    """Greedy decoding of every row until its EOS or the budget; a row that has ended leaves the
    batch (and the cache), so it costs nothing more while the others go on. A row whose logits
    are NaN or infinite ends there, without a token, and is listed in ``decoder.non_finite``.

    With ``fits(lengths) -> bool`` (each live row's prompt + budget tokens), the prompts are a queue
    batched continuously, as in :func:`_search_batch`. Without it, all start at once."""
    eos, real = models.eos_ids, models.real_vocab
    outputs: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens < 1 or not prompts:
        return outputs
    queue = list(range(len(prompts)))
    live = first_rows(queue, prompts, max_new_tokens, fits, (decoder,))  # original rows still decoding, in batch order
    logits = decoder.start([prompts[r] for r in live], live)
    while live:
        tokens = masked_argmax(logits, real).tolist()
        for row, tok in zip(live, tokens):
            if tok == NON_FINITE:
                decoder.non_finite.add(row)
            else:
                outputs[row].append(tok)
        keep = [k for k, (row, tok) in enumerate(zip(live, tokens))
                if tok not in eos and tok != NON_FINITE and len(outputs[row]) < max_new_tokens]
        if len(keep) < len(live):
            decoder.select(keep)
            live, tokens = [live[k] for k in keep], [tokens[k] for k in keep]
        take = joining_rows(queue, prompts, max_new_tokens, fits, live, (decoder,))
        new, queue[:take] = queue[:take], []
        if live:
            logits = decoder.feed(torch.tensor([[t] for t in tokens]))[:, 0]
        if new:
            joined = decoder.add([prompts[r] for r in new], new)
            logits = torch.cat([logits, joined.to(logits.device)]) if live else joined
            live = live + new
    return outputs


class _Rows:
    """The search's per-row bookkeeping (:func:`_search_batch`): the accepted tokens ``gen``,
    ``check``'s pick per position ``pred_c`` (one more than ``gen``: its next prediction), each
    row's outcome, whose logits ended a row at NaN/inf (``culprit``), and with ``keep_history``
    the rows decoding on past their event (``following``) and their histories."""

    def __init__(self, n: int, pred_c: list[list[int]], budget: int, eos, keep_history: bool, history_done) -> None:
        self.gen: list[list[int]] = [[] for _ in range(n)]
        self.pred_c, self.budget, self.eos = pred_c, budget, eos
        self.keep_history, self.history_done = keep_history, history_done
        self.outcome: list[tuple | None] = [None] * n
        self.culprit: dict[int, str] = {}
        self.following: set[int] = set()
        self.history: dict[int, SearchHistory | None] = {}

    def live(self, r: int) -> bool:
        """Whether row ``r`` stays in the caches (no outcome yet, or decoding on for its history)."""
        return self.outcome[r] is None or r in self.following

    def _diverged(self, r: int, i: int, t_roll: int, t_check: int) -> None:
        self.outcome[r] = (i, t_roll, t_check)
        if self.keep_history:
            self.following.add(r)

    def _non_finite(self, r: int, role: str) -> None:
        self.outcome[r] = (None, "non_finite_logits", len(self.gen[r]))
        self.culprit[r] = role

    def precheck(self, r: int, chunk: list[int], stopped: set[int], roll: str, check: str) -> None:
        """Before ``check`` is fed: the chunk's first token against ``check``'s prediction (a row
        that diverges there costs ``check`` nothing, unless it decodes on for its history)."""
        if r in self.following:
            if not chunk:
                self._end_history(r, stopped, grew=False)  # nothing more to feed
            return
        i = len(self.gen[r])
        if self.pred_c[r][i] == NON_FINITE:
            self._non_finite(r, check)
        elif chunk and self.pred_c[r][i] != chunk[0]:
            self._diverged(r, i, chunk[0], self.pred_c[r][i])
        elif not chunk:  # the rollout's first pick of this chunk was not finite
            self._non_finite(r, roll)

    def consume(self, r: int, chunk: list[int], checked: list[int], stopped: set[int], roll: str, check: str) -> None:
        """``check``'s picks after each token of ``chunk`` (``checked``): tokens are accepted up to
        the first mismatch (the event), an agreed EOS or NaN/inf logits; a row decoding on for its
        history keeps them all."""
        gen, pred_c = self.gen[r], self.pred_c[r]
        for j, tok in enumerate(chunk):
            i = len(gen)
            if r not in self.following:
                if pred_c[i] == NON_FINITE:
                    self._non_finite(r, check)
                    break
                if pred_c[i] != tok:
                    self._diverged(r, i, tok, pred_c[i])
                    if not self.keep_history:
                        break
            gen.append(tok)
            pred_c.append(checked[j])
            if tok in self.eos and r not in self.following:
                self.outcome[r] = (None, "agreed_eos", len(gen))
                break
        if r in self.following:
            self._end_history(r, stopped, grew=True)
        elif self.outcome[r] is None and r in stopped:
            self._non_finite(r, roll)
        elif self.outcome[r] is None and len(gen) >= self.budget:
            self.outcome[r] = (None, "budget_exhausted", len(gen))

    def _end_history(self, r: int, stopped: set[int], grew: bool) -> None:
        """A following row's history ends when it is done, whole (EOS, budget) or met NaN/inf
        logits (then None: it is decoded apart, token by token)."""
        gen = self.gen[r]
        picks = self.pred_c[r][: len(gen)]
        if r in stopped or NON_FINITE in picks:
            self.history[r] = None
        elif not grew or len(gen) >= self.budget or gen[-1] in self.eos:
            self.history[r] = SearchHistory(list(gen), picks, whole=True)
        elif self.history_done is not None and self.history_done(r, gen, picks):
            self.history[r] = SearchHistory(list(gen), picks, whole=False)
        else:
            return
        self.following.discard(r)


def _search_batch(
    models, roll: ModelHandle, check: ModelHandle, prompts: list[list[int]],
    budget: int, chunk_size: int, capture: list[int] | None, keep_on=None, fits=None,
    keep_history: bool = False, history_done=None,
):
    """Chunked search: ``roll`` decodes a chunk of tokens greedily (1, 2, 4, ... up to
    ``chunk_size``: most divergences come early), then ``check`` consumes the same tokens in one
    cached call (like speculative-decoding verification); the first mismatch ends the row and
    finished rows leave both caches. A chunk's first token is checked against the prediction
    ``check`` already made, so a row that diverges there costs ``check`` nothing. Returns per row
    ``(i, t_roll, t_check)`` or ``(None, reason, n_generated)``, the accepted tokens, the role
    whose logits were NaN or infinite for each row that ended so (reason ``non_finite_logits``:
    no token is that model's choice there, so the search cannot go on), and the two decoders
    (for their states).

    With ``fits(lengths) -> bool`` (each live row's prompt + budget tokens), the prompts are a
    queue: as many start as fit, and a row that ends makes room for the next prompt in the same
    caches (continuous batching: no row waits for the slowest of its batch). Without it, all
    start at once.

    With ``keep_history``, a row that diverges stays in both caches as a history would
    (:func:`history_interleaved`: every token of ``roll`` kept, ``check``'s pick after each)
    until ``history_done(row, rollout, picks)``, its EOS or the budget; the last value returned
    maps each such row to its :class:`SearchHistory`, or None where a pick or the rollout met
    NaN/inf logits (a history then has to be decoded token by token, apart)."""
    real, eos, pad = models.real_vocab, models.eos_ids, models.pad_id
    dec_r, dec_c = new_decoder(roll, models, capture, keep_on), new_decoder(check, models, capture, keep_on)
    n = len(prompts)
    queue = list(range(n))
    live = first_rows(queue, prompts, budget, fits, (dec_r, dec_c))  # original rows in both caches, in batch order
    logits_r = dec_r.start([prompts[r] for r in live], live)
    pred_c: list[list[int]] = [[] for _ in range(n)]  # check's pick per position
    for r, t in zip(live, masked_argmax(dec_c.start([prompts[r] for r in live], live), real).tolist()):
        pred_c[r] = [int(t)]
    rows = _Rows(n, pred_c, budget, eos, keep_history, history_done)
    # a row decoding on for its history has all the states its event reads (prompt + the tokens
    # before it): the decoders keep no more of its states
    dec_r.unrecorded = dec_c.unrecorded = rows.following

    def retire(live, logits_r, refill: bool = True):
        keep = [k for k, r in enumerate(live) if rows.live(r)]
        if len(keep) < len(live):
            live = [live[k] for k in keep]
            dec_r.select(keep)
            dec_c.select(keep)
            logits_r = logits_r[torch.tensor(keep, dtype=torch.long, device=logits_r.device)]
        if refill and queue:  # continuous batching
            return join_pair(dec_r, dec_c, queue, prompts, budget, fits, live, logits_r, pred_c, real)
        return live, logits_r

    chunk_len = 1
    while live:
        chunk, stopped, logits_r = greedy_chunk(dec_r, logits_r, live, rows.gen, budget, chunk_len, models)
        chunk_len = min(2 * chunk_len, chunk_size)
        for r in live:
            rows.precheck(r, chunk[r], stopped, roll.role, check.role)
        live, logits_r = retire(live, logits_r, refill=False)  # (new rows join after the check)
        if not live:
            live, logits_r = retire(live, logits_r)  # the next prompts of the queue, if any
            continue
        width = max(len(chunk[r]) for r in live)
        tokens = torch.tensor([chunk[r] + [pad] * (width - len(chunk[r])) for r in live])
        checked = masked_argmax(dec_c.feed(tokens), real).tolist()
        for k, r in enumerate(live):
            rows.consume(r, chunk[r], checked[k], stopped, roll.role, check.role)
        live, logits_r = retire(live, logits_r)
    outcome, gen, culprit, history = rows.outcome, rows.gen, rows.culprit, rows.history
    return cast(list[tuple], outcome), gen, culprit, dec_r, dec_c, history  # every row has its outcome now


def _outcomes(prompts, outcome, gen, states_of, culprit: dict[int, str],
              history: dict[int, SearchHistory | None]) -> list[SearchOutcome]:
    """Raw per-row results as :class:`SearchOutcome` (``states_of(row, length)``: both models'
    states over the first ``length`` positions, or None; ``culprit``: per row that ended at
    non-finite logits, whose; ``history``: per event row, the history decoded past it)."""
    result = []
    for row, (p, (i, a, b)) in enumerate(zip(prompts, outcome)):
        if i is None:
            result.append(SearchOutcome(None, gen[row][:b], reason=a, non_finite=culprit.get(row)))
        else:
            result.append(SearchOutcome(i, gen[row][:i], t_roll=a, t_check=b, states=states_of(row, len(p) + i),
                                        history=history.get(row)))
    return result


def search_interleaved(models, roll: ModelHandle, check: ModelHandle, prompts: list[list[int]], max_new_tokens: int,
                       chunk_size: int = 8, capture: list[int] | None = None, keep_on=None,
                       fits=None, keep_history: bool = False, history_done=None) -> list[SearchOutcome]:
    """First divergence with both models in use at once (chunked decode + cached verification).

    A row that ended at NaN/inf logits is searched again one token per call: in a call over
    several tokens, a NaN key at a later position reaches the earlier positions' attention
    through the masked scores (NaN + -inf is NaN), so the position where the logits first stop
    being finite, or an event before it, is only exact token by token (as lockstep decoding).
    With ``keep_history``, each event row decodes on for its history (see :func:`_search_batch`;
    ``history_done(row, rollout, picks)``) and its outcome carries it."""
    outcome, gen, culprit, dec_r, dec_c, history = _search_batch(models, roll, check, prompts, max_new_tokens,
                                                                 chunk_size, capture, keep_on, fits, keep_history,
                                                                 history_done)
    source = {row: (dec_r, dec_c, row) for row in range(len(prompts))}
    redo = [row for row, o in enumerate(outcome) if o[0] is None and o[1] == "non_finite_logits"]
    if redo and chunk_size > 1:
        done = None if history_done is None else (lambda k, g, c: history_done(redo[k], g, c))
        again, gen2, culprit2, dec_r2, dec_c2, history2 = _search_batch(
            models, roll, check, [prompts[r] for r in redo], max_new_tokens, 1, capture, keep_on, fits,
            keep_history, done)
        for k, row in enumerate(redo):
            outcome[row], gen[row], source[row] = again[k], gen2[k], (dec_r2, dec_c2, k)
            culprit.pop(row, None)
            if k in culprit2:
                culprit[row] = culprit2[k]
            if k in history2:
                history[row] = history2[k]

    def states_of(row, length):
        if capture is None:
            return None
        rolling, checking, at = source[row]
        return {roll.role: rolling.event_states(at, length), check.role: checking.event_states(at, length)}

    return _outcomes(prompts, outcome, gen, states_of, culprit, history)


def rollout_states(models, handle: ModelHandle, prompts: list[list[int]], max_new_tokens: int,
                   capture: list[int] | None = None, keep_on=None, fits=None):
    """Greedy rollouts of ``handle`` (and, with ``capture``, the decoder holding its states);
    ``fits``: the prompts are a queue, batched continuously (:func:`_greedy`)."""
    decoder = new_decoder(handle, models, capture, keep_on)
    return _greedy(decoder, prompts, max_new_tokens, models, fits), decoder


def first_mismatch(models, check: ModelHandle, prompts: list[list[int]], rollouts: list[list[int]],
                   capture: list[int] | None = None, keep_on=None, stopped: dict[int, str] | None = None):
    """Teacher-force ``check`` over prompt + rollout; per row ``(i, t_roll, t_check)`` at the first
    position where ``check``'s argmax differs from the rollout, or ``(None, reason, n)``, reason
    ``non_finite_logits`` where ``check``'s logits are NaN or infinite first, or where the rollout
    of a row in ``stopped`` (row -> rollout role) ended at its own; whose logits those were, per
    such row; ``states(row, length)``: ``check``'s states over a row's first ``length``
    positions; and per row ``check``'s picks at every rollout position (the history of
    :class:`History`), or None where they were not all finite. A row whose logits are not finite
    somewhere is fed again one token per call (see :func:`search_interleaved`: in one call, a NaN
    at a later position reaches earlier ones)."""
    seqs = [p + r for p, r in zip(prompts, rollouts)]
    cap = capture_forward(check, seqs, capture or [], models.pad_id, keep_on=keep_on)
    outcome, culprit, alone, all_picks = [], {}, {}, []
    for row, (p, r) in enumerate(zip(prompts, rollouts)):
        finals = cap.final_states[row, len(p) - 1 : len(p) - 1 + len(r)]
        picks = masked_argmax(readout(check, finals), models.real_vocab).tolist() if r else []
        all_picks.append(None if NON_FINITE in picks else picks)
        if NON_FINITE in picks:
            alone[row] = new_decoder(check, models, capture, keep_on)
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

    def states(row: int, length: int, every_final: bool = False) -> EventStates:
        if every_final:  # the final state at every position, [length, d] (a history's states)
            whole = alone[row].row_states(0) if row in alone else cap.event_states(row, length, capture or [],
                                                                                   every_final=True)
            return EventStates({b: t[:length] for b, t in whole.boundary.items()}, whole.final[:length])
        if row in alone:
            return alone[row].event_states(0, length)
        return cap.event_states(row, length, capture or [])

    return outcome, culprit, states, all_picks


def _picks_token_by_token(decoder: CachedDecoder, models, prompt: list[int], rollout: list[int]) -> list[int]:
    """``decoder``'s model's picks at each rollout position, fed one token per call and stopped at
    the first pick that differs from the rollout (a mismatch or :data:`NON_FINITE`)."""
    picks = [int(masked_argmax(decoder.start([prompt]), models.real_vocab)[0])]
    for tok in rollout[:-1]:
        if picks[-1] != tok:
            break
        picks.append(int(masked_argmax(decoder.feed(torch.tensor([[tok]]))[:, 0], models.real_vocab)[0]))
    return picks
