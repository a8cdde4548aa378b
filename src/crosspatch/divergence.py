"""First-divergence search (DESIGN 1.2).

One model (the *rollout* model, IT by default) decodes greedily over the real vocabulary; the
other is teacher-forced over prompt + that rollout, chunk by chunk, each with its own KV cache.
Because attention is causal, the first position where the second model's argmax differs from
the rollout token is exactly where lockstep greedy decoding of both models would first
disagree; verifying in growing chunks stops both models at most a few tokens after the event.
No disagreement within the budget, or an EOS both models agree on, is a *no-event* outcome that
is kept and counted.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from .models.execution import EventStates, ModelHandle, StateRecorder, cache_keyword, step_logits
from .models.loading import ModelPair
from .models.vocab import masked_argmax
from .prompts import Prompt


@dataclass
class DivergenceEvent:
    """The first generated position where PT's and IT's greedy top-1 tokens differ."""

    prompt_id: str
    category: str | None
    prompt_len: int
    position: int  # generated position i (0 = first token after the prompt)
    prefix_ids: list[int]  # prompt + the i shared generated tokens
    t_pt: int
    t_it: int

    @property
    def key(self) -> str:
        return f"{self.prompt_id}#first"

    def to_record(self) -> dict:
        return asdict(self)


@dataclass
class NoDivergence:
    """A prompt on which the two models did not disagree within the budget."""

    prompt_id: str
    category: str | None
    reason: str  # "agreed_eos" | "budget_exhausted"
    generated_tokens: int

    def to_record(self) -> dict:
        return asdict(self)


@dataclass
class DivergenceConfig:
    max_new_tokens: int = 128
    batch_size: int = 8
    rollout_model: str = "IT"  # which model decodes; the other verifies its tokens
    chunk_size: int = 8  # tokens decoded between verifications (bounds work past the event)
    capture_boundaries: list[int] | None = None  # keep both models' states for the cells (minimal plan)


def _new_cache(handle: ModelHandle):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=handle.anatomy.model.config)
    except TypeError:  # transformers 4.x
        return DynamicCache()


class CachedDecoder:
    """One model stepping through a left-padded batch with its own KV cache.

    ``start`` consumes the prompts; ``feed`` appends tokens ``[live rows, k]`` and returns the
    logits after each of them; ``select`` drops finished rows from the cache so they cost
    nothing more. With ``capture`` boundaries, the states of every consumed position are kept
    per row (``event_states``), so no separate full pass is needed later."""

    def __init__(self, handle: ModelHandle, pair: ModelPair, capture: list[int] | None = None) -> None:
        self.handle, self.pair, self.capture = handle, pair, capture
        self.cache = _new_cache(handle)
        self.kw = cache_keyword(handle)
        self.recorder = StateRecorder(handle.anatomy, capture) if capture is not None else None

    def _call(self, ids, keep: int) -> torch.Tensor:
        with self.recorder or contextlib.nullcontext():
            logits = step_logits(self.handle, keep, input_ids=ids, attention_mask=self.mask,
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
        pad, device = self.pair.pad_id, self.handle.input_device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        self.rows = list(range(len(prompts)))
        self.offsets = [width - len(p) for p in prompts]
        self.kept = [{"final": [], **{b: [] for b in (self.capture or [])}} for _ in prompts]
        self.mask = mask.to(device)
        self.positions = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        self.next_position = self.positions[:, -1:] + 1
        return self._call(ids.to(device), 1)[:, 0]

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` ``[live rows, k]``; returns logits ``[live rows, k, V]``."""
        k = tokens.shape[1]
        device = self.mask.device
        self.mask = torch.cat([self.mask, torch.ones((tokens.shape[0], k), dtype=torch.long, device=device)], 1)
        self.positions = self.next_position + torch.arange(k, device=device)[None, :]
        self.next_position = self.next_position + k
        return self._call(tokens.to(device), k)

    def select(self, keep: list[int]) -> None:
        """Keep only the rows of the current batch at indices ``keep``."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.next_position = self.mask[idx], self.next_position[idx]
        self.rows = [self.rows[i] for i in keep]

    def event_states(self, row: int, length: int) -> EventStates:
        """This model's states over the first ``length`` positions of original row ``row``."""
        kept, off = self.kept[row], self.offsets[row]
        seq = {key: torch.cat([t.reshape(-1, t.shape[-1]) for t in parts]) for key, parts in kept.items()}
        return EventStates({b: seq[b][off : off + length] for b in self.capture}, seq["final"][off + length - 1])


def greedy_rollout(
    handle: ModelHandle, prompts: list[list[int]], max_new_tokens: int, pair: ModelPair
) -> list[list[int]]:
    """Greedy continuations over the real vocabulary; each row stops after an EOS."""
    decoder = CachedDecoder(handle, pair)
    logits = decoder.start(prompts)
    eos = pair.eos_ids
    outputs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in range(max_new_tokens):
        tokens = masked_argmax(logits, pair.real_vocab).tolist()
        for row, tok in enumerate(tokens):
            if not done[row]:
                outputs[row].append(tok)
                done[row] = tok in eos
        if all(done) or step == max_new_tokens - 1:
            break
        feed = torch.tensor([[pair.pad_id if d else t] for t, d in zip(tokens, done)])
        logits = decoder.feed(feed)[:, 0]
    return outputs


