"""The verdict's rule on synthetic effect blocks, and `crosspatch gate` exit codes on prepared
run directories."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from crosspatch.cli import app
from crosspatch.core.verdict import VerdictPolicy, decide
from crosspatch.runner.pipeline import run
from crosspatch.testing import make_pair

from .test_store import many_prompts


def _block(e_pt, e_it, inter, share=None, n_prompts=20):
    def stat(m, ci):
        return {"mean": m, "ci": list(ci)}
    share = share or (inter[0] / e_it[0], (inter[1][0] / e_it[0], inter[1][1] / e_it[0]))
    return {"n_events": n_prompts, "n_prompts": n_prompts,
            "effects": {"E_PT": stat(*e_pt), "E_IT": stat(*e_it), "interaction": stat(*inter),
                        "late_interaction_share": stat(*share)}}


PAPER_IT = _block((0.76, (0.4, 1.1)), (2.44, (2.0, 2.9)), (1.68, (1.2, 2.1)), (0.69, (0.56, 0.80)))
DEMO_IT_FULL = _block((1.10, (0.7, 1.5)), (2.12, (1.7, 2.5)), (1.02, (0.67, 1.37)), (0.48, (0.33, 0.62)))


@pytest.mark.parametrize("block, verdict", [
    # the paper's instruction tuning: E_PT +0.76, E_IT +2.44, I +1.68 (69% [56%, 80%] of E_IT) -> upstream-dependent
    (PAPER_IT, "upstream-dependent"),
    # the paper's math fine-tune: large portable E_PT, I slightly negative -> portable
    (_block((3.43, (3.0, 3.9)), (3.28, (2.9, 3.7)), (-0.15, (-0.5, 0.2)), (-0.05, (-0.15, 0.06))), "portable"),
    # the demo's it-full: 48% [33%, 62%] straddles the upper bound -> the middle grade
    (DEMO_IT_FULL, "partly-upstream-dependent"),
    # a share interval between the bounds
    (_block((1.0, (0.7, 1.3)), (1.6, (1.3, 1.9)), (0.6, (0.4, 0.8)), (0.37, (0.3, 0.45))), "partly-upstream-dependent"),
    # a share interval across both bounds: too wide to grade
    (_block((1.0, (0.2, 1.8)), (1.6, (1.0, 2.2)), (0.6, (-0.2, 1.4)), (0.37, (-0.1, 0.8))), "inconclusive"),
    # a share below the portable bound, but E_PT's interval contains zero: the portable part is not established
    (_block((0.6, (-0.1, 1.3)), (0.8, (0.3, 1.3)), (0.2, (0.0, 0.3)), (0.1, (0.0, 0.2))), "inconclusive"),
    # nothing moves
    (_block((0.01, (-0.1, 0.1)), (0.02, (-0.1, 0.15)), (0.01, (-0.1, 0.1)), (0.0, (0.0, 0.0))), "no-late-effect"),
    # significant but negligible: both whole intervals within +-0.5 logits
    (_block((-0.23, (-0.41, -0.04)), (-0.21, (-0.31, -0.09)), (0.02, (-0.06, 0.09))), "no-late-effect"),
    # nothing significant but too wide to tell
    (_block((0.5, (-2.0, 3.0)), (0.4, (-2.5, 3.1)), (-0.1, (-1, 1))), "inconclusive"),
    # too few prompts
    (_block((0.76, (0.4, 1.1)), (2.44, (2.0, 2.9)), (1.68, (1.2, 2.1)), n_prompts=3), "inconclusive"),
    # opposite signs on the two upstream states
    (_block((1.67, (1.2, 2.1)), (-0.71, (-0.95, -0.48)), (-2.38, (-3.0, -1.8))), "inconclusive"),
])
def test_verdict_rule(block, verdict):
    assert decide(block)["verdict"] == verdict


@pytest.mark.parametrize("shift, where", [
    ((2.3, (1.9, 2.7)), "lives upstream of the boundary"),  # the upstream state moves Y, the late layers do not
    ((0.02, (-0.05, 0.08)), "lies in their readouts"),  # one head: the stacks agree; the heads decide apart
    ((0.55, (0.39, 0.73)), "upstream of the boundary or in the readout"),  # across the bound: both said
])
def test_no_late_effect_says_where_the_change_lies_from_the_native_shift(shift, where):
    """With no late effect the sentence said the change "lives upstream of the boundary" whatever
    the numbers; for a fine-tune of the head alone (all four cells read with one head: D = 0) that
    was false. The native shift D under the one readout decides what it says."""
    block = _block((0.01, (-0.1, 0.1)), (0.02, (-0.1, 0.15)), (0.01, (-0.1, 0.1)), (0.0, (0.0, 0.0)))
    block["effects"]["native_shift"] = {"mean": shift[0], "ci": list(shift[1])}
    decision = decide(block)
    phrases = ("lives upstream of the boundary", "lies in their readouts", "upstream of the boundary or in the readout")
    assert decision["verdict"] == "no-late-effect", decision
    assert [p for p in phrases if p in decision["reason"]] == [where], decision["reason"]


def test_a_verdict_on_the_common_pt_readout_points_to_the_other_readout_and_the_console_shows_its_numbers(capsys):
    """A policy's ``readout: common_pt`` grades the common-PT block, yet the sentence said "compare
    the common-PT readout" (the one it read) and the console's table beside it showed the common-IT
    numbers, not those the sentence quotes."""
    from crosspatch.cli.app import print_summary_table

    quiet = _block((0.01, (-0.1, 0.1)), (0.02, (-0.1, 0.15)), (0.01, (-0.1, 0.1)), (0.0, (0.0, 0.0)))
    quiet["effects"]["native_shift"] = {"mean": 0.02, "ci": [-0.05, 0.08]}
    assert "(compare the common-PT readout)" in decide(quiet)["reason"]
    decision = decide(quiet, policy=VerdictPolicy(readout="common_pt"))
    assert "(compare the common-IT readout)" in decision["reason"], decision["reason"]

    moved = _block((1.5, (1.2, 1.8)), (1.6, (1.3, 1.9)), (0.1, (-0.1, 0.3)))
    for block in (quiet, moved):
        block["effects"] |= {"direct_share": {"mean": 0.9, "ci": [0.8, 1.0]}, "native_shift": {"mean": 0.0, "ci": None}}
    summary = {"boundaries": ["2"], "verdict": {"boundary": 2, "readout": "common_pt"},
               "counts": {"prompts": 20, "events": 20, "no_divergence": {}, "invalid": 0},
               "results": {"2": {"common_it": {"all": quiet}, "common_pt": {"all": moved}}}}
    print_summary_table(summary)
    shown = capsys.readouterr().out
    assert "common-PT" in shown and "+1.50 [+1.20, +1.80]" in shown and "+0.01 [-0.10, +0.10]" not in shown, shown


def test_the_middle_grade_never_claims_a_dependent_part_its_interval_does_not_show():
    """A share interval from below zero across the portable bound is the middle grade (it straddles
    a bound), but its sentence said "part needs the descendant's own upstream state" beside an
    interaction whose interval contains zero: it now says that part is possible, not shown."""
    reaching_zero = decide(_block((3.67, (2.8, 4.45)), (4.46, (3.42, 5.42)), (0.79, (-0.15, 1.77)),
                                  (0.18, (-0.04, 0.34))))
    assert reaching_zero["verdict"] == "partly-upstream-dependent"
    assert "not established" in reaching_zero["reason"] and "as large as 34%" in reaching_zero["reason"]
    assert "and part needs" not in reaching_zero["reason"]
    shown = decide(_block((1.0, (0.7, 1.3)), (1.6, (1.3, 1.9)), (0.6, (0.4, 0.8)), (0.37, (0.3, 0.45))))
    assert "and part needs the descendant's own upstream state" in shown["reason"]


def test_every_verdict_sentence_quotes_the_share_that_decided_it():
    for block in (PAPER_IT, DEMO_IT_FULL):
        out = decide(block)
        share = block["effects"]["late_interaction_share"]
        quoted = f"{100 * share['mean']:.0f}% [{100 * share['ci'][0]:.0f}%, {100 * share['ci'][1]:.0f}%]"
        assert quoted in out["reason"] and "+1.02 [+0.67, +1.37]" in decide(DEMO_IT_FULL)["reason"]
    assert "self-contained" not in decide(DEMO_IT_FULL)["reason"]  # never the opposite of the middle grade


LABEL_SWAP_FAILS = {"control": "label_swap", "status": "warn", "summary": "within the null",
                    "details": {"on_failure": "inconclusive", "weakens": ["partly-upstream-dependent", "upstream-dependent"]}}
READOUTS_DISAGREE = {"control": "readout_agreement", "status": "warn", "summary": "the grade depends on the head",
                     "details": {"on_failure": "inconclusive",
                                 "weakens": ["portable", "partly-upstream-dependent", "upstream-dependent"]}}
SANITY_FAILS = {"control": "hybrid_state", "status": "fail", "summary": "reconstruction failed",
                "details": {"on_failure": "unusable"}}
CAVEAT = {"control": "near_ties", "status": "warn", "summary": "many near-ties", "details": {}}
PASSES = {"control": "pre_divergence", "status": "pass", "summary": "near zero", "details": {}}


def test_a_failing_control_never_inverts_the_verdict():
    """The regression of the inversion: +2.19 [+0.82, +3.58] with the label-swap control failing
    used to come out 'portable' ("not reliably of the late effect's sign"); a failing control
    may only make a verdict inconclusive."""
    block = _block((1.28, (0.4, 2.1)), (3.47, (2.6, 4.3)), (2.19, (0.82, 3.58)), (0.63, (0.52, 0.78)))
    assert decide(block)["verdict"] == "upstream-dependent"
    out = decide(block, [LABEL_SWAP_FAILS])
    assert out["verdict"] == "inconclusive" and out["grade"] == "upstream-dependent"
    assert "would say upstream-dependent" in out["reason"] and out["weakened_by"] == ["label_swap"]


def test_adding_controls_only_keeps_a_verdict_or_makes_it_inconclusive():
    import itertools

    blocks = [PAPER_IT, DEMO_IT_FULL,
              _block((3.43, (3.0, 3.9)), (3.28, (2.9, 3.7)), (-0.15, (-0.5, 0.2)), (-0.05, (-0.15, 0.06))),
              _block((0.01, (-0.1, 0.1)), (0.02, (-0.1, 0.15)), (0.01, (-0.1, 0.1)), (0.0, (0.0, 0.0)))]
    rows = [LABEL_SWAP_FAILS, READOUTS_DISAGREE, SANITY_FAILS, CAVEAT, PASSES]
    for block in blocks:
        for k in range(len(rows) + 1):
            for subset in itertools.combinations(rows, k):
                before = decide(block, list(subset))["verdict"]
                for extra in rows:
                    if extra not in subset:
                        after = decide(block, list(subset) + [extra])["verdict"]
                        assert after in (before, "inconclusive"), (subset, extra, before, after)


def test_models_that_agree_everywhere_give_no_events_and_pass_the_gate_unless_they_are_one(tmp_path):
    """A descendant that decodes as the base on every prompt is 'no-late-effect' and passes; one
    that is the base itself (the same module, as a copy of its weights from disk is) measured no
    fine-tune: the gate calls the run unusable."""
    from crosspatch.execution import pair_from_models
    from crosspatch.testing import char_tokenizer, perturb_layers, tiny_model

    model = tiny_model("llama")
    itself = run(pair_from_models(model, model, char_tokenizer()), many_prompts(6), boundary=2, max_new_tokens=6,
                 bootstrap=200, progress=False, out=tmp_path / "itself")
    assert itself.verdict["verdict"] == "no-late-effect" and _gate(tmp_path / "itself")[0] == 2
    pair = pair_from_models(model, perturb_layers(model, [3], scale=1e-6), char_tokenizer())  # agrees everywhere
    result = run(pair, many_prompts(6), boundary=2, max_new_tokens=6, bootstrap=200, progress=False,
                 out=tmp_path / "same")
    assert result.summary["counts"]["events"] == 0 and result.verdict["verdict"] == "no-late-effect"
    import pandas as pd

    # no event, yet every table keeps its columns: result.events[result.events.valid] works on any run
    assert result.events.empty and result.events[result.events.valid].empty
    assert list(result.events.columns[:6]) == ["prompt_id", "position", "t_pt", "t_it", "boundary", "kinds"]
    stored = pd.read_parquet(tmp_path / "same" / "events.parquet")
    assert stored.empty and list(stored.columns) == list(result.events_long.columns)
    assert {"key", "kind", "valid", "common_it.interaction", "common_pt.uit_lit"} <= set(stored.columns)
    code, out = _gate(tmp_path / "same")
    assert (code, out["status"]) == (0, "pass")


def test_models_that_agree_on_too_few_prompts_are_not_called_the_same():
    """Agreement on every prompt is a verdict only on at least ``min_prompts`` prompts (the
    evidence any other verdict needs): on fewer, the gate must not pass identical-looking models."""
    from crosspatch.core.verdict import VerdictPolicy, grade

    none = {"mean": None, "ci": None}
    empty = {"n_prompts": 0, "n_events": 0, "effects": {"E_PT": none, "E_IT": none, "interaction": none}}
    agreed = {"prompts": 3, "invalid": 0, "no_divergence": {"agreed_eos": 1, "budget_exhausted": 2}}
    verdict, reason, _ = grade(empty, VerdictPolicy(), agreed)
    assert verdict == "inconclusive" and "at least 5 prompts" in reason
    assert grade(empty, VerdictPolicy(min_prompts=3), agreed)[0] == "no-late-effect"
    many = {**agreed, "prompts": 5, "no_divergence": {"agreed_eos": 2, "budget_exhausted": 3}}
    assert grade(empty, VerdictPolicy(), many)[0] == "no-late-effect"


def test_policy_checks_its_bounds():
    with pytest.raises(ValueError, match="must not exceed"):
        VerdictPolicy.from_dict({"portable_interaction_share": 0.6, "max_interaction_share": 0.5})
    with pytest.raises(ValueError, match="replaced by portable_interaction_share"):
        VerdictPolicy.from_dict({"min_portable_share": 0.3})
    strict = VerdictPolicy(max_interaction_share=0.8)
    assert decide(PAPER_IT, None, strict)["verdict"] == "partly-upstream-dependent"


def test_policy_from_dict_refuses_unknown_keys():
    with pytest.raises(ValueError, match="unknown policy key"):
        VerdictPolicy.from_dict({"max_share": 0.5})
    with pytest.raises(ValueError, match="unknown verdict"):
        VerdictPolicy.from_dict({"pass_verdicts": ["fine"]})


@pytest.fixture(scope="module")
def portable_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate") / "run"
    run(make_pair("llama", perturb=[2, 3], scale=2.0), many_prompts(16), boundary=2, max_new_tokens=8,
        bootstrap=300, progress=False, plan="exact", out=out, event_kinds="first_diff")
    return out


def _gate(*args):
    res = CliRunner().invoke(app, ["gate", *map(str, args), "--json"])
    return res.exit_code, json.loads(res.output)


def test_a_gate_that_crashes_exits_unusable_not_failed(monkeypatch, tmp_path):
    """Python exits 1 on an uncaught exception, and 1 is the gate's "fail": CI would read a crash
    of crosspatch as a verdict on the model. A crash is exit 2, with its traceback to report."""
    import crosspatch.workflows.gate as gating

    def crash(*_args, **_kwargs):
        raise AttributeError("'str' object has no attribute 'get'")

    monkeypatch.setattr(gating, "gate", crash)
    result = CliRunner().invoke(app, ["gate", str(tmp_path), "--json"])
    out = json.loads(result.stdout)  # (the traceback goes to standard error)
    assert (result.exit_code, out["status"], out["verdict"]) == (2, "unusable", None)
    assert "AttributeError" in out["reason"] and "crosspatch bug" in out["reason"]
    assert "Traceback" in result.stderr
    result = CliRunner().invoke(app, ["gate", str(tmp_path)])
    assert result.exit_code == 2 and "unusable" in result.stdout


@pytest.mark.slow
def test_gate_exit_codes(portable_run, tmp_path):
    code, out = _gate(portable_run)
    assert (code, out["status"], out["verdict"]) == (0, "pass", "portable")
    code, out = _gate(portable_run, "--allow", "upstream-dependent")
    assert (code, out["status"]) == (1, "fail")
    # an interaction share must lie below -0.5 to be portable: the same run is now not portable
    code, out = _gate(portable_run, "--portable-interaction-share", "0", "--max-interaction-share", "0")
    assert code == 1 and out["verdict"] != "portable"
    policy = tmp_path / "policy.yaml"
    policy.write_text("pass_verdicts: [upstream-dependent]\n")
    assert _gate(portable_run, "--policy", policy)[0] == 1
    assert _gate(tmp_path / "missing")[0] == 2
    from crosspatch.workflows.gate import gate

    for no_path in (None, 5, ""):  # in Python: unusable, not a TypeError
        assert gate(no_path)["exit_code"] == 2  # type: ignore[arg-type]
    for no_policy in ([], "", {"pass_verdicts": []}):  # were read as no policy (pass), or as failing every run
        assert gate(portable_run, no_policy)["exit_code"] == 2  # type: ignore[arg-type]
    assert gate(portable_run, policy)["exit_code"] == gate(portable_run, str(policy))["exit_code"] == 1  # a file
    assert "bad policy: cannot read policy file" in gate(portable_run, tmp_path / "absent.yaml")["reason"]
    assert _gate(portable_run, "--allow", "")[0] == 2
    unfinished = tmp_path / "unfinished"
    shutil.copytree(portable_run, unfinished)
    (unfinished / "summary.json").unlink()
    code, out = _gate(unfinished)
    assert code == 2 and "did not finish" in out["reason"]
    broken = tmp_path / "broken"
    shutil.copytree(portable_run, broken)
    summary = json.loads((broken / "summary.json").read_text())
    summary["counts"]["prompts"] += 3
    (broken / "summary.json").write_text(json.dumps(summary))
    code, out = _gate(broken)
    assert code == 2 and "do not add up" in out["reason"]
    failed = tmp_path / "failed"
    shutil.copytree(portable_run, failed)
    summary = json.loads((failed / "summary.json").read_text())
    next(c for c in summary["controls"] if c["control"] == "hybrid_state")["status"] = "fail"
    (failed / "summary.json").write_text(json.dumps(summary))
    code, out = _gate(failed)
    assert code == 2 and "hybrid_state" in out["reason"]
    for name, damage in (("counts_text", {"counts": "many"}), ("results_list", {"results": []}),
                         ("newer_format", {"schema_version": "crosspatch.summary/9"})):
        damaged = tmp_path / name
        shutil.copytree(portable_run, damaged)
        summary = json.loads((damaged / "summary.json").read_text())
        summary.update(damage)
        (damaged / "summary.json").write_text(json.dumps(summary))
        code, out = _gate(damaged)
        assert code == 2 and out["status"] == "unusable" and "summary.json" in out["reason"], name
    # a damaged config.json (what the run was asked, a shard's part included) is no run to gate either,
    # as a missing one is not: it was gated on its summary alone
    nested = "[" * 100_000 + "]" * 100_000  # (valid JSON nested deeper than Python's parser recurses)
    options_text = json.dumps({**json.loads((portable_run / "config.json").read_text()), "options": "x"})
    for name, text in (("config_cut", '{"options": {"shard": "0/'), ("config_list", "[1]"), ("config_deep", nested),
                       ("config_options_text", options_text)):  # (not its schema's: named, not an AttributeError)
        damaged = tmp_path / name
        shutil.copytree(portable_run, damaged)
        (damaged / "config.json").write_text(text)
        code, out = _gate(damaged)
        assert code == 2 and out["status"] == "unusable" and "config.json" in out["reason"], name
    deep = tmp_path / "summary_deep"  # (not a RecursionError's traceback, whose exit code 1 reads as a failed gate)
    shutil.copytree(portable_run, deep)
    (deep / "summary.json").write_text(nested)
    code, out = _gate(deep)
    assert code == 2 and out["status"] == "unusable" and "summary.json" in out["reason"]


def test_gate_prints_the_verdict_for_people(portable_run):
    res = CliRunner().invoke(app, ["gate", str(portable_run)])
    assert res.exit_code == 0 and "pass" in res.output and "portable" in res.output


@pytest.fixture(scope="module")
def two_headed_pair():
    """Late layers changed and a head of its own: the two readouts grade the late effect apart
    once ``min_late_effect`` is set high (common-IT portable, common-PT no-late-effect)."""
    import torch

    from crosspatch.execution import pair_from_models
    from crosspatch.testing import tiny_pair

    base, tuned, tokenizer = tiny_pair("llama", layers=4, perturb=[2, 3], scale=1.0)
    with torch.no_grad():
        head = tuned.lm_head.weight
        head.add_(torch.randn(head.shape, generator=torch.Generator().manual_seed(3)) * head.std())
    return pair_from_models(base, tuned, tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("policy", [{"min_late_effect": 0.9}, {"readout": "common_pt"},
                                    {"readout": "common_pt", "min_late_effect": 0.9}])
def test_a_gate_under_another_policy_decides_as_a_run_under_that_policy(two_headed_pair, policy, tmp_path):
    """The controls whose summary reads the policy were taken from the run as stored: readout
    agreement graded under the run's bounds (so a stricter ``min_late_effect`` that makes the two
    readouts disagree passed as ``portable``), the label-swap test on the run's readout. The gate
    summarises them again under its policy: its verdict and reason are a run's under that policy."""
    from crosspatch.workflows.gate import gate

    options = dict(boundary=2, max_new_tokens=8, bootstrap=300, progress=False, event_kinds="first_diff")
    run(two_headed_pair, many_prompts(16), out=tmp_path / "default", **options)
    under = run(two_headed_pair, many_prompts(16), out=tmp_path / "under", policy=policy, **options).summary["verdict"]
    decided = gate(tmp_path / "default", policy)
    assert (decided["verdict"], decided["reason"]) == (under["verdict"], under["reason"])
    if policy == {"min_late_effect": 0.9}:
        assert decided["verdict"] == "inconclusive" and "the grade depends on the head" in decided["reason"]


