"""The analysis registry: every registered analysis, built-in or registered from another package
through the ``crosspatch.analyses`` entry point, passes the common contract
(crosspatch.testing.contract: every residency, shards merged, resume, picklable, summary block,
report section) with no edit to crosspatch."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from crosspatch.core import registry
from crosspatch.core.analysis import Analysis
from crosspatch.core.registry import AnalysisPlugin, Section, get_analysis, register_analysis, registered, unregister_analysis
from crosspatch.errors import OptionError

PLUGIN_PACKAGE = Path(__file__).parent / "plugin_package"
BUILTIN = ["label_swap", "pre_divergence", "pre_late_commitment", "hybrid_state", "readout_agreement",
           "position_subsets", "near_ties", "prompt_format", "repeated_prompts", "random_later", "native_history", "null_calibration", "routing", "consequence",
           "features", "event_kinds", "preflight"]


@pytest.fixture(scope="module")
def with_entry_point():
    """A package outside src/ (tests/plugin_package) on the path, as if pip-installed: its
    entry point registers the analysis 'token_rank'."""
    sys.path.insert(0, str(PLUGIN_PACKAGE))
    registry._loaded = False  # discover entry points again
    try:
        yield registered()
    finally:
        sys.path.remove(str(PLUGIN_PACKAGE))
        unregister_analysis("token_rank")
        sys.modules.pop("crosspatch_example_plugin", None)


@pytest.fixture(scope="module")
def contract(with_entry_point, tmp_path_factory):
    from crosspatch.testing.contract import check_analyses

    # the tiny models' events are early (position < 3): pre_divergence's 'half' rule scores them all
    return check_analyses(list(with_entry_point), tmp_path_factory.mktemp("contract"),
                          analysis_options={"pre_divergence": {"rule": "half"}})


def test_an_entry_point_registers_an_analysis_from_another_package(with_entry_point):
    assert list(with_entry_point)[: len(BUILTIN)] == BUILTIN  # a plug-in that states no order goes after the built-ins
    assert "token_rank" in with_entry_point
    assert with_entry_point["token_rank"].options.__name__ == "TokenRankOptions"


def test_an_installed_plug_in_that_fails_to_import_is_named_every_time(tmp_path):
    """A broken package's entry point stopped every command with its bare traceback, and in one
    Python session the next call went on without the plug-ins after it, silently. It is named
    (entry point and error), on every call, until it is fixed or removed."""
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs a package that is not installed')\n")
    info = tmp_path / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[crosspatch.analyses]\nbroken = broken_plugin\n")
    sys.path.insert(0, str(tmp_path))
    registry._loaded = False
    try:
        for _ in range(2):
            with pytest.raises(OptionError, match=r"plug-in 'broken' \(broken_plugin.*ImportError: needs a package"):
                registered()
    finally:
        sys.path.remove(str(tmp_path))
        registry._loaded = False
    assert "label_swap" in registered()


def test_the_built_in_analyses_are_found_in_their_package_in_their_order():
    """Every built-in plug-in is a module of crosspatch.analyses (a subpackage's is its ``plugin``
    module) that the registry finds by itself; their order is the Controls table's and the report's."""
    import crosspatch.analyses
    from crosspatch.analyses.controls import CONTROLS, DEFAULT_CONTROLS

    modules = registry.builtin_modules()
    files = sorted(p.stem for p in Path(crosspatch.analyses.__file__).parent.glob("*.py") if not p.stem.startswith("_"))
    assert modules == sorted([f"crosspatch.analyses.{stem}" for stem in files] + ["crosspatch.analyses.features.plugin"])
    assert "crosspatch.analyses.features.crosscoder" not in modules  # a subpackage's other modules stay unimported
    assert [name for name in registered() if name in BUILTIN] == BUILTIN
    assert CONTROLS == ("label_swap", "pre_divergence", "pre_late_commitment", "hybrid_state", "readout_agreement",
                        "position_subsets", "near_ties", "prompt_format", "repeated_prompts", "random_later",
                        "native_history", "null_calibration")
    assert DEFAULT_CONTROLS == tuple(c for c in CONTROLS if c not in ("random_later", "native_history"))


def test_a_new_built_in_control_is_one_new_module(tmp_path, monkeypatch):
    """A module dropped into crosspatch.analyses registers a control with no other edit: it is in
    the registry, in --controls default and all, and its order places it in the Controls table."""
    import crosspatch.analyses
    from crosspatch.analyses import controls

    (tmp_path / "probe_new_control.py").write_text(
        "from crosspatch.core.registry import AnalysisPlugin, control_row, register_analysis\n"
        "PLUGIN = register_analysis(AnalysisPlugin(\n"
        "    'probe_new_control', lambda rows, ctx, options: control_row('probe_new_control', 'info', None, 'probe'),\n"
        "    role='control', default=True, order=65))\n", encoding="utf-8")
    monkeypatch.setattr(crosspatch.analyses, "__path__", [*crosspatch.analyses.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_loaded", False)
    try:
        assert "crosspatch.analyses.probe_new_control" in registry.builtin_modules()
        names = list(registered())
        assert names.index("position_subsets") < names.index("probe_new_control") < names.index("near_ties")
        assert "probe_new_control" in controls.parse_controls(None) and "probe_new_control" in controls.parse_controls("all")
        assert "probe_new_control" in controls.CONTROLS and "probe_new_control" in controls.DEFAULT_CONTROLS
    finally:
        unregister_analysis("probe_new_control")
        sys.modules.pop("crosspatch.analyses.probe_new_control", None)
    with pytest.raises(TypeError, match="order must be an int"):
        AnalysisPlugin("x", lambda rows, ctx, options: None, order="first")  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN + ["token_rank"])
def test_every_registered_analysis_passes_the_contract(contract, name):
    assert contract[name]["residencies"] == ["adapter", "both", "sequential"]
    if name in ("pre_divergence", "pre_late_commitment", "hybrid_state", "random_later", "native_history",
                "consequence", "token_rank", "event_kinds"):
        assert contract[name]["rows"] > 0  # the contract compared real records, not two empty lists
    if name not in ("routing", "features", "event_kinds", "preflight"):  # dense models route nothing; no feature
        # study ran; event kinds have no block of their own (their records are 2x2 records, in every effect block);
        # no preflight was written into the run
        assert contract[name]["block"]


@pytest.mark.slow
def test_the_external_analysis_appears_in_summary_and_both_reports(contract, tmp_path_factory):
    root = next(p for p in Path(tmp_path_factory.getbasetemp()).glob("contract*/run-both"))
    import json

    summary = json.loads((root / "summary.json").read_text())
    assert summary["token_rank"]["n_events"] > 0
    assert "## Rank of t_IT under the base" in (root / "report.md").read_text()
    assert "<h2>Rank of t_IT under the base</h2>" in (root / "report.html").read_text()


def test_names_are_unique_and_checked():
    plugin = AnalysisPlugin("probe_once", lambda rows, ctx, options: None)
    register_analysis(plugin)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_analysis(AnalysisPlugin("probe_once", lambda rows, ctx, options: None))
        with pytest.raises(ValueError, match="letters, digits"):
            AnalysisPlugin("../x", lambda rows, ctx, options: None)
        with pytest.raises(ValueError, match="role"):
            AnalysisPlugin("x", lambda rows, ctx, options: None, role="other")
    finally:
        unregister_analysis("probe_once")


def test_unknown_analyses_and_options_are_named_errors_before_any_model_loads():
    from crosspatch.runner.checks import validate_run_options
    from crosspatch.runner.pipeline import RunConfig

    with pytest.raises(OptionError, match="no analysis named 'nope'"):
        validate_run_options(RunConfig(analyses=["nope"]))
    with pytest.raises(OptionError, match="unknown option"):
        validate_run_options(RunConfig(analysis_options={"hybrid_state": {"draws": 3}}))
    with pytest.raises(OptionError, match="takes no options"):
        validate_run_options(RunConfig(analysis_options={"near_ties": {"x": 1}}))
    for options, message in (({"label_swap": {"level": 2.0}}, "strictly between 0 and 1, not 2.0"),
                             ({"label_swap": {"level": "0.05"}}, "strictly between 0 and 1"),
                             ({"label_swap": {"resamples": 50}}, "no p-value can fall below level 0.01"),
                             ({"hybrid_state": {"random_draws": 0}}, "from 1 to 100, not 0"),
                             ({"pre_divergence": {"rule": "last"}}, "rule must be one of")):
        with pytest.raises(OptionError, match=message):  # values the control could not use, not only names
            validate_run_options(RunConfig(analysis_options=options))
    with pytest.raises(OptionError, match="name label_swap in --controls"):  # it would change nothing
        validate_run_options(RunConfig(controls="none", analysis_options={"label_swap": {"level": 0.05}}))
    with pytest.raises(OptionError, match="which this run does not run"):
        validate_run_options(RunConfig(controls=["near_ties"], analysis_options={"hybrid_state": {"random_draws": 2}}))
    validate_run_options(RunConfig(controls=["hybrid_state"], analysis_options={"hybrid_state": {"random_draws": 2}}))
    plugin = get_analysis("label_swap")
    assert plugin.options_from_text({"level": "0.05"}) == {"level": 0.05}
    with pytest.raises(ValueError, match="strictly between 0 and 1, not 2.0"):  # the command line's path
        plugin.make_options(plugin.options_from_text({"level": "2"}))


def test_a_list_option_given_as_json_nested_thousands_deep_is_named():
    """A plug-in's list option is read from the command line as JSON: text nested thousands deep
    raised RecursionError from --analysis-option."""
    from dataclasses import dataclass, field

    from crosspatch.core.registry import AnalysisPlugin

    @dataclass
    class Horizons:
        horizons: list[int] = field(default_factory=lambda: [4, 8])

    plugin = AnalysisPlugin(name="horizons_probe", summarize=lambda rows, ctx, options: None, options=Horizons)
    assert plugin.options_from_text({"horizons": "[2, 3]"}) == {"horizons": [2, 3]}
    with pytest.raises(ValueError, match="option 'horizons' of analysis 'horizons_probe' takes list"):
        plugin.options_from_text({"horizons": "[" * 5000 + "]" * 5000})


def test_block_seeds_differ_by_name_and_are_stable():
    from crosspatch.core.stats import stable_seed

    assert stable_seed(0, "2/common_it/all") == stable_seed(0, "2/common_it/all")
    assert stable_seed(0, "2/common_it/all") != stable_seed(0, "2/common_it/by_category/wind")
    assert stable_seed(0, "a") != stable_seed(1, "a")


def test_event_kinds_are_an_ordinary_plugin_whose_records_join_the_2x2s():
    """Event kinds are built from the registry like any analysis (none when only the first
    divergence is asked for), and the chunk's code has no case for them: an analysis that scores
    more events with the 2x2 says so (``scores_cells``) and its records join the run's."""
    import inspect

    from crosspatch.runner.config import RunConfig
    from crosspatch.runner.pipeline import chunk_plan, process_chunk

    plan = chunk_plan(RunConfig(boundary=2), [2], 4)
    kinds = [a for a in plan.analyses if a.name == "event_kinds"]
    assert len(kinds) == 1 and kinds[0].scores_cells and kinds[0].kinds[0] == "first_diff"
    assert not [a for a in chunk_plan(RunConfig(boundary=2, event_kinds="first_diff"), [2], 4).analyses
                if a.name == "event_kinds"]
    source = inspect.getsource(process_chunk)
    assert "kinds" not in source.replace("event kinds", "") and "EventKinds" not in source



