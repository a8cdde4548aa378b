"""crosspatch preflight: on the zoo it passes the adapter and its merge, and fails, naming the
cause, on the do-nothing adapter and the broken merge; inputs are refused before any model loads."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from crosspatch.cli import app
from crosspatch.errors import (
    ModelPathNotFoundError,
    OptionError,
    PromptFileError,
    RunDirectoryError,
    RunDirectoryNotEmptyError,
    RunSettingsMismatchError,
)
from crosspatch.workflows.preflight import preflight
from crosspatch.workflows.preflight_measures import generation_health
from crosspatch.workflows.preflight_policy import PreflightPolicy
from crosspatch.zoo import zoo_path
from crosspatch.zoo.faults import BROKEN_MERGE, NOOP_ADAPTER

Z = zoo_path()
PROMPTS = [json.loads(line) for line in (Z / "prompts" / "all.jsonl").read_text().splitlines()[::8]]  # 12 prompts


def run(adapter=None, merged=None, **kw):
    kw.setdefault("prompts", PROMPTS)
    kw.setdefault("max_new_tokens", 24)
    return preflight(str(Z / "base"), adapter=adapter and str(Z / adapter), merged=merged and str(Z / merged), **kw)


def test_adapter_and_its_merge_pass_every_check(tmp_path):
    # (48 tokens: zoo v3's reports, with office headers and local terms, end after 24 tokens less often than the
    # base's prose, which generation-health would rightly flag as a warning)
    result = run("it-lora-all", "it-merged", domain_text=Z / "prompts" / "domain.jsonl", out=tmp_path / "pf",
                 max_new_tokens=48)
    checks = result.checks
    assert result.passed and result.exit_code == 0, result
    assert [c["status"] for c in checks.values()] == ["pass"] * 5
    assert checks["adapter-active"]["numbers"]["nonzero_delta_modules"] == checks["adapter-active"]["numbers"]["adapted_modules"] > 0
    merge = checks["adapter-vs-merged"]["numbers"]
    assert merge["precision"] == "half"  # the merged checkpoint is stored in float16
    assert merge["max_abs_logit_diff"] < 0.6 and merge["top1_agreement"] >= 0.99
    nll = checks["domain-learning"]["numbers"]["nll"]
    assert nll["adapter"] < nll["base"] and abs(nll["adapter"] - nll["merged"]) < 1e-2
    for name in ("preflight.json", "preflight.md", "preflight.html"):
        assert (tmp_path / "pf" / name).stat().st_size > 0


def test_an_adapter_trained_with_added_tokens_is_compared_over_the_shared_vocabulary(tmp_path):
    """An adapter (and its merge) whose vocabulary grew by tokens added for fine-tuning has more
    logit rows than the base: comparing them indexed the wider logits with the base's mask and
    stopped with an IndexError. Rows a model lacks are tokens the base's tokenizer never gives."""
    from crosspatch.testing.contract import save_tiny_lora

    base, adapter, merged = save_tiny_lora(tmp_path, added_tokens=("<|im_start|>", "<|im_end|>"),
                                           modules_to_save=["embed_tokens", "lm_head"])
    result = preflight(str(base), adapter=str(adapter), merged=str(merged),
                       prompts=[{"id": f"p{k}", "prompt": f"the weather in city {k} is"} for k in range(4)],
                       max_new_tokens=8)
    checks = result.checks
    assert checks["adapter-vs-merged"]["status"] == "pass"
    assert checks["adapter-vs-merged"]["numbers"]["max_abs_logit_diff"] < 1e-4
    assert checks["adapter-active"]["status"] == "pass"


def test_what_loading_found_is_on_the_preflight_page(tmp_path):
    """Warnings of loading (here an adapter whose config names another base: trained on the
    instruct model, applied to the pretrained one) are in preflight.json and on its pages."""
    adapter = tmp_path / "other-base"
    shutil.copytree(Z / "it-lora-all", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "org/weather-it"}))
    result = preflight(str(Z / "base"), adapter=str(adapter), prompts=PROMPTS[:2], max_new_tokens=4,
                       out=tmp_path / "pf")
    assert any("names its base as 'org/weather-it'" in w for w in result.document["warnings"])
    for page in ("preflight.md", "preflight.html"):
        text = (tmp_path / "pf" / page).read_text()
        assert "Warnings" in text and "weather-it" in text, page


