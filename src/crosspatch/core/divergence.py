"""First-divergence search (DESIGN 1.2).

One model (the *rollout* model, IT by default) decodes greedily over the real vocabulary; the
other is teacher-forced over prompt + that rollout. Because attention is causal, the first
position where the second model's argmax differs from the rollout token is exactly where
lockstep greedy decoding of both models would first disagree. How the two passes are
interleaved (chunked verification on KV caches, or one model after the other) is the
executor's business (``execution/search.py``). No disagreement within the budget, an EOS
both models agree on, or NaN/inf logits of either model before a disagreement, is a *no-event*
outcome that is kept and counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..execution import Executor, HistoryWish, ModelSet, Program, Search
from ..inputs.prompts import Prompt
from ..models.forward import EventStates
from .records import KEY_SUFFIX, NO_DIVERGENCE_REASONS, DivergenceEvent, NoDivergence, RecordKey, event_key  # noqa: F401  (re-exported: the data of a run lives in records)


@dataclass
class DivergenceConfig:
    max_new_tokens: int = 128
    batch_size: int = 8
    rollout_model: str = "IT"  # which model decodes; the other verifies its tokens
    chunk_size: int = 8  # tokens decoded between verifications (bounds work past the event)
    capture_boundaries: list[int] | None = None  # keep both models' states for the cells (minimal plan)
    max_batch_tokens: int | None = None  # padded tokens per batch, generation budget included (Executor)


def search_roles(config: DivergenceConfig, base: str, tuned: str) -> tuple[str, str]:
    """``(roll, check)``: the model that decodes and the one that checks its tokens."""
    if config.rollout_model not in ("IT", "PT"):
        raise ValueError(f"rollout_model must be 'IT' or 'PT', not {config.rollout_model!r}")
    return (tuned, base) if config.rollout_model == "IT" else (base, tuned)


def divergence_program(prompts: list[Prompt], prompt_ids: list[list[int]], config: DivergenceConfig,
                       base: str, tuned: str, wish: HistoryWish | None = None) -> Program:
    """First divergence of every prompt between ``base`` (PT) and ``tuned`` (IT). Returns
    ``(events, no_divergence, natural, searched)``; with ``config.capture_boundaries``,
    ``natural[event.key] = {base: EventStates, tuned: EventStates}`` over each event prefix (else
    None); with a ``wish`` of the search's budget (see :class:`~crosspatch.execution.HistoryWish`),
    ``searched[event.key]``: the history the search decoded past each event whose history stayed
    finite (an :class:`EventSet` takes both)."""
    roll, check = search_roles(config, base, tuned)
    keep = wish is not None and wish.budget == config.max_new_tokens
    done = wish.done if keep and wish is not None else None
    (outcomes,) = yield [Search(roll, check, prompt_ids, config.max_new_tokens, config.capture_boundaries,
                                config.chunk_size, keep_history=keep,
                                history_done=None if done is None else (lambda k, g, c: done(prompt_ids[k], g, c)))]
    events: list[DivergenceEvent] = []
    none: list[NoDivergence] = []
    natural = {} if config.capture_boundaries is not None else None
    searched = {}
    for prompt, ids, o in zip(prompts, prompt_ids, outcomes):
        if o.position is None:
            none.append(NoDivergence(prompt.id, prompt.category, o.reason, len(o.shared), o.non_finite))
            continue
        t_it, t_pt = (o.t_roll, o.t_check) if roll == tuned else (o.t_check, o.t_roll)
        event = DivergenceEvent(prompt.id, prompt.category, len(ids), o.position, ids + o.shared, t_pt, t_it)
        events.append(event)
        if natural is not None:
            natural[event.key] = o.states
        if o.history is not None:
            searched[event.key] = o.history
    return events, none, natural, searched


def find_divergences(
    models: ModelSet,
    prompts: list[Prompt],
    prompt_ids: list[list[int]],
    config: DivergenceConfig,
    natural: dict[str, dict[str, EventStates]] | None = None,
    tuned: str | None = None,
) -> tuple[list[DivergenceEvent], list[NoDivergence]]:
    """First divergence of every prompt (token ids already checked under both tokenizers)
    between the base and ``tuned`` (default: the first descendant). With
    ``config.capture_boundaries`` and a ``natural`` dict, both models' states over each event
    prefix are put there (keyed by event key, then role)."""
    if natural is None:
        config = DivergenceConfig(**{**asdict(config), "capture_boundaries": None})
    events, none, states, _ = Executor(models, config.batch_size, config.max_batch_tokens).drive(
        divergence_program(prompts, prompt_ids, config, models.base, tuned or models.roles[1]))
    if natural is not None and states:
        natural.update(states)
    return events, none


