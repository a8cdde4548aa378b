"""What a newcomer meets first: CLI conventions, progress in logs, safe role names, a Python API
whose public names stay what they are."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Optional

import pytest
from typer.testing import CliRunner

import crosspatch
from crosspatch.cli import app
from crosspatch.errors import OptionError
from crosspatch.runner.config import parse_boundary

from .test_store import many_prompts


def test_version_and_short_help():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"crosspatch {crosspatch.__version__}"
    for args in (["-h"], ["gate", "-h"], ["features", "-h"], ["zoo", "-h"]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0 and "Usage:" in res.output, args


def test_bare_words_to_a_command_that_takes_options_only_are_named_before_a_missing_option():
    """`crosspatch run BASE TUNED` (models as positional arguments) says that run takes options only
    and how to give the models, not that --base is missing; every command without positional
    arguments does the same, exit 2, and commands that take them (gate, report) are unchanged."""
    import typer.main

    res = CliRunner().invoke(app, ["run", "base-dir", "tuned-dir", "--prompts", "p.jsonl"])
    assert res.exit_code == 2 and "Missing option" not in res.output
    assert ("crosspatch run takes no positional arguments, got 'base-dir' 'tuned-dir'" in res.output
            and "--base BASE --tuned DESCENDANT" in res.output)
    checked = []

    def walk(group, path):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, path + [name])
            elif not any(p.param_type_name == "argument" for p in command.params):
                res = CliRunner().invoke(app, path + [name, "stray"])
                assert res.exit_code == 2 and f"crosspatch {name} takes no positional arguments, got 'stray'" in res.output, name
                checked.append(name)

    walk(typer.main.get_command(app), [])
    assert set(checked) == {"run", "sweep", "compare", "preflight", "splice", "env", "analyses", "demo", "build"}
    res = CliRunner().invoke(app, ["gate", "no-such-run", "stray"])
    assert res.exit_code == 2 and "unexpected extra argument" in res.output and "positional" not in res.output
    res = CliRunner().invoke(app, ["run", "--bogus"])  # an unknown option is click's message, as before
    assert res.exit_code == 2 and "No such option: --bogus" in res.output


def test_every_public_callable_stays_callable_after_use():
    import importlib
    import sys

    for name in crosspatch.__all__:
        first = getattr(crosspatch, name)
        sys.modules.pop("crosspatch.compare", None)
        with pytest.warns(DeprecationWarning, match="crosspatch.runner.compare"):
            importlib.import_module("crosspatch.compare")  # the old path of the submodule must not replace the function
        again = getattr(crosspatch, name)
        assert callable(first) == callable(again), name
    assert callable(crosspatch.compare) and callable(crosspatch.lineage)


@pytest.mark.slow
def test_progress_lines_go_to_a_log_when_stderr_is_not_a_terminal(tmp_path):
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in many_prompts(6)))
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.run([sys.executable, "-m", "crosspatch", "run", "--base", str(root / "base"), "--tuned",
                               str(root / "tuned"), "--prompts", str(prompts), "--out", str(tmp_path / "r"),
                               "--boundary", "2", "--max-new-tokens", "6", "--bootstrap", "0", "--controls", "none"],
                              stderr=err, stdout=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0
    text = log.read_text()
    assert "divergence search (prompts): 6/6" in text and "divergence search (prompts): 0/6" in text


def test_role_names_are_safe_names(tmp_path):
    from crosspatch.execution.roles import check_role_name, descendant_roles

    (tmp_path / "a" / "sft" / "sub").mkdir(parents=True)
    (tmp_path / "b" / "sft").mkdir(parents=True)
    tuned, _ = descendant_roles([str(tmp_path / "a" / "sft" / "sub" / ".."), str(tmp_path / "b" / "sft")])
    assert list(tuned) == ["sft", "sft-2"]  # the resolved directory's name, never '..'
    with pytest.raises(OptionError, match="given twice"):  # one directory however spelt: loaded and counted twice
        descendant_roles([str(tmp_path / "a" / "sft" / "sub" / ".."), str(tmp_path / "a" / "sft")])
    with pytest.raises(OptionError, match="the base's"):
        descendant_roles({"base": str(tmp_path / "b" / "sft")})
    for bad in ("..", ".", "", "a/b", "-x", "x" * 101):
        with pytest.raises(OptionError, match="not a safe name"):
            check_role_name(bad)
    with pytest.raises(OptionError, match="not a safe name"):
        descendant_roles({"..": str(tmp_path / "sft")})


def test_unknown_breakdowns_and_readouts_are_named_errors():
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    result = run(make_pair("llama"), many_prompts(6), boundary=2, max_new_tokens=6, bootstrap=0, progress=False,
                 controls="none", event_kinds="first_diff")
    assert not result.effects(by="category").empty
    with pytest.raises(OptionError, match="no breakdown by 'event_kind'"):  # 'kind' (the records' name) is it
        result.effects(by="kind")  # (this run scored first_diff alone)
    with pytest.raises(OptionError, match="no breakdown by 'bogus'.*category"):
        result.effects(by="bogus")
    with pytest.raises(OptionError, match="no readout 'native'"):
        result.effects(readout="native")
    assert not result.effects(readout="native_late").empty
    with pytest.raises(OptionError, match="by names one breakdown"):  # was a TypeError (unhashable list)
        result.effects(by=["category", "position"])  # type: ignore[arg-type]
    from crosspatch.errors import BoundaryError

    for table in (result.effects, result.cells):  # was a bare KeyError, its message shown in quotes
        with pytest.raises(BoundaryError, match=r"^boundary 3 was not scored in this run \(scored: 2\)$"):
            table(boundary=3)
        with pytest.raises(KeyError):  # still, for code that caught the lookup as one
            table(boundary=3)
        # a depth fraction names a layer as run(boundary=0.5) did; a whole float is that layer
        assert table(boundary=0.5).equals(table(boundary=2)) and table(boundary=2.0).equals(table(boundary=2))
        with pytest.raises(BoundaryError, match=r"boundary 0.75 was not scored|boundary 3 was not scored"):
            table(boundary=0.75)

def test_a_breakdown_with_no_group_is_an_empty_table_with_its_columns():
    # prompts without a category: by_category holds no group; frame[frame.effect == ...] must still work
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    result = run(make_pair("llama"), ["Rain over the hills", "Snow in the valley"], boundary=2, max_new_tokens=6,
                 bootstrap=0, progress=False, controls="none", event_kinds="first_diff")
    by_category = result.effects(by="category")
    assert by_category.empty and list(by_category.columns) == list(result.effects().columns)
    assert by_category[by_category.effect == "interaction"].empty
    assert list(result.cells().columns) == ["boundary", "readout", "cell", "mean", "ci_low", "ci_high", "n_events"]


def test_a_results_effects_and_cells_read_the_verdicts_readout_unless_asked_and_say_which():
    """Under a policy's ``readout: common_pt``, ``result.effects()`` and ``result.cells()`` gave the
    common-IT numbers, in frames that did not say which readout they held. They read the verdict's
    readout by default, another when asked, and carry a ``readout`` column."""
    import torch

    from crosspatch.execution import pair_from_models
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import tiny_pair

    base, tuned, tokenizer = tiny_pair("llama", scale=0.5)
    with torch.no_grad():  # a head of its own: the two readouts differ
        tuned.lm_head.weight.mul_(1.5)
    result = run(pair_from_models(base, tuned, tokenizer), ["Rain over the hills", "Snow in the valley"], boundary=2,
                 max_new_tokens=6, bootstrap=0, progress=False, controls="none", event_kinds="first_diff",
                 policy={"readout": "common_pt"})
    blocks = result.summary["results"]["2"]
    assert blocks["common_pt"]["all"]["cells"] != blocks["common_it"]["all"]["cells"]
    for readout, frame in (("common_pt", result.effects()), ("common_it", result.effects(readout="common_it"))):
        assert set(frame.readout) == {readout}
        stored = {k: v["mean"] for k, v in blocks[readout]["all"]["effects"].items() if v["mean"] is not None}
        assert dict(zip(frame.effect, frame["mean"])).items() >= stored.items()
    assert result.effects(readout="common-IT").equals(result.effects(readout="common_it"))  # (as the pages print it)
    cells = result.cells()
    assert set(cells.readout) == {"common_pt"}
    assert dict(zip(cells.cell, cells["mean"])) == {k: v["mean"] for k, v in blocks["common_pt"]["all"]["cells"].items()}


def test_run_leaves_the_callers_config_as_it_was_and_names_a_wrong_model_argument():
    from crosspatch.runner.compare import compare
    from crosspatch.runner.lineage import lineage
    from crosspatch.runner.pipeline import RunConfig, run
    from crosspatch.testing import make_pair

    config = RunConfig(boundary=2, max_new_tokens=6, bootstrap=0, controls="none", event_kinds="first_diff")
    before = repr(config)
    result = run(make_pair("llama"), many_prompts(3), config, analyses=["near_ties"], progress=False, max_new_tokens=4)
    assert result.config["options"]["max_new_tokens"] == 4 and "near_ties" in result.config["options"]["analyses"]
    assert repr(config) == before  # the overrides and named analyses were this run's, not the caller's config
    for entry in (run, compare, lineage):
        with pytest.raises(OptionError, match=f"{entry.__name__} needs the models as a ModelSet.*not str"):
            entry("base-dir", many_prompts(3), config, progress=False)  # a path where load_pair's models go
    pair = make_pair("llama")
    for entry in (run, compare, lineage):  # odd Python values: named, not TypeError/AttributeError from inside
        with pytest.raises(OptionError, match="config must be a RunConfig"):
            entry(pair, many_prompts(3), {"bootstrap": 0}, progress=False)
        with pytest.raises(OptionError, match="resume must be True or False"):
            entry(pair, many_prompts(3), config, resume="no", progress=False)
        with pytest.raises(OptionError, match="progress must be True, False or a function of one line"):
            entry(pair, many_prompts(3), config, progress="yes")
    lines: list[str] = []  # a notebook's or a job's own logger takes the progress lines, as the workflows' do
    run(pair, many_prompts(3), config, progress=lines.append)
    assert lines and all(isinstance(line, str) for line in lines) and any("divergence search" in x for x in lines)
    with pytest.raises(OptionError, match="analyses must be a list"):
        run(pair, many_prompts(3), config, analyses=[5], progress=False)
    with pytest.raises(OptionError, match="--cross takes"):
        compare(pair, many_prompts(3), config, cross=5, progress=False)  # type: ignore[arg-type]
    for steps in ({"nope": 5}, {"tuned": "500"}, {"tuned": -1}, [500]):  # checked before the run, not after it
        with pytest.raises(OptionError, match="steps must map stage names"):
            lineage(pair, many_prompts(3), config, steps=steps, progress=False)  # type: ignore[arg-type]


def test_models_in_memory_are_checked_before_they_are_used():
    from crosspatch.errors import ModelLoadError
    from crosspatch.execution import models_from_modules, pair_from_models
    from crosspatch.testing import make_pair

    pair = make_pair("llama")
    model, tokenizer = pair.pt.anatomy.model, pair.tokenizer_pt
    with pytest.raises(ModelLoadError, match="tuned: a model in memory must be a torch module.*not NoneType"):
        pair_from_models(model, None, tokenizer)
    # the commonest slips say what to give instead: a pipeline's model, a path's loader, the causal LM of a backbone
    from types import SimpleNamespace

    from crosspatch.errors import UnsupportedArchitectureError

    with pytest.raises(ModelLoadError, match=r"not SimpleNamespace: give its .model \(and its .tokenizer"):
        pair_from_models(SimpleNamespace(model=model, tokenizer=tokenizer), model, tokenizer)
    with pytest.raises(ModelLoadError, match="not str: a checkpoint's path loads with crosspatch.load_pair"):
        pair_from_models("./base", model, tokenizer)
    with pytest.raises(UnsupportedArchitectureError, match="is a bare backbone without an LM head.*AutoModelForCausalLM"):
        pair_from_models(model.model, model.model, tokenizer)

    import torch

    class Wrapper(torch.nn.Module):  # a training framework's own wrapper: was an AttributeError (no .config)
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    with pytest.raises(UnsupportedArchitectureError, match=r"Wrapper is not a transformers model.*its \.module"):
        pair_from_models(Wrapper(model), model, tokenizer)
    with pytest.raises(UnsupportedArchitectureError, match="Linear is not a transformers model"):
        pair_from_models(model, torch.nn.Linear(2, 2), tokenizer)
    with pytest.raises(ModelLoadError, match="base: needs a Hugging Face tokenizer, not NoneType"):
        pair_from_models(model, model, None)
    with pytest.raises(ModelLoadError, match="not SimpleNamespace: give its .tokenizer as the tokenizer, and the "
                                             "processor as processors="):  # a vision-language model's processor
        pair_from_models(model, model, SimpleNamespace(tokenizer=tokenizer))
    with pytest.raises(ModelLoadError, match="at least two models"):
        models_from_modules({"base": model}, tokenizer)
    with pytest.raises(OptionError, match="not a safe name"):  # a role names a run directory
        models_from_modules({"base": model, "../up": model}, tokenizer)
    assert pair_from_models(model, model, tokenizer).roles == ("base", "tuned")



def test_events_are_one_row_per_event_with_its_kinds_and_the_long_form_one_per_kind():
    from crosspatch.core.tokens import EVENT_KINDS
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    result = run(make_pair("llama", scale=0.5), many_prompts(12), boundaries=[1, 2], max_new_tokens=12,
                 bootstrap=0, progress=False, controls="none")
    wide, long = result.events, result.events_long
    identity = ["prompt_id", "position", "t_pt", "t_it", "boundary"]
    assert len(long) == len(result.records) and "kind" in long and "kinds" not in long
    assert len(wide) == len(long.drop_duplicates(identity)) < len(long)  # kinds on one event: one row
    assert not wide.duplicated(identity).any() and "kind" not in wide and "key" not in wide
    for kind in EVENT_KINDS:  # every kind has its column, requested or found
        assert wide[f"is_{kind}"].sum() == (long["kind"] == kind).sum()
    for _, row in wide.iterrows():
        assert row["kinds"].split(",") == [k for k in EVENT_KINDS if row[f"is_{k}"]]
    assert result.to_pandas().equals(wide) and result.to_pandas(long=True).equals(long)


def test_result_objects_print_short():
    from crosspatch.execution import models_from_modules
    from crosspatch.runner.compare import compare
    from crosspatch.runner.lineage import lineage
    from crosspatch.testing import char_tokenizer, perturb_layers, tiny_model

    base = tiny_model("llama")
    models = models_from_modules({"base": base, "a": perturb_layers(base, [2, 3], 1.0, seed=3),
                                  "b": perturb_layers(base, [0, 1], 0.5, seed=4)}, char_tokenizer())
    options = dict(boundary=2, max_new_tokens=6, bootstrap=0, progress=False, controls="none", event_kinds="first_diff")
    results = [compare(models, many_prompts(6), **options), lineage(models, many_prompts(6), **options)]
    results.append(results[0].runs["a"])
    for result in results:
        text = repr(result)
        assert len(text) < 300 and "{" not in text, text
    assert "a: " in repr(results[0]) and "stages=['a', 'b']" in repr(results[1])


def test_gate_pool_and_report_read_runs_without_importing_torch(tmp_path):
    code = ("import sys; import crosspatch.workflows.gate, crosspatch.store, crosspatch.core.verdict, crosspatch.core.records; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    prompts = [dict(p, validator={"type": "regex", "pattern": "[a-z]"}) for p in many_prompts(6)]
    run(make_pair("llama", scale=0.5), prompts, out=tmp_path / "r", boundary=2, max_new_tokens=6, bootstrap=100,
        progress=False, consequence=True, consequence_budget=4)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert [s["title"] for s in summary["sections"]]  # the analyses' sections are stored with the summary
    before = (tmp_path / "r" / "report.md").read_text()
    for command in (["report", str(tmp_path / "r")], ["report", str(tmp_path / "r"), "--check"],
                    ["gate", str(tmp_path / "r")]):
        code = (f"import sys\nsys.argv = ['crosspatch', *{command!r}]\nfrom crosspatch.cli import main\n"
                "try:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.stdout.strip().splitlines()[-1] == "False", (command, out.stdout, out.stderr)
    assert (tmp_path / "r" / "report.md").read_text() == before  # the same report, with no plug-in imported


def test_the_verdict_is_a_typed_record_that_still_serialises(tmp_path):
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    result = run(make_pair("llama", perturb=[2, 3], scale=2.0), many_prompts(8), boundary=2, max_new_tokens=6,
                 bootstrap=200, progress=False, controls="none", event_kinds="first_diff")
    v = result.verdict
    assert v.verdict == v["verdict"] and v.reason == v["reason"] and v.boundary == 2
    assert json.loads(json.dumps(v)) == dict(v) and repr(v).startswith("Verdict(")


def test_pool_counts_each_run_once(tmp_path):
    import shutil

    from crosspatch.runner.compare import pool_runs
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    run(make_pair("llama"), many_prompts(6), boundary=2, max_new_tokens=6, bootstrap=0, progress=False,
        controls="none", out=tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    with pytest.raises(OptionError, match="hold the same run"):
        pool_runs([tmp_path / "a", tmp_path / "copy"])
    with pytest.raises(OptionError, match="given twice"):  # not "give at least two": two were given
        pool_runs([tmp_path / "a", f"{tmp_path / 'a'}/"])


def test_pool_counts_each_pair_once(tmp_path):
    """Two runs of one base and descendant (other prompts, other options) are one family: pooling
    them would weigh that pair twice. Told apart by the weights' hashes in each run's config."""
    from crosspatch.execution import load_pair
    from crosspatch.runner.compare import pool_runs
    from crosspatch.runner.pipeline import run
    from crosspatch.testing.tiny import save_tiny_pair

    save_tiny_pair(tmp_path / "one", scale=0.3)
    save_tiny_pair(tmp_path / "two", scale=0.6)  # the same base, another descendant
    options = dict(boundary=2, max_new_tokens=6, bootstrap=0, progress=False, controls="none")
    for name, pair, prompts in (("a", "one", many_prompts(6)), ("b", "one", many_prompts(7)), ("c", "two", many_prompts(6))):
        run(load_pair(str(tmp_path / pair / "base"), tuned=str(tmp_path / pair / "tuned")), prompts, out=tmp_path / name,
            **options)
    with pytest.raises(OptionError, match="same base and descendant"):
        pool_runs([tmp_path / "a", tmp_path / "b"])
    assert pool_runs([tmp_path / "a", tmp_path / "c"], bootstrap=0)["n_pairs"] == 2
    # a compare's run directory of one descendant is that pair too, though the compare loaded both descendants
    from crosspatch.execution import load_models
    from crosspatch.runner.compare import compare

    both = load_models(str(tmp_path / "one" / "base"), tuned={"one": str(tmp_path / "one" / "tuned"),
                                                               "two": str(tmp_path / "two" / "tuned")})
    compare(both, many_prompts(5), out=tmp_path / "cmp", **options)
    with pytest.raises(OptionError, match="same base and descendant"):
        pool_runs([tmp_path / "a", tmp_path / "cmp" / "one"])
    assert pool_runs([tmp_path / "a", tmp_path / "cmp" / "two"], bootstrap=0)["n_pairs"] == 2
    for name, pair in (("d", "one"), ("e", "two")):  # weights not hashed: nothing to tell pairs apart by, no refusal
        run(load_pair(str(tmp_path / pair / "base"), tuned=str(tmp_path / pair / "tuned"), hash_weights=False),
            many_prompts(6), out=tmp_path / name, **options)
    assert pool_runs([tmp_path / "d", tmp_path / "e"], bootstrap=0)["n_pairs"] == 2


def test_the_demo_stage_clock_counts_stages_and_estimates_what_is_left():
    from crosspatch.runner.progress import StageClock

    now = [0.0]
    lines: list[str] = []
    clock = StageClock([1.0, 1.0, 2.0], lines.append, clock=lambda: now[0])
    clock.next()
    clock("base vs it-full")
    clock("a second line of the same stage")
    now[0] = 30.0
    clock.next()
    clock("base vs cpt")
    now[0] = 60.0
    clock.next()
    clock("lineage")
    assert lines[0] == "[1/3] base vs it-full (0:00 elapsed)"
    assert lines[1] == "a second line of the same stage"
    assert lines[2] == "[2/3] base vs cpt (0:30 elapsed, about 1:30 left)"  # 30 s per unit, 3 units left
    assert lines[3] == "[3/3] lineage (1:00 elapsed, about 1:00 left)"


def test_dtype_aliases_and_auto_resolve_to_what_loading_uses():
    import torch

    from crosspatch.errors import OptionError
    from crosspatch.models.loading import LoadOptions, validate_load_options

    for given, expected in (("bf16", "bfloat16"), ("FP16", "float16"), ("fp32", "float32"), ("float32", "float32")):
        options = LoadOptions(dtype=given)
        validate_load_options(options)
        assert options.dtype == expected
    on_cpu = LoadOptions(dtype="auto", device="cpu")
    validate_load_options(on_cpu)
    assert on_cpu.dtype == "float32"  # auto on the CPU; a CUDA device gets bfloat16
    default = LoadOptions()
    validate_load_options(default)
    assert default.dtype == ("bfloat16" if default.device != "cpu" and torch.cuda.is_available() else "float32")
    with pytest.raises(OptionError, match="bf16"):
        validate_load_options(LoadOptions(dtype="int8"))


def test_device_auto_is_the_default_and_is_recorded_as_the_device_used():
    import torch

    from crosspatch.errors import OptionError
    from crosspatch.models.loading import LoadOptions, validate_load_options

    default = LoadOptions()
    assert default.device == "auto"
    validate_load_options(default)
    assert default.device == ("cuda" if torch.cuda.is_available() else "cpu")  # one device, never a map
    for given, expected in (("CPU", "cpu"), ("map", "map"), ("cpu", "cpu")):
        options = LoadOptions(device=given)
        validate_load_options(options)
        assert options.device == expected
    with pytest.raises(OptionError, match="auto, cpu, cuda, cuda:N or map"):
        validate_load_options(LoadOptions(device="gpu"))


def test_env_says_what_crosspatch_runs_on_and_which_residency_a_run_would_choose():
    from crosspatch.zoo import zoo_path

    res = CliRunner().invoke(app, ["env", "--json", "--base", str(zoo_path() / "base"), "--adapter",
                                   str(zoo_path() / "it-lora-all")])
    assert res.exit_code == 0, res.output
    facts = json.loads(res.stdout)
    assert facts["crosspatch"] == crosspatch.__version__ and facts["torch"] and facts["cpu_count"] >= 1
    assert facts["dtype"] in ("float32", "bfloat16", "float16") and "mergekit" in facts["extras"]
    assert facts["residency"]["choice"] == "adapter" and facts["residency"]["reason"]
    assert facts["digest_cache"] == os.environ["CROSSPATCH_CACHE_DIR"]  # the suite's own (tests/conftest.py)
    lonely = CliRunner().invoke(app, ["env", "--base", str(zoo_path() / "base")])
    assert lonely.exit_code == 2 and "OptionError" in lonely.output
    for wrong in (["--adapter", str(zoo_path() / "it-full")], ["--tuned", str(zoo_path() / "no-such-dir")]):
        res = CliRunner().invoke(app, ["env", "--base", str(zoo_path() / "base"), *wrong])  # as a run would refuse
        assert res.exit_code == 2 and ("ModelLoadError" in res.output or "ModelPathNotFoundError" in res.output)


def test_descendants_can_be_named_on_the_command_line():
    from crosspatch.execution.roles import descendant_roles

    tuned, adapters = descendant_roles(["sft=/models/a/checkpoint-5", "/models/b/final"], ["dpo=/x/adapter"])
    assert tuned == {"sft": "/models/a/checkpoint-5", "final": "/models/b/final"} and adapters == {"dpo": "/x/adapter"}
    for bad in (["../up=/m"], ["a=/m", "a=/n"], ["base=/m"], ["x="]):
        with pytest.raises(OptionError):
            descendant_roles(bad)
    # a checkpoint and an adapter in directories of the same name: the adapter's role is made unique,
    # never onto a name the user gave another adapter (which would drop that descendant); a name the
    # user gave is never changed, so a checkpoint and an adapter given one name clash
    tuned, _ = descendant_roles(["/m/sft", "/n/sft", "sft-2=/o/x"])  # a name given is kept, wherever it is
    assert tuned == {"sft": "/m/sft", "sft-3": "/n/sft", "sft-2": "/o/x"}
    tuned, adapters = descendant_roles(["/m/sft"], ["/x/sft", "sft-adapter=/x/other"])
    assert tuned == {"sft": "/m/sft"} and adapters == {"sft-adapter": "/x/other", "sft-adapter-2": "/x/sft"}
    for clash in ((["a=/m/sft"], ["a=/x/dpo"]), (["/m/a"], ["a=/x/dpo"]), ({"a": "/m/sft"}, ["/x/a"])):
        with pytest.raises(OptionError, match="given to a checkpoint and to an adapter"):
            descendant_roles(*clash)


def test_compare_takes_named_descendants(tmp_path):
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in many_prompts(4)))
    res = CliRunner().invoke(app, ["compare", "--base", str(root / "base"), "--tuned", f"sft={root / 'tuned'}",
                                   "--prompts", str(prompts), "--out", str(tmp_path / "c"), "--max-new-tokens", "4",
                                   "--bootstrap", "0", "--quiet", "--controls", "none"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "sft" / "summary.json").exists()
    # the same compare with another option: its member holds another run, named before any model loads
    import crosspatch.execution

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    command = ["compare", "--base", str(root / "base"), "--tuned", f"sft={root / 'tuned'}", "--prompts", str(prompts),
               "--out", str(tmp_path / "c"), "--max-new-tokens", "4", "--bootstrap", "0", "--quiet", "--controls", "none"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(crosspatch.execution, "load_models", no_loading)
        res = CliRunner().invoke(app, [a if a != "4" else "5" for a in command])
        assert res.exit_code == 2 and "c/sft holds a run with other settings (options.max_new_tokens: 4 -> 5)" in res.output
        # the same command again: the finished compare is read back, its table printed, no model loaded
        res = CliRunner().invoke(app, command)
        assert res.exit_code == 0 and "already holds this compare, finished: nothing to do (no model loaded)" in res.output
        assert "sft" in res.output and "interaction" in res.output  # the table
        # in a directory this process cannot write (a read-only share): read back the same; other settings refused
        read_only(patch, tmp_path / "c")
        res = CliRunner().invoke(app, command)
        assert res.exit_code == 0 and "already holds this compare, finished" in res.output, res.output
        res = CliRunner().invoke(app, [a if a != "4" else "5" for a in command])
        assert res.exit_code == 2 and "RunWriteError" in res.output and "cannot write in" in res.output, res.output
    # and a lineage's run
    lineage = ["lineage", str(root / "base"), str(root / "tuned"), "--prompts", str(prompts), "--out",
               str(tmp_path / "l"), "--max-new-tokens", "4", "--bootstrap", "0", "--quiet", "--controls", "none"]
    assert CliRunner().invoke(app, lineage).exit_code == 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(crosspatch.execution, "load_models", no_loading)
        res = CliRunner().invoke(app, lineage + ["--seed", "2"])
        assert res.exit_code == 2 and "l/run holds a run with other settings (options.seed: 0 -> 2)" in res.output
        res = CliRunner().invoke(app, lineage)  # the same command again: read back, no model loaded
        assert res.exit_code == 0 and "already holds this lineage, finished: nothing to do (no model loaded)" in res.output
        assert "crosspatch lineage: base -> tuned" in res.output  # its table
        read_only(patch, tmp_path / "l")
        res = CliRunner().invoke(app, lineage)
        assert res.exit_code == 0 and "already holds this lineage, finished" in res.output, res.output
        res = CliRunner().invoke(app, lineage + ["--seed", "2"])
        assert res.exit_code == 2 and "RunWriteError" in res.output and "cannot write in" in res.output, res.output


def read_only(patch, directory) -> None:
    """``directory`` reads as not writable by this process (tests run as root, which writes anywhere)."""
    import os
    from pathlib import Path

    writable = os.access
    patch.setattr(os, "access", lambda path, mode, **k: not (Path(path) == directory and mode & os.W_OK)
                  and writable(path, mode, **k))


@pytest.mark.slow
def test_gate_over_a_compare_directory_gates_every_descendant(tmp_path):
    import shutil

    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    shutil.copytree(root / "tuned", tmp_path / "twin")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in many_prompts(4)))
    res = CliRunner().invoke(app, ["compare", "--base", str(root / "base"), "--tuned", f"a={root / 'tuned'}", "--tuned",
                                   f"b={tmp_path / 'twin'}", "--prompts", str(prompts), "--out", str(tmp_path / "c"),
                                   "--max-new-tokens", "4", "--bootstrap", "0", "--quiet", "--controls", "none"])
    assert res.exit_code == 0, res.output
    gated = CliRunner().invoke(app, ["gate", str(tmp_path / "c"), "--json"])
    outcome = json.loads(gated.stdout)
    assert outcome["collection"] == "compare" and list(outcome["members"]) == ["a", "b"]
    assert gated.exit_code == outcome["exit_code"] == max(m["exit_code"] for m in outcome["members"].values())
    (tmp_path / "c" / "b" / "summary.json").unlink()  # one member unusable: the whole gate is
    again = CliRunner().invoke(app, ["gate", str(tmp_path / "c")])
    assert again.exit_code == 2 and "b: unusable" in again.stdout and again.stdout.count("\n") == 3
    assert "b: unusable — " in again.stdout and ":  —" not in again.stdout  # no verdict: no empty slot for one


def _click_params(path: list[str]) -> dict:
    import typer.main

    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params}


def test_command_line_options_are_generated_from_the_options_dataclasses():
    """The options dataclasses are the one source of every option's default and help: each field
    with help is an option of `run`, `sweep`, `compare` and `lineage` (the loading ones of every
    command that loads models too), shown with the field's default and help; a field without help
    is not on the command line."""
    from crosspatch.cli.options import cli_fields, field_default
    from crosspatch.models.options import LoadOptions
    from crosspatch.runner.config import RunConfig

    def shown(field):  # the default as the command line shows it (a boundary as text, no empty list)
        value = field_default(field)
        if value in ([], {}):
            return None
        return str(value) if field.metadata.get("cli_type") is str else value

    for command in ("run", "sweep", "compare", "lineage"):
        params = _click_params([command])
        for cls in (RunConfig, LoadOptions):
            for field in cli_fields(cls):
                param = params[field.name]
                expected = "all" if (command, field.name) == ("sweep", "boundaries") else shown(field)
                assert param.default == expected, (command, field.name, param.default)
                assert param.help == field.metadata["help"]
            for field in dataclasses.fields(cls):  # (RunConfig.tuned, a role, is not the command's --tuned)
                if "help" not in field.metadata and field.name != "tuned":
                    assert field.name not in params, (command, field.name)
    for command in ("preflight", "splice", "merge-check", "env", "run"):  # no hand-written loading option left
        params = _click_params([command])
        for field in cli_fields(LoadOptions):
            if field.name in params:
                assert params[field.name].help == field.metadata["help"] and params[field.name].default == field.default
    assert "residency" not in _click_params(["splice"]) and "trust_remote_code" not in _click_params(["env"])


@dataclasses.dataclass
class _ToyOptions:
    name: str = dataclasses.field(metadata={"help": "A name."})
    depth: int | float = dataclasses.field(default=0.5, metadata={"help": "A depth.", "cli_type": str,
                                                                  "parse": lambda t: parse_boundary(t)})
    words: list[str] = dataclasses.field(default_factory=list, metadata={"help": "Words.", "cli_type": Optional[str],
                                                                         "parse": lambda t: t.split(",")})
    loud: bool = dataclasses.field(default=True, metadata={"help": "Loud.", "flag": "--loud/--soft"})
    hidden: int = 7


def test_the_option_generator_builds_the_dataclass_and_names_bad_values():
    """`cli.options.command` turns a dataclass parameter into options (required, flags, parsed
    text, `only`, changed defaults), hands the command the built dataclass, and reports a value
    the field's parser refuses as a named error, exit 2, no traceback."""
    import typer

    from crosspatch.cli.options import command

    seen = []
    toy_app = typer.Typer(rich_markup_mode=None)

    @toy_app.command("toy")
    @command(defaults={"loud": False})
    def toy(toy: _ToyOptions, extra: int = typer.Option(1, "--extra", help="Extra.")) -> None:
        seen.append((toy, extra))

    @toy_app.command("other")
    @command(only={"toy": ("name",)})
    def other(toy: _ToyOptions) -> None:
        seen.append(toy)

    runner = CliRunner()
    assert runner.invoke(toy_app, ["toy", "--name", "x", "--depth", "3", "--words", "a,b", "--extra", "2"]).exit_code == 0
    assert seen[-1] == (_ToyOptions(name="x", depth=3, words=["a", "b"], loud=False, hidden=7), 2)
    assert runner.invoke(toy_app, ["toy", "--name", "x", "--loud"]).exit_code == 0
    assert seen[-1][0] == _ToyOptions(name="x", depth=0.5, words=[], loud=True)
    assert runner.invoke(toy_app, ["toy"]).exit_code == 2  # --name is required
    bad = runner.invoke(toy_app, ["toy", "--name", "x", "--depth", "deep"])
    assert bad.exit_code == 2 and "BoundaryError" in bad.output and "Traceback" not in bad.output
    help_text = runner.invoke(toy_app, ["toy", "--help"]).output
    assert "--hidden" not in help_text and "--loud / --soft" in help_text and "A depth." in help_text
    assert runner.invoke(toy_app, ["other", "--name", "y"]).exit_code == 0 and seen[-1] == _ToyOptions(name="y")
    assert runner.invoke(toy_app, ["other", "--name", "y", "--depth", "2"]).exit_code == 2  # not an option there

    def plain(toy: _ToyOptions) -> None: ...

    def twice(toy: _ToyOptions, name: str = typer.Option("a", "--name", help="again")) -> None: ...

    with pytest.raises(TypeError, match="no option nope"):
        command(plain, defaults={"nope": 1})
    with pytest.raises(TypeError, match="declared twice"):
        command(twice)
    with pytest.raises(TypeError, match="no command-line option hidden"):
        command(plain, only={"toy": ("hidden",)})


