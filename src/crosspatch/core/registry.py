"""The analysis registry: every analysis of a run is one plug-in of one shape, registered by name.

A plug-in (:class:`AnalysisPlugin`) bundles what a run needs to know of an analysis:

- ``options``: a dataclass, the one place its defaults and their help (field metadata) live;
- ``build(options, plan) -> Analysis | None``: the analysis whose ``program`` the executor runs on
  every chunk's events (None for a plug-in computed from the 2x2 records alone);
- ``summarize(rows, ctx, options) -> dict | None``: its block of ``summary.json`` from its stored
  records (``<records>.jsonl``, dicts) and the run's 2x2 records (:class:`SummaryContext`); a
  control returns its row of the Controls table;
- ``render(block) -> Section | None``: its report section, one neutral description that the
  Markdown and HTML reports both render (text is escaped there: a plug-in never writes markup).

The pipeline, ``build_summary``, both reports, shards, resume and the after-the-fact path
(:func:`crosspatch.runner.finished.run_on_finished`) loop over the registry, so adding an analysis
touches one file. Third-party packages register theirs through the ``crosspatch.analyses`` entry
point group (the entry point names a module that calls :func:`register_analysis` on import, or an
:class:`AnalysisPlugin` object), in the manner of PEFT's ``register_peft_method`` and SAELens'
registry.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ENTRY_POINT_GROUP = "crosspatch.analyses"
ROLES = ("control", "analysis")
# what a plug-in's records file and summary block may not be called: crosspatch's own records files
# (``events.jsonl``, ``no_divergence.jsonl``) and the keys of summary.json it writes itself
# (tests/test_registry.py keeps these equal to the summary schema's keys)
RESERVED_RECORDS = frozenset({"events", "no_divergence"})
RESERVED_SUMMARY_KEYS = frozenset({
    "schema_version", "num_layers", "boundaries", "counts", "results", "warnings", "no_divergence_prompts",
    "real_vocabulary", "controls", "verdict", "verdicts_by_category", "sections", "cost_this_session",
    "until_ci_width", "fp32_verification"})
STATUSES = ("pass", "warn", "fail", "info")

# built-in plug-ins: every module of this package (and every subpackage's ``plugin`` module), found and
# imported on first use of the registry (each registers itself), so that adding one adds one file
BUILTIN_PACKAGE = "crosspatch.analyses"
THIRD_PARTY_ORDER = 1000  # where a plug-in that states no order goes: after the built-ins


@dataclass
class Table:
    """A table of a report section: a header and rows of plain-text cells."""

    header: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """A report section, rendered by both reports: a title, paragraphs of plain text, tables and
    figures (SVG text the plug-in drew from numbers with :mod:`crosspatch.report.plots`)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


@dataclass
class PlanContext:
    """What a plug-in may read to build its analysis for one run (all picklable)."""

    config: Any  # the run's RunConfig
    boundaries: list[int]
    headline: int  # the boundary controls and after-the-fact analyses use
    num_layers: int
    cells: Any  # cells.CellsConfig
    validators: dict = field(default_factory=dict)  # prompt id -> validators.Validator

    @classmethod
    def for_run(cls, config, boundaries: list[int], num_layers: int, validators: dict | None = None) -> "PlanContext":
        """The one way to build a run's context: from its ``RunConfig`` while it runs, or from the
        options recorded in a finished run's config.json (as an object with those attributes; an
        option an older run did not record takes the cells' default)."""
        from .cells import CellsConfig, headline_boundary
        from .tokens import TokenClasses

        default = CellsConfig()
        cells = CellsConfig(getattr(config, "batch_size", default.batch_size),
                            getattr(config, "near_tie_threshold", default.near_tie_threshold),
                            getattr(config, "max_batch_tokens", default.max_batch_tokens),
                            TokenClasses.from_options(getattr(config, "format_tokens", None),
                                                      getattr(config, "marker_words", None)))
        return cls(config, list(boundaries), headline_boundary(boundaries, num_layers, config.boundary), num_layers, cells,
                   validators or {})


