"""What a run produced (:class:`RunResult`), and its reports written or re-rendered from the
stored files alone (``crosspatch report``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.records import CellRecord, NoDivergence, in_run_order
from ..errors import BoundaryNotScoredError, CorruptRunFileError, OptionError
from ..report.markdown import render_markdown
from ..report.render import render_reports
from ..store import (
    RunStore,
    check_out_path,
    collection_kind,
    collection_runs,
    events_frame,
    missing_prompts,
    read_collection_summary,
    records_frame,
)

EFFECT_COLUMNS = ["boundary", "readout", "group", "effect", "mean", "ci_low", "ci_high", "n_events", "n_prompts", "note"]
CELL_COLUMNS = ["boundary", "readout", "cell", "mean", "ci_low", "ci_high", "n_events"]
CONTROL_COLUMNS = ("control", "status", "value", "ci", "n", "threshold", "summary")  # a Controls row, less details


def interval_columns(stat: dict) -> dict:
    """``mean``, ``ci_low`` and ``ci_high`` of a stored statistic (``{"mean", "ci"}``; None where
    the summary has no interval): the columns every results table shares."""
    ci = stat.get("ci") or [None, None]
    return {"mean": stat.get("mean"), "ci_low": ci[0], "ci_high": ci[1]}


@dataclass
class RunResult:
    """What a run produced; ``events`` is a pandas DataFrame, one row per (event, boundary)."""

    summary: dict
    records: list[CellRecord]
    no_divergence: list[NoDivergence]
    config: dict
    run_dir: Path | None = None
    analyses: dict[str, list] = field(default_factory=dict)  # further analyses' records, by name
    _report: str | None = field(default=None, repr=False)

    @property
    def events(self):
        """One row per (event, boundary): the event kinds on it (``kinds``, ``is_<kind>``),
        identity, tokens, every cell, per-event effects (:func:`~crosspatch.store.events_frame`)."""
        return events_frame(self.records)

    @property
    def events_long(self):
        """The long form: one row per (event, event kind, boundary), as events.jsonl and
        events.parquet store them, with ``kind`` (:func:`~crosspatch.store.records_frame`)."""
        return records_frame(self.records)

    def to_pandas(self, long: bool = False):
        """:attr:`events` (or :attr:`events_long` with ``long=True``) as a pandas DataFrame."""
        return self.events_long if long else self.events

    @property
    def verdict(self):
        """The run's verdict (docs/verdict.md): a :class:`~crosspatch.core.verdict.VerdictView`, the
        stored ``{"verdict", "grade", "reason", "numbers", ...}`` dict with typed attributes
        (``.verdict``, ``.grade``, ``.reason``, ``.share``); None before a summary exists."""
        from ..core.verdict import VerdictView

        stored = self.summary.get("verdict")
        return VerdictView(stored) if stored is not None else None

    def _blocks(self, boundary, readout: str | None):
        from ..core.records import readout_key, verdict_readout

        readout = verdict_readout(self.summary.get("verdict")) if readout is None else readout_key(readout)
        layers = self.summary.get("num_layers")
        if isinstance(boundary, float) and isinstance(layers, int):  # a depth fraction, as run(boundary=0.6) took it
            from ..core.cells import resolve_boundary

            boundary = resolve_boundary(boundary, layers)
        bs = [str(boundary)] if boundary is not None else self.summary["boundaries"]
        for b in bs:
            if b not in self.summary["results"]:
                raise BoundaryNotScoredError(f"boundary {b} was not scored in this run (scored: "
                                             f"{', '.join(self.summary['boundaries'])})")
            blocks = self.summary["results"][b]
            if readout not in blocks or readout == "readout_agreement":
                known = [k for k in blocks if k != "readout_agreement"]
                raise OptionError(f"no readout {readout!r}; readouts: {', '.join(known)}")
            yield b, readout, blocks[readout]

    def effects(self, boundary: int | float | None = None, readout: str | None = None, by: str | None = None):
        """A DataFrame of the effects with 95% intervals: one row per (boundary, group, effect).
        ``boundary``: a scored layer, or a depth fraction as ``run`` takes it (default: every one).
        ``readout``: ``common_it`` or ``common_pt`` (default: the one the verdict reads, common-IT
        unless a policy said common-PT; the ``readout`` column says which).
        ``by``: a breakdown (``category``, ``position``, ``event_kind``, ``token_category`` or a
        ``--group-by`` field); default the headline (all first-divergence events)."""
        import pandas as pd

        if by is not None and not isinstance(by, str):
            raise OptionError(f"by names one breakdown (a string such as 'category'), not {by!r}")
        by = {"kind": "event_kind", "kinds": "event_kind"}.get(by, by) if by is not None else None  # the records' and frames' names for it
        rows = []
        for b, read, res in self._blocks(boundary, readout):
            if by is not None and f"by_{by}" not in res:
                known = sorted(k[3:] for k in res if k.startswith("by_"))
                raise OptionError(f"no breakdown by {by!r} in this run; breakdowns: {', '.join(known) or 'none'} "
                                  "(a prompt field becomes one with --group-by)")
            groups = {"all": res["all"]} if by is None else res[f"by_{by}"]
            for group, block in groups.items():
                for name, stat in block["effects"].items():
                    rows.append({"boundary": int(b), "readout": read, "group": group, "effect": name, **interval_columns(stat),
                                 "n_events": block["n_events"], "n_prompts": block["n_prompts"],
                                 "note": stat.get("na_reason")})
        return pd.DataFrame(rows, columns=EFFECT_COLUMNS)  # its columns also with no group (no prompt has the field)

    def cells(self, boundary: int | float | None = None, readout: str | None = None):
        """A DataFrame of the four cell means with 95% intervals, per boundary (``readout``: as
        :meth:`effects`)."""
        import pandas as pd

        rows = []
        for b, read, res in self._blocks(boundary, readout):
            for cell, stat in res["all"]["cells"].items():
                rows.append({"boundary": int(b), "readout": read, "cell": cell, **interval_columns(stat), "n_events": res["all"]["n_events"]})
        return pd.DataFrame(rows, columns=CELL_COLUMNS)

    def controls(self):
        """The Controls table as a DataFrame, one row per control (its columns also when the run
        enabled none, so that ``frame[frame.status == "fail"]`` works on any run)."""
        import pandas as pd

        rows = [{k: v for k, v in row.items() if k != "details"} for row in self.summary.get("controls", [])]
        return pd.DataFrame(rows, columns=list(CONTROL_COLUMNS) if not rows else None)

    def _repr_html_(self) -> str:
        """What a notebook shows: the verdict, its sentence and the headline numbers."""
        from ..report.markdown import chosen_settings
        from ..report.notebook import run_card

        return run_card(self.summary, self.run_dir, chosen_settings((self.config or {}).get("options") or {}))

    def __repr__(self) -> str:
        counts = self.summary.get("counts", {})
        v = (self.verdict or {}).get("verdict", "n/a")
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir else ""
        return (f"RunResult(prompts={counts.get('prompts')}, events={counts.get('events')}, "
                f"boundaries={self.summary.get('boundaries')}, verdict={v!r}{where})")

    @property
    def report(self) -> str:
        if self._report is None:
            self._report = render_markdown(self.config, self.summary)
        return self._report


def read_run(run_dir: str | Path) -> RunResult:
    """One finished run directory as a :class:`RunResult` (summary, records, prompts without an
    event, config, every analysis' records), from its files alone (see
    :func:`crosspatch.runner.directories.open_run_directory`)."""
    from .finished import stored_analyses

    store = RunStore(run_dir)
    config = store.config()  # first: it names the run whose lines the records must carry
    summary = store.summary()
    ids = config.get("prompt_ids") or []  # the order the run itself gives its records (in_run_order)
    return RunResult(summary, in_run_order(store.load_records(), ids), in_run_order(store.load_no_divergence(), ids),
                     config, store.path, stored_analyses(store, skip_torn_tail=True))


def write_outputs(store: RunStore, summary: dict, records: list[CellRecord], config: dict) -> str:
    """summary.json, events.parquet, then the reports; returns the Markdown report."""
    store.write_summary(summary)
    store.write_parquet(records)
    return render_reports(store, summary, config)


@dataclass
class Rendered:
    """What ``crosspatch report`` produced: the Markdown text, the files written, warnings."""

    text: str
    files: list[Path]
    warnings: list[str]


def rerender_run(run_dir: str | Path) -> Rendered:
    """Re-render the reports from a run directory's stored files alone, after checking that
    every prompt of the run is accounted for (a warning names the missing ones). The output
    directory of a compare or a lineage: its pages, and each of its runs' reports."""
    path = check_out_path(run_dir)
    kind = collection_kind(path)
    if kind in ("compare", "lineage"):
        return _rerender_collection(path, kind)
    store = RunStore(path)
    with store.lock(create=False):  # one writer per run directory
        return _rerender(store)