@pytest.mark.slow
def test_a_gate_without_a_policy_decides_under_the_runs_own(two_headed_pair, tmp_path):
    """A run made with ``--policy`` (here a stricter ``min_late_effect`` that leaves it
    inconclusive) was gated under the default policy when ``crosspatch gate`` was given none, and
    passed as portable against its own verdict. The gate starts from the run's recorded policy;
    the fields given replace the run's one by one."""
    from crosspatch.workflows.gate import gate

    options = dict(boundary=2, max_new_tokens=8, bootstrap=300, progress=False, event_kinds="first_diff")
    verdict = run(two_headed_pair, many_prompts(16), out=tmp_path / "strict", policy={"min_late_effect": 0.9},
                  **options).summary["verdict"]
    assert verdict["verdict"] == "inconclusive"
    decided = gate(tmp_path / "strict")
    assert (decided["status"], decided["verdict"], decided["reason"]) == ("fail", "inconclusive", verdict["reason"])
    assert decided["policy"]["min_late_effect"] == 0.9
    allowed = gate(tmp_path / "strict", {"pass_verdicts": ["portable", "no-late-effect", "inconclusive"]})
    assert allowed["status"] == "pass" and allowed["policy"]["min_late_effect"] == 0.9  # (the run's bound kept)
    code, out = _gate(tmp_path / "strict", "--min-late-effect", "0.5")
    assert (code, out["verdict"]) == (0, "portable")