def test_do_nothing_adapter_fails_naming_zero_b_matrices():
    result = run(NOOP_ADAPTER)
    check = result.checks["adapter-active"]
    assert not result.passed and result.failed() == ["adapter-active"]
    assert check["numbers"]["nonzero_delta_modules"] == 0 and check["numbers"]["greedy_changed"] == 0
    assert any("LoRA B matrix is zero" in cause for cause in check["causes"])


@pytest.mark.parametrize("method", ["ia3", "oft", "loha"])
def test_an_untrained_adapter_of_another_method_fails_and_its_causes_claim_nothing_unmeasured(tmp_path, method):
    """An adapter saved before training is an identity whatever its method. Rotations (OFT) and
    scalings (IA3) have no additive ΔW: their ΔW is not measured (PEFT's "delta" of a rotation is
    the rotation itself, whose norm is no change), and the check neither says "ΔW is not zero" nor
    blames LoRA B matrices a LoHa does not have."""
    import peft
    from transformers import AutoModelForCausalLM

    config = {"ia3": lambda: peft.IA3Config(target_modules=["q_proj", "v_proj", "down_proj"],
                                            feedforward_modules=["down_proj"]),
              "oft": lambda: peft.OFTConfig(r=0, oft_block_size=4, target_modules=["q_proj", "v_proj"]),
              "loha": lambda: peft.LoHaConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])}[method]()
    peft.get_peft_model(AutoModelForCausalLM.from_pretrained(str(Z / "base")), config).save_pretrained(
        str(tmp_path / method))
    result = preflight(str(Z / "base"), adapter=str(tmp_path / method), prompts=PROMPTS[:4], max_new_tokens=8)
    check = result.checks["adapter-active"]
    assert result.failed() == ["adapter-active"] and check["numbers"]["greedy_changed"] == 0
    causes = " ".join(check["causes"])
    assert "LoRA B" not in causes
    if method == "loha":  # additive: measured, and zero
        assert "every ΔW is zero" in causes
    else:
        assert "ΔW is not zero" not in causes and f"not measured here ({method.upper()} has no additive ΔW)" in causes
        assert all(row[3] == "—" for row in check["table"]["rows"]), check["table"]["rows"][:2]  # ‖ΔW‖ not measured


def test_zero_scaling_is_named(tmp_path):
    adapter = tmp_path / "alpha0"
    shutil.copytree(Z / "it-lora-all", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 0}))
    result = preflight(str(Z / "base"), adapter=str(adapter), prompts=PROMPTS[:4], max_new_tokens=8)
    assert result.failed() == ["adapter-active"]
    assert any("scaling 0" in cause for cause in result.checks["adapter-active"]["causes"])


