"""A toy analysis, the worked example of docs/architecture.md: it is written once, as passes,
and runs unchanged under every residency and engine (tests/execution prove it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.analysis import Analysis, EventSet
from ..core.divergence import RecordKey
from ..execution import Executor, Late, Program


@dataclass
class BlendProbe(Analysis):
    """Logit of ``t_IT`` (and ``Y``), read out with the descendant's head, after the *base's*
    late stack on a blend ``(1 - alpha) U_PT + alpha U_IT`` of the two upstream states at
    ``boundary``. ``alpha`` 0 and 1 are the cells ``Y(U_PT, L_PT)`` and ``Y(U_IT, L_PT)``."""

    boundary: int
    alpha: float = 0.5
    name: str = "blend_probe"

    def program(self, ex: Executor, events: EventSet) -> Program:
        if not events.events:
            return []
        b = self.boundary
        u_pt, u_it = yield from events.states([events.base, events.tuned], [b])
        blend = [(1 - self.alpha) * x.boundary[b] + self.alpha * y.boundary[b] for x, y in zip(u_pt, u_it)]
        (final,) = yield [Late(events.base, b, blend, events.sequences)]
        logits = ex.readout(events.tuned, torch.stack(final))
        return [{"key": str(RecordKey(e.prompt_id, e.kind, b)), "prompt_id": e.prompt_id, "alpha": self.alpha,
                 "logit_t_it": float(logits[k, e.t_it]), "y": float(logits[k, e.t_it] - logits[k, e.t_pt])}
                for k, e in enumerate(events.events)]