@dataclass
class SummaryContext:
    """What ``summarize`` may read besides its own rows: the run's recorded configuration, every
    2x2 record, the headline boundary and its valid first-divergence records, and the bootstrap."""

    config: dict  # config.json
    records: list  # every CellRecord of the run
    headline: int
    boot: Any  # stats.BootstrapConfig of the run
    extra: dict = field(default_factory=dict)  # session extras (fp32 verification, ...)
    run_dir: Path | None = None  # the run directory (None for a run kept in memory)
    results: dict = field(default_factory=dict)  # summary.json "results": effect blocks by boundary and readout

    @property
    def policy(self):
        """The run's verdict policy (verdict.VerdictPolicy)."""
        from .verdict import VerdictPolicy

        return VerdictPolicy.from_dict(self.options.get("policy") or {})

    @property
    def readout(self) -> str:
        """The readout the verdict reads (the policy's: common_it unless it says common_pt), for a
        control that tests the verdict's own interaction."""
        return self.policy.readout

    @property
    def options(self) -> dict:
        return self.config.get("options", {})

    @property
    def dtype(self) -> str:
        return self.config.get("load_options", {}).get("dtype", "float32")

    @functools.cached_property
    def first(self) -> list:
        """Valid first-divergence records at the headline boundary (filtered once per summary)."""
        return [r for r in self.records if r.boundary == self.headline and r.kind == "first_diff" and r.valid]

    def bootstrap(self, block: str):
        """The run's bootstrap settings with the seed of block ``block`` (:func:`stable_seed`)."""
        from .stats import block_bootstrap

        return block_bootstrap(self.boot, block)


def is_plugin_name(text) -> bool:
    """Whether ``text`` may name an analysis or its records file: letters, digits and '_', starting with a letter."""
    return isinstance(text, str) and bool(text) and text.replace("_", "").isalnum() \
        and text[0].isalpha()


@dataclass
class AnalysisPlugin:
    """One registered analysis (see the module docstring)."""

    name: str
    summarize: Callable[[list[dict], SummaryContext, Any], dict | None]
    build: Callable[[Any, PlanContext], Any] | None = None
    render: Callable[[dict], Section | None] | None = None
    options: type | None = None
    role: str = "analysis"  # "control": a row of the Controls table; "analysis": a block of its own
    default: bool = False  # controls: part of --controls default; analyses: run unless excluded
    records: str | None = ""  # records file stem ("": the name; controls: control_<name>; None: no records)
    summary_key: str | None = None  # the analysis' key in summary.json (default: its name)
    description: str = ""
    reads_policy: bool = False  # its summary reads the verdict policy (ctx.policy, ctx.readout): gate redoes it under its own
    # where its row of the Controls table or its report section goes: lower first, equal ones in the
    # order they were registered (built-ins state theirs; others go after them)
    order: int = THIRD_PARTY_ORDER

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"analysis plug-in {self.name!r}: role must be one of {ROLES}, not {self.role!r}")
        if not is_plugin_name(self.name):
            raise ValueError(f"analysis plug-in name {self.name!r}: letters, digits and '_', starting with a letter")
        if not isinstance(self.order, int) or isinstance(self.order, bool):
            raise TypeError(f"analysis plug-in {self.name!r}: order must be an int, not {self.order!r}")
        if self.options is not None and not dataclasses.is_dataclass(self.options):
            raise TypeError(f"analysis plug-in {self.name!r}: options must be a dataclass")
        if self.records == "":
            self.records = f"control_{self.name}" if self.role == "control" else self.name
        if self.summary_key is None:
            self.summary_key = self.name
        if self.records is not None and (self.records in RESERVED_RECORDS or not is_plugin_name(self.records)):
            raise ValueError(f"analysis plug-in {self.name!r}: records {self.records!r} is no records file of its own "
                             f"({', '.join(sorted(RESERVED_RECORDS))} are crosspatch's; letters, digits and '_')")
        if self.summary_key in RESERVED_SUMMARY_KEYS:
            raise ValueError(f"analysis plug-in {self.name!r}: summary_key {self.summary_key!r} is a key crosspatch "
                             "writes in summary.json itself; give it another")

    def make_options(self, given: dict | None = None):
        """The options dataclass filled from ``given`` (unknown keys are an error, and so is a value
        the dataclass's own checks refuse)."""
        self._check_option_names(given or {})
        return None if self.options is None else self.options(**(given or {}))

    def _check_option_names(self, given) -> None:
        if self.options is None:
            if given:
                raise ValueError(f"analysis {self.name!r} takes no options, got {', '.join(sorted(given))}")
            return
        known = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} of analysis {self.name!r}; "
                             f"known: {', '.join(sorted(known)) or 'none'}")

    def options_from_text(self, given: dict[str, str]) -> dict:
        """Option values given as text on the command line (``level=0.05``), each converted to
        its field's type (bool: true/false/yes/no/1/0; int; float; str; anything else as JSON);
        an unknown option or a value of the wrong type is a ValueError naming it."""
        import json
        import typing

        self._check_option_names(given)
        hints = typing.get_type_hints(self.options) if self.options is not None else {}
        values = {}
        for key, text in given.items():
            kind = hints[key]
            try:
                if kind is bool:
                    lowered = text.strip().lower()
                    if lowered not in ("true", "false", "yes", "no", "1", "0"):
                        raise ValueError(text)
                    values[key] = lowered in ("true", "yes", "1")
                elif kind in (int, float, str):
                    values[key] = kind(text)
                else:
                    values[key] = json.loads(text)
            except (ValueError, RecursionError):  # (RecursionError: JSON nested thousands deep)
                raise ValueError(f"option {key!r} of analysis {self.name!r} takes {getattr(kind, '__name__', kind)}, "
                                 f"not {text!r}") from None
        return values