def test_an_adapter_or_merge_with_non_finite_logits_fails_as_broken(tmp_path):
    """A NaN in one adapter weight makes every logit NaN; the check said the adapter "moves the logits
    by up to 0 (mean KL nan)" and passed it (a NaN compares false with every tolerance, and Python's
    max skips it). Non-finite positions are counted per model, left out of the differences, and fail."""
    import torch
    from safetensors.torch import load_file, save_file

    from crosspatch.workflows.preflight_checks import _merge_check
    from crosspatch.workflows.preflight_measures import Agreement

    adapter = tmp_path / "nan"
    shutil.copytree(Z / "it-lora-all", adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    name = next(k for k in weights if "lora_B" in k)
    weights[name][0, 0] = float("nan")
    save_file(weights, adapter / "adapter_model.safetensors")
    result = preflight(str(Z / "base"), adapter=str(adapter), prompts=PROMPTS[:4], max_new_tokens=8)
    check = result.checks["adapter-active"]
    assert check["status"] == "fail" and "not finite" in check["causes"][0], check
    assert check["numbers"]["non_finite_positions"] == [0, check["numbers"]["positions"]]

    agreement, real = Agreement(), torch.ones(5, dtype=torch.bool)
    same = torch.randn(3, 5)
    merged = same.clone()
    merged[1, 2] = float("nan")  # one position of the merge broken, the others exact
    agreement.add(same, merged, real)
    numbers = agreement.numbers()
    assert numbers["non_finite_positions"] == [0, 1] and numbers["compared_positions"] == 2
    assert numbers["max_abs_logit_diff"] == 0 and numbers["top1_agreement"] == 1
    tolerances = PreflightPolicy().tolerances("float32")
    check = _merge_check(numbers, [], tolerances, "float32", PreflightPolicy())
    assert check.status == "fail" and any("not finite" in cause for cause in check.causes), check


def test_broken_merge_fails_with_confident_divergences():
    result = run("it-lora-all", BROKEN_MERGE)
    check = result.checks["adapter-vs-merged"]
    assert "adapter-vs-merged" in result.failed() and result.checks["adapter-active"]["status"] == "pass"
    assert check["numbers"]["confident_divergences"] > 0
    assert any("max |Δlogit|" in cause for cause in check["causes"])


@pytest.mark.slow
def test_a_merge_in_memory_is_checked_at_its_precision():
    bf16 = run("it-lora-all", merge_in_memory="bfloat16")
    fp32 = run("it-lora-all", merge_in_memory="float32")
    rounded, exact = (r.checks["adapter-vs-merged"]["numbers"] for r in (bf16, fp32))
    assert bf16.passed and fp32.passed and (rounded["precision"], exact["precision"]) == ("half", "float32")
    assert exact["max_abs_logit_diff"] < 1e-3 < rounded["max_abs_logit_diff"]  # bf16 rounding shows, float32 does not
    with pytest.raises(OptionError):
        run("it-lora-all", "it-merged", merge_in_memory="bfloat16")


def test_an_adapter_without_an_additive_delta_that_moves_the_logits_is_active_whatever_else_is_noted():
    """An IA3 or OFT adapter has no ΔW to read: one that moves the logits and changes greedy
    outputs is active even when something else is noted (a target that matches no module, the
    base's non-finite logits); only a measured ΔW of zero makes a moving adapter inactive."""
    from crosspatch.workflows.preflight_checks import _changes_check

    agreement = {"max_abs_logit_diff": 2.0, "mean_kl": 0.1, "non_finite_positions": [0, 0], "positions": 8}
    rows = [{"module": "model.layers.0.self_attn.q_proj", "rank": None, "scaling": None, "delta_norm": None,
             "relative": None}]
    weights = {"modules": rows, "modules_to_save": [], "method": "IA3", "unmatched_targets": ["k_proj"]}
    check = _changes_check("adapter-active", "adapter", agreement, 3, 8, PreflightPolicy(), weights)
    assert check.status == "warn" and "match no module" in check.summary, check.summary
    zero = {**weights, "modules": [dict(rows[0], delta_norm=0.0, relative=0.0)], "method": "LORA"}
    assert _changes_check("adapter-active", "adapter", agreement, 3, 8, PreflightPolicy(), zero).status == "fail"


def test_an_adapter_peft_cannot_merge_is_named_under_merge_in_memory(tmp_path):
    """A LoRA that trained biases the base does not have (``lora_bias=True``) runs, but PEFT cannot
    merge it: the in-memory merge stopped with PEFT's bare RuntimeError; now a named error that
    says the adapter itself runs unmerged."""
    import peft
    from transformers import AutoModelForCausalLM

    from crosspatch.errors import UnsupportedAdapterError

    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(str(Z / "base")), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_bias=True, init_lora_weights=False))
    model.save_pretrained(str(tmp_path / "lora-bias"))
    with pytest.raises(UnsupportedAdapterError, match="PEFT cannot merge the adapter.*lora_bias.*runs unmerged"):
        preflight(str(Z / "base"), adapter=str(tmp_path / "lora-bias"), prompts=PROMPTS[:2], max_new_tokens=4,
                  merge_in_memory="float32")
    assert preflight(str(Z / "base"), adapter=str(tmp_path / "lora-bias"), prompts=PROMPTS[:2],
                     max_new_tokens=4).checks["adapter-active"]["status"] == "pass"


@pytest.mark.slow
def test_policy_tolerances_decide_the_merge_check(tmp_path):
    strict = run("it-lora-all", "it-merged", policy={"max_abs_logit_diff": 1e-6})
    assert strict.failed() == ["adapter-vs-merged"]
    assert strict.checks["adapter-vs-merged"]["numbers"]["tolerances"]["max_abs_logit_diff"] == 1e-6
    (tmp_path / "strict.yml").write_text("max_abs_logit_diff: 1.0e-6\n")  # a file, as --policy takes it
    assert run("it-lora-all", "it-merged", policy=str(tmp_path / "strict.yml")).failed() == ["adapter-vs-merged"]


