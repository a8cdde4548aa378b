"""Controls on constructed pairs whose answer is known, and the verdict they lead to."""

from __future__ import annotations

import pytest

from crosspatch.analyses.controls import CONTROLS, DEFAULT_CONTROLS, parse_controls
from crosspatch.runner.pipeline import run
from crosspatch.testing import make_pair

from .test_store import many_prompts

OPTIONS = dict(boundary=2, max_new_tokens=10, bootstrap=500, progress=False, plan="exact")


@pytest.fixture(scope="module")
def late_only():
    """A descendant that differs only in layers >= 2: at boundary 2 both upstream states agree."""
    pair = make_pair("llama", perturb=[2, 3], scale=2.0)
    # its events are all early (position < 3): the pre-divergence control uses the 'half' rule here
    return run(pair, many_prompts(16), controls="all", analysis_options={"pre_divergence": {"rule": "half"}},
               **OPTIONS)


def _row(result, name):
    return next(r for r in result.summary["controls"] if r["control"] == name)


@pytest.mark.slow
def test_every_control_fills_one_row(late_only):
    assert [r["control"] for r in late_only.summary["controls"]] == list(CONTROLS)
    for row in late_only.summary["controls"]:
        assert row["status"] in ("pass", "warn", "fail", "info") and row["summary"]


def test_late_only_descendant_is_portable_and_within_the_label_swap_null(late_only):
    assert late_only.summary["counts"]["events"] >= 5
    swap = _row(late_only, "label_swap")
    assert swap["value"] == 0.0 and swap["status"] == "warn" and swap["details"]["p_value"] == 1.0
    # the row says at what level (stricter than the 95% intervals beside it) and with what p
    assert "(p = 1, level 0.01)" in swap["summary"] and "stricter bar than the 95% intervals" in swap["summary"]
    assert late_only.summary["verdict"]["verdict"] == "portable"
    reason = late_only.summary["verdict"]["reason"]
    assert "The interaction is 0% [0%, 0%] of E_IT" in reason and "self-contained" in reason
    # the label-swap test failed, but a verdict that claims no interaction is not weakened by it
    assert late_only.summary["verdict"]["grade"] == "portable" and "weakened_by" not in late_only.summary["verdict"]


def test_late_only_controls_score_exact_zero_interactions(late_only):
    # same upstream state under both models: E_PT == E_IT, exactly where the cells' own passes
    # give the states; native history reuses its capture passes (batched over more prefixes)
    for name, tol in (("pre_divergence", 0.0), ("random_later", 0.0), ("native_history", 1e-5)):
        rows = late_only.analyses[f"control_{name}"]
        assert rows, name
        for r in rows:
            y = r["cells"]["common_it"]
            assert abs((y["uit_lit"] - y["uit_lpt"]) - (y["upt_lit"] - y["upt_lpt"])) <= tol
    assert _row(late_only, "pre_divergence")["status"] == "pass"
    assert {r["kind"] for r in late_only.analyses["control_random_later"]} <= {"later_it", "later_pt"}
    assert all(r["kind"].startswith("native_") for r in late_only.analyses["control_native_history"])


def test_hybrid_state_reconstruction_and_interpolation_endpoints_are_exact(late_only):
    row = _row(late_only, "hybrid_state")
    assert row["status"] == "pass" and row["value"] == 0.0  # plan exact: bit-for-bit reconstruction
    cells = {r.key: r.cells["common_it"] for r in late_only.records if r.kind == "first_diff"}
    for rec in late_only.analyses["control_hybrid_state"]:
        curve = rec["y_interpolation"]
        assert curve[0] == cells[rec["key"]]["upt_lit"]  # a = 0: L_IT on U_PT, the cross cell
        assert curve[-1] == cells[rec["key"]]["uit_lit"]  # a = 1: L_IT on U_IT, the natural IT
    assert row["details"]["monotone"] is True


@pytest.mark.slow
def test_interpolation_endpoints_equal_the_cells_on_a_fully_perturbed_pair():
    pair = make_pair("llama", scale=0.5)
    result = run(pair, many_prompts(8), controls="hybrid_state", event_kinds="first_diff", **OPTIONS)
    cells = {r.key: r.cells["common_it"] for r in result.records}
    assert result.analyses["control_hybrid_state"]
    for rec in result.analyses["control_hybrid_state"]:
        assert rec["y_interpolation"][0] == cells[rec["key"]]["upt_lit"]
        assert rec["y_interpolation"][-1] == cells[rec["key"]]["uit_lit"]
        assert rec["reconstruction_error"] == 0.0


