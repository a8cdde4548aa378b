"""Validate first, then load: every option and input is checked before any model weight is
loaded or any file is written, so a failed command leaves nothing behind and its corrected
version is never refused. Each failure is a named error saying what to change
(docs/errors.md lists the bad inputs covered).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import (
    BoundaryError,
    ChatTemplateMissingError,
    GroupByFieldError,
    OptionError,
    PromptTooLongError,
    RunDirectoryNotEmptyError,
    RunWriteError,
    VocabularyMismatchError,
)
from ..models.loading import DEVICES, validate_load_options  # noqa: F401 (re-exported)
from ..models.options import check_switches, plain_scalar
from ..models.paths import check_given_once, check_hub_id, check_model_path, looks_local, path_key  # noqa: F401 (re-exported)
from ..store.tables import mixed_kinds

MIN_BOOTSTRAP = 100  # fewer resamples give degenerate intervals; 0 disables intervals
MAX_BOOTSTRAP = 100_000  # beyond, percentile intervals no longer change, only the time does
BUILTIN_BREAKDOWNS = ("category", "position", "token_category", "event_kind")


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise OptionError(f"{name} must be >= {minimum}, not {value}")
    return value


def check_distinct_descendants(paths: list[str]) -> None:
    """Each descendant (checkpoint or adapter) is given once: the same directory twice would be
    run twice and counted as two descendants (or two training stages)."""
    check_given_once(paths, "descendant", "give each once")


def check_bootstrap(value) -> int:
    """Bootstrap resamples: 0 (no intervals) or MIN_BOOTSTRAP..MAX_BOOTSTRAP."""
    boot = _int("bootstrap", value, 0)
    if 0 < boot < MIN_BOOTSTRAP:
        raise OptionError(f"bootstrap {boot} gives degenerate intervals: use at least {MIN_BOOTSTRAP} resamples "
                          "(2000 is the default), or 0 to report no intervals")
    if boot > MAX_BOOTSTRAP:
        raise OptionError(f"bootstrap {boot} is more resamples than intervals need: use at most {MAX_BOOTSTRAP:,} "
                          "(2000 is the default)")
    return boot


def check_boundary_spec(value) -> None:
    """A boundary is an int layer index >= 1 (at 0 the upstream state would be the embeddings
    alone, on any model) or a depth fraction strictly inside (0, 1); the model's depth bounds it
    further when it is read."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BoundaryError(f"boundary must be an int layer or a fraction of depth, not {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value) or not 0.0 < value < 1.0:
            raise BoundaryError(
                f"fractional boundary {value} must be strictly between 0 and 1 (write an integer such as "
                f"{int(value) if math.isfinite(value) and value >= 1 else 1} for a layer index)")
    elif value < 0:  # not Python's count from the end: a layer is named from the embeddings up
        raise BoundaryError(f"boundary layer {value} is negative: a boundary layer counts from the embeddings, "
                            "1..L-1 (or a depth fraction such as 0.6)")
    elif value < 1:
        raise BoundaryError(f"boundary layer {value} leaves no early layers (at 0 the upstream state would be the "
                            "embeddings alone): a boundary layer is 1..L-1")


