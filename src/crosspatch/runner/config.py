"""The options of a run (:class:`RunConfig`, every field recorded in config.json; torch-free, so
that the command line builds its options from it), the parsers of their command-line text, the
one normalisation a run applies to them before recording, and the boundaries they resolve to."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import BoundaryError, OptionError
from ..models.options import check_switches  # noqa: F401 (re-exported: run, compare, lineage)


def parse_boundary(text: str | int | float) -> int | float:
    """``12`` is layer 12; ``0.6`` is 60% of depth; ``abc`` is a :class:`BoundaryError` (``1.0``
    and other out-of-range values are named when the model's depth is known)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text
    text = str(text).strip()
    try:
        value = float(text)
    except ValueError:
        raise BoundaryError(f"boundary must be an int layer (e.g. 12) or a depth fraction (e.g. 0.6), not {text!r}") from None
    if value.is_integer() and "." not in text and "e" not in text.lower():
        return int(value)
    return value


def parse_boundaries(text: str | None) -> list[int | float] | str | None:
    """``all``, or a comma-separated list of boundaries (each as :func:`parse_boundary`)."""
    if text is None:
        return None
    if text.strip() == "all":
        return "all"
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise BoundaryError(f"--boundaries must be 'all' or a comma-separated list of layers, not {text!r}")
    return [parse_boundary(x) for x in items]


def parse_words(text: str) -> list[str]:
    """A comma list as its non-empty items."""
    return [x.strip() for x in text.split(",") if x.strip()]


# the most nodes a configuration may expand to through its aliases: a policy or merge file holds
# hundreds; an alias nested on alias (a "billion laughs") expands to billions and hangs whatever reads it
MAX_YAML_NODES = 100_000


def strict_yaml_load(text: str):
    """``yaml.safe_load`` refusing a mapping that names one key twice (PyYAML keeps the last value
    without a word: in a threshold or merge file, which one was meant cannot be told) and a
    document whose aliases expand it past :data:`MAX_YAML_NODES` nodes (aliases of aliases: a few
    lines that stand for billions of values) or nested thousands deep; each refusal is a
    ``yaml.YAMLError`` naming it."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if (size := _expanded_size(node, {})) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"its aliases expand it to {size:,} values (more than {MAX_YAML_NODES:,}): aliases "
                                 "of aliases, which no configuration needs")
        return loader.construct_document(node)
    except RecursionError:  # (PyYAML composes and constructs recursively)
        raise yaml.YAMLError("it nests lists or mappings thousands deep, deeper than it can be read") from None
    except ValueError as exc:  # (PyYAML's own: a number of more digits than Python converts)
        raise yaml.YAMLError(str(exc)) from None
    finally:
        loader.dispose()


def _expanded_size(node, sizes: dict[int, int]) -> int:
    """How many nodes ``node`` stands for with every alias written out (each node counted once
    per place it appears; a node that contains itself counts as what it holds once)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # (a node reached again inside itself: a recursive alias)
    children = node.value if isinstance(node.value, list) else []
    total = 1 + sum(_expanded_size(part, sizes) for child in children
                    for part in (child if isinstance(child, tuple) else (child,)))
    sizes[id(node)] = total
    return total


def load_policy(path: str | Path) -> dict:
    """Verdict thresholds from a YAML or JSON file (a mapping of VerdictPolicy fields)."""
    import yaml

    from ..errors import PolicyFileError
    from ..inputs.text import read_text

    try:
        data = strict_yaml_load(read_text(path))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PolicyFileError(f"cannot read policy file {path}: {' '.join(str(exc).split())}") from None
    if data is None:  # an empty file (or comments only) is more likely a templating slip than "the defaults"
        raise PolicyFileError(f"policy file {path} is empty: it sets no threshold (write {{}} in it to mean the "
                              "defaults, or drop --policy)")
    if not isinstance(data, dict):
        raise PolicyFileError(f"policy file {path} must hold a mapping of thresholds, not {type(data).__name__}")
    return data


def policy_given(policy):
    """A policy as the Python API takes it: a file's path (a str or Path, as ``--policy`` gives it)
    read with :func:`load_policy`; a :class:`~crosspatch.core.verdict.VerdictPolicy` as the mapping
    of all its fields; anything else (a mapping, another policy object, None) as it is."""
    import os

    from ..core.verdict import VerdictPolicy

    if isinstance(policy, VerdictPolicy):
        return policy.as_dict()
    return load_policy(os.fspath(policy)) if isinstance(policy, (str, os.PathLike)) else policy


def parse_analysis_options(assignments: list[str]) -> dict[str, dict]:
    """``NAME.OPTION=VALUE`` items as ``{name: {option: value}}``, each value converted to the
    registered analysis' option type (an unknown analysis or option is a named error)."""
    from ..core.registry import get_analysis

    given: dict[str, dict[str, str]] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        name, dot, option = key.strip().partition(".")
        if not sep or not dot or not name or not option:
            raise OptionError(f"--analysis-option takes NAME.OPTION=VALUE (e.g. label_swap.level=0.05), not {item!r}")
        given.setdefault(name, {})[option] = value.strip()
    try:
        return {name: get_analysis(name).options_from_text(values) for name, values in given.items()}
    except ValueError as exc:
        raise OptionError(str(exc)) from None


def _option(default: Any = MISSING, help: str | None = None, factory: Any = MISSING, **cli: Any) -> Any:
    """A field with its command-line help (``cli.options``: a field with help is an option)."""
    metadata = {"help": help, **cli} if help is not None else {}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# the options whose command-line text RunConfig.with_overrides reads as the command line does (a policy's
# path too: RunConfig.with_overrides reads it with policy_given)
_SPELLED_AS_TEXT = ("boundary", "boundaries", "group_by", "rollout_model")


def _as_the_command_line_reads(key: str, value):
    """A run option given in Python as the command line spells it (see
    :meth:`RunConfig.with_overrides`), read as the command line reads it; any other value as given."""
    if key in _SPELLED_AS_TEXT and isinstance(value, str):
        return RunConfig.__dataclass_fields__[key].metadata["parse"](value)
    if key == "analysis_options" and (isinstance(value, str) or (
            isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value))):
        return parse_analysis_options([value] if isinstance(value, str) else list(value))
    return value


