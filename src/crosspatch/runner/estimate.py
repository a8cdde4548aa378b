"""The dry run's estimate of a run's work, before any weight loads: at most how many forward-pass
equivalents (FE; one forward of one model over a prompt and its generation budget) the run
executes, by part: the divergence search, the 2x2, and every analysis the run plans, as each
states it (:meth:`~crosspatch.core.analysis.Analysis.work_per_event`). Bounds, not predictions:
a run whose prompts diverge early and stop at EOS does far less."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..core.analysis import late_passes

__all__ = ["WorkEstimate", "estimate_work"]

SEARCH_FE = 2.0  # the search: each model over every prompt + its budget at most (the histories too)
FP32_VERIFICATION_FE = 2.0  # --verify-fp32: the search again, in float32, for (at most) every prompt


@dataclass
class WorkEstimate:
    """``tokens``: prompt + budget tokens over the prompts; ``per_token``: FE per such token by part
    (``search``, ``cells``, then each planned analysis by name); ``unstated``: planned analyses that
    state no bound (not counted)."""

    tokens: int
    per_token: dict[str, float]
    unstated: list[str]
    runs: int = 1  # the runs of a collection (a compare's members), each over the same prompts; parts summed

    @property
    def total(self) -> float:
        """Token forward-pass equivalents at most (tokens x FE per token)."""
        return self.tokens * sum(self.per_token.values())

    def parts_text(self) -> str:
        """``per token: search 2.0, cells 0.7, hybrid_state 2.7, ...`` (``per token, 3 runs together``
        for a collection; parts that add nothing left out), and the analyses that state no bound."""
        text = "per token" + (f", {self.runs} runs together" if self.runs > 1 else "") + ": "
        text += ", ".join(f"{name} {value:.1f}" for name, value in self.per_token.items() if value > 0)
        if self.unstated:
            text += f"; not counted: {', '.join(self.unstated)} (no bound stated)"
        return text


def estimate_work(config, token_counts: list[int], boundaries: list[int], num_layers: int,
                  validators: dict | None = None, model_config: dict | None = None,
                  runs: list[list] | None = None) -> WorkEstimate:
    """The work a run of ``config`` plans for prompts of ``token_counts`` tokens (each: the prompt +
    ``max_new_tokens``) at ``boundaries`` of a model of ``num_layers`` layers (``validators``: the
    prompts' consequence validators, as the run reads them; ``model_config``: the base's
    config.json where known). Synthetic nulls (built only once the models load) count as nulls.
    ``runs``: a collection's runs, each the analysis objects it adds (a compare's cross-descendant
    cells, a lineage's stage scores), every run over the same prompts; the parts are summed."""
    estimates = [_one_run(config, boundaries, num_layers, validators, model_config, list(extra))
                 for extra in (runs if runs else [[]])]
    per_token: dict[str, float] = {}
    unstated: list[str] = []
    for part, names in estimates:
        for name, value in part.items():
            per_token[name] = per_token.get(name, 0.0) + value
        unstated += [n for n in names if n not in unstated]
    return WorkEstimate(sum(token_counts), per_token, unstated, len(estimates))


def _one_run(config, boundaries: list[int], num_layers: int, validators: dict | None, model_config: dict | None,
             extra: list) -> tuple[dict[str, float], list[str]]:
    """One run's FE per prompt+budget token by part, and its analyses that state no bound."""
    from .pipeline import chunk_plan

    if config.synthetic_nulls:
        synthetic = [f"synthetic_null_{k}" for k in range(config.synthetic_nulls)]
        config = dataclasses.replace(config, nulls=[*config.nulls, *synthetic])
    per_token = {"search": SEARCH_FE,
                 "cells": late_passes(2, boundaries, num_layers) + (2.0 if config.plan == "exact" else 0.0)}
    if config.verify_fp32:
        per_token["fp32 verification"] = FP32_VERIFICATION_FE
    unstated = []
    for analysis in chunk_plan(config, boundaries, num_layers, extra, validators).analyses:
        work = analysis.work_per_event(num_layers, config.max_new_tokens, model_config)
        name = analysis.name.removeprefix("control_")  # a control's records stem: its name
        if work is None:
            unstated.append(name)
        else:
            per_token[name] = per_token.get(name, 0.0) + work
    return per_token, unstated
