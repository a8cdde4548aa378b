"""Controls (DESIGN 1.5): each a named, switchable plug-in (:mod:`crosspatch.core.registry`, one module
each in :mod:`crosspatch.analyses`) that fills one row of the "Controls" table (value, interval
where meaningful, threshold, status, and what its failure means for the verdict).

Statuses: ``pass`` — the control supports reading the headline as it is; ``warn`` — read it with
the caveat the row states; ``fail`` — a sanity check failed and the run is not usable (the
verdict is ``inconclusive`` and ``crosspatch gate`` exits 2); ``info`` — descriptive, no
expectation. Thresholds are written into every row (docs/controls.md). All run at the run's
headline boundary (``cells.headline_boundary``).

This module re-exports the controls' constants; the controls themselves live in their plug-in
modules, and ``CONTROLS`` (every registered control, in the table's order) and ``DEFAULT_CONTROLS``
(those ``--controls default`` selects) are read from the registry, so that a new control is one
new module.
"""

from __future__ import annotations

from ..core.registry import controls, select_controls
from .hybrid_state import INTERPOLATION, RECONSTRUCTION_TOLERANCE, HybridState
from .native_history import HORIZONS, NativeHistory
from .near_ties import MAX_SHARE as NEAR_TIE_MAX_SHARE
from .pre_divergence import MAX_SHARE as PRE_DIVERGENCE_MAX_SHARE
from .pre_divergence import PreDivergence
from .pre_late_commitment import PreLateCommitment
from .random_later import RandomLater

__all__ = ["HORIZONS", "INTERPOLATION", "NEAR_TIE_MAX_SHARE",
           "PRE_DIVERGENCE_MAX_SHARE", "RECONSTRUCTION_TOLERANCE", "HybridState",
           "NativeHistory", "PreDivergence", "PreLateCommitment", "RandomLater", "parse_controls"]


def parse_controls(text: str | list[str] | None) -> list[str]:
    """``all``, ``none``, ``default`` (None) or a comma list of registered control names."""
    return select_controls(text)


def __getattr__(name: str):
    if name == "CONTROLS":
        return tuple(p.name for p in controls())
    if name == "DEFAULT_CONTROLS":
        return tuple(select_controls(None))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
