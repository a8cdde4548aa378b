"""First-divergence search (DESIGN 1.2).

One model (the *rollout* model, IT by default) decodes greedily over the real vocabulary; the
other is teacher-forced over prompt + that rollout. Because attention is causal, the first
position where the second model's argmax differs from the rollout token is exactly where
lockstep greedy decoding of both models would first disagree. No disagreement within the
budget, or an EOS both models agree on, is a *no-event* outcome that is kept and counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch

from .models.execution import ModelHandle, cache_keyword, capture_forward, next_token_logits, readout
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
    rollout_model: str = "IT"  # which model decodes; the other is teacher-forced


def _new_cache(handle: ModelHandle):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=handle.anatomy.model.config)
    except TypeError:  # transformers 4.x
        return DynamicCache()


def greedy_rollout(
    handle: ModelHandle,
    prompts: list[list[int]],
    max_new_tokens: int,
    pair: ModelPair,
) -> list[list[int]]:
    """Greedy continuations of a left-padded batch with a KV cache; each stops after an EOS."""
    real, eos, pad = pair.real_vocab, pair.eos_ids, pair.pad_id
    device = handle.input_device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    cache = _new_cache(handle)
    kw = cache_keyword(handle)
    logits = next_token_logits(
        handle, input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{kw: cache}
    )
    outputs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    last_pos = positions[:, -1:]
    for step in range(max_new_tokens):
        tokens = masked_argmax(logits, real).tolist()
        for row, tok in enumerate(tokens):
            if not done[row]:
                outputs[row].append(tok)
                done[row] = tok in eos
        if all(done) or step == max_new_tokens - 1:
            break
        feed = torch.tensor([[pad if d else t] for t, d in zip(tokens, done)], device=device)
        mask = torch.cat([mask, torch.ones_like(feed)], dim=1)
        last_pos = last_pos + 1
        logits = next_token_logits(
            handle, input_ids=feed, attention_mask=mask, position_ids=last_pos, use_cache=True, **{kw: cache}
        )
    return outputs


def teacher_forced_argmax(
    handle: ModelHandle, prompts: list[list[int]], rollouts: list[list[int]], pair: ModelPair
) -> list[list[int]]:
    """``handle``'s greedy choice at every generated position of prompt + rollout."""
    sequences = [p + r for p, r in zip(prompts, rollouts)]
    capture = capture_forward(handle, sequences, [], pair.pad_id)
    choices = []
    for row, (p, r) in enumerate(zip(prompts, rollouts)):
        states = capture.final_states[row, len(p) - 1 : len(p) - 1 + len(r)]
        choices.append(masked_argmax(readout(handle, states), pair.real_vocab).tolist())
    return choices


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
) -> tuple[list[DivergenceEvent], list[NoDivergence]]:
    """First divergence of every prompt (token ids already checked under both tokenizers)."""
    roll_handle, tf_handle = (pair.it, pair.pt) if config.rollout_model == "IT" else (pair.pt, pair.it)
    events: list[DivergenceEvent] = []
    none: list[NoDivergence] = []
    for batch in length_batches(len(prompts), [len(p) for p in prompt_ids], config.batch_size):
        ids = [prompt_ids[k] for k in batch]
        rollouts = greedy_rollout(roll_handle, ids, config.max_new_tokens, pair)
        other = teacher_forced_argmax(tf_handle, ids, rollouts, pair)
        batch_events, batch_none = [], []
        for k, p_ids, roll, oth in zip(batch, ids, rollouts, other):
            prompt = prompts[k]
            i = next((j for j, (a, b) in enumerate(zip(roll, oth)) if a != b), None)
            if i is None:
                reason = "agreed_eos" if roll and roll[-1] in pair.eos_ids else "budget_exhausted"
                batch_none.append(NoDivergence(prompt.id, prompt.category, reason, len(roll)))
                continue
            t_roll, t_other = roll[i], oth[i]
            t_it, t_pt = (t_roll, t_other) if config.rollout_model == "IT" else (t_other, t_roll)
            batch_events.append(
                DivergenceEvent(prompt.id, prompt.category, len(p_ids), i, p_ids + roll[:i], t_pt, t_it)
            )
        events += batch_events
        none += batch_none
        if on_batch is not None:
            on_batch(batch_events, batch_none)
    return events, none


def lockstep_reference(pair: ModelPair, prompt: list[int], max_new_tokens: int) -> tuple[int, int, int] | None:
    """Slow reference: step both models together without caches; (position, t_pt, t_it) or None.
    Kept in the library so users can spot-check the fast search on their own pair."""
    seq = list(prompt)
    for i in range(max_new_tokens):
        picks = []
        for handle in (pair.pt, pair.it):
            cap = capture_forward(handle, [seq], [], pair.pad_id)
            picks.append(int(masked_argmax(readout(handle, cap.final_states[0, -1:]), pair.real_vocab)[0]))
        if picks[0] != picks[1]:
            return i, picks[0], picks[1]
        seq.append(picks[0])
        if picks[0] in pair.eos_ids:
            return None
    return None


def iter_records(items: Iterable) -> list[dict]:
    return [x.to_record() for x in items]