def parse_shard(shard: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError:
        raise OptionError(f"--shard must look like 'i/n' (e.g. 0/4), not {shard!r}") from None
    if not 0 <= i < n:
        raise OptionError(f"--shard {shard!r}: need 0 <= i < n")
    return i, n


def check_model_set(models, what: str) -> None:
    """``models`` must be a :class:`~crosspatch.execution.ModelSet` (``what``: the function given
    it, for the message), not whatever was passed by mistake (a path, a bare model, None)."""
    from ..execution import ModelSet

    if not isinstance(models, ModelSet):
        raise OptionError(f"{what} needs the models as a ModelSet (crosspatch.load_pair, load_models or "
                          f"pair_from_models), not {type(models).__name__}")


def check_back_link(link) -> None:
    """A report's link back to a combined report: a relative path or an http(s) URL (the link is an
    ``href`` in report.html; another scheme, ``javascript:`` say, would run in a reader's browser)."""
    if link is None:
        return
    if not isinstance(link, str) or not link.strip():
        raise OptionError(f"back_link must be a relative path or an http(s) URL, not {link!r}")
    from urllib.parse import urlsplit

    scheme = urlsplit(link.strip()).scheme.lower()
    if scheme not in ("", "http", "https"):
        raise OptionError(f"back_link must be a relative path or an http(s) URL, not a {scheme}: link")


def validate_run_options(config) -> None:
    """Every :class:`~crosspatch.runner.pipeline.RunConfig` field that can be checked without a model
    (numpy scalars are made Python numbers in place first: :func:`plain_scalar`)."""
    for name, value in vars(config).items():
        if (plain := plain_scalar(value)) is not value:
            setattr(config, name, plain)
    from ..analyses.controls import parse_controls
    from ..analyses.event_kinds import parse_event_kinds
    from ..core.tokens import TokenClasses
    from ..core.verdict import VerdictPolicy
    from ..execution import ENGINES
    from ..execution.modes import DECODE_MODES

    if config.plan not in ("minimal", "exact"):
        raise OptionError(f"plan must be 'minimal' or 'exact', not {config.plan!r}")
    if config.rollout_model not in ("IT", "PT"):
        raise OptionError(f"rollout model must be 'IT' or 'PT', not {config.rollout_model!r}")
    if config.engine not in ENGINES:
        raise OptionError(f"engine must be one of {', '.join(ENGINES)}, not {config.engine!r}")
    if config.decode not in DECODE_MODES:
        raise OptionError(f"decode must be one of {', '.join(DECODE_MODES)}, not {config.decode!r}")
    _int("batch size", config.batch_size, 1)
    if config.max_batch_tokens is not None:
        _int("max batch tokens", config.max_batch_tokens, 1)
    _int("max new tokens", config.max_new_tokens, 1)
    _int("seed", config.seed, 0)
    _int("workers", config.workers, 1)
    _int("sequential chunk", config.sequential_chunk, 1)
    _int("consequence budget", config.consequence_budget, 1)
    _int("synthetic nulls", config.synthetic_nulls, 0)
    if config.synthetic_nulls and config.engine == "ray":  # (a worker loads its models from their paths)
        raise OptionError("--synthetic-null with --engine ray: the synthetic nulls are built in this process's memory, "
                          "where no Ray worker can load them; give --engine local, or a null fine-tune from a path "
                          "(--null DIR)")
    check_switches(**{name: getattr(config, name) for name in ("chat_template", "verify_fp32", "consequence",
                                                               "consequence_with_pt")})
    if config.title is not None and not isinstance(config.title, str):
        raise OptionError(f"title must be a string, not {config.title!r}")
    check_back_link(config.back_link)
    w = config.until_ci_width
    if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0):
        raise OptionError(f"until-ci-width must be a finite number of logits > 0, not {w!r}")
    if w is not None and config.bootstrap == 0:
        raise OptionError("--until-ci-width needs intervals: give --bootstrap (at least 200 resamples are used)")
    if isinstance(config.nulls, (str, bytes)) or not isinstance(config.nulls, (list, tuple)) or \
            any(not isinstance(n, str) or not n for n in config.nulls):
        raise OptionError(f"nulls must be a list of descendant role names, not {config.nulls!r}")
    check_bootstrap(config.bootstrap)
    t = config.near_tie_threshold
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise OptionError(f"near-tie threshold must be a finite number >= 0, not {t!r}")
    if config.boundaries not in (None, "all", ["all"]):
        if not isinstance(config.boundaries, (list, tuple)) or not config.boundaries:
            single = "" if isinstance(config.boundaries, (str, bytes, list, tuple)) else \
                f" (for one boundary, give boundary={config.boundaries!r} or boundaries=[{config.boundaries!r}])"
            raise BoundaryError(f"boundaries must be 'all' or a non-empty list, not {config.boundaries!r}{single}")
        for b in config.boundaries:
            check_boundary_spec(b)
    else:
        check_boundary_spec(config.boundary)
    if config.shard is not None:
        parse_shard(config.shard)
        if w is not None:  # each shard would stop at its own precision, on a part of its prompts
            raise OptionError(
                "--until-ci-width with --shard: each shard would stop at the width on its own prompts, leaving the "
                "rest unprocessed, and shards with unprocessed prompts cannot be merged into one run; give one of "
                "them (one run with --until-ci-width can use several workers: --engine ray --workers N)")
    try:
        parse_event_kinds(config.event_kinds)
        TokenClasses.from_options(getattr(config, "format_tokens", None), getattr(config, "marker_words", None))
        parse_controls(config.controls)
        VerdictPolicy.from_dict({} if config.policy is None else config.policy)
        check_analysis_options(config.analyses, config.analysis_options)
    except (TypeError, ValueError) as exc:
        raise OptionError(str(exc)) from None
    check_options_reach_an_analysis(config)
    if not isinstance(config.group_by, (list, tuple)) or any(not isinstance(g, str) or not g.strip()
                                                              for g in config.group_by):
        raise OptionError(f"group-by must be a list of field names, not {config.group_by!r}")


