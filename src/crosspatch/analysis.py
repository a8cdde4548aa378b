"""What every analysis shares: the events of a chunk, the states the search already computed,
and the :class:`Analysis` contract.

An analysis is a small dataclass with a ``name`` and a ``program(executor, events)``: a
generator that yields lists of passes (``crosspatch.execution.passes``) and returns a list of
records (dicts, or dataclasses with ``to_record``). It never looks at residency, devices or
engines: the same program runs with all models resident, one at a time, on adapters, in Ray
actors or in a shard (docs/architecture.md has a worked example).
"""

from __future__ import annotations

from dataclasses import dataclass

from .divergence import DivergenceEvent
from .execution import Capture, Executor, Program
from .models.execution import EventStates


@dataclass
class EventSet:
    """The events of one chunk, scored for the descendant ``tuned`` against ``base``.
    ``natural[event.key][role]``: the states the divergence search recorded (minimal plan), or
    None (then :meth:`states` asks for full passes)."""

    events: list[DivergenceEvent]
    base: str
    tuned: str
    natural: dict[str, dict[str, EventStates]] | None = None

    @property
    def sequences(self) -> list[list[int]]:
        return [e.prefix_ids for e in self.events]

    def states(self, roles: list[str], boundaries: list[int]) -> Program:
        """Each role's states over every event prefix (``yield from`` inside a program): taken
        from the search where it recorded them, else one full pass per role."""
        have = self.natural is not None and all(
            r in self.natural.get(e.key, {}) and all(b in self.natural[e.key][r].boundary for b in boundaries)
            for e in self.events for r in roles)
        if have or not self.events:
            return [[self.natural[e.key][r] for e in self.events] for r in roles] if self.events else \
                [[] for _ in roles]
        return (yield [Capture(r, self.sequences, boundaries) for r in roles])


class Analysis:
    """Base of analyses: a ``name`` (its records go to ``<name>.jsonl``) and a program."""

    name: str = "analysis"

    def program(self, ex: Executor, events: EventSet) -> Program:
        raise NotImplementedError