def test_a_run_whose_recorded_policy_is_no_longer_valid_is_gated_under_the_policy_given(portable_run, tmp_path):
    """An older run's config.json may record a field since retired (``min_portable_share``): gated
    as it is, it is unusable, saying to give a policy; given one, that policy decides alone."""
    from crosspatch.workflows.gate import gate

    old = tmp_path / "old"
    shutil.copytree(portable_run, old)
    config = json.loads((old / "config.json").read_text())
    config["options"]["policy"] = {"min_portable_share": 0.3}
    (old / "config.json").write_text(json.dumps(config))
    unusable = gate(old)
    assert unusable["status"] == "unusable" and "min_portable_share" in unusable["reason"] and "--policy" in unusable["reason"]
    assert gate(old, {"min_prompts": 5})["verdict"] == gate(portable_run)["verdict"] == "portable"
    # a valid recorded policy is kept: fields given that cross its bounds are named, not read over the defaults alone
    config["options"]["policy"] = {"max_interaction_share": 0.3}
    (old / "config.json").write_text(json.dumps(config))
    crossed = gate(old, {"portable_interaction_share": 0.4})
    assert crossed["status"] == "unusable" and "must not exceed max_interaction_share (0.3)" in crossed["reason"]


def test_a_verdict_policy_object_is_taken_wherever_a_policy_is(portable_run, tmp_path):
    """VerdictPolicy is the policy's dataclass, yet ``run``, a RunConfig, ``gate`` and the training
    callback refused it ("a policy is a mapping of VerdictPolicy fields"). Each takes it as the
    mapping of all its fields; the run records them."""
    from crosspatch.core.verdict import VerdictPolicy
    from crosspatch.runner.config import RunConfig
    from crosspatch.workflows.callback import CrosspatchCallback
    from crosspatch.workflows.gate import gate

    policy = VerdictPolicy(min_late_effect=0.3, readout="common_pt")
    pair = make_pair("llama")
    options = dict(max_new_tokens=4, bootstrap=0, progress=False, controls="none", event_kinds="first_diff")
    given = run(pair, ["The sky is", "Rain will"], out=tmp_path / "kw", policy=policy, **options)
    config = RunConfig(policy=policy)
    through = run(pair, ["The sky is", "Rain will"], config=config, out=tmp_path / "cfg", **options)
    assert isinstance(config.policy, VerdictPolicy)  # (the caller's object is not changed)
    for result, out in ((given, "kw"), (through, "cfg")):
        assert result.summary["verdict"]["policy"] == policy.as_dict()
        assert json.loads((tmp_path / out / "config.json").read_text())["options"]["policy"] == policy.as_dict()
    assert gate(portable_run, policy)["policy"] == policy.as_dict()
    assert CrosspatchCallback(["The sky is"], policy=policy).policy == policy