def check_analysis_names(names: list[str]) -> None:
    """The analyses of one run, each named for its records file (``<name>.jsonl``): unique, and none
    crosspatch's own records (``events``, ``no_divergence``) or a path (an analysis object given in
    Python is not checked when it is made, as a registered plug-in is)."""
    from ..core.registry import RESERVED_RECORDS, is_plugin_name

    if len(set(names)) != len(names):
        raise OptionError(f"analysis names must be unique in a run: {names}")
    bad = [n for n in names if n in RESERVED_RECORDS or not is_plugin_name(n)]
    if bad:
        raise OptionError(f"analysis name {bad[0]!r}: its records would go to {bad[0]}.jsonl, which is crosspatch's own "
                          "or no file name of the run directory; give it a name of letters, digits and '_' (not "
                          f"{' or '.join(sorted(RESERVED_RECORDS))})")


def check_analysis_options(names, options) -> None:
    """``analyses`` names registered plug-ins; ``analysis_options`` maps registered names to option
    dicts their options dataclass accepts (ValueError otherwise)."""
    from ..core.registry import get_analysis

    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)) or \
            any(not isinstance(n, str) for n in names):
        raise ValueError(f"analyses must be a list of registered analysis names, not {names!r}")
    if not isinstance(options, dict) or any(not isinstance(v, dict) for v in options.values()):
        raise ValueError(f"analysis options must be a {{name: {{option: value}}}} dict, not {options!r}")
    for name in [*names, *options]:
        get_analysis(name)
    for name, given in options.items():
        get_analysis(name).make_options(given)


def check_options_reach_an_analysis(config) -> None:
    """Options of an analysis or control this run does not run would change nothing: refused,
    naming how to include it (a control missing from ``--controls``, an analysis not added)."""
    from ..core.registry import enabled_plugins, get_analysis

    running = {p.name for p in enabled_plugins(vars(config))}
    idle = [name for name in config.analysis_options if name not in running]
    if idle:
        how = [f"name {n} in --controls" if get_analysis(n).role == "control" else f"--analysis {n}" for n in idle]
        raise OptionError(f"--analysis-option for {', '.join(idle)}, which this run does not run, would change "
                          f"nothing: include it ({'; '.join(how)}) or drop the option")


def check_out_dir(out: str | Path, resume: bool = True, overwrite: bool = False, collection: str | None = None,
                  finished_may_be_read_only: bool = False) -> None:
    """``--out`` is a new, empty or crosspatch run directory (``collection``: or that command's
    earlier output, "compare" or "lineage", whose runs then resume or refuse on their own), and
    can be written (:func:`check_writable`; with ``finished_may_be_read_only``, a finished run
    to resume may be read-only: the caller checks it once the run is not returned as it stands)."""
    from ..store import RunStore, collection_kind

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise RunDirectoryNotEmptyError(f"--out {out} exists and is not a directory")
    if path.exists() and any(path.iterdir()) and not RunStore(path).holds_only_a_cut_short_marker():
        kind = collection_kind(path)
        if kind is not None and kind != collection:
            raise RunDirectoryNotEmptyError(
                f"--out {out} holds the output of a crosspatch {kind}; choose another directory")
        if kind is None and not RunStore(path).is_run():
            raise RunDirectoryNotEmptyError(
                f"--out {out} holds files that crosspatch did not write; choose a new or empty directory "
                "(crosspatch never deletes or mixes with files it did not write)")
        if kind is None and collection is not None:
            raise RunDirectoryNotEmptyError(f"--out {out} holds a crosspatch run, not a {collection}; choose another "
                                            "directory")
    done = (path / "summary.json").is_file() if collection is None else collection_kind(path) == collection
    if not (finished_may_be_read_only and resume and not overwrite and done):
        check_writable(out)


