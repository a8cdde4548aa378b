"""The workflows' documents, as :mod:`crosspatch.store.schemas` describes a run's files:
``preflight.json`` (``crosspatch preflight``), ``splice.json`` (``crosspatch splice``) and
``merge-check.json`` (``crosspatch merge-check``), checked when written and when read."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import ConfigDict, with_config
from typing_extensions import Required, TypedDict  # pydantic validates these on Python < 3.12

# the practitioner commands' own directories, by command: the module of crosspatch.workflows that
# writes them, its result class and its page writer (``{command}.json`` is the directory's document)
WORKFLOW_OUTPUTS = {"preflight": ("preflight_policy", "PreflightResult", "preflight", "write_preflight"),
                    "splice": ("splice", "SpliceResult", "splice", "write_splice"),
                    "merge-check": ("merge_result", "MergeCheckResult", "mergecheck", "write_merge_check")}


def workflow_output_kind(path: Path) -> str | None:
    """The practitioner command whose output ``path`` is (its document there, no run's
    config.json beside it), or None."""
    if (path / "config.json").exists():
        return None
    return next((k for k in WORKFLOW_OUTPUTS if (path / f"{k}.json").is_file()), None)


@with_config(ConfigDict(extra="allow"))
class PreflightCheck(TypedDict, total=False):
    """One check of ``preflight.json``: pass, warn or fail, what it found, and its numbers."""

    name: Required[str]
    status: Required[str]
    summary: Required[str]
    causes: Required[list[str]]
    numbers: dict[str, Any]


@with_config(ConfigDict(extra="allow"))
class PreflightDocument(TypedDict, total=False):
    """``preflight.json``: is the adapter (or merge) active and sound, before it ships."""

    schema_version: str
    fingerprint: str
    inputs: Required[dict[str, Any]]
    passed: Required[bool]
    checks: Required[list[PreflightCheck]]
    prompts: dict[str, Any]
    generations: list[dict[str, Any]]
    warnings: list[str]


@with_config(ConfigDict(extra="allow"))
class SpliceChimera(TypedDict, total=False):
    """One chimera of ``splice.json`` (an early stack under a late one) and what its continuations did."""

    early: str
    late: str
    outputs: list[dict[str, Any]]
    validator_pass_rate: Optional[float]
    validated: int
    same_as_tuned: Required[float]
    median_departure: Optional[float]


class SpliceBoundary(TypedDict):
    chimeras: dict[str, SpliceChimera]


@with_config(ConfigDict(extra="allow"))
class SplicePrompts(TypedDict, total=False):
    count: Required[int]
    ids: list[str]


@with_config(ConfigDict(extra="allow"))
class SpliceDocument(TypedDict, total=False):
    """``splice.json``: what a layer-range merge would write, per boundary and chimera."""

    schema_version: str
    fingerprint: str
    inputs: dict[str, Any]
    num_layers: int
    prompts: Required[SplicePrompts]
    boundaries: Required[dict[str, SpliceBoundary]]
    diagnostic: dict[str, Any]
    warnings: list[str]


class MergeCheckCheck(TypedDict):
    """One check of a weight merge's preflight, as ``merge-check.json`` keeps it."""

    name: str
    status: str
    summary: str


class MergeCheckPreflight(TypedDict):
    passed: bool
    checks: list[MergeCheckCheck]


@with_config(ConfigDict(extra="allow"))
class MergeCheckPlan(TypedDict, total=False):
    """A passthrough splice: which model gives the layers below ``boundary`` and which above."""

    early: Required[str]
    late: Required[str]
    boundary: Required[int]
    num_layers: Required[int]


@with_config(ConfigDict(extra="allow"))
class MergeCheckDocument(TypedDict, total=False):
    """``merge-check.json``: a mergekit configuration evaluated before it is built. ``kind``
    ``splice`` (a passthrough layer splice) holds ``plan``, ``this_chimera``, ``receives``,
    ``validator_pass_rate``, ``same_as_tuned``, the cross-patching numbers there (``diagnostic``)
    and ``verdict``; ``weights`` (a weight merge) holds ``parents``, ``preflight`` and per model
    against the base its ``diagnostic``."""

    schema_version: str
    fingerprint: str
    inputs: Required[dict[str, Any]]
    method: Required[str]
    kind: Required[Literal["splice", "weights"]]
    base: Required[str]
    plan: MergeCheckPlan
    this_chimera: str
    receives: str
    validator_pass_rate: Optional[float]
    same_as_tuned: float
    diagnostic: Optional[dict[str, Any]]
    verdict: Optional[str]
    parents: list[str]
    preflight: MergeCheckPreflight


# what each kind of merge-check.json holds besides the keys every one does
MERGE_CHECK_KEYS = {"splice": ("plan", "this_chimera", "receives", "validator_pass_rate", "same_as_tuned"),
                    "weights": ("parents", "preflight", "diagnostic")}


def kind_problems(name: str, document: dict) -> list[str]:
    """What a workflow document that conforms to its schema lacks for its kind (a merge-check of a
    splice, or of a weight merge), or where its parts disagree (a splice's boundaries with other
    chimeras than the first one's)."""
    if name == "merge-check.json":
        problems = [f"{key}: required for a merge-check of kind {document['kind']!r}"
                    for key in MERGE_CHECK_KEYS[document["kind"]] if key not in document]
        if document["kind"] == "weights" and not problems:  # (each model's numbers against the base)
            diagnostic = document["diagnostic"]
            problems += ["diagnostic: not an object"] if not isinstance(diagnostic, dict) else [
                f"diagnostic.{role}: not an object" for role, numbers in diagnostic.items() if not isinstance(numbers, dict)]
        return problems[:3]
    if name == "splice.json":
        names = [sorted(block["chimeras"]) for block in document["boundaries"].values()]
        return ["boundaries with other chimeras than the first one's"] if any(n != names[0] for n in names) else []
    return []