def test_no_event_at_all_says_so_instead_of_reporting_empty_numbers():
    empty = {"n_events": 0, "n_prompts": 0,
             "effects": {k: {"mean": None, "ci": None} for k in ("E_PT", "E_IT", "interaction")}}
    out = decide(empty)
    assert out["verdict"] == "inconclusive"
    assert out["reason"].startswith("No prompt produced a first-divergence event") and "n/a" not in out["reason"]


def test_adding_controls_to_a_run_never_inverts_its_verdict(portable_run):
    base = run(make_pair("llama", perturb=[2, 3], scale=2.0), many_prompts(16), boundary=2, max_new_tokens=8,
               bootstrap=300, progress=False, plan="exact", event_kinds="first_diff", controls="none")
    full = json.loads((portable_run / "summary.json").read_text())["verdict"]
    assert full["verdict"] in (base.verdict["verdict"], "inconclusive")


@pytest.mark.parametrize("policy, message", [
    ({"min_prompts": "five"}, "min_prompts must be a whole number"),
    ({"min_prompts": 0}, "min_prompts must be a whole number"),
    ({"min_prompts": True}, "min_prompts must be a whole number"),
    ({"portable_interaction_share": float("nan")}, "finite number"),
    ({"max_interaction_share": -0.5}, "finite number"),
    ({"min_late_effect": "big"}, "finite number"),
    ({"readout": "common_xx"}, "readout must be"),
    ({"pass_verdicts": [1, 2]}, "verdict names"),
    ({"pass_verdicts": ["bogus"]}, "unknown verdict"),
])
def test_a_policy_with_a_threshold_of_the_wrong_kind_is_refused(policy, message):
    with pytest.raises(ValueError, match=message):
        VerdictPolicy.from_dict(policy)


