"""crosspatch splice: the static chimeras equal independently built spliced models, the splice
leaves the loaded models as they were, and the zoo's splice page renders in a real browser."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from crosspatch.errors import BoundaryError, ModelPathNotFoundError, OptionError, PromptFileError, RunDirectoryError
from crosspatch.execution import load_models
from crosspatch.execution.search import greedy_rollout
from crosspatch.models.forward import ModelHandle
from crosspatch.workflows.splice import CHIMERAS, chimera_name, generate_chimera, splice
from crosspatch.zoo import zoo_path

Z = zoo_path()
PROMPTS = [json.loads(line) for line in (Z / "prompts" / "all.jsonl").read_text().splitlines()[::12]]  # 8 prompts
ROLES = {"base": "base", "tuned": "tuned"}


def _encode(models, prompts):
    return [models.tokenizer(p["prompt"])["input_ids"] for p in prompts]


def _greedy_of(module, models, ids, n=24):
    return greedy_rollout(ModelHandle("spliced", module), ids, n, models)


def test_checkpoint_chimera_equals_a_model_with_the_late_weights_copied_in():
    models = load_models(str(Z / "base"), tuned={"tuned": str(Z / "it-full")}, residency="both")
    ids, b = _encode(models, PROMPTS), 3
    with models.use("base") as base, models.use("tuned") as tuned:
        spliced = copy.deepcopy(base.anatomy.model)
        late = {k: v for k, v in tuned.anatomy.model.state_dict().items()
                if not k.startswith("model.layers.") or int(k.split(".")[2]) >= b}
        late = {k: v for k, v in late.items() if "embed_tokens" not in k}
        spliced.load_state_dict(late, strict=False)
        expected = _greedy_of(spliced, models, ids)
        base_before = greedy_rollout(base, ids, 24, models)
        layers_before = list(base.anatomy.layers)
    got = generate_chimera(models, "base", "tuned", b, ids, 24, ROLES)
    assert got == expected
    with models.use("base") as base:  # restored: same modules, same generations
        assert list(base.anatomy.layers) == layers_before and base.anatomy.model.lm_head is base.anatomy.lm_head
        assert greedy_rollout(base, ids, 24, models) == base_before
    with models.use("tuned") as tuned:
        assert generate_chimera(models, "tuned", "tuned", b, ids, 24, ROLES) == greedy_rollout(tuned, ids, 24, models)


def test_adapter_chimera_equals_the_adapter_merged_into_the_late_layers_only():
    models = load_models(str(Z / "base"), adapters={"tuned": str(Z / "it-lora-all")})
    ids, b = _encode(models, PROMPTS), 4
    with models.use("tuned") as tuned:
        peft_model = tuned.module
        spliced = copy.deepcopy(peft_model.get_base_model())
        with torch.no_grad():
            for name, module in peft_model.named_modules():
                if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                    short = name.removeprefix("base_model.model.")
                    layer = int(short.split(".")[2])
                    if layer >= b:
                        spliced.get_submodule(short).base_layer.weight += module.get_delta_weight("tuned")
        from peft.tuners.lora import LoraLayer

        for module in spliced.modules():
            if isinstance(module, LoraLayer):
                module.enable_adapters(False)  # the copy computes its base weights (now merged above b)
    expected = _greedy_of(spliced, models, ids)
    assert generate_chimera(models, "base", "tuned", b, ids, 24, ROLES) == expected
    # the adapter is whole again afterwards
    with models.use("tuned") as tuned:
        assert generate_chimera(models, "tuned", "tuned", b, ids, 24, ROLES) == greedy_rollout(tuned, ids, 24, models)


@pytest.mark.slow
def test_splice_of_the_zoo_writes_a_page_that_renders_in_chromium(tmp_path):
    from crosspatch.report.browser import find_chromium, load

    result = splice(str(Z / "base"), tuned=str(Z / "it-full"), prompts=PROMPTS, boundaries=[3, 0.6], out=tmp_path / "sp",
                    max_new_tokens=24)
    document = result.document
    assert sorted(document["boundaries"]) == ["3", "4"]
    block = document["boundaries"]["3"]
    assert list(block["chimeras"]) == [chimera_name(early, late) for early, late in CHIMERAS]
    assert block["chimeras"]["tuned early + tuned late"]["same_as_tuned"] == 1.0
    assert document["diagnostic"]["3"]["n_events"] > 0 and "interaction" in document["diagnostic"]["3"]
    assert (tmp_path / "sp" / "crosspatch" / "summary.json").exists()
    assert result.continuations(3, "tuned", "tuned") == result.continuations(4, "tuned", "tuned")
    page = tmp_path / "sp" / "splice.html"
    if find_chromium() is None:
        pytest.skip("no chromium binary (the CI script installs Debian's chromium with apt)")
    dom, errors = load(page)
    assert errors == []
    assert dom.count("<mark>") >= sum(r["departs_from_tuned"] is not None for c in block["chimeras"].values()
                                      for r in c["outputs"])  # every departure is marked
    assert len(re.findall(r"<h2>Continuations at boundary", dom)) == 2


def test_splice_refuses_bad_input_before_loading(tmp_path, monkeypatch):
    import crosspatch.execution as execution

    monkeypatch.setattr(execution, "load_models", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(OptionError):
        splice(str(Z / "base"), prompts=PROMPTS)
    with pytest.raises(ModelPathNotFoundError):
        splice(str(Z / "base"), tuned=str(tmp_path / "none"), prompts=PROMPTS)
    with pytest.raises(BoundaryError):
        splice(str(Z / "base"), tuned=str(Z / "it-full"), prompts=PROMPTS, boundaries=[6])
    with pytest.raises(BoundaryError):
        splice(str(Z / "base"), tuned=str(Z / "it-full"), prompts=PROMPTS, boundaries=[1.5])
    # the Python API's odd values: named errors, not AttributeError/ValueError from deep inside
    with pytest.raises(OptionError, match="the base must be a model directory"):
        splice(None, tuned=str(Z / "it-full"), prompts=PROMPTS)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="LoadOptions"):
        splice(str(Z / "base"), tuned=str(Z / "it-full"), prompts=PROMPTS, options=5)
    with pytest.raises(OptionError, match="True or False"):
        splice(str(Z / "base"), tuned=str(Z / "it-full"), prompts=PROMPTS, run_diagnostic="no")  # type: ignore[arg-type]
    with pytest.raises(PromptFileError):
        splice(str(Z / "base"), tuned=str(Z / "it-full"), prompts=["Rain in Boston", "  "])
    with pytest.raises(RunDirectoryError, match="a run directory is a path"):
        splice(str(Z / "base"), tuned=str(Z / "it-full"), prompts=PROMPTS, out=5)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="positive integer"):
        splice(str(Z / "base"), tuned=str(Z / "it-full"), prompts=PROMPTS, max_new_tokens=True)


def test_what_loading_found_heads_the_splice_page():
    from crosspatch.workflows.splice import splice_sections

    sections = splice_sections({"boundaries": {}, "warnings": ["the adapter's adapter_config.json names its base as 'x'"]})
    assert [s.title for s in sections] == ["Warnings"] and "names its base" in sections[0].paragraphs[0]
    assert splice_sections({"boundaries": {}, "warnings": []}) == []


def test_a_descendant_with_no_scorable_event_is_reported_not_a_crash(tmp_path):
    """A broken descendant (NaN weights: every logit NaN) leaves the diagnostic without an event;
    its page crashed formatting the missing means. It now says why there is no effect, and a
    chimera departing at the first generated token reads 0, not the "—" of no departure."""
    from safetensors.torch import load_file, save_file

    from crosspatch.testing import save_tiny_pair
    from crosspatch.workflows.splice import _ci, splice_sections

    root = save_tiny_pair(tmp_path / "pair")
    weights = load_file(root / "tuned" / "model.safetensors")
    name = next(k for k in weights if k.endswith("layers.3.mlp.down_proj.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, root / "tuned" / "model.safetensors", metadata={"format": "pt"})
    prompts = [{"id": f"p{k}", "prompt": f"Rain in town {k}"} for k in range(3)]
    result = splice(str(root / "base"), tuned=str(root / "tuned"), prompts=prompts, out=tmp_path / "sp", max_new_tokens=4)
    diagnostic = result.document["diagnostic"]
    assert diagnostic["verdict"] == "inconclusive" and "NaN" in diagnostic["reason"]
    text = (tmp_path / "sp" / "splice.md").read_text()
    assert "found no scorable first-divergence event: inconclusive — No prompt produced" in text
    block = next(iter(result.document["boundaries"].values()))["chimeras"]
    assert block["base early + base late"]["median_departure"] == 0  # the NaN model says nothing at all
    rows = splice_sections(result.document)[-1].tables[0].rows
    assert _ci({"mean": None, "ci": None}) == "—"  # (merge-check's table of a merge without events too)
    assert rows[0][3] == "0" and rows[1][3] == "—"