def test_python_run_options_of_the_wrong_kind_are_named_not_coerced():
    """The Python API takes options the command line types for the CLI user: a switch given the
    string "no" would be truthy (on), and a report's back link is an ``href`` that must not carry
    a script."""
    from crosspatch.runner.checks import validate_run_options
    from crosspatch.runner.pipeline import RunConfig

    for options, message in (({"chat_template": "no"}, "chat_template must be True or False, not 'no'"),
                             ({"verify_fp32": 1}, "verify_fp32 must be True or False"),
                             ({"title": 123}, "title must be a string"),
                             ({"back_link": "javascript:alert(1)"}, "not a javascript: link"),
                             ({"back_link": "java\tscript:alert(1)"}, "not a javascript: link"),
                             ({"back_link": "data:text/html,x"}, "not a data: link")):
        with pytest.raises(OptionError, match=message):
            validate_run_options(RunConfig(**options))
    for link in ("../report.html", "https://ci.example.org/runs/7/report.html", None):
        validate_run_options(RunConfig(back_link=link))


def test_python_run_options_spelled_as_on_the_command_line_are_read_as_it_reads_them(tmp_path):
    """``run(..., group_by="split")`` was "group-by must be a list of field names", boundaries
    "1,3" and boundary "0.5" BoundaryErrors, rollout_model "it" refused and ``policy="p.yml"``
    "a policy is a mapping", analysis_options ["label_swap.level=0.05"] "must be a dict": the
    command line's text is read as the command line reads it (a path as a file's thresholds); what
    it then holds is checked as before."""
    from pathlib import Path

    from crosspatch.errors import BoundaryError, PolicyFileError
    from crosspatch.runner.config import RunConfig

    (tmp_path / "p.yml").write_text("max_interaction_share: 0.6\n")
    config = RunConfig.with_overrides(None, group_by="split, era", boundaries="1,3", boundary="0.5",
                                      rollout_model="it", policy=str(tmp_path / "p.yml"))
    assert (config.group_by, config.boundaries, config.boundary, config.rollout_model, config.policy) == (
        ["split", "era"], [1, 3], 0.5, "IT", {"max_interaction_share": 0.6})
    assert RunConfig.with_overrides(None, policy=Path(tmp_path / "p.yml")).policy == {"max_interaction_share": 0.6}
    assert RunConfig.with_overrides(None, boundaries="all", group_by=["split"]).group_by == ["split"]
    with pytest.raises(PolicyFileError, match="cannot read policy file"):
        RunConfig.with_overrides(None, policy=str(tmp_path / "absent.yml"))
    with pytest.raises(BoundaryError):
        RunConfig.with_overrides(None, boundary="half")
    for assignments in ("label_swap.level=0.05", ["label_swap.level=0.05"]):  # --analysis-option's text
        assert RunConfig.with_overrides(None, analysis_options=assignments).analysis_options == {
            "label_swap": {"level": 0.05}}