# --- a plug-in's own code: its values stored as numbers, its failures named ---------------------
@dataclass
class _Faulty(Analysis):
    """Records carrying numpy and torch values; ``fault`` makes one step fail as a buggy plug-in would."""

    fault: str = ""
    name: str = "faulty"

    def program(self, ex, events):
        if not events.events:
            return []
        yield from events.states([events.base], [])
        if self.fault == "program":
            raise RuntimeError("broken program")
        if self.fault == "returns_text":
            return "not records"
        return [{"key": e.key, "prompt_id": e.prompt_id, "score": np.float32(0.5), "count": np.int64(3),
                 "flag": np.bool_(True), "tensor": torch.tensor(2.0), "vector": np.arange(2)} for e in events.events]


_FAULT = {"step": ""}


def _faulty_summarize(rows, ctx, options):
    if _FAULT["step"] == "summarize":
        return {"n": rows[0]["missing"]}
    if _FAULT["step"] == "summarize_list":
        return [len(rows)]
    if _FAULT["step"] == "summarize_nan":  # a mean over nothing, a ratio over zero
        return {"n_rows": len(rows), "mean": float("nan"), "ratio": np.float64(np.inf), "low": np.float32("-inf"),
                "per_row": [float("nan")] + [1.0] * (len(rows) - 1), "table": np.array([np.nan, 2.0]),
                "by_count": {np.int64(3): np.float32(0.25)}}
    return {"n_rows": np.int64(len(rows)), "mean_score": np.float64(np.mean([r["score"] for r in rows])),
            "scores": np.array([r["score"] for r in rows])}