def _rerender_collection(path: Path, kind: str) -> Rendered:
    from ..report.collections import write_compare_pages, write_lineage_pages

    summary = read_collection_summary(path, kind)
    files: list[Path] = []
    warnings: list[str] = []
    for member in collection_runs(path, kind):
        done = rerender_run(member)
        files += done.files
        warnings += [f"{member.name}: {w}" for w in done.warnings]
    try:
        text = (write_compare_pages if kind == "compare" else write_lineage_pages)(path, summary)
    except (LookupError, TypeError, ValueError, AttributeError) as exc:  # (a part its pages show, lacking or damaged)
        raise CorruptRunFileError.unrenderable(path / f"{kind}.json", exc) from None
    files += [path / n for n in ("report.md", "report.html", "lineage.png", "lineage.svg") if (path / n).exists()]
    return Rendered(text, files, warnings)


def _rerender(store: RunStore) -> Rendered:
    config, summary = store.config(), store.summary()
    warnings = []
    if "prompt_ids" in config:
        left = set((summary.get("until_ci_width") or {}).get("unprocessed_prompts") or [])  # by design
        missing = missing_prompts([p for p in config["prompt_ids"] if p not in left], store.load_records(),
                                  store.load_no_divergence(), config["resolved_boundaries"])
        if missing:
            warnings.append(f"{len(missing)} prompt(s) of this run have no record in events.jsonl or "
                            f"no_divergence.jsonl: {', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}; "
                            "the summary was computed before they went missing")
    text = render_reports(store, summary, config)
    files = [store.path / n for n in ("report.md", "report.html", "sweep.png", "sweep.svg") if (store.path / n).exists()]
    return Rendered(text, files, warnings)


def rerender(run_dir: str | Path) -> str:
    """Re-render the reports from a run directory's stored files alone; returns report.md."""
    return rerender_run(run_dir).text
