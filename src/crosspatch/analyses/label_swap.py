"""Label-swap null (DESIGN 1.5): swapping which model is "PT" and which is "IT" flips the sign of
each prompt cluster's interaction; a calibrated sign-flip test at a stated level. Its failure
(the interaction is within the null) makes the verdict ``inconclusive``, never its opposite."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..core.registry import AnalysisPlugin, SummaryContext, control_row, register_analysis
from ..core.stats import EXACT_SIGN_FLIP_MAX_CLUSTERS, label_swap_null
from ..core.verdict import INTERACTION_CLAIMS


@dataclass
class LabelSwapOptions:
    level: float = field(default=0.01, metadata={"help": "two-sided p-value below which the interaction is "
                                                          "beyond the null"})
    resamples: int = field(default=10000, metadata={"help": "sign-flip draws of the null"})

    def __post_init__(self) -> None:
        level, resamples = self.level, self.resamples
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
            raise ValueError(f"label_swap level must be a p-value strictly between 0 and 1, not {level!r}")
        if isinstance(resamples, bool) or not isinstance(resamples, int) or not 1 <= resamples <= 1_000_000:
            raise ValueError(f"label_swap resamples must be a whole number from 1 to 1,000,000, not {resamples!r}")
        if level * (resamples + 1) <= 1:
            raise ValueError(f"label_swap: with {resamples} sign-flip draws no p-value can fall below level {level:g} "
                             f"(the smallest is 1/{resamples + 1}): give at least {math.ceil(1 / level)} resamples")


def prompts_to_reach(level: float) -> int:
    """The fewest prompt clusters whose exact sign-flip test can give a p-value below ``level``
    (2 / 2**k < level); past the enumerated sizes the drawn test can, as its options ensure."""
    return next((k for k in range(1, EXACT_SIGN_FLIP_MAX_CLUSTERS + 1) if 2.0 / 2**k < level),
                EXACT_SIGN_FLIP_MAX_CLUSTERS + 1)


def _out_of_reach(null: dict, level: float) -> str:
    """Why a test with too few prompt clusters failed, whatever the data: '' when it could pass
    (the row stores both numbers it quotes: ``smallest_p`` and ``prompts_needed``)."""
    if null["smallest_p"] < level:
        return ""
    k = null["n_prompts"]
    return (f"; with {k} prompt{'s' if k != 1 else ''} no sign-flip p-value can fall below {null['smallest_p']:.3g}, "
            f"so this test cannot pass at level {level:g} whatever the effects: it needs at least "
            f"{prompts_to_reach(level)} prompts with events")


def summarize(rows: list[dict], ctx: SummaryContext, options: LabelSwapOptions) -> dict:
    # (the verdict's own interaction, in the readout it reads: a claim this test can weaken)
    null = label_swap_null(ctx.first, readout=ctx.readout, resamples=options.resamples,
                           seed=ctx.bootstrap("label_swap").seed, level=options.level)
    if null["observed"] is None:
        return control_row("label_swap", "warn", None, "no events", n=0)
    sig = null["rejects_null"]
    return control_row(
        "label_swap", "pass" if sig else "warn", null["observed"],
        (f"the interaction is beyond the label-swap null (p = {null['p_value']:.3g} < {options.level:g})" if sig else
         f"the interaction is within the label-swap null (p = {null['p_value']:.3g}, level {options.level:g}): not "
         "distinguishable from zero at that level" + (" (a stricter bar than the 95% intervals)"
                                                      if options.level < 0.05 else "")
         + _out_of_reach(null, options.level)),
        f"two-sided p < {options.level:g} (prompt-cluster sign flips)", n=null["n_events"],
        p_value=null["p_value"], level=options.level, null_threshold=null["threshold"], n_prompts=null["n_prompts"],
        exact=null["exact"], smallest_p=null["smallest_p"], prompts_needed=prompts_to_reach(options.level),
        on_failure="inconclusive", weakens=list(INTERACTION_CLAIMS))


PLUGIN = register_analysis(AnalysisPlugin(
    "label_swap", summarize, options=LabelSwapOptions, role="control", default=True, reads_policy=True,
    order=10,
    description="sign-flip null of the interaction over prompt clusters"))