def _faulty_build(options, plan):
    if _FAULT["step"] == "build":
        raise TypeError("a plan attribute this plug-in expected")
    return _Faulty(_FAULT["step"])


def _faulty_render(block):
    if _FAULT["step"] == "render":
        return "a string, not a Section"
    return Section("Faulty", [f"{block['n_rows']} rows"])


@pytest.fixture
def faulty():
    register_analysis(AnalysisPlugin("faulty", _faulty_summarize, build=_faulty_build, render=_faulty_render))
    try:
        yield _FAULT
    finally:
        unregister_analysis("faulty")
        _FAULT["step"] = ""


def _run_faulty(out):
    import crosspatch
    from crosspatch.testing.tiny import make_pair

    prompts = [{"id": f"p{k}", "prompt": text} for k, text in enumerate(["Rain in Boston", "Wind", "Sky", "Snow"])]
    return crosspatch.run(make_pair("llama"), prompts, out=out, boundary=2, max_new_tokens=6, controls="none",
                          analyses=["faulty"], bootstrap=0, progress=False)


def test_a_plug_ins_numpy_and_torch_values_are_stored_as_numbers(faulty, tmp_path):
    """numpy and torch scalars in an analysis' records and block were written as their text
    ("0.5", "tensor(2.)"): read back, a resumed or merged run's summarize got strings, and
    summary.json held "4" for a count. They are numbers (arrays and tensors: lists)."""
    import json

    _run_faulty(tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "faulty.jsonl").read_text().splitlines()]
    assert rows and all(r["score"] == 0.5 and r["count"] == 3 and r["flag"] is True and r["tensor"] == 2.0
                        and r["vector"] == [0, 1] for r in rows)
    block = json.loads((tmp_path / "run" / "summary.json").read_text())["faulty"]
    assert block == {"n_rows": len(rows), "mean_score": 0.5, "scores": [0.5] * len(rows)}