_REGISTRY: dict[str, AnalysisPlugin] = {}
_loaded = False


def register_analysis(plugin: AnalysisPlugin, replace: bool = False) -> AnalysisPlugin:
    """Register ``plugin`` under its name (a name taken by another plug-in is an error unless
    ``replace``). Returns the plug-in, so a module can write ``PLUGIN = register_analysis(...)``."""
    if not isinstance(plugin, AnalysisPlugin):
        raise TypeError(f"register_analysis takes an AnalysisPlugin, not {type(plugin).__name__}")
    _load()  # the built-in and installed plug-ins first: a name, file or block they hold is taken
    old = _REGISTRY.get(plugin.name)
    if old is not None and old is not plugin and not replace:
        raise ValueError(f"an analysis named {plugin.name!r} is already registered")
    for other in _REGISTRY.values():  # two plug-ins never share a records file or a summary block
        if other.name == plugin.name:
            continue
        if plugin.records is not None and plugin.records == other.records:
            raise ValueError(f"analysis plug-in {plugin.name!r}: {plugin.records}.jsonl is already the records file "
                             f"of {other.name!r}; give it records=... of its own")
        if plugin.summary_key == other.summary_key:
            raise ValueError(f"analysis plug-in {plugin.name!r}: summary_key {plugin.summary_key!r} is already the "
                             f"block of {other.name!r}; give it summary_key=... of its own")
    _REGISTRY[plugin.name] = plugin
    return plugin


def unregister_analysis(name: str) -> None:
    """Remove a registered plug-in (tests and notebooks that register temporary ones)."""
    _REGISTRY.pop(name, None)


def builtin_modules() -> list[str]:
    """The modules that hold the built-in plug-ins: every module of :data:`BUILTIN_PACKAGE` whose
    name does not start with ``_``, and the ``plugin`` module of each of its subpackages, by name.
    Found on disk, not listed: a built-in analysis is one new file there."""
    import importlib
    import pkgutil

    package = importlib.import_module(BUILTIN_PACKAGE)
    names = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        if not info.ispkg:
            names.append(f"{BUILTIN_PACKAGE}.{info.name}")
            continue
        subpackage = [str(Path(p) / info.name) for p in package.__path__]
        if any(sub.name == "plugin" for sub in pkgutil.iter_modules(subpackage)):
            names.append(f"{BUILTIN_PACKAGE}.{info.name}.plugin")
    return sorted(names)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for module in builtin_modules():
        importlib.import_module(module)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()  # importing the module registers it; an AnalysisPlugin object is registered here
        except Exception as exc:  # a broken installed package: named, and named again on the next call
            from ..errors import OptionError

            _loaded = False
            raise OptionError(f"the analysis plug-in {ep.name!r} ({ep.value}, entry point group {ENTRY_POINT_GROUP!r}) "
                              f"could not be loaded: {type(exc).__name__}: {exc}; fix or uninstall the package that "
                              "provides it") from exc
        if isinstance(obj, AnalysisPlugin):
            register_analysis(obj)


