"""The verdict's rule on synthetic effect blocks, and `crosspatch gate` exit codes on prepared
run directories."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from crosspatch.cli import app
from crosspatch.pipeline import run
from crosspatch.testing import make_pair
from crosspatch.verdict import VerdictPolicy, decide

from .test_store import many_prompts


def _block(e_pt, e_it, inter, n_prompts=20):
    def stat(m, ci):
        return {"mean": m, "ci": list(ci)}
    return {"n_events": n_prompts, "n_prompts": n_prompts,
            "effects": {"E_PT": stat(*e_pt), "E_IT": stat(*e_it), "interaction": stat(*inter)}}


@pytest.mark.parametrize("block, verdict", [
    # the paper's instruction tuning: E_PT +0.76, E_IT +2.44, I +1.68 (69% of E_IT) -> upstream-dependent
    (_block((0.76, (0.4, 1.1)), (2.44, (2.0, 2.9)), (1.68, (1.2, 2.1))), "upstream-dependent"),
    # the paper's math fine-tune: large portable E_PT, I slightly negative -> portable
    (_block((3.43, (3.0, 3.9)), (3.28, (2.9, 3.7)), (-0.15, (-0.5, 0.2))), "portable"),
    # nothing moves
    (_block((0.01, (-0.1, 0.1)), (0.02, (-0.1, 0.15)), (0.01, (-0.1, 0.1))), "no-late-effect"),
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


def test_a_failed_sanity_control_or_the_label_swap_null_changes_the_verdict():
    block = _block((0.76, (0.4, 1.1)), (2.44, (2.0, 2.9)), (1.68, (1.2, 2.1)))
    assert decide(block, [{"control": "hybrid_state", "status": "fail"}])["verdict"] == "inconclusive"
    within_null = [{"control": "label_swap", "status": "warn"}]
    assert decide(block, within_null)["verdict"] != "upstream-dependent"
    lenient = VerdictPolicy(max_interaction_share=0.8)  # 69% is under 80%, E_PT share 31% >= 30%
    assert decide(block, None, lenient)["verdict"] == "portable"
    between = VerdictPolicy(max_interaction_share=0.8, min_portable_share=0.5)
    assert decide(block, None, between)["verdict"] == "inconclusive"


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


def test_gate_exit_codes(portable_run, tmp_path):
    code, out = _gate(portable_run)
    assert (code, out["status"], out["verdict"]) == (0, "pass", "portable")
    code, out = _gate(portable_run, "--allow", "upstream-dependent")
    assert (code, out["status"]) == (1, "fail")
    code, out = _gate(portable_run, "--min-portable-share", "1.5")  # stricter than the run can meet
    assert code == 1 and out["verdict"] == "inconclusive"
    policy = tmp_path / "policy.yaml"
    policy.write_text("pass_verdicts: [upstream-dependent]\n")
    assert _gate(portable_run, "--policy", policy)[0] == 1
    assert _gate(tmp_path / "missing")[0] == 2
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


def test_gate_prints_the_verdict_for_people(portable_run):
    res = CliRunner().invoke(app, ["gate", str(portable_run)])
    assert res.exit_code == 0 and "pass" in res.output and "portable" in res.output


def test_no_event_at_all_says_so_instead_of_reporting_empty_numbers():
    empty = {"n_events": 0, "n_prompts": 0,
             "effects": {k: {"mean": None, "ci": None} for k in ("E_PT", "E_IT", "interaction")}}
    out = decide(empty)
    assert out["verdict"] == "inconclusive"
    assert out["reason"].startswith("No prompt produced a first-divergence event") and "n/a" not in out["reason"]


@pytest.mark.parametrize("policy, message", [
    ({"min_prompts": "five"}, "min_prompts must be a whole number"),
    ({"min_prompts": 0}, "min_prompts must be a whole number"),
    ({"min_prompts": True}, "min_prompts must be a whole number"),
    ({"min_portable_share": float("nan")}, "finite number"),
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