def test_inputs_are_refused_before_any_model_loads(tmp_path, monkeypatch):
    import crosspatch.execution as execution

    monkeypatch.setattr(execution, "load_models", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(OptionError):
        preflight(str(Z / "base"))
    with pytest.raises(OptionError, match="give a full fine-tuned checkpoint as merged="):  # (splice's name for it)
        preflight(str(Z / "base"), tuned=str(Z / "it-full"))
    with pytest.raises(ModelPathNotFoundError):
        preflight(str(Z / "base"), adapter=str(tmp_path / "missing"))
    with pytest.raises(OptionError, match="unknown preflight policy"):
        run("it-lora-all", policy={"max_abs": 1})
    with pytest.raises(OptionError):
        run("it-lora-all", policy={"min_top1_agreement": 2})
    with pytest.raises(PromptFileError):
        run("it-lora-all", domain_text=tmp_path / "none.txt")
    with pytest.raises(PromptFileError, match="not a regular file"):
        run("it-lora-all", domain_text=tmp_path)
    with pytest.raises(PromptFileError, match="path of a .jsonl or text file"):
        run("it-lora-all", domain_text=5)
    with pytest.raises(OptionError, match="a dict of its fields"):
        run("it-lora-all", policy=5)
    with pytest.raises(OptionError, match="merged must be a model directory"):
        run("it-lora-all", merged="")
    with pytest.raises(PromptFileError, match="holds only whitespace"):
        run("it-lora-all", prompts=["Rain in Boston", " \n"])
    for out in (5, "", " "):  # a TypeError from Path(5); "" was the current directory
        with pytest.raises(RunDirectoryError, match="a run directory is a path"):
            run("it-lora-all", out=out)
    with pytest.raises(OptionError, match="positive integer"):
        run("it-lora-all", max_new_tokens=True)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryNotEmptyError):
        run("it-lora-all", out=tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_finished_output_is_read_back_and_other_inputs_refused(tmp_path, monkeypatch):
    first = run("it-lora-all", prompts=PROMPTS[:3], max_new_tokens=6, out=tmp_path / "pf")
    import crosspatch.execution as execution

    monkeypatch.setattr(execution, "load_models", lambda *a, **k: pytest.fail("a model was loaded"))
    again = run("it-lora-all", prompts=PROMPTS[:3], max_new_tokens=6, out=tmp_path / "pf")
    assert again.document == json.loads((tmp_path / "pf" / "preflight.json").read_text()) == first.document
    with pytest.raises(RunSettingsMismatchError):
        run("it-lora-all", prompts=PROMPTS[:3], max_new_tokens=7, out=tmp_path / "pf")


def test_model_text_is_escaped_in_the_pages(tmp_path):
    prompts = [{"id": "x<b>", "prompt": "<script>alert(1)</script> Boston"}]
    run("it-lora-all", prompts=prompts, max_new_tokens=4, out=tmp_path / "pf")
    page = (tmp_path / "pf" / "preflight.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert "<script>" not in (tmp_path / "pf" / "preflight.md").read_text()


def test_generation_health_flags(tokenizer):
    eos = {tokenizer.eos_token_id}
    looping = tokenizer("ab ab ab ab ab ab ab ab", add_special_tokens=False)["input_ids"]
    healthy = tokenizer("rain later today", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    special = [t for t in tokenizer.all_special_ids if t not in eos and t != tokenizer.pad_token_id]
    outputs = [looping, healthy, [tokenizer.eos_token_id]] + ([[special[0], *healthy]] if special else [])
    health = generation_health(outputs, tokenizer, eos, PreflightPolicy())
    flags = health["flags"]
    assert flags[0]["loop"] and flags[0]["no_eos"] and not flags[1]["loop"] and not flags[1]["no_eos"]
    assert flags[2]["empty"] and not flags[1]["empty"]
    if special:
        assert flags[3]["special_leak"] and not flags[1]["special_leak"]


def test_cli_exit_codes(tmp_path):
    runner = CliRunner()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS[:3]))
    common = ["preflight", "--base", str(Z / "base"), "--prompts", str(prompts), "--max-new-tokens", "6"]
    ok = runner.invoke(app, common + ["--adapter", str(Z / "it-lora-all"), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["passed"] is True
    bad = runner.invoke(app, common + ["--adapter", str(Z / NOOP_ADAPTER)])
    assert bad.exit_code == 1 and "changes nothing" in bad.output
    unusable = runner.invoke(app, common + ["--adapter", str(tmp_path / "nope")])
    assert unusable.exit_code == 2 and "ModelPathNotFoundError" in unusable.output


def test_a_preflight_that_crashes_exits_unusable_not_failed(monkeypatch):
    """Exit 1 is a failed check; Python's exit code for an uncaught exception is 1 too, which CI
    would read as a finding about the adapter. A crash exits 2, with its traceback to report."""
    import crosspatch.workflows.preflight as preflight_module

    def crash(*_args, **_kwargs):
        raise KeyError("input_ids")

    monkeypatch.setattr(preflight_module, "preflight", crash)
    result = CliRunner().invoke(app, ["preflight", "--base", str(Z / "base"), "--adapter", str(Z / "it-lora-all")])
    assert result.exit_code == 2 and "Traceback" in result.stderr and "crosspatch preflight failed" in result.stderr


@pytest.mark.slow
def test_preflight_into_a_run_directory_adds_a_section_to_its_reports(tmp_path):
    import crosspatch

    pair = crosspatch.load_pair(str(Z / "base"), adapter=str(Z / "it-lora-all"))
    crosspatch.run(pair, PROMPTS[:4], max_new_tokens=8, bootstrap=200, out=tmp_path / "run")
    shutil.copytree(tmp_path / "run", tmp_path / "same-run")
    result = run("it-lora-all", prompts=PROMPTS[:3], max_new_tokens=6, out=tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["preflight"]["passed"] is result.passed is True
    assert [c["name"] for c in summary["preflight"]["checks"]] == list(result.checks)
    assert "## Preflight" in (tmp_path / "run" / "report.md").read_text()
    assert "Preflight" in (tmp_path / "run" / "report.html").read_text()
    with pytest.raises(RunSettingsMismatchError, match="that run's own models"):  # another pair's checks: refused
        run("it-lora-late", prompts=PROMPTS[:3], max_new_tokens=6, out=tmp_path / "same-run")
    assert "preflight" not in json.loads((tmp_path / "same-run" / "summary.json").read_text())


def test_domain_text_reads_in_the_encoding_its_mark_names(tmp_path):
    """Plain text saved with a byte-order mark (UTF-8 or UTF-16: Windows tools) reads as written."""
    from crosspatch.workflows.preflight_measures import read_domain_text

    for encoding in ("utf-8", "utf-8-sig", "utf-16"):
        path = tmp_path / f"domain-{encoding}.txt"
        path.write_bytes("Rain in Boston.\n\nWind later.\n".encode(encoding))
        assert read_domain_text(path) == ["Rain in Boston.", "Wind later."], encoding


def test_a_callers_autocast_changes_no_number():
    """A notebook or training loop calling preflight inside its `torch.autocast(...)` got the
    adapter's weight deltas summed in bfloat16 (max relative delta 0.9113 against 0.9110): every
    check now computes in the weights' dtype, whatever the caller entered."""
    import torch

    outside = run("it-lora-all", max_new_tokens=8).document["checks"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert run("it-lora-all", max_new_tokens=8).document["checks"] == outside


def test_domain_text_of_one_token_texts_measures_nothing_and_says_so(tmp_path):
    """Texts of one token each under a tokenizer that adds no BOS leave no token to predict: the
    check compared NaN with NaN, failed every descendant ("did the fine-tune learn its domain?")
    and wrote NaN into preflight.json. It says nothing was measured."""
    from types import SimpleNamespace

    from crosspatch.workflows.preflight_checks import _domain_check

    one_token = SimpleNamespace(tokenizer=lambda text, add_special_tokens: {"input_ids": [7]})
    check = _domain_check(one_token, ["base", "adapter"], ["Rain", "Wind"], PreflightPolicy())
    assert check.status == "warn" and "nothing measured" in check.summary and "2 domain text" in check.summary
    assert check.numbers == {"nll": {"base": None, "adapter": None}, "tokens": 0, "texts": 0}