@pytest.mark.slow
def test_early_only_descendant_has_no_late_effect():
    pair = make_pair("llama", perturb=[0, 1], scale=0.4)
    result = run(pair, many_prompts(16), **OPTIONS)
    head = result.summary["results"]["2"]["common_it"]["all"]["effects"]
    assert head["E_PT"]["mean"] == 0.0 and head["E_IT"]["mean"] == 0.0
    assert result.summary["verdict"]["verdict"] == "no-late-effect"


def test_pre_late_commitment_reads_the_boundary_state_with_its_head(late_only):
    rows = late_only.analyses["control_pre_late_commitment"]
    assert rows and all(isinstance(r["lens_margin"], float) for r in rows)
    row = _row(late_only, "pre_late_commitment")
    assert row["details"]["n_scored"] == len(rows)


def test_control_selection():
    assert parse_controls(None) == list(DEFAULT_CONTROLS)
    assert parse_controls("all") == list(CONTROLS) and parse_controls("none") == []
    assert parse_controls("near_ties, label_swap") == ["label_swap", "near_ties"]
    with pytest.raises(ValueError, match="unknown control"):
        parse_controls("label_swap,bogus")
    assert parse_controls(("near_ties",)) == ["near_ties"]
    assert parse_controls([]) == [] and parse_controls(()) == []  # controls=[] from Python: none
    with pytest.raises(ValueError, match="name no control"):
        parse_controls(" , ")  # a blank comma list (an unset shell variable) is refused


@pytest.mark.parametrize("option", ["controls", "event_kinds"])
@pytest.mark.parametrize("value", [5, [1], [None], {"label_swap": True}])
def test_a_selection_that_is_no_list_of_names_is_an_option_error(option, value):
    """Given in Python, controls and event kinds are a comma list or a list of names; anything
    else is named (an entry that is no string was an AttributeError from inside the parser)."""
    from crosspatch.errors import OptionError
    from crosspatch.runner.checks import validate_run_options
    from crosspatch.runner.config import RunConfig

    with pytest.raises(OptionError, match="comma list or a list of names"):
        validate_run_options(RunConfig(**{option: value}))


@pytest.mark.slow
def test_event_kinds_are_recorded_and_broken_down():
    pair = make_pair("llama", scale=0.5)
    result = run(pair, many_prompts(12), **{**OPTIONS, "max_new_tokens": 16})
    kinds = {r.kind for r in result.records}
    assert "first_diff" in kinds
    blocks = result.summary["results"]["2"]["common_it"]
    if len(kinds) > 1:
        assert set(blocks["by_event_kind"]) >= kinds and "kinds_averaged" in blocks
        for kind in set(blocks["by_event_kind"]) - kinds:  # requested, no event: shown with n 0
            assert blocks["by_event_kind"][kind]["n_events"] == 0
    assert blocks["by_token_category"]
    for r in result.records:
        assert r.t_pt_category in ("FORMAT", "CONTENT", "FUNCTION_OTHER")
    # the first-divergence headline is unchanged by the other kinds
    alone = run(pair, many_prompts(12), event_kinds="first_diff", **{**OPTIONS, "max_new_tokens": 16})
    assert alone.summary["results"]["2"]["common_it"]["all"] == blocks["all"]


