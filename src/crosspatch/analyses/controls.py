"""Controls (DESIGN 1.5): each a named, switchable plug-in (:mod:`crosspatch.core.registry`, one module
each in :mod:`crosspatch.analyses`) that fills one row of the "Controls" table (value, interval
where meaningful, threshold, status, and what its failure means for the verdict).

Statuses: ``pass`` — the control supports reading the headline as it is; ``warn`` — read it with
the caveat the row states; ``fail`` — a sanity check failed and the run is not usable (the
verdict is ``inconclusive`` and ``crosspatch gate`` exits 2); ``info`` — descriptive, no
expectation. Thresholds are written into every row (docs/controls.md). All run at the run's
headline boundary (``cells.headline_boundary``).

This module keeps the names of the control vocabulary; the controls themselves live in their
plug-in modules (re-exported here).
"""

from __future__ import annotations

from ..core.registry import select_controls
from .hybrid_state import INTERPOLATION, RECONSTRUCTION_TOLERANCE, HybridState
from .native_history import HORIZONS, NativeHistory
from .near_ties import MAX_SHARE as NEAR_TIE_MAX_SHARE
from .pre_divergence import MAX_SHARE as PRE_DIVERGENCE_MAX_SHARE
from .pre_divergence import PreDivergence
from .pre_late_commitment import PreLateCommitment
from .random_later import RandomLater

CONTROLS = ("label_swap", "pre_divergence", "pre_late_commitment", "hybrid_state", "readout_agreement",
            "position_subsets", "near_ties", "prompt_format", "repeated_prompts", "random_later", "native_history",
            "null_calibration")
DEFAULT_CONTROLS = ("label_swap", "pre_divergence", "pre_late_commitment", "hybrid_state", "readout_agreement",
                    "position_subsets", "near_ties", "prompt_format", "repeated_prompts",
                    "null_calibration")  # the cheap ones: no extra decoding

__all__ = ["CONTROLS", "DEFAULT_CONTROLS", "HORIZONS", "INTERPOLATION", "NEAR_TIE_MAX_SHARE",
           "PRE_DIVERGENCE_MAX_SHARE", "RECONSTRUCTION_TOLERANCE", "HybridState",
           "NativeHistory", "PreDivergence", "PreLateCommitment", "RandomLater", "parse_controls"]


def parse_controls(text: str | list[str] | None) -> list[str]:
    """``all``, ``none``, ``default`` (None) or a comma list of registered control names."""
    return select_controls(text)