def test_python_run_options_given_as_numpy_numbers_are_the_numbers_they_hold():
    """A notebook's loop ``for b in np.arange(1, L)`` gives numpy integers: ``boundary=np.int64(2)``
    was "boundary must be an int layer or a fraction of depth, not np.int64(2)" (and so were
    max_new_tokens, seed, bootstrap, batch_size). They are read as the Python numbers they hold
    (and recorded so); what those numbers may be is checked as before."""
    import numpy as np

    from crosspatch.errors import BoundaryError
    from crosspatch.runner.checks import validate_run_options
    from crosspatch.runner.pipeline import RunConfig

    config = RunConfig(boundary=np.int64(2), max_new_tokens=np.int32(8), seed=np.int64(3), bootstrap=np.int64(200),
                       batch_size=np.uint8(4), near_tie_threshold=np.float32(0.5), verify_fp32=np.bool_(True))
    validate_run_options(config)
    assert (config.boundary, config.max_new_tokens, config.seed, config.bootstrap, config.batch_size) == (2, 8, 3, 200, 4)
    assert [type(v) for v in (config.boundary, config.max_new_tokens, config.near_tie_threshold, config.verify_fp32)] \
        == [int, int, float, bool]
    config = RunConfig(boundaries=[np.int64(1), np.float64(0.5)])
    validate_run_options(config)
    assert config.boundaries == [1, 0.5] and type(config.boundaries[0]) is int
    with pytest.raises(BoundaryError, match="leaves no early layers"):
        validate_run_options(RunConfig(boundary=np.int64(0)))
    with pytest.raises(OptionError, match="verify_fp32 must be True or False"):
        validate_run_options(RunConfig(verify_fp32=np.int64(1)))  # (a number is not a switch, whatever its type)