@pytest.mark.slow
def test_users_word_lists_are_recorded_and_markers_are_whole_words(tmp_path):
    import json
    import string

    from crosspatch.core.tokens import starts_a_word
    from crosspatch.errors import RunSettingsMismatchError

    pair = make_pair("llama", scale=0.5)
    letters = list(string.ascii_lowercase)  # with a character tokenizer every letter is a one-token "word"
    options = {**OPTIONS, "max_new_tokens": 16, "event_kinds": "first_diff,first_assistant_marker_diff"}
    result = run(pair, many_prompts(12), out=tmp_path, marker_words=",".join(letters), format_tokens=["e", "T"],
                 **options)
    recorded = json.loads((tmp_path / "config.json").read_text())["options"]
    assert recorded["marker_words"] == letters and recorded["format_tokens"] == ["e", "t"]
    tok = pair.tokenizer
    assert any(r.kind == "first_assistant_marker_diff" for r in result.records)
    for r in result.records:
        for text, category in ((r.t_pt_text, r.t_pt_category), (r.t_it_text, r.t_it_category)):
            if text.strip().lower() in ("e", "t"):
                assert category == "FORMAT"
        if r.kind == "first_assistant_marker_diff":  # the marker side starts a word on the shared history
            previous = tok.decode([r.prefix_ids[-1]])
            assert any(t.strip().lower() in letters and starts_a_word(previous, t) for t in (r.t_pt_text, r.t_it_text))
    with pytest.raises(RunSettingsMismatchError, match="marker_words"):  # other words: another run
        run(pair, many_prompts(12), out=tmp_path, marker_words="a,b", format_tokens=["e", "T"], **options)
    # the same selections spelled otherwise are the same run: it resumes (here: is already finished)
    respelled = {**options, "event_kinds": ["first_assistant_marker_diff", "first_diff"],
                 "controls": list(reversed(DEFAULT_CONTROLS))}
    again = run(pair, many_prompts(12), out=tmp_path, marker_words=",".join(reversed(letters)), format_tokens="t,E",
                **respelled)
    assert [r.key for r in again.records] == [r.key for r in result.records]


def test_a_selection_is_recorded_by_what_it_selects():
    """Controls and event kinds spelled two ways record one way (so a run resumes under either)."""
    from crosspatch.runner.config import RunConfig, normalise_run_config

    def recorded(**options):
        config = normalise_run_config(RunConfig(**options))
        return config.controls, config.event_kinds

    default = recorded()
    assert default == ("default", "all")
    assert recorded(controls=None) == recorded(controls=list(DEFAULT_CONTROLS)) == default
    assert recorded(controls="none") == recorded(controls=[]) == ("none", "all")
    assert recorded(controls="near_ties, label_swap")[0] == recorded(controls=("label_swap", "near_ties"))[0] \
        == ["label_swap", "near_ties"]
    assert recorded(controls="all")[0] == list(CONTROLS)
    every_kind = "first_assistant_marker_diff,first_nonformat_diff,first_diff"
    assert recorded(event_kinds=every_kind)[1] == recorded(event_kinds=["all"])[1] == "all"
    assert recorded(event_kinds="first_nonformat_diff")[1] == recorded(event_kinds=["first_nonformat_diff",
                                                                                    "first_diff"])[1] \
        == ["first_diff", "first_nonformat_diff"]
    assert recorded(event_kinds="first_diff")[1] == ["first_diff"]
    config = normalise_run_config(RunConfig(analyses=["x", "consequence", "x"], group_by=["city", "era", "city"]))
    assert config.analyses == ["consequence", "x"] and config.group_by == ["city", "era"]


def test_verify_fp32_reruns_near_tie_events_in_float32():
    import torch

    from crosspatch.execution import pair_from_models
    from crosspatch.testing import tiny_pair

    base, child, tok = tiny_pair("llama", scale=0.5)
    pair = pair_from_models(base.to(torch.bfloat16), child.to(torch.bfloat16), tok)
    result = run(pair, many_prompts(10), boundary=2, max_new_tokens=8, bootstrap=0, progress=False,
                 near_tie_threshold=100.0, verify_fp32=True, event_kinds="first_diff")  # every event a near-tie
    check = result.summary["fp32_verification"]
    events = result.summary["counts"]["events"]
    assert events and check["checked"] == events and 0 <= check["moved"] <= events
    row = _row(result, "near_ties")
    assert row["details"]["fp32_verification"] == check and "re-run in float32" in row["summary"]
    assert next(p.dtype for p in pair.pt.module.parameters()) == torch.bfloat16  # the run's models untouched