def check_writable(out: str | Path) -> None:
    """``--out``, or the directory it would be made in, can be written by this process."""
    probe = Path(out)
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunWriteError(f"--out {out}: cannot write in {probe} (permission denied)")


def check_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateMissingError(
            "--chat-template was given but the descendant's tokenizer has no chat template; drop the option "
            "(raw prompts are the default) or use a tokenizer that defines one")


def check_group_by(fields: list[str], prompts) -> list[str]:
    """Warnings for ``--group-by`` fields; a field no prompt has is an error."""
    warnings = []
    for name in fields:
        if name in BUILTIN_BREAKDOWNS:
            warnings.append(f"--group-by {name}: the by-{name} breakdown is built in; the option is ignored")
            continue
        if name in ("id", "prompt") and not any(name in p.metadata for p in prompts):
            own = "id" if name == "id" else "text"
            raise GroupByFieldError(f"--group-by {name}: every prompt's {own} is its own, so each group would be one "
                                    "prompt, with no interval; group by a field that prompts share (a split, a source, "
                                    "a task)")
        have = sum(name in p.metadata for p in prompts)
        if have == 0:
            fields_seen = sorted({k for p in prompts for k in p.metadata})[:10]
            raise GroupByFieldError(f"--group-by {name}: no prompt has a field {name!r} (fields present: "
                                    f"{', '.join(fields_seen) or 'none besides id, prompt, category'})")
        if have < len(prompts):
            warnings.append(f"--group-by {name}: {len(prompts) - have} of {len(prompts)} prompt(s) lack the field; "
                            "they are left out of that breakdown only")
        if mixed_kinds(p.metadata.get(name) for p in prompts):
            warnings.append(f"--group-by {name}: its values are of several kinds (numbers, text, ...); the events "
                            "table stores them as text")
        if (small := _small_groups(name, prompts)) is not None:
            warnings.append(small)
    return warnings


def _small_groups(name: str, prompts) -> str | None:
    """A warning where most prompts that carry ``name`` are in groups too small for an interval
    (a field with a value per prompt, an id or a city, gives a table of points, one row each)."""
    from collections import Counter

    from ..core.stats import MIN_CLUSTERS_FOR_CI

    sizes = Counter(str(p.metadata[name]) for p in prompts if name in p.metadata)
    small = sum(n for n in sizes.values() if n < MIN_CLUSTERS_FOR_CI)
    if small * 2 <= sum(sizes.values()):
        return None
    return (f"--group-by {name}: {len(sizes)} value(s) among {sum(sizes.values())} prompt(s); {small} of them are in "
            f"groups of fewer than {MIN_CLUSTERS_FOR_CI} prompts, too few for an interval (those rows show points "
            "only): group by a coarser field")


def check_prompt_token_ids(prompt_ids: list[str], token_ids: list[list[int]], embeddings: dict[str, int | None]
                           ) -> None:
    """Every prompt token id must have an input embedding in every model (``embeddings``: role
    -> rows): a tokenizer that does not belong to its model gives ids beyond the table, which
    would fail deep inside a forward pass."""
    known = {role: rows for role, rows in embeddings.items() if rows}
    if not known:
        return
    role = min(known, key=lambda r: known[r])  # the smallest table bounds them all
    rows = known[role]
    for pid, ids in zip(prompt_ids, token_ids):
        beyond = next((t for t in ids if not 0 <= t < rows), None)
        if beyond is not None:
            raise VocabularyMismatchError(
                f"prompt {pid!r} has token id {beyond}, but the {role} model has {rows} input embeddings "
                f"(ids 0..{rows - 1}): the tokenizer does not belong to that model; give the model its own "
                "tokenizer")