def test_one_verdict_name_is_a_list_of_one():
    assert VerdictPolicy.from_dict({"pass_verdicts": "portable"}).pass_verdicts == ("portable",)


@pytest.mark.slow
def test_until_ci_width_stops_once_the_interval_is_narrow_enough_and_says_so(tmp_path):
    from crosspatch.runner.pipeline import rerender_run

    pair = make_pair("llama", perturb=[0, 1, 2, 3], scale=0.5)
    options = dict(boundary=2, max_new_tokens=8, bootstrap=300, progress=False, event_kinds="first_diff",
                   controls="none", batch_size=2)  # chunks of 8 prompts
    wide = run(pair, many_prompts(24), out=tmp_path / "wide", until_ci_width=50.0, **options)
    info = wide.summary["until_ci_width"]
    assert info["reached"] and info["prompts_processed"] == 8 and info["prompts_total"] == 24
    assert len(info["unprocessed_prompts"]) == 16 and "were not processed" in info["message"]
    assert wide.summary["counts"]["prompts"] == 8 and info["half_width"] <= 50.0
    again = run(pair, many_prompts(24), out=tmp_path / "wide", until_ci_width=50.0, **options)
    assert again.summary["counts"]["prompts"] == 8 and again.summary["cost_this_session"]["prompts_processed"] == 0
    assert rerender_run(tmp_path / "wide").warnings == []
    assert _gate(tmp_path / "wide")[0] in (0, 1)  # a usable run
    narrow = run(pair, many_prompts(24), until_ci_width=1e-9, **options)
    info = narrow.summary["until_ci_width"]
    assert not info["reached"] and info["prompts_processed"] == 24 and "the prompts ran out" in info["message"]
    assert narrow.verdict["numbers"]["interaction_half_width"] is not None