@dataclass
class RunConfig:
    """Options of one cross-patching run (all recorded in config.json). The fields with help are
    the options of ``crosspatch run``, ``sweep``, ``compare`` and ``lineage`` (``cli.options``)."""

    boundary: int | float = _option(0.6, "Boundary layer: int index or depth fraction; beside --boundaries, the "
                                    "headline's (verdict, controls): the nearest of them.", cli_type=str,
                                    parse=parse_boundary)
    boundaries: list[int | float] | str | None = _option(
        None, "Comma-separated boundaries, or 'all' (1..L-1), scored instead of --boundary (the "
        "headline is the one nearest to --boundary).", cli_type=Optional[str],
        parse=parse_boundaries)
    max_new_tokens: int = _option(128, "Greedy budget of the divergence search (tokens).")
    # a batch holds at most batch_size sequences and max_batch_tokens padded tokens (prompt +
    # generation budget while decoding): the token budget sets the rows for the prompts at hand
    # (128 rows of a short prompt, fewer of long ones); batching changes speed, never results
    batch_size: int = _option(128, "Sequences per forward pass at most.")
    max_batch_tokens: int | None = _option(
        16384, "Padded tokens per forward pass at most (prompt + generation budget while decoding): with "
        "--batch-size it sets the rows of a batch from the prompts' lengths, and bounds working memory (lower it "
        "with --residency sequential or a small GPU).")
    rollout_model: str = _option("IT", "Which model decodes greedily: IT or PT.", parse=str.upper)
    decode: str = _option(
        "auto", "How the search and the histories decode: auto (static on CUDA, else eager), eager (a growing KV "
        "cache), static (a preallocated cache of fixed shape), compiled (static, the step compiled with torch.compile; "
        "CUDA graphs on CUDA; each new shape costs seconds to compile, so it is asked for, never chosen). The same "
        "events in every mode (in bfloat16 up to near ties); the mode used is recorded.")
    near_tie_threshold: float = 0.05
    bootstrap: int = _option(2000, "Bootstrap resamples.")
    seed: int = _option(0, "Seed of the bootstrap and of the random controls.")
    chat_template: bool = _option(False, "Apply the descendant's chat template to every prompt.")
    group_by: list[str] = _option(help="Comma-separated prompt fields to break down by.", factory=list,
                                  cli_type=Optional[str], parse=parse_words)
    # "minimal": the rollout and the teacher-forced pass also supply both models' states (2 full
    # passes + 2 late-only passes per event); "exact": one more full pass of each model over the
    # prefix, which makes the exactness properties hold bit for bit across different passes.
    plan: str = _option("minimal", "minimal (fewest passes) or exact (bit-exact controls).")
    shard: str | None = _option(None, "i/n: take prompts i, i+n, ... (then crosspatch merge).")
    engine: str = _option("local", "local, or ray (chunks on Ray actors; pip install crosspatch[ray]).")
    workers: int = _option(2, "Ray actors (each holds the models).")
    sequential_chunk: int = 512  # prompts per load cycle with residency "sequential" (2 model loads each by default)
    title: str | None = None
    back_link: str | None = None  # report.html links back to this page (a combined report)
    tuned: str | None = None  # with several descendants loaded: the role scored against the base (default: the first)
    event_kinds: list[str] | str = _option(
        "all", "all, or a comma list of first_diff, first_nonformat_diff, first_assistant_marker_diff. The two "
               "later kinds are found on each prompt's greedy history, decoded until both are found or the budget "
               "is spent: often half of a default run's time; first_diff alone skips it. first_diff is always scored: "
               "the verdict and the headline tables read it; the others are broken down by event kind.", cli_type=str)
    format_tokens: list[str] | str | None = _option(
        None, "Words counted as FORMAT (structural/discourse words), replacing crosspatch's list: a comma list or "
        "@FILE (one per line); punctuation, whitespace, markup and special tokens stay FORMAT.",
        cli_type=Optional[str], metavar="WORDS")
    marker_words: list[str] | str | None = _option(
        None, "Assistant-marker words for first_assistant_marker_diff, replacing crosspatch's list: a comma list or "
        "@FILE; a marker must be a whole word.", cli_type=Optional[str], metavar="WORDS")
    controls: list[str] | str | None = _option(
        "default", "Controls: default (the cheap ones), all, none, or a comma list (label_swap, pre_divergence, "
        "pre_late_commitment, hybrid_state, readout_agreement, position_subsets, near_ties, prompt_format, "
        "random_later, native_history, null_calibration).", cli_type=str)
    verify_fp32: bool = _option(False, "Re-run the search of near-tie events in float32 and count how many move.")
    policy: dict | None = _option(None, "Verdict thresholds (YAML or JSON, see docs/verdict.md).",
                                  cli_type=Optional[Path], parse=load_policy)
    consequence: bool = _option(False, "Force t_IT, t_PT and matched alternatives at each event and score the "
                                "continuation with the prompt's validator.")
    consequence_budget: int = _option(32, "Tokens continued after the forced token.")
    consequence_with_pt: bool = False  # also continue with the base
    until_ci_width: float | None = _option(
        None, "Process prompts chunk by chunk until the interaction's 95% half-width is at most this (logits), or "
        "the prompts run out; says which (resumable).")
    nulls: list[str] = field(default_factory=list)  # null descendant roles of the model set (null calibration)
    synthetic_nulls: int = 0  # synthetic nulls of the descendant built in memory (docs/verdict.md)
    analyses: list[str] = _option(
        help="A registered analysis to run beyond the default ones (repeatable; `crosspatch analyses` lists them and "
        "their options).", factory=list, cli_type=Optional[list[str]], flag="--analysis", metavar="NAME")
    analysis_options: dict = _option(  # {analysis name: {option: value}} (its options dataclass)
        help="An option of a registered analysis or control, NAME.OPTION=VALUE (repeatable; e.g. "
        "label_swap.level=0.05).", factory=dict, cli_type=Optional[list[str]], flag="--analysis-option",
        metavar="NAME.OPTION=VALUE", parse=parse_analysis_options)

    @classmethod
    def with_overrides(cls, config: "RunConfig | None" = None, **overrides) -> "RunConfig":
        """A copy of ``config`` (a default when None; the caller's object is never changed) with
        ``overrides`` set, as ``run``/``compare``/``lineage`` take them as keyword arguments; an
        unknown name is a ``TypeError``, a ``config`` that is no RunConfig an ``OptionError``. An
        option given as the command line spells it is read as the command line reads it: a string
        for ``boundary`` ("0.5"), ``boundaries`` ("1,3"), ``group_by`` ("split,era") or
        ``rollout_model`` ("it"), a file's path (str or Path) for ``policy``, ``NAME.OPTION=VALUE``
        assignments (one, or a list) for ``analysis_options``. A ``policy`` may also be a
        :class:`~crosspatch.core.verdict.VerdictPolicy` (recorded as its fields)."""
        from ..models.options import LoadOptions, copy_with_overrides

        loading = sorted(set(overrides) & set(LoadOptions.__dataclass_fields__) - set(cls.__dataclass_fields__))
        if loading:  # the models are loaded already: say where such an option goes
            raise TypeError(f"unknown run option {loading[0]!r}: it is a load option, given where the models are "
                            f"loaded (crosspatch.load_pair(..., {loading[0]}=...), load_models)")
        made = copy_with_overrides(cls, config, {key: _as_the_command_line_reads(key, value)
                                                 for key, value in overrides.items()}, "config", "run option")
        made.policy = policy_given(made.policy)  # (a RunConfig's VerdictPolicy, or a file's path: its fields)
        return made