def _search_batch(
    pair: ModelPair, roll: ModelHandle, check: ModelHandle, prompts: list[list[int]],
    config: "DivergenceConfig", capture: list[int] | None,
):
    """Chunked search: ``roll`` decodes a chunk of tokens greedily (1, 2, 4, ... up to
    ``chunk_size``: most divergences come early), then ``check`` consumes the same tokens in one
    cached call (like speculative-decoding verification); the first mismatch ends the row and
    finished rows leave both caches. A chunk's first token is checked against the prediction
    ``check`` already made, so a row that diverges there costs ``check`` nothing. Returns per row
    ``(i, t_roll, t_check)`` or ``(None, reason, n_generated)``, the accepted tokens, and the
    two decoders (for their states)."""
    real, eos, pad = pair.real_vocab, pair.eos_ids, pair.pad_id
    dec_r, dec_c = CachedDecoder(roll, pair, capture), CachedDecoder(check, pair, capture)
    logits_r = dec_r.start(prompts)
    n = len(prompts)
    pred_c = [[int(t)] for t in masked_argmax(dec_c.start(prompts), real).tolist()]  # check's pick per position
    gen: list[list[int]] = [[] for _ in range(n)]
    outcome: list[tuple | None] = [None] * n
    budget = config.max_new_tokens
    live = list(range(n))  # original rows still in both caches, in batch order

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
        for _ in range(chunk_len):
            picks = masked_argmax(logits_r, real).tolist()
            growing = [len(gen[r]) + len(chunk[r]) < budget and not (chunk[r] and chunk[r][-1] in eos) for r in live]
            for r, pick, grow in zip(live, picks, growing):
                if grow:
                    chunk[r].append(pick)
            if not any(grow and len(gen[r]) + len(chunk[r]) < budget and chunk[r][-1] not in eos
                       for r, grow in zip(live, growing)):
                break
            feed = [[pick if grow else pad] for pick, grow in zip(picks, growing)]
            logits_r = dec_r.feed(torch.tensor(feed))[:, 0]
        chunk_len = min(2 * chunk_len, config.chunk_size)
        for r in live:
            i = len(gen[r])
            if chunk[r] and pred_c[r][i] != chunk[r][0]:
                outcome[r] = (i, chunk[r][0], pred_c[r][i])
        live, logits_r = retire(live, logits_r)
        if not live:
            break
        width = max(len(chunk[r]) for r in live)
        tokens = torch.tensor([chunk[r] + [pad] * (width - len(chunk[r])) for r in live])
        checked = masked_argmax(dec_c.feed(tokens), real).tolist()
        for k, r in enumerate(live):
            for j, tok in enumerate(chunk[r]):
                i = len(gen[r])
                if pred_c[r][i] != tok:
                    outcome[r] = (i, tok, pred_c[r][i])
                    break
                gen[r].append(tok)
                pred_c[r].append(checked[k][j])
                if tok in eos:
                    outcome[r] = (None, "agreed_eos", len(gen[r]))
                    break
            if outcome[r] is None and len(gen[r]) >= budget:
                outcome[r] = (None, "budget_exhausted", len(gen[r]))
        live, logits_r = retire(live, logits_r)
    return outcome, gen, dec_r, dec_c


def length_batches(n_items: int, lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding), in a stable order."""
    order = sorted(range(n_items), key=lambda k: (lengths[k], k))
    return [order[k : k + batch_size] for k in range(0, n_items, batch_size)]


def find_divergences(
    pair: ModelPair,
    prompts: list[Prompt],
    prompt_ids: list[list[int]],
    config: DivergenceConfig,
    on_batch: Callable[[list[DivergenceEvent], list[NoDivergence]], None] | None = None,
    natural: dict[str, dict[str, EventStates]] | None = None,
) -> tuple[list[DivergenceEvent], list[NoDivergence]]:
    """First divergence of every prompt (token ids already checked under both tokenizers).

    With ``config.capture_boundaries`` and a ``natural`` dict, the two cached passes of the
    search also yield both models' states over each event prefix: ``natural[event.key] =
    {"PT": EventStates, "IT": EventStates}`` (no further full pass is needed for the cells)."""
    cap = config.capture_boundaries if natural is not None else None
    roll_handle, tf_handle = (pair.it, pair.pt) if config.rollout_model == "IT" else (pair.pt, pair.it)
    events: list[DivergenceEvent] = []
    none: list[NoDivergence] = []
    for batch in length_batches(len(prompts), [len(p) for p in prompt_ids], config.batch_size):
        ids = [prompt_ids[k] for k in batch]
        outcome, gen, dec_r, dec_c = _search_batch(pair, roll_handle, tf_handle, ids, config, cap)
        batch_events, batch_none = [], []
        for row, (k, p_ids, (i, t_roll, t_other)) in enumerate(zip(batch, ids, outcome)):
            prompt = prompts[k]
            if i is None:
                batch_none.append(NoDivergence(prompt.id, prompt.category, t_roll, t_other))
                continue
            roll = gen[row]
            t_it, t_pt = (t_roll, t_other) if config.rollout_model == "IT" else (t_other, t_roll)
            event = DivergenceEvent(prompt.id, prompt.category, len(p_ids), i, p_ids + roll[:i], t_pt, t_it)
            batch_events.append(event)
            if cap is not None:
                n = len(event.prefix_ids)
                natural[event.key] = {roll_handle.role: dec_r.event_states(row, n),
                                      tf_handle.role: dec_c.event_states(row, n)}
        events += batch_events
        none += batch_none
        if on_batch is not None:
            on_batch(batch_events, batch_none)
    return events, none
