"""The options of a run (:class:`RunConfig`, every field recorded in config.json), the one
normalisation a run applies to them before recording, and the boundaries they resolve to."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.cells import resolve_boundary
from ..core.tokens import TokenClasses
from ..errors import BoundaryError


@dataclass
class RunConfig:
    """Options of one cross-patching run (all recorded in config.json)."""

    boundary: int | float = 0.6  # layer index, or fraction of depth
    boundaries: list[int | float] | str | None = None  # several at once, or "all" (1..L-1); overrides boundary
    max_new_tokens: int = 128
    # a batch holds at most batch_size sequences and max_batch_tokens padded tokens (prompt +
    # generation budget while decoding): the token budget sets the rows for the prompts at hand
    # (128 rows of a short prompt, fewer of long ones); batching changes speed, never results
    batch_size: int = 128
    max_batch_tokens: int | None = 16384
    rollout_model: str = "IT"
    near_tie_threshold: float = 0.05
    bootstrap: int = 2000
    seed: int = 0
    chat_template: bool = False  # apply the descendant's chat template to every prompt
    group_by: list[str] = field(default_factory=list)  # prompt metadata fields to break down by
    # "minimal": the rollout and the teacher-forced pass also supply both models' states (2 full
    # passes + 2 late-only passes per event); "exact": one more full pass of each model over the
    # prefix, which makes the exactness properties hold bit for bit across different passes.
    plan: str = "minimal"
    shard: str | None = None  # "i/n": this job takes prompts i, i+n, i+2n, ... (merge with merge_runs)
    engine: str = "local"  # "local" or "ray" (prompt chunks on Ray actors that each hold the models)
    workers: int = 2  # Ray actors
    sequential_chunk: int = 512  # prompts per load cycle with residency "sequential" (4 model loads each)
    title: str | None = None
    back_link: str | None = None  # report.html links back to this page (a combined report)
    tuned: str | None = None  # with several descendants loaded: the role scored against the base (default: the first)
    event_kinds: list[str] | str = "all"  # first_diff, first_nonformat_diff, first_assistant_marker_diff
    format_tokens: list[str] | str | None = None  # replaces the structural words counted as FORMAT (tokens.py)
    marker_words: list[str] | str | None = None  # replaces the assistant-marker words (a marker must be a whole word)
    controls: list[str] | str | None = "default"  # names, "all", "none" or "default" (controls.DEFAULT_CONTROLS)
    verify_fp32: bool = False  # re-run near-tie events' search in float32 and count how many move
    policy: dict | None = None  # verdict thresholds (verdict.VerdictPolicy fields)
    consequence: bool = False  # forced-token continuations scored by the prompts' validators
    consequence_budget: int = 32  # tokens generated after the forced token
    consequence_with_pt: bool = False  # also continue with the base
    until_ci_width: float | None = None  # stop once the interaction's 95% half-width is at most this (logits)
    nulls: list[str] = field(default_factory=list)  # null descendant roles of the model set (null calibration)
    synthetic_nulls: int = 0  # synthetic nulls of the descendant built in memory (docs/verdict.md)
    analyses: list[str] = field(default_factory=list)  # registered analyses to run beyond the default ones
    analysis_options: dict = field(default_factory=dict)  # {analysis name: {option: value}} (its options dataclass)


def normalise_run_config(config: RunConfig) -> RunConfig:
    """``config`` as a run records it, in place: word lists as the sorted words themselves (not a
    file's name)."""
    classes = TokenClasses.from_options(config.format_tokens, config.marker_words)  # marker words keep their case
    if config.format_tokens is not None:
        config.format_tokens = sorted(classes.format_words)
    if config.marker_words is not None:
        config.marker_words = sorted(classes.marker_words)
    return config


def resolve_boundaries(config: RunConfig, num_layers: int) -> list[int]:
    """The sorted layer indices a run scores ("all" = every layer 1..L-1)."""
    if config.boundaries in ("all", ["all"]):
        if num_layers < 2:
            raise BoundaryError(f"boundaries 'all' (1..L-1) leave no boundary on a model of {num_layers} layer: "
                                "a boundary needs a layer on each side, so at least 2 layers")
        return list(range(1, num_layers))
    requested = config.boundaries if config.boundaries else [config.boundary]
    return sorted({resolve_boundary(b, num_layers) for b in requested})
