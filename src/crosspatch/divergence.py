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

import re
from dataclasses import asdict, dataclass

from .execution import Executor, ModelSet, Program, Search
from .models.execution import EventStates
from .prompts import Prompt


# event kind -> key suffix (first divergence keeps the short "first")
KEY_SUFFIX = {"first_diff": "first", "first_nonformat_diff": "nonformat", "first_assistant_marker_diff": "assistant"}


def event_key(prompt_id: str, kind: str = "first_diff") -> str:
    """The record key of a prompt's event of ``kind`` (``<id>#first`` for the first divergence)."""
    return f"{prompt_id}#{KEY_SUFFIX.get(kind, kind)}"


_SUFFIX_KIND = {v: k for k, v in KEY_SUFFIX.items()}
_RECORD_KEY = re.compile(r"^(?P<event>.*)@(?P<boundary>-?\d+)(?:#(?P<role>[^#@]*))?$")


@dataclass(frozen=True)
class RecordKey:
    """The key of a stored record, typed: ``str()`` gives the stored form
    ``<prompt_id>#<kind suffix>[@<boundary>][#<role>]`` (``p7#first@16``, ``p7#first@16#sft``) and
    :meth:`parse` reads it back (prompt ids may hold ``#`` and ``@``: the fields are read from the
    right)."""

    prompt_id: str
    kind: str = "first_diff"
    boundary: int | None = None
    role: str | None = None

    def __str__(self) -> str:
        text = event_key(self.prompt_id, self.kind)
        if self.boundary is not None:
            text += f"@{self.boundary}"
            if self.role is not None:
                text += f"#{self.role}"
        return text

    @property
    def event(self) -> str:
        """The event's key, without boundary and role."""
        return event_key(self.prompt_id, self.kind)

    @classmethod
    def parse(cls, text: str) -> "RecordKey":
        m = _RECORD_KEY.match(text)
        event, boundary, role = (m["event"], int(m["boundary"]), m["role"]) if m else (text, None, None)
        prompt_id, _, suffix = event.rpartition("#")
        if not _:
            raise ValueError(f"not a record key: {text!r}")
        return cls(prompt_id, _SUFFIX_KIND.get(suffix, suffix), boundary, role)


@dataclass
class DivergenceEvent:
    """A generated position where PT's and IT's greedy top-1 tokens differ on a shared history:
    by default the first (``kind`` ``first_diff``); other kinds and controls score other
    positions the same way."""

    prompt_id: str
    category: str | None
    prompt_len: int
    position: int  # generated position i (0 = first token after the prompt)
    prefix_ids: list[int]  # prompt + the i generated tokens of the history before the event
    t_pt: int
    t_it: int
    kind: str = "first_diff"

    @property
    def key(self) -> str:
        return event_key(self.prompt_id, self.kind)

    def to_record(self) -> dict:
        return asdict(self)


NO_DIVERGENCE_REASONS = ("agreed_eos", "budget_exhausted", "non_finite_logits")


@dataclass
class NoDivergence:
    """A prompt without an event: the two models did not disagree within the budget
    (``agreed_eos``: both ended with the same EOS; ``budget_exhausted``), or ``model``'s logits
    were NaN or infinite before they disagreed (``non_finite_logits``: an overflow in low
    precision or a broken checkpoint; the prompt has no defined event)."""

    prompt_id: str
    category: str | None
    reason: str
    generated_tokens: int
    model: str | None = None  # whose logits were not finite (reason non_finite_logits)

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> "NoDivergence":
        """A record as stored (``to_record``); a field of the wrong type is a ValueError naming it."""
        item = cls(**record)
        checks = {"prompt_id": isinstance(item.prompt_id, str),
                  "category": item.category is None or isinstance(item.category, str),
                  "reason": item.reason in NO_DIVERGENCE_REASONS,
                  "generated_tokens": type(item.generated_tokens) is int and item.generated_tokens >= 0,
                  "model": item.model is None or isinstance(item.model, str)}
        bad = next((name for name, ok in checks.items() if not ok), None)
        if bad is not None:
            raise ValueError(f"field {bad!r} is not valid ({getattr(item, bad)!r})"[:200])
        return item


@dataclass
class DivergenceConfig:
    max_new_tokens: int = 128
    batch_size: int = 8
    rollout_model: str = "IT"  # which model decodes; the other verifies its tokens
    chunk_size: int = 8  # tokens decoded between verifications (bounds work past the event)
    capture_boundaries: list[int] | None = None  # keep both models' states for the cells (minimal plan)
    max_batch_tokens: int | None = None  # padded tokens per batch, generation budget included (Executor)


def divergence_program(prompts: list[Prompt], prompt_ids: list[list[int]], config: DivergenceConfig,
                       base: str, tuned: str) -> Program:
    """First divergence of every prompt between ``base`` (PT) and ``tuned`` (IT). Returns
    ``(events, no_divergence, natural)``; with ``config.capture_boundaries``, ``natural[event.key]
    = {base: EventStates, tuned: EventStates}`` over each event prefix (else None)."""
    if config.rollout_model not in ("IT", "PT"):
        raise ValueError(f"rollout_model must be 'IT' or 'PT', not {config.rollout_model!r}")
    roll, check = (tuned, base) if config.rollout_model == "IT" else (base, tuned)
    (outcomes,) = yield [Search(roll, check, prompt_ids, config.max_new_tokens, config.capture_boundaries,
                                config.chunk_size)]
    events: list[DivergenceEvent] = []
    none: list[NoDivergence] = []
    natural = {} if config.capture_boundaries is not None else None
    for prompt, ids, o in zip(prompts, prompt_ids, outcomes):
        if o.position is None:
            none.append(NoDivergence(prompt.id, prompt.category, o.reason, len(o.shared), o.non_finite))
            continue
        t_it, t_pt = (o.t_roll, o.t_check) if roll == tuned else (o.t_check, o.t_roll)
        event = DivergenceEvent(prompt.id, prompt.category, len(ids), o.position, ids + o.shared, t_pt, t_it)
        events.append(event)
        if natural is not None:
            natural[event.key] = o.states
    return events, none, natural


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
    events, none, states = Executor(models, config.batch_size, config.max_batch_tokens).drive(
        divergence_program(prompts, prompt_ids, config, models.base, tuned or models.roles[1]))
    if natural is not None and states:
        natural.update(states)
    return events, none