def test_a_plug_ins_nan_and_infinity_are_stored_as_null(faulty, tmp_path):
    """A plug-in block's NaN or infinity was written as ``NaN``/``Infinity`` (Python's extension of
    JSON): summary.json was then unreadable by jq, JavaScript and most languages' JSON parsers.
    Every JSON document crosspatch writes is strict JSON: such a number is null."""
    import json

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in a JSON document"))

    faulty["step"] = "summarize_nan"
    _run_faulty(tmp_path / "run")
    block = strict((tmp_path / "run" / "summary.json").read_text())["faulty"]
    assert block["mean"] is None and block["ratio"] is None and block["low"] is None
    assert block["per_row"][0] is None and block["per_row"][1:] == [1.0] * (block["n_rows"] - 1)
    assert block["table"] == [None, 2.0] and block["by_count"] == {"3": 0.25}
    strict((tmp_path / "run" / "config.json").read_text())


@pytest.mark.parametrize("step, message", [
    ("build", r"failed in its build: TypeError: a plan attribute .* at .*test_registry.py:\d+ in _faulty_build"),
    ("program", r"failed in its program: RuntimeError: broken program at .*test_registry.py:\d+ in program"),
    ("returns_text", "failed in its program: it returned str, not a list of records"),
    ("summarize", r"failed in its summarize: KeyError: 'missing' at .*test_registry.py:\d+ in _faulty_summarize"),
    ("summarize_list", "failed in its summarize: it returned list, not a dict"),
    ("render", "failed in its render: it returned str, not a Section"),
])
def test_a_plug_ins_failure_is_named_and_the_run_finishes_once_it_is_fixed(faulty, tmp_path, step, message):
    """A plug-in whose build, program, summarize or render failed stopped the run with its bare
    exception (a command line printed a traceback through crosspatch's code; a render that
    returned text failed inside dataclasses' asdict). It is an AnalysisPluginError naming the
    analysis, the step and the plug-in's line; the records stored are kept, and the same call
    finishes the run once the plug-in is fixed."""
    from crosspatch.errors import AnalysisPluginError

    faulty["step"] = step
    with pytest.raises(AnalysisPluginError, match=f"the analysis 'faulty' \\(tests.test_registry\\) {message}"):
        _run_faulty(tmp_path / "run")
    faulty["step"] = ""
    result = _run_faulty(tmp_path / "run")
    assert result.summary["faulty"]["n_rows"] == len(result.analyses["faulty"]) > 0