def test_the_pre_divergence_rule_of_the_method_s_authors_cuts_late_events_at_a_random_earlier_position():
    from crosspatch.analyses.pre_divergence import PreDivergence
    from crosspatch.core.divergence import DivergenceEvent

    rule = PreDivergence(2, rule="random_cut", seed=0)
    early = DivergenceEvent("a", None, 3, 2, [1, 2, 3, 9, 9], 5, 6)
    late = DivergenceEvent("b", None, 3, 7, [1, 2, 3] + [9] * 7, 5, 6)
    assert rule._cut(early) is None  # position < 3: not used
    cuts = {PreDivergence(2, rule="random_cut", seed=s)._cut(late) for s in range(40)}
    assert cuts <= set(range(1, 8)) and len(cuts) > 3  # 1..position generated tokens removed, seeded
    assert rule._cut(late) == PreDivergence(2, rule="random_cut", seed=0)._cut(late)
    assert PreDivergence(2, rule="half")._cut(early) == 1 and PreDivergence(2, rule="half")._cut(late) == 4


def _event(pid, position, t_pt, t_it, categories):
    from dataclasses import replace

    from .test_stats import rec

    return replace(rec(pid, [0.0, 0.5, 0.2, 1.0], position=position), t_pt_text=t_pt, t_it_text=t_it,
                   t_pt_category=categories[0], t_it_category=categories[1])


@pytest.mark.parametrize("event_kinds, pointer", [("all", "event kind's block skips them"),
                                                  ("first_diff", "--event-kinds first_nonformat_diff")])
def test_events_that_are_mostly_formatting_decisions_are_a_caveat_naming_the_pair(event_kinds, pointer):
    # DESIGN 4: an instruction-formatted prompt makes a base end the document at once; the
    # events then measure the prompts' format
    from crosspatch.analyses.prompt_format import summarize
    from crosspatch.core.registry import SummaryContext
    from crosspatch.core.stats import BootstrapConfig

    records = ([_event(f"f{i}", 0, "</s>", "###", ("FORMAT", "FORMAT")) for i in range(5)]
               + [_event("h", 0, "\n", " Sun", ("FORMAT", "CONTENT"))]
               + [_event("g", 4, " warm", ",", ("CONTENT", "FORMAT"))]
               + [_event(f"c{i}", 2, " warm", " mild", ("CONTENT", "CONTENT")) for i in range(3)])
    ctx = SummaryContext({"options": {"event_kinds": event_kinds}}, records, 2, BootstrapConfig())
    row = summarize([], ctx, None)
    assert row["status"] == "warn" and row["value"] == pytest.approx(0.6)
    assert row["details"] == {"formatting": 7, "at_first_token": 6,
                              "most_common_pair": {"t_pt": "</s>", "t_it": "###", "count": 5}}
    assert "6 of 10 event(s) are formatting decisions at the first generated token (7 have" in row["summary"]
    assert "'</s>' vs '###'" in row["summary"] and pointer in row["summary"]
    # formatting disagreements later in the continuation are no sign of the trap
    later = [_event(f"l{i}", 3, "\n", " The", ("FORMAT", "CONTENT")) for i in range(8)] + records[7:]
    assert summarize([], SummaryContext({"options": {}}, later, 2, BootstrapConfig()), None)["status"] == "pass"
    assert summarize([], SummaryContext({"options": {}}, records[:4], 2, BootstrapConfig()), None)["status"] == "info"


def test_prompts_that_repeat_another_are_a_caveat_naming_them():
    """Events of prompts whose tokens repeat another prompt's: counted and named, a caveat of the
    verdict's sentence (the grade kept); none: pass; a run that stored no prompt tokens: info."""
    from dataclasses import replace

    from crosspatch.analyses.repeated_prompts import summarize
    from crosspatch.core.registry import SummaryContext
    from crosspatch.core.stats import BootstrapConfig
    from crosspatch.core.verdict import apply_controls

    def event(pid, tokens):
        return replace(_event(pid, 1, " warm", " mild", ("CONTENT", "CONTENT")), prompt_len=len(tokens),
                       prefix_ids=[*tokens, 9])  # the prompt, then one shared generated token

    records = [event("a", [1, 2, 3]), event("b", [1, 2, 3]), event("c", [1, 2]), event("d", [1, 2, 3]),
               event("e", [4])]
    row = summarize([], SummaryContext({"options": {}}, records, 2, BootstrapConfig()), None)
    assert row["status"] == "warn" and row["value"] == pytest.approx(2 / 5) and row["details"]["repeats"] == 2
    assert "2 of 5 event(s)" in row["summary"] and "(b = a, d = a)" in row["summary"]
    verdict, reason, weakened = apply_controls("portable", "The late gain carries over.", [row])
    assert verdict == "portable" and not weakened and "Caveats: repeated-prompts: 2 of 5 event(s)" in reason
    distinct = summarize([], SummaryContext({"options": {}}, [records[0], records[2], records[4]], 2,
                                            BootstrapConfig()), None)
    assert distinct["status"] == "pass" and distinct["details"]["repeats"] == 0
    unrecorded = [replace(r, prefix_ids=None) for r in records]
    assert summarize([], SummaryContext({"options": {}}, unrecorded, 2, BootstrapConfig()), None)["status"] == "info"