def check_prompt_lengths(prompt_ids: list[str], token_ids: list[list[int]], max_new_tokens: int,
                         limit: int | None, consequence_budget: int | None = None, controls_reach: int = 0,
                         sparse_topk: int | None = None, rope_switch: int | None = None) -> None:
    """Prompt + generation budget (+ a forced token and ``consequence_budget`` continued tokens
    after the event, when consequences are scored; at least ``controls_reach``, the tokens a
    control decodes past the prompt) must fit the model's position limit, and the keys an indexed
    sparse attention picks per token (``sparse_topk``) and the length where a long-context RoPE
    switches (``rope_switch``; see :func:`_length_bounds`) (policy: a named
    error listing the prompts, before any compute; nothing is truncated silently)."""
    extra = 1 + consequence_budget if consequence_budget else 0
    reach = max(max_new_tokens + extra, controls_reach)
    for bound, what in _length_bounds(limit, sparse_topk, rope_switch):
        long = [(pid, len(ids)) for pid, ids in zip(prompt_ids, token_ids) if len(ids) + reach > bound]
        if not long:
            continue
        shown = ", ".join(f"{pid} ({n} tokens)" for pid, n in long[:10])
        budget = f"--max-new-tokens {max_new_tokens}" + (f" and a forced token + --consequence-budget "
                                                         f"{consequence_budget}" if extra else "")
        if controls_reach > max_new_tokens + extra:
            budget = f"the {controls_reach} tokens a control decodes past them ({budget})"
        raise PromptTooLongError(
            f"{len(long)} prompt(s) plus {budget} exceed {what}: "
            f"{shown}{', ...' if len(long) > 10 else ''}. Shorten or drop them, or lower the budget")


def _length_bounds(limit: int | None, sparse_topk: int | None, rope_switch: int | None = None
                   ) -> list[tuple[int, str]]:
    """The lengths a sequence must stay within, each with what sets it: the model's positions, the
    keys an indexed sparse attention picks for each token, and the length past which a long-context
    RoPE (longrope) computes a pass otherwise (past any of them, the model's own cached decoding and
    its full pass compute differently); the ones the model has."""
    bounds = [(limit, f"the model's {limit} positions"),
              (sparse_topk, f"the {sparse_topk} keys the model's indexed sparse attention picks for each token (its "
                            "index_topk): past them the model's own cached decoding and its full pass pick different "
                            "keys, so neither the events nor the cells would be exact"),
              (rope_switch, f"the {rope_switch} positions of the model's original context (its "
                            "original_max_position_embeddings): past them its long-context RoPE (longrope) computes "
                            "every position of a pass with its long-context frequencies while generating computed the "
                            "earlier ones with the short ones, so neither the events nor the cells would be exact")]
    return [(bound, what) for bound, what in bounds if bound]


def check_continuation_lengths(prefix_lengths: dict[str, int], budget: int, limit: int | None,
                               sparse_topk: int | None = None, rope_switch: int | None = None) -> None:
    """An event prefix + the forced token + ``budget`` continued tokens must fit the model's
    position limit, an indexed sparse attention's ``sparse_topk`` and a long-context RoPE's
    ``rope_switch`` (``crosspatch consequence``):
    a named error listing the events, before any model loads where the limits are known from a
    local config.json."""
    for bound, what in _length_bounds(limit, sparse_topk, rope_switch):
        long = [(key, n) for key, n in prefix_lengths.items() if n + 1 + budget > bound]
        if long:
            shown = ", ".join(f"{key} ({n} tokens)" for key, n in long[:10])
            raise PromptTooLongError(
                f"{len(long)} event prefix(es) plus the forced token and --budget {budget} exceed {what}: "
                f"{shown}{', ...' if len(long) > 10 else ''}. Lower --budget to at most "
                f"{max(0, bound - 1 - max(n for _, n in long))}")