@pytest.mark.parametrize("policy", [[], "", 0])
def test_a_run_policy_that_is_no_mapping_is_refused_even_when_empty(policy):
    """An empty list or string was taken for "no policy" (``policy or {}``)."""
    from crosspatch.errors import OptionError
    from crosspatch.runner.checks import validate_run_options
    from crosspatch.runner.config import RunConfig

    with pytest.raises(OptionError, match="a policy is a mapping"):
        validate_run_options(RunConfig(policy=policy))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32"])
def test_a_policy_file_reads_in_the_encoding_its_mark_names(tmp_path, encoding):
    """A policy saved by Windows tools (a byte-order mark; PowerShell 5 writes UTF-16) reads as
    written, not as 'cannot read policy file'."""
    from crosspatch.runner.config import load_policy

    path = tmp_path / "policy.yaml"
    path.write_bytes("# thresholds\nmax_interaction_share: 0.4\n".encode(encoding))
    assert load_policy(path) == {"max_interaction_share": 0.4}


def test_an_empty_policy_file_is_named_and_an_explicit_empty_mapping_means_the_defaults(tmp_path):
    from crosspatch.errors import PolicyFileError
    from crosspatch.runner.config import load_policy

    for text in ("", "\n", "# thresholds to come\n"):
        (tmp_path / "policy.yaml").write_text(text)
        with pytest.raises(PolicyFileError, match="is empty: it sets no threshold"):
            load_policy(tmp_path / "policy.yaml")
    (tmp_path / "policy.yaml").write_text("{}\n")
    assert load_policy(tmp_path / "policy.yaml") == {}