def normalise_run_config(config: RunConfig) -> RunConfig:
    """``config`` as a run records it, in place: word lists as the sorted words themselves (not a
    file's name); the controls and event kinds by what they select, so that one selection spelled
    two ways (``near_ties,label_swap`` and ``label_swap, near_ties``, ``none`` and ``[]``, every
    kind listed and ``all``) is one run that resumes, not a settings mismatch. Controls are
    recorded as ``default``, ``none`` or their names in the Controls table's order; event kinds as
    ``all`` or the kinds in their order; further analyses sorted, each once; breakdowns each once.
    (The boundaries enter a run's fingerprint as the layers they resolve to:
    ``build_config_record``.)"""
    from ..analyses.event_kinds import parse_event_kinds
    from ..core.registry import select_controls
    from ..core.tokens import EVENT_KINDS, TokenClasses

    classes = TokenClasses.from_options(config.format_tokens, config.marker_words)  # marker words keep their case
    if config.format_tokens is not None:
        config.format_tokens = sorted(classes.format_words)
    if config.marker_words is not None:
        config.marker_words = sorted(classes.marker_words)
    selected = select_controls(config.controls)
    config.controls = ("default" if selected == select_controls("default") else "none" if not selected
                       else selected)
    kinds = parse_event_kinds(config.event_kinds)
    config.event_kinds = "all" if kinds == list(EVENT_KINDS) else kinds
    if all(isinstance(a, str) for a in config.analyses):  # they run in the registry's order, each once
        config.analyses = sorted(set(config.analyses))
    if isinstance(config.group_by, (list, tuple)):  # each breakdown once, in the order given (the report's)
        config.group_by = list(dict.fromkeys(config.group_by))
    return config


