"""Preflight's vocabulary: its policy (every threshold, one dataclass, recorded with each result),
the probe prompts it uses when given none, a check and its status, and the result document."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OptionError

KIND = "preflight"


SCHEMA = "crosspatch.preflight/1"


STATUSES = ("pass", "warn", "fail", "skip")


# The method's authors' acceptance of a bf16 merge; float32 merges are held to rounding.
TOLERANCES = {
    "half": {"max_abs_logit_diff": 0.6, "mean_abs_logit_diff": 0.05, "mean_kl": 2e-3, "min_top1_agreement": 0.99},
    "float32": {"max_abs_logit_diff": 0.02, "mean_abs_logit_diff": 2e-3, "mean_kl": 1e-5, "min_top1_agreement": 0.999},
}


# Probe prompts when none are given: short, generic, in English.
DEFAULT_PROBE_PROMPTS = (
    "The weather today is", "Question: What is the capital of France?\nAnswer:", "Once upon a time,",
    "Write a short note to a colleague about the meeting.", "def add(a, b):", "The three primary colours are",
    "Summarise: The committee met on Tuesday and agreed to postpone the vote.", "Translate to French: good morning",
)


@dataclass
class PreflightPolicy:
    """Thresholds of the checks; tolerances left ``None`` follow the dtype (:data:`TOLERANCES`)."""

    max_abs_logit_diff: float | None = None
    mean_abs_logit_diff: float | None = None
    mean_kl: float | None = None
    min_top1_agreement: float | None = None
    max_confident_divergences: int = 0
    min_logit_change: float = 1e-3
    loop_ngram: int = 3
    loop_threshold: float = 0.5
    max_loop_rate: float = 0.25
    max_empty_rate: float = 0.25
    max_special_leak_rate: float = 0.0
    require_domain_gain: bool = False

    @classmethod
    def given(cls, policy) -> PreflightPolicy:
        """``preflight``'s ``policy``: a PreflightPolicy as it is, a dict of its fields, a YAML or
        JSON file of them (a str or Path, as ``--policy`` gives it), or None (the defaults)."""
        from ..runner.config import policy_given

        policy = policy_given(policy)
        return policy if isinstance(policy, cls) else cls.from_dict(policy)

    @classmethod
    def from_dict(cls, values: dict | None) -> PreflightPolicy:
        if values is not None and not isinstance(values, dict):
            raise OptionError(f"a preflight policy is a PreflightPolicy or a dict of its fields, not {values!r}")
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OptionError(f"unknown preflight policy field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        policy = cls(**values)
        for name in ("max_abs_logit_diff", "mean_abs_logit_diff", "mean_kl", "min_logit_change"):
            value = getattr(policy, name)
            if value is not None and (not isinstance(value, (int, float)) or not value >= 0):
                raise OptionError(f"preflight policy {name} must be a number >= 0, not {value!r}")
        for name in ("min_top1_agreement", "loop_threshold", "max_loop_rate", "max_empty_rate", "max_special_leak_rate"):
            value = getattr(policy, name)
            if value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= 1):
                raise OptionError(f"preflight policy {name} must be a fraction in [0, 1], not {value!r}")
        if not isinstance(policy.loop_ngram, int) or policy.loop_ngram < 1:
            raise OptionError(f"preflight policy loop_ngram must be a positive integer, not {policy.loop_ngram!r}")
        return policy

    def tolerances(self, precision: str) -> dict:
        """The merge tolerances for ``precision`` ("half" or "float32"), the policy's own where set."""
        chosen = dict(TOLERANCES[precision])
        for key in chosen:
            if getattr(self, key) is not None:
                chosen[key] = getattr(self, key)
        return chosen


@dataclass
class Check:
    name: str
    status: str
    summary: str
    causes: list[str] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    table: dict | None = None  # {"header": [...], "rows": [[...]]}


@dataclass
class PreflightResult:
    """What ``preflight`` found; ``passed`` when no check failed. ``document`` is ``preflight.json``."""

    document: dict
    out: Path | None = None

    @property
    def passed(self) -> bool:
        return bool(self.document["passed"])

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    @property
    def checks(self) -> dict[str, dict]:
        return {c["name"]: c for c in self.document["checks"]}

    def failed(self) -> list[str]:
        return [c["name"] for c in self.document["checks"] if c["status"] == "fail"]

    def _repr_html_(self) -> str:
        """What a notebook shows: pass or fail, and each check's status and finding."""
        from ..report.notebook import preflight_card

        return preflight_card(self.document, self.out)

    def __repr__(self) -> str:
        states = ", ".join(f"{c['name']}={c['status']}" for c in self.document["checks"])
        return f"PreflightResult({'pass' if self.passed else 'fail'}: {states})"


# -- inputs ------------------------------------------------------------------------------------