def test_a_plug_in_cannot_write_into_crosspatch_s_files_or_another_plug_ins():
    """A plug-in named ``events`` appended its rows to the run's own events.jsonl (the 2x2
    records), one named ``verdict`` or ``counts`` replaced that part of summary.json, and one whose
    records or summary key was another plug-in's mixed their rows or replaced its block; a records
    name with a path in it wrote outside the run directory. Each is refused when it is made or
    registered."""
    from typing import get_type_hints

    from crosspatch.core.registry import RESERVED_SUMMARY_KEYS
    from crosspatch.store.schemas import Summary

    def summarize(rows, ctx, options):
        return None

    for kwargs, message in (({"name": "events"}, "crosspatch's"), ({"name": "x", "records": "no_divergence"}, "crosspatch's"),
                            ({"name": "x", "records": "../outside"}, "letters, digits"),
                            ({"name": "verdict"}, "summary_key 'verdict' is a key crosspatch writes"),
                            ({"name": "x", "summary_key": "counts"}, "summary_key 'counts' is a key crosspatch writes")):
        with pytest.raises(ValueError, match=message):
            AnalysisPlugin(summarize=summarize, **kwargs)
    for kwargs, message in (({"records": "consequence"}, "consequence.jsonl is already the records file of 'consequence'"),
                            ({"summary_key": "routing"}, "summary_key 'routing' is already the block of 'routing'")):
        with pytest.raises(ValueError, match=message):
            register_analysis(AnalysisPlugin("newcomer", summarize, **kwargs))
        assert "newcomer" not in registered()
    # the reserved keys are the summary schema's keys that no plug-in writes
    own = set(get_type_hints(Summary)) - {p.summary_key for p in registered().values()}
    assert own <= RESERVED_SUMMARY_KEYS


@dataclass
class _NoPasses(Analysis):
    """A program that asks for no pass, written as a plain function (no ``yield``)."""

    name: str = "no_passes"

    def program(self, ex, events):
        return [{"key": e.key, "prompt_id": e.prompt_id, "position": e.position} for e in events.events]


def test_a_program_that_asks_for_no_pass_may_be_a_plain_function(tmp_path):
    """A program without ``yield`` (it reads the events alone) failed with a bare "'list' object
    is not an iterator"; its value is its records."""
    import crosspatch
    from crosspatch.testing.tiny import make_pair

    prompts = [{"id": f"p{k}", "prompt": text} for k, text in enumerate(["Rain in Boston", "Wind", "Sky"])]
    result = crosspatch.run(make_pair("llama"), prompts, out=tmp_path / "run", boundary=2, max_new_tokens=6,
                            controls="none", analyses=[_NoPasses()], bootstrap=0, progress=False)
    rows = result.analyses["no_passes"]
    assert rows and {r["key"] for r in rows} == {r.key.split("@")[0] for r in result.records if r.kind == "first_diff"}


@pytest.mark.parametrize("name", ["events", "no_divergence", "../outside"])
def test_an_analysis_object_cannot_write_into_crosspatch_s_records_or_outside_the_run(tmp_path, name):
    """An analysis object given in Python named ``events`` appended its rows to the run's own
    events.jsonl; one named with a path wrote beside the run directory. Refused before anything
    is computed or written."""
    import crosspatch
    from crosspatch.errors import OptionError
    from crosspatch.testing.tiny import make_pair

    with pytest.raises(OptionError, match="crosspatch's own or no file name"):
        crosspatch.run(make_pair("llama"), [{"id": "a", "prompt": "Rain in Boston"}], out=tmp_path / "run", boundary=2,
                       max_new_tokens=6, analyses=[_NoPasses(name=name)], bootstrap=0, progress=False)
    assert not (tmp_path / "outside.jsonl").exists() and not (tmp_path / "run").exists()