def test_the_workflows_take_numpy_numbers_and_progress_as_run_does(capsys):
    """splice, preflight and merge-check refused ``max_new_tokens=np.int64(32)`` and
    ``progress=False`` (``run``'s way to say "silent"); they read numpy numbers as the numbers they
    hold, and progress as None/False (silent), True (messages on standard error) or a function."""
    import numpy as np

    from crosspatch.workflows.output import progress_function
    from crosspatch.workflows.preflight import preflight
    from crosspatch.workflows.splice import splice

    for call in (lambda: splice("b", tuned="t", prompts="p", max_new_tokens=np.int64(0)),
                 lambda: preflight("b", adapter="a", prompts="p", max_new_tokens=np.int64(0))):
        with pytest.raises(OptionError, match=r"max_new_tokens must be a positive integer, not 0$"):
            call()  # (the number read, then checked)
    progress_function(False)("silent")
    progress_function(None)("silent")
    progress_function(True)("a stage")
    assert capsys.readouterr() == ("", "a stage\n")
    with pytest.raises(OptionError, match="progress must be a function of one message, True, False or None"):
        progress_function(5)


def test_a_descendant_given_twice_under_two_names_is_named_by_both(tmp_path):
    from crosspatch.execution.roles import descendant_roles

    (tmp_path / "it").mkdir()
    with pytest.raises(OptionError, match=r"descendants 'a' and 'b' name the same model \(.*it/\): it would be loaded"):
        descendant_roles([f"a={tmp_path / 'it'}", f"b={tmp_path / 'it'}/"])
    with pytest.raises(OptionError, match=r"descendant \S+it is given twice: it would"):  # one spelling: said once
        descendant_roles([str(tmp_path / "it"), str(tmp_path / "it")])
