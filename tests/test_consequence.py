"""Forced-token consequences: validators, suffix-only scoring, natural continuations, deltas."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from crosspatch.analyses.consequence import Consequence, consequence_summary
from crosspatch.core.analysis import EventSet
from crosspatch.core.divergence import DivergenceEvent
from crosspatch.errors import PromptFileError
from crosspatch.execution import Decode, Executor, pair_from_models
from crosspatch.inputs.prompts import as_prompts
from crosspatch.inputs.validators import parse_validator
from crosspatch.testing import char_tokenizer, make_pair, tiny_model

from .test_store import many_prompts


@pytest.mark.parametrize("rule, good, bad", [
    ({"type": "exact", "answer": "71F"}, "\n 71f.\nmore text", "It is 71F"),
    ({"type": "regex", "pattern": r"if it keeps \w+", "flags": "i"}, "If it keeps falling, expect rain", "rain"),
    ({"type": "regex", "pattern": "sorry", "must_match": False, "flags": "i"}, "WIND: 14 mph", "Sorry, I cannot"),
    ({"type": "sections", "required": ["WIND:", "ALERTS:"]}, "WIND: NW\nALERTS: none", "WIND: NW only"),
    ({"type": "number", "value": 21.7, "tolerance": 0.1}, "about 21.65 C today", "about 25 C"),
    ({"type": "json", "required": ["temp"], "types": {"temp": "number"}}, 'x {"temp": 3.5} y', '{"temp": "3.5"}'),
])
def test_each_validator_kind_passes_and_fails(rule, good, bad):
    v = parse_validator(rule, "p.jsonl:1")
    assert v.check(good) and not v.check(bad)


def test_several_rules_must_all_pass():
    v = parse_validator([{"type": "sections", "required": ["WIND"]}, {"type": "number", "value": 14}], "x")
    assert v.check("WIND 14 mph") and not v.check("WIND 15 mph")


@pytest.mark.parametrize("rule, message", [
    ({"type": "nope"}, "'type' must be one of"), ({"type": "regex", "pattern": "("}, "does not compile"),
    ({"type": "number", "value": "7"}, "'value' must be a number"), ({"type": "exact"}, "'answer' is missing"),
    ({"type": "sections", "required": []}, "'required': List should have at least 1 item"), (5, "must be an object"),
    ("{not json", "not valid JSON"),
    ({"type": "exact", "answer": "a", "extra": 1}, "unknown field"),
])
def test_a_malformed_validator_is_a_named_error_with_the_line(rule, message):
    with pytest.raises(PromptFileError, match=message):
        as_prompts([{"id": "a", "prompt": "x", "validator": rule}])


def test_a_malformed_validator_in_a_file_names_the_line(tmp_path):
    from crosspatch.inputs.prompts import load_prompts

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "x"}) + "\n" +
                    json.dumps({"id": "b", "prompt": "y", "validator": {"type": "regex", "pattern": "["}}) + "\n")
    with pytest.raises(PromptFileError, match=r"p.jsonl:2: validator"):
        load_prompts(path)


def _copy_model():
    """A model whose next token is its current token: the continuation depends only on the first."""
    model = tiny_model("llama", layers=2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        emb = torch.randn(model.model.embed_tokens.weight.shape, generator=torch.Generator().manual_seed(0))
        model.model.embed_tokens.weight.copy_(emb)
        model.lm_head.weight.copy_(emb * 3)
    return model.eval()


def test_a_continuation_that_depends_only_on_the_first_token_gives_the_expected_deltas():
    tok = char_tokenizer()
    model = _copy_model()
    pair = pair_from_models(model, model, tok)
    a, b = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
    prefix = tok("x")["input_ids"]
    events = [DivergenceEvent(f"p{k}", "c", len(prefix), 0, prefix, t_pt=b, t_it=a) for k in range(6)]
    validators = {f"p{k}": parse_validator({"type": "regex", "pattern": "^[a ]+$"}, "x") for k in range(6)}
    ex = Executor(pair)
    rows = ex.drive(Consequence(validators, budget=5).program(ex, EventSet(events, "base", "tuned", None)))
    for r in rows:
        res = r["results"]["IT"]
        assert res["t_it"]["suffix"].replace(" ", "") == "aaaaa" and res["t_it"]["pass"]  # the copy model repeats the forced token
        assert res["t_pt"]["suffix"].replace(" ", "") == "bbbbb" and not res["t_pt"]["pass"]
        assert not res["matched"]["pass"] and not res["random"]["pass"]
        assert r["forced"]["matched"] not in (a, b) and r["forced"]["random"] not in (a, b)
    summary = consequence_summary(rows, {e.key: 1.0 for e in events}, __import__("crosspatch.core.stats").core.stats.BootstrapConfig(200))
    block = summary["by_model"]["IT"]
    assert block["delta_t_it_minus_t_pt"]["mean"] == 1.0 and block["delta_t_it_minus_matched"]["mean"] == 1.0
    assert block["pass_rate"]["t_it"]["mean"] == 1.0 and block["pass_rate"]["t_pt"]["mean"] == 0.0


def test_scoring_is_suffix_only():
    """A validator that passes on the forced token alone fails when the suffix lacks it."""
    tok = char_tokenizer()
    model = _copy_model()
    pair = pair_from_models(model, model, tok)
    a, b = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
    prefix = tok("x")["input_ids"]
    ev = DivergenceEvent("p", None, len(prefix), 0, prefix, t_pt=a, t_it=b)
    # "^b$" passes on the forced token t_IT = 'b' alone; the scored suffix is the 3 tokens after it
    validators = {"p": parse_validator({"type": "regex", "pattern": "^b$"}, "x")}
    ex = Executor(pair)
    row = ex.drive(Consequence(validators, budget=3).program(ex, EventSet([ev], "base", "tuned", None)))[0]
    assert row["forced_text"]["t_it"] == "b" and not row["results"]["IT"]["t_it"]["pass"]
    assert row["results"]["IT"]["t_it"]["suffix"].replace(" ", "") == "bbb"  # 3 generated tokens, none forced


def test_continuations_cut_at_the_budget_are_counted_and_named_in_the_report():
    """A validator that reads the whole answer fails a continuation cut at the budget whatever the
    forced token: each continuation records whether it ended (an end-of-sequence token), and the
    report says how many did not."""
    from crosspatch.analyses.consequence import render_consequences
    from crosspatch.core.stats import BootstrapConfig

    tok = char_tokenizer()
    model = _copy_model()
    pair = pair_from_models(model, model, tok)
    a, eos = tok.convert_tokens_to_ids("a"), tok.eos_token_id
    prefix = tok("x")["input_ids"]
    events = [DivergenceEvent(f"p{k}", "c", len(prefix), 0, prefix, t_pt=a, t_it=eos) for k in range(3)]
    validators = {f"p{k}": parse_validator({"type": "regex", "pattern": "."}, "x") for k in range(3)}
    ex = Executor(pair)
    rows = ex.drive(Consequence(validators, budget=4).program(ex, EventSet(events, "base", "tuned", None)))
    for r in rows:  # the copy model repeats the forced token: the forced end-of-sequence ends at once
        assert r["results"]["IT"]["t_it"]["ended"] and not r["results"]["IT"]["t_pt"]["ended"]
    block = consequence_summary(rows, {}, BootstrapConfig(0))
    assert block["by_model"]["IT"]["unended"] == {"n": 9, "of": 12}
    assert "9 of 12 continuations stopped at the budget" in " ".join(render_consequences(block).paragraphs)
    for r in rows:  # every continuation ended: no note
        for res in r["results"]["IT"].values():
            res["ended"] = True
    assert "stopped at the budget" not in " ".join(render_consequences(consequence_summary(rows, {}, BootstrapConfig(0))).paragraphs)


def test_forcing_the_natural_token_reproduces_the_natural_continuation():
    pair = make_pair("llama", scale=0.5)
    result = __import__("crosspatch.runner.pipeline").runner.pipeline.run(
        pair, [dict(p, validator={"type": "regex", "pattern": "."}) for p in many_prompts(6)], boundary=2,
        max_new_tokens=8, bootstrap=0, progress=False, consequence=True, consequence_budget=6,
        event_kinds="first_diff", controls="none")
    rows = result.analyses["consequence"]
    assert rows and "consequences" in result.summary
    ex = Executor(pair)
    records = {r.key.rsplit("@", 1)[0]: r for r in result.records}
    for row in rows:
        rec = records[row["event_key"]]
        (natural,) = ex.run([Decode("tuned", [rec.prefix_ids], 7)])  # IT's own greedy continuation
        assert natural[0][0] == rec.t_it  # IT picks t_IT itself at the event
        forced_then = pair.tokenizer.decode(natural[0][1:7], skip_special_tokens=True)
        assert row["results"]["IT"]["t_it"]["suffix"] == forced_then


def test_a_prompt_file_under_the_runs_ids_but_with_other_texts_is_refused_before_scoring():
    from crosspatch.analyses.consequence import check_prompt_texts
    from crosspatch.errors import PromptSetMismatchError
    from crosspatch.inputs.prompts import as_prompts, prompts_digest

    rows = many_prompts(4)
    scored = as_prompts(rows)
    config = {"prompts": {"count": 4, "sha256": prompts_digest(scored)}, "prompt_ids": [p.id for p in scored]}
    with_validators = as_prompts([dict(r, validator={"type": "regex", "pattern": "x"}) for r in rows])
    assert check_prompt_texts(config, with_validators, "r") == []  # validators added: the same prompts
    assert check_prompt_texts(config, as_prompts(rows[::-1]), "r") == []  # rows reordered: the same prompts
    edited = as_prompts([dict(rows[0], prompt=rows[0]["prompt"] + " (edited)")] + rows[1:])
    with pytest.raises(PromptSetMismatchError, match="holds the ids of the run in r but not its prompts"):
        check_prompt_texts(config, edited, "r")
    recategorised = as_prompts([dict(rows[0], category="other")] + rows[1:])
    with pytest.raises(PromptSetMismatchError):
        check_prompt_texts(config, recategorised, "r")
    (note,) = check_prompt_texts(config, as_prompts(rows[1:]), "r")  # a subset cannot be compared: said
    assert "could not be checked" in note
    # a shard's directory lists its own ids; the whole prompt file is what its digest covers
    shard = dict(config, prompt_ids=[p.id for p in scored[::2]])
    assert check_prompt_texts(shard, scored, "r") == []
    assert check_prompt_texts({"prompts": {"count": 4}}, edited, "r") == []  # no digest recorded: nothing to compare


@pytest.mark.slow
def test_consequence_command_on_a_finished_run(tmp_path):
    from crosspatch.cli import app
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(dict(p, validator={"type": "regex", "pattern": "[a-z]"})) + "\n"
                               for p in many_prompts(8)))
    args = ["run", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--prompts", str(prompts), "--out",
            str(tmp_path / "r"), "--max-new-tokens", "6", "--bootstrap", "0", "--quiet", "--controls", "none"]
    assert CliRunner().invoke(app, args).exit_code == 0
    res = CliRunner().invoke(app, ["consequence", str(tmp_path / "r"), "--prompts", str(prompts), "--budget", "4"])
    assert res.exit_code == 0, res.output
    assert "pass t_IT" in res.output and (tmp_path / "r" / "consequence.jsonl").exists()
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["consequences"]["n_events"] == summary["counts"]["events"]
    assert "Consequences" in (tmp_path / "r" / "report.md").read_text()
    again = CliRunner().invoke(app, ["consequence", str(tmp_path / "r"), "--prompts", str(prompts), "--budget", "4"])
    assert again.exit_code == 0  # resumable: nothing left to do, same numbers
    lines = (tmp_path / "r" / "consequence.jsonl").read_text().splitlines()
    assert len(lines) == summary["consequences"]["n_events"]
    # other settings never add to (or reuse) what was scored with these
    other_rule = tmp_path / "q.jsonl"
    other_rule.write_text(prompts.read_text().replace("[a-z]", "[0-9]"))
    for extra, what in ((["--prompts", str(prompts)], "budget 4 -> 32"),
                        (["--prompts", str(prompts), "--budget", "4", "--with-pt"], "with_pt False -> True"),
                        (["--prompts", str(other_rule), "--budget", "4"], "the validator of prompt")):
        res = CliRunner().invoke(app, ["consequence", str(tmp_path / "r"), *extra])
        assert res.exit_code == 2 and "error RunSettingsMismatchError" in res.output and what in res.output, res.output
    assert (tmp_path / "r" / "consequence.jsonl").read_text().splitlines() == lines
    from crosspatch.errors import OptionError
    from crosspatch.runner.on_finished import consequence_for_run

    for odd in ({"budget": 2.5}, {"budget": 0}, {"with_pt": "no"}, {"allow_partial": "yes"}, {"progress": 5},
                {"overwrite": "yes"}):
        with pytest.raises(OptionError):  # in Python as on the command line
            consequence_for_run(tmp_path / "r", str(prompts), **odd)
    assert (tmp_path / "r" / "consequence.jsonl").read_text().splitlines() == lines
    # --overwrite scores every event afresh with the new settings (changing the budget needed the file moved away)
    res = CliRunner().invoke(app, ["consequence", str(tmp_path / "r"), "--prompts", str(prompts), "--budget", "3",
                                   "--overwrite"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "r" / "consequence.jsonl").read_text().splitlines()]
    assert len(rows) == len(lines) and {row["budget"] for row in rows} == {3}
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["consequences"]["n_events"] == len(lines)


@pytest.mark.slow
def test_allow_partial_scores_the_shared_prompts_and_records_what_was_left_out(tmp_path):
    from crosspatch.cli import app
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    rows = [dict(p, validator={"type": "regex", "pattern": "[a-z]"}) for p in many_prompts(8)]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["run", "--base", str(root / "base"), "--tuned", str(root / "tuned"), "--prompts", str(prompts), "--out",
            str(tmp_path / "r"), "--max-new-tokens", "6", "--bootstrap", "0", "--quiet", "--controls", "none"]
    assert CliRunner().invoke(app, args).exit_code == 0
    other = tmp_path / "other.jsonl"  # one prompt of the run left out, one the run does not have
    other.write_text("".join(json.dumps(r) + "\n" for r in rows[1:] + [dict(rows[0], id="elsewhere")]))
    refused = CliRunner().invoke(app, ["consequence", str(tmp_path / "r"), "--prompts", str(other), "--budget", "3"])
    assert refused.exit_code == 2 and "PromptSetMismatchError" in refused.output
    res = CliRunner().invoke(app, ["consequence", str(tmp_path / "r"), "--prompts", str(other), "--budget", "3",
                                   "--allow-partial"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert any("elsewhere" in p for p in summary["consequences"]["partial"])
    assert any("checked token by token against the run's" in p for p in summary["consequences"]["partial"])
    assert all(r["prompt_id"] != rows[0]["id"] for r in map(json.loads, (tmp_path / "r" / "consequence.jsonl")
                                                            .read_text().splitlines()))
    # a later summary (report re-rendered from the stored files) still says what was left out
    from crosspatch.runner.finished import resummarize
    from crosspatch.store import RunStore

    assert any("elsewhere" in p for p in resummarize(RunStore(tmp_path / "r"))["consequences"]["partial"])
    # the full file afterwards scores the rest, and the record of the partial call is gone
    full = CliRunner().invoke(app, ["consequence", str(tmp_path / "r"), "--prompts", str(prompts), "--budget", "3"])
    assert full.exit_code == 0, full.output
    assert "partial" not in json.loads((tmp_path / "r" / "summary.json").read_text())["consequences"]
    # the run's ids over other texts: refused, --allow-partial or not (it cannot tell which are the run's)
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(dict(r, prompt=r["prompt"] + " today")) + "\n" for r in rows))
    for extra in ([], ["--allow-partial"]):
        res = CliRunner().invoke(app, ["consequence", str(tmp_path / "r"), "--prompts", str(edited), "--budget", "3",
                                       *extra])
        assert res.exit_code == 2 and "PromptSetMismatchError" in res.output and "not its prompts" in res.output
    # a partial file holding another text under one of the run's ids with an event: its validator would judge another
    # prompt's continuation, so it is refused by name, --allow-partial or not (each such prompt read as the run read it)
    with_events = {json.loads(line)["prompt_id"] for line in (tmp_path / "r" / "events.jsonl").read_text().splitlines()}
    target = next(r["id"] for r in rows[1:] if r["id"] in with_events)
    partial_edited = tmp_path / "partial_edited.jsonl"
    partial_edited.write_text("".join(json.dumps(dict(r, prompt=r["prompt"] + " today") if r["id"] == target else r)
                                      + "\n" for r in rows[1:]))
    res = CliRunner().invoke(app, ["consequence", str(tmp_path / "r"), "--prompts", str(partial_edited), "--budget", "3",
                                   "--allow-partial"])
    assert res.exit_code == 2 and "PromptSetMismatchError" in res.output and repr(target) in res.output, res.output


@pytest.mark.slow
def test_an_interrupted_consequence_call_keeps_the_chunks_it_scored_and_the_next_call_scores_the_rest(tmp_path,
                                                                                                     monkeypatch):
    import shutil

    import crosspatch.core.analysis as analysis_module
    from crosspatch.execution import load_pair
    from crosspatch.runner.on_finished import consequence_for_run
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    prompts = [dict(p, validator={"type": "regex", "pattern": "[a-z]"}) for p in many_prompts(12)]
    result = run(load_pair(str(root / "base"), tuned=str(root / "tuned")), prompts, boundary=2, max_new_tokens=6,
                 bootstrap=0, controls="none", progress=False, batch_size=1, out=tmp_path / "r")  # chunks of 4 events
    n_events = result.summary["counts"]["events"]
    assert n_events > 4
    shutil.copytree(tmp_path / "r", tmp_path / "whole")
    consequence_for_run(tmp_path / "whole", prompts, budget=3)  # scored in one call, never interrupted
    drive_apart, calls = analysis_module.drive_apart, []

    def interrupted_after_one_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return drive_apart(*args, **kwargs)

    monkeypatch.setattr(analysis_module, "drive_apart", interrupted_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        consequence_for_run(tmp_path / "r", prompts, budget=3)
    kept = (tmp_path / "r" / "consequence.jsonl").read_text().splitlines()
    assert len(kept) == 4  # the first chunk's events, appended when it was done
    with open(tmp_path / "r" / "consequence.jsonl", "a") as fh:  # and a kill while the next chunk was appended
        fh.write('{"key": "q00')
    from crosspatch import open_run

    assert len(open_run(tmp_path / "r").analyses["consequence"]) == 4  # a reader reads what was whole
    monkeypatch.setattr(analysis_module, "drive_apart", drive_apart)
    lines: list[str] = []
    block = consequence_for_run(tmp_path / "r", prompts, budget=3, progress=lines.append)
    assert lines[-1].startswith(f"consequence (events): {n_events - 4}/{n_events - 4}")  # only the rest was scored
    rows = (tmp_path / "r" / "consequence.jsonl").read_text().splitlines()
    assert rows[:4] == kept and len(rows) == n_events
    whole = (tmp_path / "whole" / "consequence.jsonl").read_text().splitlines()
    assert sorted(map(json.loads, rows), key=lambda r: r["event_key"]) == sorted(map(json.loads, whole),
                                                                                 key=lambda r: r["event_key"])
    assert block == json.loads((tmp_path / "whole" / "summary.json").read_text())["consequences"]


def test_the_consequence_section_says_95_percent_intervals_only_where_it_shows_them():
    """With one event (or ``--bootstrap 0``) the rates have no interval, yet the section said
    "Rates and deltas with 95% prompt-cluster intervals"."""
    from crosspatch.analyses.consequence import FORCED, render_consequences

    def block(ci):
        stat = {"mean": 0.5, "ci": ci, "n": 1}
        return {"n_events": 1, "by_model": {"IT": {
            "pass_rate": {name: stat for name in FORCED}, "delta_t_it_minus_t_pt": stat,
            "delta_t_it_minus_matched": stat, "interaction_vs_delta": {"r": None, "ci": None, "n": 1}}}}

    without = render_consequences(block(None))
    with_ci = render_consequences(block([0.25, 0.75]))
    assert without is not None and with_ci is not None
    assert "95%" not in without.paragraphs[0] and "without intervals" in without.paragraphs[0]
    assert "with 95% prompt-cluster intervals" in with_ci.paragraphs[0]