def test_the_controls_frame_has_its_columns_with_or_without_controls():
    """``result.controls()``: one row per control, less its details; a run without controls gives
    an empty frame with the same columns, so filters such as ``frame[frame.status == "fail"]`` work."""
    from crosspatch.core.registry import control_row
    from crosspatch.runner.result import CONTROL_COLUMNS, RunResult

    row = control_row("near_ties", "warn", 0.2, "2 of 10 near-ties", threshold="<= 0.5", n=10, margin=0.05)
    with_one = RunResult(summary={"controls": [row]}, records=[], no_divergence=[], config={}).controls()
    assert list(with_one.columns) == list(CONTROL_COLUMNS) and with_one.iloc[0]["status"] == "warn"
    none = RunResult(summary={"controls": []}, records=[], no_divergence=[], config={}).controls()
    assert list(none.columns) == list(CONTROL_COLUMNS) and none[none.status == "fail"].empty


def test_the_pre_divergence_control_shares_the_searchs_states_and_scores_as_full_passes_would(monkeypatch):
    """Under the minimal plan the earlier prefix's states are the first positions of the event's,
    which the search recorded: no full pass runs for them (its diagonal cells are each model's own
    late stack on them), and its cells are those of full passes over the earlier prefixes."""
    from crosspatch.core.cells import score_events
    from crosspatch.core.divergence import DivergenceEvent
    from crosspatch.execution import executor as executor_module

    pair = make_pair("llama", scale=0.3)
    captured: list[int] = []
    real_capture = executor_module.Executor._capture

    def counting(self, p):
        captured.append(len(p.sequences))
        return real_capture(self, p)

    monkeypatch.setattr(executor_module.Executor, "_capture", counting)
    result = run(pair, many_prompts(10), boundary=2, max_new_tokens=10, bootstrap=0, progress=False,
                 controls="pre_divergence", event_kinds="first_diff", analysis_options={"pre_divergence": {"rule": "half"}})
    rows = result.analyses["control_pre_divergence"]
    assert len(rows) == len(result.records) >= 5 and not captured, "no full pass: the search's states serve"
    monkeypatch.undo()
    early = [DivergenceEvent(r["prompt_id"], r["category"], r["prompt_len"], r["position"], r["prefix_ids"],
                             r["t_pt"], r["t_it"], "pre_divergence") for r in rows]
    full = score_events(pair, early, [2])  # both models' full passes over the earlier prefixes
    for row, want in zip(rows, full):
        assert (row["t_pt"], row["t_it"], row["position"]) == (want.t_pt, want.t_it, want.position)
        for readout, cells in want.cells.items():
            for cell, value in cells.items():
                assert abs(row["cells"][readout][cell] - value) <= 1e-4, (row["key"], readout, cell)


def test_the_pre_divergence_control_of_identical_late_stacks_scores_exact_zero_late_effects():
    """A descendant that differs only below the boundary: under the minimal plan too, the control's
    late effects are exactly zero (its four cells: identical stacks on the same states)."""
    pair = make_pair("llama", perturb=[0, 1], scale=0.4)
    result = run(pair, many_prompts(12), boundary=2, max_new_tokens=10, bootstrap=0, progress=False,
                 controls="pre_divergence", event_kinds="first_diff", analysis_options={"pre_divergence": {"rule": "half"}})
    rows = result.analyses["control_pre_divergence"]
    assert len(rows) >= 5
    for row in rows:
        for cells in row["cells"].values():
            assert cells["uit_lit"] == cells["uit_lpt"] and cells["upt_lit"] == cells["upt_lpt"], row["key"]
