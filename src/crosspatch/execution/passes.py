"""The vocabulary analyses use to say *what* they need. The executor decides *how*.

Every pass names the role (model) it needs and works on a list of items (token sequences);
results come back per item, in item order, whatever batching, residency or device was used.
States are ``EventStates``: the residual entering each requested boundary layer over the whole
sequence (``[n, d]``) and the final-norm input at its last position (``[d]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..models.forward import EventStates

# An edit of one late-stack site: called with the batch's hidden states ``[batch, seq, d]`` and
# the item indices of the batch rows; returns the replacement (same shape).
EditFn = Callable[[torch.Tensor, list[int]], torch.Tensor]


@dataclass
class Edit:
    """Replace the output of ``site`` of decoder ``layer`` during a late-only pass.
    ``site``: ``"mlp"`` (the layer's MLP output, before it is added to the residual) or
    ``"residual"`` (the layer's output residual stream)."""

    layer: int
    site: str
    fn: EditFn


@dataclass
class Capture:
    """A full forward of ``role`` over ``sequences``. Result per item: :class:`EventStates` with
    the residual entering each layer of ``boundaries`` and the final-norm input at the last
    position; with ``all_final`` the final-norm input at every position (``[n, d]``) instead."""

    role: str
    sequences: list[list[int]]
    boundaries: list[int]
    all_final: bool = False

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.role,)


@dataclass
class Late:
    """Only layers ``boundary..L-1`` of ``role``, run on ``upstream`` (per item ``[n_i, d]``: the
    residual entering ``boundary`` over the whole sequence; no KV reuse), with optional
    ``edits``. Result per item: the final-norm input at the last position (``[d]``)."""

    role: str
    boundary: int
    upstream: list[torch.Tensor]
    sequences: list[list[int]]
    edits: list[Edit] = field(default_factory=list)

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.role,)


@dataclass
class Decode:
    """Greedy decoding of ``role`` over the real vocabulary from each prompt, at most
    ``max_new_tokens``, stopping after an EOS, or before a position where its logits are NaN or
    infinite (no token is its choice there). Result per item: the generated ids."""

    role: str
    prompts: list[list[int]]
    max_new_tokens: int

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.role,)


@dataclass
class History:
    """``roll``'s greedy continuation of each prompt (as :class:`Decode`) and ``check``'s argmax at
    each of its positions, teacher-forced on the same history. Result per item: ``(rollout,
    picks)``, ``picks[j]`` being ``check``'s choice given the prompt and ``rollout[:j]``
    (``NON_FINITE`` where its logits are not finite). ``done(item, rollout, picks)``, when given,
    says that the consumer has what it needs from a partial history: the item may then end
    there (shorter, never different); the executor stops it early where both models can be used
    at once, else computes the whole budget."""

    roll: str
    check: str
    prompts: list[list[int]]
    max_new_tokens: int
    done: Callable[[int, list[int], list[int]], bool] | None = None
    chunk_size: int = 8

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.roll, self.check)


@dataclass
class Search:
    """First divergence of ``roll``'s greedy decoding and ``check``'s greedy choice on the same
    history (DESIGN 1.2). Result per item: :class:`SearchOutcome`. With ``capture`` boundaries,
    each event outcome carries both models' states over the event prefix."""

    roll: str
    check: str
    prompts: list[list[int]]
    max_new_tokens: int
    capture: list[int] | None = None
    chunk_size: int = 8
    keep_history: bool = False
    """Each row that diverges goes on as a :class:`History` of the same roles and budget would
    (``roll``'s greedy continuation, ``check``'s pick at every position) until ``history_done``
    says its consumers have what they need (None: the whole budget), its EOS or the budget; its
    outcome then carries the history (:attr:`SearchOutcome.history`), which no later pass has to
    decode again."""
    history_done: Callable[[int, list[int], list[int]], bool] | None = None

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.roll, self.check)


@dataclass(frozen=True)
class HistoryWish:
    """What an analysis will ask of ``EventSet.history`` (``crosspatch.core.analysis``) with the
    divergence search's own roles (the rollout model decoding, the other checking) and budget,
    said before the search so that the search decodes it on the way (:attr:`Search.keep_history`)
    instead of a second decoding of every event's prompt. ``done(prompt_ids, rollout, picks)``:
    the analysis has what it needs from a partial history (the ``done`` it will give
    ``EventSet.history``, keyed by the prompt's token ids); None: it reads the whole budget. A
    wish is a saving, never a contract: a history the search did not keep is decoded when asked
    for."""

    budget: int
    done: Callable[[list[int], list[int], list[int]], bool] | None = None


def combined_wish(wishes: list[HistoryWish], budget: int) -> HistoryWish | None:
    """One wish for the search that serves every wish of ``budget`` (the search's): each row
    decodes on until every wish's ``done`` holds (the whole budget when one has none); None when
    no wish is of that budget."""
    mine = [w for w in wishes if w.budget == budget]
    if not mine:
        return None
    if any(w.done is None for w in mine):
        return HistoryWish(budget)
    dones = [w.done for w in mine if w.done is not None]
    return HistoryWish(budget, lambda prompt, rollout, picks: all(d(prompt, rollout, picks) for d in dones))


@dataclass
class SearchHistory:
    """The history a :class:`Search` with ``keep_history`` decoded past a row's event: ``rollout``
    (from the first generated token) and ``picks`` (``check``'s choice at each of its positions,
    all finite). ``whole``: it ended at its EOS or the budget (what any consumer may read), else
    where ``history_done`` said its consumers were done. ``states``: where the search recorded
    them over the whole history (one model at a time: the rollout decoded whole, then one
    teacher-forced pass), each role's states over prompt + history, boundary and final states
    ``[n, d]`` at every position, so that events found on the history need no pass of their own
    for them (:meth:`prefix_states`); else None."""

    rollout: list[int]
    picks: list[int]
    whole: bool
    states: dict[str, EventStates] | None = None

    def prefix_states(self, prompt_len: int, generated: int, boundaries: list[int]) -> dict[str, EventStates] | None:
        """Each role's states over the prompt and the first ``generated`` tokens of this history
        (an event there), as the 2x2 takes them; None where they were not recorded whole."""
        if self.states is None or not 0 <= generated < len(self.rollout):
            return None
        n = prompt_len + generated
        if any(b not in st.boundary or st.final.dim() != 2 or st.final.shape[0] < n or st.boundary[b].shape[0] < n
               for st in self.states.values() for b in boundaries):
            return None
        return {role: EventStates({b: st.boundary[b][:n] for b in boundaries}, st.final[n - 1])
                for role, st in self.states.items()}


@dataclass
class SearchOutcome:
    """``position`` is the first generated index where the two disagree (None: no event, with
    ``reason`` ``agreed_eos``, ``budget_exhausted`` or ``non_finite_logits``: the logits of the
    role ``non_finite`` were NaN or infinite before any disagreement). ``shared`` are the
    generated tokens both agreed on before it; ``t_roll``/``t_check`` the two picks there."""

    position: int | None
    shared: list[int]
    t_roll: int | None = None
    t_check: int | None = None
    reason: str | None = None
    states: dict[str, EventStates] | None = None  # role -> states over prompt + shared
    non_finite: str | None = None
    history: SearchHistory | None = None  # with keep_history, for an event whose history stayed finite


Pass = Capture | Late | Decode | History | Search
