"""The files crosspatch writes, described as TypedDicts (in the manner of lm-evaluation-harness's
``result_schema.py``): ``config.json`` and ``summary.json`` of a run directory, ``compare.json`` and
``lineage.json`` of a collection, and (:mod:`crosspatch.store.workflow_schemas`) ``preflight.json``,
``splice.json`` and ``merge-check.json`` of the workflows. They are
checked when written and when read (:func:`check_document`, with pydantic), and docs/schemas.md is
rendered from them (:mod:`crosspatch.store.schema_docs`; a test keeps it in sync). Keys not listed are allowed: plug-ins add
their own blocks to ``summary.json`` under their registered name.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import Required, TypedDict  # pydantic validates these on Python < 3.12


class Stat(TypedDict, total=False):
    """A number (None where it cannot be formed) with its 95% prompt-cluster interval (None without
    one) and, for a ratio that cannot be formed, the reason."""

    mean: Required[Optional[float]]
    ci: Optional[tuple[Optional[float], Optional[float]]]
    na_reason: str


class Cells(TypedDict):
    """The four cells' mean ``Y``: ``U_<upstream>_L_<late stack>``."""

    upt_lpt: Stat
    upt_lit: Stat
    uit_lpt: Stat
    uit_lit: Stat


@with_config(ConfigDict(extra="allow"))
class Effects(TypedDict, total=False):
    """The effects of the four cells (docs/verdict.md); the last ones may be absent from a summary an
    earlier crosspatch wrote."""

    E_PT: Required[Stat]
    E_IT: Required[Stat]
    interaction: Required[Stat]
    native_shift: Stat
    direct_share: Stat
    matched_portable_ratio: Stat
    interaction_share: Stat
    late_interaction_share: Stat
    odds_interaction: Stat


class EffectBlock(TypedDict, total=False):
    """One group of events under one readout: counts, the four cell means and every effect."""

    n_events: Required[int]
    n_prompts: Required[int]
    sign_count: dict[str, int]
    cells: Required[Cells]
    effects: Required[Effects]
    ci_note: str


@with_config(ConfigDict(extra="allow"))
class ReadoutResults(TypedDict, total=False):
    """One readout's effects at one boundary: every event, and the groups the report breaks them
    into (``by_<field>`` for each ``--group-by`` field too)."""

    all: Required[EffectBlock]
    by_category: dict[str, EffectBlock]
    by_position: dict[str, EffectBlock]
    by_token_category: dict[str, EffectBlock]
    by_event_kind: dict[str, EffectBlock]
    kinds_averaged: EffectBlock


class ReadoutAgreement(TypedDict, total=False):
    """How far the two readouts agree on the events' interactions."""

    n_events: int
    interaction_correlation: Optional[float]
    same_sign_fraction: Optional[float]


@with_config(ConfigDict(extra="allow"))
class BoundaryResults(TypedDict, total=False):
    """``results[boundary]``: each readout's effects (the common-IT one always) and their agreement."""

    common_it: Required[ReadoutResults]
    common_pt: ReadoutResults
    native_late: ReadoutResults
    native_upstream: ReadoutResults
    readout_agreement: ReadoutAgreement


@with_config(ConfigDict(extra="allow"))
class ControlDetails(TypedDict, total=False):
    """What a control's failure means for the verdict (docs/verdict.md), beside its own details."""

    on_failure: Optional[str]
    weakens: list[str]


class ControlRow(TypedDict, total=False):
    """A row of the Controls table (``details.on_failure`` says what its failure means)."""

    control: Required[str]
    status: Required[str]
    value: Any
    ci: Optional[list[Optional[float]]]
    n: Optional[int]
    threshold: Optional[str]
    summary: str
    details: ControlDetails


class VerdictRecord(TypedDict, total=False):
    """The verdict (docs/verdict.md): word, grade, reason, the numbers that decided it."""

    verdict: Required[str]
    grade: str
    reason: Required[str]
    numbers: dict[str, Any]
    policy: dict[str, Any]
    weakened_by: list[str]
    boundary: Required[int]
    readout: Required[str]


class Counts(TypedDict, total=False):
    prompts: Required[int]
    events: Required[int]
    invalid: Required[int]
    near_tie: int
    natural_disagree: int
    no_divergence: dict[str, int]


@with_config(ConfigDict(extra="allow"))
class NoDivergencePrompt(TypedDict, total=False):
    """A prompt that produced no event, and why."""

    prompt_id: Required[str]
    reason: Required[str]
    model: Optional[str]


class RealVocabulary(TypedDict, total=False):
    """The ids eligible for argmax (docs/architecture.md): the rest masked, by why."""

    real_ids: int
    total_ids: int
    masked_counts: dict[str, int]
    placeholder_patterns_matched: list[str]


@with_config(ConfigDict(extra="allow"))
class Summary(TypedDict, total=False):
    """``summary.json`` (schema ``crosspatch.summary/1``)."""

    schema_version: str
    num_layers: int
    boundaries: list[str]
    counts: Counts
    results: dict[str, BoundaryResults]
    warnings: list[str]
    no_divergence_prompts: list[NoDivergencePrompt]
    controls: list[ControlRow]
    verdict: VerdictRecord
    verdicts_by_category: dict[str, str]
    cost_this_session: dict[str, Any]
    until_ci_width: dict[str, Any]
    consequences: dict[str, Any]
    routing: dict[str, Any]
    features: dict[str, Any]
    sections: list[dict[str, Any]]  # the analyses' report sections, rendered when the summary was built
    real_vocabulary: RealVocabulary