def test_the_verdict_sentence_counts_one_event_and_one_prompt_in_the_singular():
    one = decide(_block((0.14, (0.14, 0.14)), (0.09, (0.09, 0.09)), (-0.05, (-0.05, -0.05)), n_prompts=1))
    assert "On 1 first-divergence event from 1 prompt, " in one["reason"]
    assert "On 20 first-divergence events from 20 prompts, " in decide(PAPER_IT)["reason"]


@pytest.mark.parametrize("share, says, never", [
    # the late layers add far more on the base's upstream state (E_PT +13.95, E_IT +4.95: a share of -182%): portable,
    # but not "self-contained": the gain depends on the upstream state, the other way round
    ((-1.82, (-2.37, -1.30)), "larger there than on the descendant's own upstream state", "self-contained"),
    # the interval reaches far below zero: a larger gain on base early layers is possible, not shown
    ((-0.20, (-0.60, 0.15)), "by up to 60% of E_IT", "is self-contained"),
    # within the portable bound on both sides: the same gain on both states
    ((-0.05, (-0.15, 0.06)), "self-contained and carries over", "larger"),
])
def test_a_portable_sentence_says_self_contained_only_within_the_bound_on_both_sides(share, says, never):
    e_it = (4.95, (4.09, 6.13))
    inter = (share[0] * e_it[0], (share[1][0] * e_it[0], share[1][1] * e_it[0]))
    e_pt = (e_it[0] - inter[0], (e_it[1][0] - inter[1][1], e_it[1][1] - inter[1][0]))
    decision = decide(_block(e_pt, e_it, inter, share))
    assert decision["verdict"] == "portable", decision
    assert says in decision["reason"] and never not in decision["reason"], decision["reason"]


def test_an_upstream_dependent_sentence_says_all_is_lost_where_the_share_exceeds_one_throughout():
    # E_PT leans the other way (its interval just reaching zero), so I exceeds E_IT on the whole share interval
    beyond = decide(_block((-0.4, (-0.9, 0.05)), (2.0, (1.6, 2.4)), (2.4, (1.9, 2.9)), (1.2, (1.05, 1.45))))
    assert beyond["verdict"] == "upstream-dependent"
    assert "lose all of their effect and may reverse it" in beyond["reason"] and "lose most" not in beyond["reason"]
    assert "lose most of their effect" in decide(PAPER_IT)["reason"]  # 69% [56%, 80%]: most, not all