def resolve_boundaries(config: RunConfig, num_layers: int) -> list[int]:
    """The sorted layer indices a run scores ("all" = every layer 1..L-1); ``boundary`` is checked
    too where ``boundaries`` overrides it, since it chooses the headline among them."""
    from ..core.cells import resolve_boundary

    every = config.boundaries in ("all", ["all"])
    if every and num_layers < 2:
        raise BoundaryError(f"boundaries 'all' (1..L-1) leave no boundary on a model of {num_layers} layer: "
                            "a boundary needs a layer on each side, so at least 2 layers")
    headline = resolve_boundary(config.boundary, num_layers)  # beside --boundaries it chooses the headline
    if every:
        return list(range(1, num_layers))
    if not config.boundaries:
        return [headline]
    return sorted({resolve_boundary(b, num_layers) for b in config.boundaries})


def result_options(config: RunConfig) -> dict:
    """The options of ``config`` that change a run's results, as its fingerprint holds them:
    residency, batching and decoding only move float rounding; titles, shards, engines, the verdict
    policy and the precision target change no record; boundaries enter as the layers they resolve to."""
    return {k: v for k, v in asdict(config).items()
            if k not in ("batch_size", "max_batch_tokens", "decode", "title", "back_link", "shard", "engine", "workers",
                         "sequential_chunk", "verify_fp32", "policy", "until_ci_width", "boundary", "boundaries")}