@with_config(ConfigDict(extra="allow"))
class ModelEntry(TypedDict, total=False):
    """One model of a run: where it was loaded from, and the digests of its files."""

    path: str
    given: str  # a checkpoint given as REPO@REVISION: as given (``path``: the snapshot directory read)
    kind: str
    revision: Optional[str]


@with_config(ConfigDict(extra="allow"))
class ModelsRecord(TypedDict, total=False):
    """``config.json`` → ``models``: the base and the descendants (``tuned``/``adapter`` for a pair
    recorded by an earlier crosspatch), with how they were loaded."""

    base: ModelEntry
    tuned: ModelEntry
    adapter: ModelEntry
    descendants: dict[str, ModelEntry]
    load_options: dict[str, Any]
    residency_reason: str


@with_config(ConfigDict(extra="allow"))
class RunConfigRecord(TypedDict, total=False):
    """``config.json`` (schema ``crosspatch.config/1``): the run's options, models and prompts."""

    schema_version: str
    title: Optional[str]
    back_link: Optional[str]
    options: dict[str, Any]
    resolved_boundaries: list[int]
    num_layers: int
    residency: str
    models: ModelsRecord
    load_spec: Optional[dict[str, Any]]
    roles: list[str]
    load_options: dict[str, Any]
    prompts: dict[str, Any]
    prompt_ids: list[str]
    fingerprint_inputs: dict[str, Any]
    pair_warnings: list[str]
    run_warnings: list[str]
    real_vocabulary: dict[str, Any]
    environment: dict[str, Any]
    run_fingerprint: str
    fingerprint: str


@with_config(ConfigDict(extra="allow"))
class CompareRow(TypedDict, total=False):
    """A descendant's row of ``compare.json``: its run's headline block and verdict."""

    events: Required[int]
    prompts: int
    cells: Required[Cells]
    effects: Required[Effects]
    verdict: Required[str]
    reason: Required[str]
    boundary: int
    readout: Literal["common_it", "common_pt"]  # the verdict's, which the row's numbers are read in (absent: common_it)


@with_config(ConfigDict(extra="allow"))
class CompareDocument(TypedDict, total=False):
    """``compare.json``: one row per descendant, and the cross-descendant matrix."""

    base: str
    descendants: list[str]
    boundary: int
    rows: dict[str, CompareRow]
    cross: Optional[dict[str, Any]]
    warnings: list[str]  # the model set's warnings (each member run's summary.json repeats them)
    settings: list[list[str]]  # [name, what] of each setting chosen that changes the verdicts (a policy, ...)


@with_config(ConfigDict(extra="allow"))
class LabelSwapTest(TypedDict, total=False):
    """The label-swap null of a block's interaction (docs/controls.md)."""

    p_value: Required[Optional[float]]
    n_events: int
    n_prompts: int


@with_config(ConfigDict(extra="allow"))
class LineageStage(TypedDict, total=False):
    """A stage of ``lineage.json`` scored on the Base -> Final events."""

    events: Required[int]
    native_y: Stat
    native_shift: Required[Stat]
    E_PT: Required[Stat]
    E_IT: Required[Stat]
    interaction: Required[Stat]
    interaction_final_readout: Stat
    share_of_final_shift: Stat
    share_of_final_interaction: Stat
    percent_of_final: Optional[float]
    top1_agreement_with_final: Required[Optional[float]]
    label_swap: Required[LabelSwapTest]


@with_config(ConfigDict(extra="allow"))
class LineageDocument(TypedDict, total=False):
    """``lineage.json``: every stage scored on the Base -> Final contrast."""

    schema_version: str
    stages: Required[list[str]]
    final: Required[str]
    boundary: Required[int]
    events: Required[int]
    no_events_reason: str
    by_stage: Required[dict[str, LineageStage]]
    note: Required[str]
    training_steps: dict[str, int]
    warnings: list[str]  # the model set's warnings (the lineage's run repeats them in its summary.json)
    settings: list[list[str]]  # [name, what] of each setting chosen that changes the stages' rows (a chat template)


# (the workflows' documents: preflight, splice, merge-check, in a module of their own)
from .workflow_schemas import (  # noqa: E402
    MergeCheckDocument,
    PreflightCheck,
    PreflightDocument,
    SpliceBoundary,
    SpliceChimera,
    SpliceDocument,
    SplicePrompts,
)

DOCUMENTS = {"config.json": RunConfigRecord, "summary.json": Summary, "compare.json": CompareDocument,
             "lineage.json": LineageDocument, "preflight.json": PreflightDocument, "splice.json": SpliceDocument,
             "merge-check.json": MergeCheckDocument}
__all__ = ["DOCUMENTS", "PreflightCheck", "SpliceBoundary", "SpliceChimera", "SplicePrompts", "check_document"]
_ADAPTERS: dict[str, TypeAdapter] = {}


def check_document(name: str, document) -> list[str]:
    """The problems of ``document`` against the schema of the file ``name`` (empty: it conforms)."""
    adapter = _ADAPTERS.setdefault(name, TypeAdapter(DOCUMENTS[name]))
    try:
        adapter.validate_python(document, strict=False)
    except ValidationError as exc:
        return [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:10]]
    return []