def registered() -> dict[str, AnalysisPlugin]:
    """Every registered plug-in by name, by ``order`` (the built-ins' fixed order, then the others),
    equal orders in the order they were registered."""
    _load()
    ranked = sorted(enumerate(_REGISTRY.values()), key=lambda kv: (kv[1].order, kv[0]))
    return {p.name: p for _, p in ranked}


def get_analysis(name: str) -> AnalysisPlugin:
    plugins = registered()
    if name not in plugins:
        from ..errors import OptionError

        raise OptionError(f"no analysis named {name!r} is registered; registered: {', '.join(sorted(plugins))}")
    return plugins[name]


def controls() -> list[AnalysisPlugin]:
    """The registered controls, by their order (the Controls table's order)."""
    return [p for p in registered().values() if p.role == "control"]


def analyses() -> list[AnalysisPlugin]:
    """The registered analyses that are not controls."""
    return [p for p in registered().values() if p.role == "analysis"]


def name_items(value: str | list[str] | tuple[str, ...], what: str) -> list[str]:
    """The names of a comma list (``"a, b"``) or of a list/tuple of names, stripped, blanks left
    out (ValueError naming ``what`` for any other value, or an entry that is not a string)."""
    if isinstance(value, str):
        entries = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
        entries = list(value)
    else:
        raise ValueError(f"{what} must be a comma list or a list of names, not {value!r}")
    return [x.strip() for x in entries if x.strip()]


def select_controls(text: str | list[str] | None) -> list[str]:
    """``all``, ``none``, ``default`` (None) or a comma list of registered control names, in the
    Controls table's order (ValueError for an unknown name). An empty list or tuple (a Python
    caller's ``controls=[]``) is ``none``; a blank string is refused (on a command line it is
    more often an unset variable than a choice)."""
    known = [p.name for p in controls()]
    if text is None or text == "default":
        return [p.name for p in controls() if p.default]
    if isinstance(text, (list, tuple)) and not text:
        return []
    items = name_items(text, "controls")
    if not items:
        raise ValueError(f"controls {text!r} name no control: give default, all, none or a comma list of control names")
    if len(items) > 1 and {"all", "none", "default"} & set(items):
        raise ValueError(f"controls {', '.join(items)}: all, none and default stand alone; give one of them, or a comma "
                         "list of control names")
    if items == ["all"]:
        return known
    if items == ["none"]:
        return []
    if items == ["default"]:
        return [p.name for p in controls() if p.default]
    unknown = [x for x in items if x not in known]
    if unknown:
        raise ValueError(f"unknown control(s) {', '.join(unknown)}; choose from {', '.join(known)}, all, none")
    return [c for c in known if c in items]


def control_row(name: str, status: str, value, summary: str, threshold: str | None = None, ci=None, n=None,
                **details) -> dict:
    """A row of the Controls table (what a control's ``summarize`` returns)."""
    if status not in STATUSES:
        raise ValueError(f"control {name}: status must be one of {STATUSES}, not {status!r}")
    return {"control": name, "status": status, "value": value, "ci": ci, "n": n, "threshold": threshold,
            "summary": summary, "details": details}


def enabled_plugins(options: dict, extra_names=()) -> list[AnalysisPlugin]:
    """The plug-ins a run with these recorded ``options`` runs and summarises, in order: the
    selected controls (``options["controls"]``), then the analyses that run by default, and every
    plug-in named in ``options["analyses"]`` or ``extra_names`` (a control too)."""
    named = set(options.get("analyses") or ()) | set(extra_names)
    chosen = set(select_controls(options.get("controls", "default"))) | named
    for name in named:
        get_analysis(name)  # unknown names are an error
    return [p for p in registered().values()
            if (p.name in chosen if p.role == "control" else (p.default or p.name in named))]
