"""A base + LoRA adapter directory equals the same adapter merged into a full checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from crosspatch.execution import load_pair
from crosspatch.runner.pipeline import run
from crosspatch.testing import tiny_model

MERGE_TOLERANCE = 1e-4  # fp32: merged W + BA vs unmerged x@W + x@A@B differ by rounding only


def _lora_dirs(tmp_path, bias="none", modules_to_save=None, seed=3):
    from crosspatch.testing.contract import save_tiny_lora

    return save_tiny_lora(tmp_path, seed=seed, bias=bias, modules_to_save=modules_to_save)


def test_adapter_cells_equal_merged_cells(tmp_path, prompts):
    base, adapter, merged = _lora_dirs(tmp_path)
    via_adapter = load_pair(str(base), adapter=str(adapter))
    via_merged = load_pair(str(base), tuned=str(merged))
    assert via_adapter.residency == "adapter" and via_adapter.pt.module is via_adapter.it.module
    a = run(via_adapter, prompts, max_new_tokens=12, bootstrap=0, progress=False)
    m = run(via_merged, prompts, max_new_tokens=12, bootstrap=0, progress=False)
    assert a.records, "the adapter must change the model"
    assert [(r.prompt_id, r.position, r.t_pt, r.t_it) for r in a.records] == [
        (r.prompt_id, r.position, r.t_pt, r.t_it) for r in m.records
    ]
    worst = max(abs(x.cells[n][c] - y.cells[n][c]) for x, y in zip(a.records, m.records)
                for n in x.cells for c in x.cells[n])
    print(f"adapter vs merged max abs cell difference: {worst:.2e}")
    assert worst <= MERGE_TOLERANCE
    assert via_adapter.provenance["adapter"]["settings"]["r"] == 4


def test_a_peft_model_in_memory_over_its_own_base_is_scored_against_the_base_it_was(tmp_path, prompts):
    """The notebook flow ``peft = get_peft_model(base, config)`` then ``pair_from_models(base, peft)``:
    PEFT injects its layers into ``base`` in place, so the "base" carried the adapter and the run
    found no divergence at all ("the descendant decodes like the base"). The pair is now the PEFT
    model with its adapter off and on, as the adapter loaded from disk gives; a base that holds
    adapter layers, alone, is a named error."""
    from peft import PeftModel

    from crosspatch.errors import ModelLoadError
    from crosspatch.execution import models_from_modules, pair_from_models
    from crosspatch.testing import char_tokenizer

    base, adapter, _ = _lora_dirs(tmp_path)
    tok = char_tokenizer()

    def scored(pair):
        result = run(pair, prompts, max_new_tokens=12, bootstrap=0, progress=False)
        return [(r.prompt_id, r.kind, r.position, r.t_pt, r.t_it, round(r.cells["common_it"]["upt_lit"], 4))
                for r in result.records]

    expected = scored(load_pair(str(base), adapter=str(adapter)))
    assert expected, "the adapter must change the model"
    model = tiny_model("llama")  # the same weights as the saved base
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    assert scored(pair_from_models(model, peft_model, tok)) == expected
    assert scored(pair_from_models(peft_model, peft_model, tok)) == expected
    assert scored(pair_from_models(tiny_model("llama"), peft_model, tok)) == expected  # a base of its own: two models
    with pytest.raises(ModelLoadError, match="base: the base model holds PEFT adapter layers"):
        pair_from_models(model, tiny_model("llama"), tok)
    with pytest.raises(ModelLoadError, match="tuned and other share their weights"):
        models_from_modules({"base": tiny_model("llama"), "tuned": peft_model, "other": model}, tok)


def test_adapter_disabled_is_the_base(tmp_path):
    base, adapter, _ = _lora_dirs(tmp_path)
    pair = load_pair(str(base), adapter=str(adapter))
    ids = torch.tensor([[1, 40, 41, 42]])
    reference = tiny_model("llama")
    with torch.inference_mode(), pair.pt.active():
        got = pair.pt.anatomy.model(input_ids=ids).logits
    assert torch.allclose(got, reference(input_ids=ids).logits, atol=1e-6)


def test_adapter_settings_that_change_the_base_are_warned(tmp_path):
    base, adapter, _ = _lora_dirs(tmp_path, bias="lora_only")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["modules_to_save"] = ["lm_head"]
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    from crosspatch.models.adapters import adapter_settings

    _, warnings = adapter_settings(str(adapter))
    assert not any("bias=" in w for w in warnings)  # Llama's layers have no biases: nothing was trained in place
    assert any("modules_to_save" in w for w in warnings)


def _qwen2_lora_with_trained_biases(root):
    """A Qwen2 base (its attention projections have biases) and a LoRA adapter saved with
    ``bias="all"`` after its biases moved, as training moves them; and the merged model."""
    from peft import LoraConfig, get_peft_model

    from crosspatch.testing import char_tokenizer

    tok = char_tokenizer()
    tiny_model("qwen2").save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    torch.manual_seed(3)
    peft_model = get_peft_model(tiny_model("qwen2"), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, bias="all",
                                                                target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if name.endswith(".bias"):
                p.add_(torch.randn_like(p))
    peft_model.save_pretrained(root / "adapter")
    peft_model.merge_and_unload().save_pretrained(root / "merged")  # pyright: ignore[reportCallIssue]
    tok.save_pretrained(root / "merged")
    return root / "base", root / "adapter", root / "merged"


def test_an_adapter_that_trained_the_bases_biases_loads_the_base_on_its_own(tmp_path, prompts):
    """``bias="all"`` (or ``"lora_only"``) trains the base's own biases, which PEFT loads into the
    base's layers: with the adapter switched off, one shared copy was not the base (other events,
    other cells: a 1.9-logit difference here), with only a warning. Unless a residency is asked
    for, the base now loads on its own (two copies where they fit, else one model at a time), as
    the merged model's run does; ``sequential`` is exact too, and so are splice's chimeras."""
    base, adapter, merged = _qwen2_lora_with_trained_biases(tmp_path)

    def scored(pair):
        result = run(pair, prompts, max_new_tokens=12, bootstrap=0, progress=False)
        return result.records

    chosen = load_pair(str(base), adapter=str(adapter))
    reason = chosen.provenance["residency_reason"]  # two copies (they fit here), or one model at a time
    assert chosen.residency == "both" and "trained the base's own biases" in reason and "base loads on its own" in reason
    got, expected = scored(chosen), scored(load_pair(str(base), tuned=str(merged)))
    assert [(r.prompt_id, r.kind, r.position, r.t_pt, r.t_it) for r in got] == [
        (r.prompt_id, r.kind, r.position, r.t_pt, r.t_it) for r in expected]
    assert max(abs(x.cells["common_it"][c] - y.cells["common_it"][c]) for x, y in zip(got, expected)
               for c in x.cells["common_it"]) <= MERGE_TOLERANCE
    one_at_a_time = scored(load_pair(str(base), adapter=str(adapter), residency="sequential"))
    assert [(r.prompt_id, r.position, r.t_pt, r.t_it) for r in one_at_a_time] == [
        (r.prompt_id, r.position, r.t_pt, r.t_it) for r in expected]
    from crosspatch.workflows.splice import splice

    chimeras = [splice(str(base), prompts=prompts, boundaries=[2], max_new_tokens=6, run_diagnostic=False, **kw)
                .document["boundaries"]["2"] for kw in ({"adapter": str(adapter)}, {"tuned": str(merged)})]
    assert chimeras[0] == chimeras[1]  # the four chimeras of the adapter are the merged model's
    shared = load_pair(str(base), adapter=str(adapter), residency="adapter")  # asked for: warned
    assert any("trained the base's own biases" in w and "no residency asked for" in w for w in shared.warnings)
    assert not any("biases" in w for w in chosen.warnings)  # the base loads on its own: nothing to warn of
    # in memory: the PEFT model alone is warned about; with a base of its own it is the merged model's run
    from peft import PeftModel

    from crosspatch.execution import pair_from_models, pair_from_peft_model
    from crosspatch.testing import char_tokenizer

    peft_model = PeftModel.from_pretrained(tiny_model("qwen2"), str(adapter))
    assert any("trains the base's own biases in place" in w for w in pair_from_peft_model(peft_model, char_tokenizer()).warnings)
    in_memory = scored(pair_from_models(tiny_model("qwen2"), peft_model, char_tokenizer()))
    assert [(r.prompt_id, r.kind, r.position, r.t_pt, r.t_it) for r in in_memory] == [
        (r.prompt_id, r.kind, r.position, r.t_pt, r.t_it) for r in expected]


def test_an_adapter_whose_config_names_another_base_is_warned(tmp_path):
    """An adapter trained on the instruct model and applied to the pretrained one loads without a
    word (same shapes): its adapter_config.json's base_model_name_or_path is compared with the
    base given, by name (a local copy under the hub name's folder matches) or by path."""
    from crosspatch.models.adapters import base_name_warning

    base, adapter, _ = _lora_dirs(tmp_path)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": "org/weather-1b-instruct"}))
    pair = load_pair(str(base), adapter=str(adapter))
    assert any("names its base as 'org/weather-1b-instruct'" in w and str(base) in w for w in pair.warnings)
    assert base_name_warning("org/Weather-1B", "/models/weather-1b/") is None  # a local copy of the hub model
    assert base_name_warning(str(base), f"{base}/") is None and base_name_warning(None, str(base)) is None
    assert base_name_warning("org/weather-1b-instruct", "org/weather-1b") is not None
    (adapter / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": str(base)}))
    assert not any("names its base" in w for w in load_pair(str(base), adapter=str(adapter)).warnings)


@pytest.mark.slow
def test_a_hub_adapter_in_the_cache_loads_offline(tmp_path):
    """An adapter given as a hub id is read from the Hugging Face cache like a checkpoint (its
    adapter_config.json, not a config.json, marks it cached), and gives the local directory's
    numbers."""
    import os
    import shutil
    import subprocess
    import sys

    base, adapter, _ = _lora_dirs(tmp_path)
    for repo, src in (("org/tiny-base", base), ("org/tiny-adapter", adapter)):
        entry = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
        shutil.copytree(src, entry / "snapshots" / ("0" * 40))
        (entry / "refs").mkdir()
        (entry / "refs" / "main").write_text("0" * 40)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{k}", "prompt": t}) + "\n"
                               for k, t in enumerate(["Rain in Boston", "Sky", "Wind from the west"])))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    outs = {}
    for name, args in (("hub", ["--base", "org/tiny-base", "--adapter", "org/tiny-adapter"]),
                       ("local", ["--base", str(base), "--adapter", str(adapter)])):
        done = subprocess.run([sys.executable, "-m", "crosspatch", "run", *args, "--prompts", str(prompts),
                               "--out", str(tmp_path / name), "--max-new-tokens", "8", "--bootstrap", "0",
                               "--controls", "none", "--event-kinds", "first_diff"],
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        outs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    assert outs["hub"]["counts"] == outs["local"]["counts"] and outs["hub"]["counts"]["events"] > 0
    assert outs["hub"]["results"] == outs["local"]["results"]
    # the run records the snapshot (commit) each hub id was read from: the same id updated on the
    # Hub between two sessions of one run is another run, refused, not mixed into it
    models = json.loads((tmp_path / "hub" / "config.json").read_text())["models"]
    assert models["base"]["snapshot"] == models["adapter"]["snapshot"] == "0" * 40
    entry = tmp_path / "hf" / "hub" / "models--org--tiny-base"
    shutil.copytree(entry / "snapshots" / ("0" * 40), entry / "snapshots" / ("1" * 40))
    (entry / "refs" / "main").write_text("1" * 40)
    (tmp_path / "hub" / "summary.json").unlink()  # an unfinished run, resumed
    done = subprocess.run([sys.executable, "-m", "crosspatch", "run", "--base", "org/tiny-base", "--adapter",
                           "org/tiny-adapter", "--prompts", str(prompts), "--out", str(tmp_path / "hub"),
                           "--max-new-tokens", "8", "--bootstrap", "0", "--controls", "none", "--event-kinds",
                           "first_diff"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "RunSettingsMismatchError" in done.stdout + done.stderr, done.stderr[-2000:]
    assert "models.base.snapshot" in done.stdout + done.stderr


@pytest.mark.parametrize("lora", [
    dict(target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens", "lm_head"]),  # the usual SFT recipe
    dict(target_modules=["q_proj", "embed_tokens", "lm_head"]),  # the embeddings adapted by LoRA
])
def test_an_adapter_trained_with_added_tokens_loads_onto_its_base_resized(tmp_path, prompts, lora):
    """An adapter saved after tokens were added for fine-tuning (its embeddings hold more rows than
    the base's) was refused as "trained on another base?": the base is now grown to the adapter's
    rows, as PEFT asks of its users, and the run is the merged model's."""
    from crosspatch.testing.contract import save_tiny_lora

    base, adapter, merged = save_tiny_lora(tmp_path, added_tokens=("<|im_start|>", "<|im_end|>"), **lora)
    expected = run(load_pair(str(base), tuned=str(merged)), prompts, max_new_tokens=12, bootstrap=0, progress=False)
    assert expected.records
    for residency in ("adapter", "sequential"):
        got = run(load_pair(str(base), adapter=str(adapter), residency=residency), prompts, max_new_tokens=12,
                  bootstrap=0, progress=False)
        assert [(r.prompt_id, r.kind, r.position, r.t_pt, r.t_it) for r in got.records] == [
            (r.prompt_id, r.kind, r.position, r.t_pt, r.t_it) for r in expected.records], residency
        assert max(abs(x.cells[n][c] - y.cells[n][c]) for x, y in zip(got.records, expected.records)
                   for n in x.cells for c in x.cells[n]) <= MERGE_TOLERANCE


def test_adapters_trained_with_vocabularies_of_different_sizes_load_each_on_its_own(tmp_path, prompts):
    """One adapter trained after tokens were added (its embeddings and head hold more rows) and one
    whose head holds the base's rows fit no one size of a shared base copy (their compare failed as
    a shape mismatch): unless a residency is asked for, each loads on its own and scores as its
    merged model; asked to share one copy, a named error says what to run. An adapter holding no
    embedding weights shares a copy grown to the other's rows, in either order."""
    from crosspatch.errors import ModelLoadError
    from crosspatch.execution import load_models
    from crosspatch.testing.contract import save_tiny_lora

    base, grown, grown_merged = save_tiny_lora(tmp_path / "grown", added_tokens=("<|im_start|>", "<|im_end|>"),
                                               target_modules=["q_proj", "v_proj"],
                                               modules_to_save=["embed_tokens", "lm_head"])
    _, plain, plain_merged = save_tiny_lora(tmp_path / "plain", seed=4, target_modules=["q_proj", "v_proj"],
                                            modules_to_save=["lm_head"])
    _, lora_only, _ = save_tiny_lora(tmp_path / "lora-only", seed=5)
    models = load_models(str(base), adapters={"grown": str(grown), "plain": str(plain)})
    assert models.residency == "sequential" and "vocabularies of different sizes" in models.provenance[
        "residency_reason"]
    for role, merged in (("grown", grown_merged), ("plain", plain_merged)):
        expected = run(load_pair(str(base), tuned=str(merged)), prompts, max_new_tokens=12, bootstrap=0,
                       progress=False, event_kinds="first_diff")
        got = run(models, prompts, tuned=role, max_new_tokens=12, bootstrap=0, progress=False, event_kinds="first_diff")
        assert expected.records and [(r.prompt_id, r.position, r.t_pt, r.t_it) for r in got.records] == [
            (r.prompt_id, r.position, r.t_pt, r.t_it) for r in expected.records], role
    with pytest.raises(ModelLoadError, match="vocabularies of different sizes.*--residency sequential"):
        load_models(str(base), adapters={"grown": str(grown), "plain": str(plain)}, residency="adapter")
    for order in (("lora-only", "grown"), ("grown", "lora-only")):
        paths = {"lora-only": str(lora_only), "grown": str(grown)}
        shared = load_models(str(base), adapters={role: paths[role] for role in order})
        assert shared.residency == "adapter", order
        got = run(shared, prompts, tuned="grown", max_new_tokens=12, bootstrap=0, progress=False,
                  event_kinds="first_diff")
        expected = run(load_pair(str(base), tuned=str(grown_merged)), prompts, max_new_tokens=12, bootstrap=0,
                       progress=False, event_kinds="first_diff")
        assert [(r.prompt_id, r.position, r.t_pt, r.t_it) for r in got.records] == [
            (r.prompt_id, r.position, r.t_pt, r.t_it) for r in expected.records], order


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_an_adapter_whose_initialisation_rewrites_the_base_loads_the_base_on_its_own(tmp_path, prompts, init):
    """PiSSA and OLoRA adapters saved as trained (not converted to plain LoRA) make PEFT rewrite the
    base's weights in place as it loads them: with one shared copy, the "base" (adapter off) was
    the residual model. Such an adapter runs sequentially unless a residency is asked for."""
    from peft import LoraConfig, get_peft_model

    from crosspatch.testing import char_tokenizer

    tok = char_tokenizer()
    tiny_model("llama").save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, lora_alpha=4, init_lora_weights=init,
                                                                target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    from crosspatch.execution import pair_from_peft_model  # in memory, the base already rewritten: warned

    assert any("rewrote the base's weights in place" in w for w in pair_from_peft_model(peft_model, tok).warnings)
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")  # pyright: ignore[reportCallIssue]
    tok.save_pretrained(tmp_path / "merged")

    def events(pair):
        return [(r.prompt_id, r.kind, r.position, r.t_pt, r.t_it)
                for r in run(pair, prompts, max_new_tokens=12, bootstrap=0, progress=False).records]

    chosen = load_pair(str(tmp_path / "base"), adapter=str(tmp_path / "adapter"))
    assert chosen.residency == "both" and f"init_lora_weights='{init}'" in chosen.provenance["residency_reason"]
    assert events(chosen) == events(load_pair(str(tmp_path / "base"), tuned=str(tmp_path / "merged")))
    shared = load_pair(str(tmp_path / "base"), adapter=str(tmp_path / "adapter"), residency="adapter")
    assert any("rewrites the base's weights in place" in w for w in shared.warnings)


def _tuner(kind: str):
    """A non-LoRA PEFT method's config (weights initialised away from the identity)."""
    import peft

    targets = ["q_proj", "v_proj", "up_proj", "down_proj"]
    return {
        "ia3": lambda: peft.IA3Config(target_modules=["q_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"],
                                      init_ia3_weights=False),
        "loha": lambda: peft.LoHaConfig(r=4, alpha=8, target_modules=targets, init_weights=False),
        "lokr": lambda: peft.LoKrConfig(r=4, alpha=8, target_modules=targets, init_weights=False),
        "adalora": lambda: peft.AdaLoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                                              total_step=10),
        "oft": lambda: peft.OFTConfig(r=0, oft_block_size=4, target_modules=targets, init_weights=False),
        "vera": lambda: peft.VeraConfig(r=4, target_modules=["q_proj", "v_proj"], init_weights=False),
        "dora": lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True,
                                        init_lora_weights=False),
    }[kind]()


@pytest.mark.parametrize("kind", ["ia3", "loha", "lokr", "adalora", "oft", "vera", "dora"])
def test_every_weight_changing_peft_method_scores_as_its_merge_and_passes_the_adapter_inventory(tmp_path, prompts, kind):
    """Not only LoRA: each PEFT method that changes the model's layers, loaded as an adapter, gives
    the events and cells of its merge saved as a full checkpoint; preflight's inventory of the
    adapted modules reads it (AdaLoRA keeps its B as a bare parameter: it crashed there)."""
    from peft import get_peft_model

    from crosspatch.testing import char_tokenizer
    from crosspatch.workflows.preflight_measures import adapter_weight_report

    tiny_model("llama").save_pretrained(str(tmp_path / "base"))
    char_tokenizer().save_pretrained(str(tmp_path / "base"))
    torch.manual_seed(7)
    peft_model = get_peft_model(tiny_model("llama"), _tuner(kind))
    with torch.no_grad():  # far enough from the base to change its decisions
        for _, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * (0.5 if kind == "ia3" else 0.3))
    report = adapter_weight_report(peft_model, "default")
    assert report["modules"], "the adapted modules are listed"
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    peft_model.merge_and_unload().save_pretrained(str(tmp_path / "merged"))  # pyright: ignore[reportCallIssue]
    char_tokenizer().save_pretrained(str(tmp_path / "merged"))
    via_adapter = load_pair(str(tmp_path / "base"), adapter=str(tmp_path / "adapter"), hash_weights=False)
    via_merged = load_pair(str(tmp_path / "base"), tuned=str(tmp_path / "merged"), hash_weights=False)
    options = dict(max_new_tokens=10, bootstrap=0, progress=False, controls="none", event_kinds="first_diff")
    a, m = run(via_adapter, prompts, **options), run(via_merged, prompts, **options)
    assert a.records, "the adapter must change the model"
    assert [(r.prompt_id, r.position, r.t_pt, r.t_it) for r in a.records] == [
        (r.prompt_id, r.position, r.t_pt, r.t_it) for r in m.records]
    assert max(abs(x.cells[n][c] - y.cells[n][c]) for x, y in zip(a.records, m.records)
               for n in x.cells for c in x.cells[n]) <= MERGE_TOLERANCE


def test_adapters_of_different_peft_methods_load_each_on_its_own_and_score_as_their_merges(tmp_path, prompts,
                                                                                          monkeypatch):
    """PEFT holds one method per model: a compare of a LoRA and an IA3 adapter stopped after the
    base loaded ("Cannot combine adapters with different peft types"). With no residency asked for
    they now load one at a time, each scored as its own merge; asked to share one copy, the
    adapters are refused by name before any weight loads."""
    from peft import get_peft_model

    from crosspatch.errors import ModelLoadError
    from crosspatch.execution import load_models
    from crosspatch.testing.contract import save_tiny_lora

    base, lora, lora_merged = save_tiny_lora(tmp_path / "lora")
    torch.manual_seed(7)
    ia3 = get_peft_model(tiny_model("llama"), _tuner("ia3"))
    with torch.no_grad():
        for _, p in ia3.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    ia3.save_pretrained(str(tmp_path / "ia3"))
    ia3.merge_and_unload().save_pretrained(str(tmp_path / "ia3-merged"))  # pyright: ignore[reportCallIssue]
    adapters = {"lora": str(lora), "ia3": str(tmp_path / "ia3")}
    models = load_models(str(base), adapters=adapters, hash_weights=False)
    assert models.residency == "sequential"
    assert "adapters of different PEFT methods (adapter: LORA, ia3: IA3)" in models.provenance["residency_reason"]
    options = dict(max_new_tokens=10, bootstrap=0, progress=False, controls="none", event_kinds="first_diff")
    for role, merged in (("lora", lora_merged), ("ia3", tmp_path / "ia3-merged")):
        expected = run(load_pair(str(base), tuned=str(merged), hash_weights=False), prompts, **options)
        got = run(models, prompts, tuned=role, **options)
        assert expected.records and [(r.prompt_id, r.position, r.t_pt, r.t_it) for r in got.records] == [
            (r.prompt_id, r.position, r.t_pt, r.t_it) for r in expected.records], role
    import crosspatch.execution.opening as opening

    monkeypatch.setattr(opening, "load_causal_lm", lambda *a, **k: pytest.fail("a model's weights were loaded"))
    for residency in ("adapter", "both"):
        with pytest.raises(ModelLoadError, match=rf"different PEFT methods.*--residency {residency}\).*sequential"):
            load_models(str(base), adapters=adapters, residency=residency)


def test_an_adapter_that_replicates_the_bases_layers_is_refused_from_disk_and_in_memory(tmp_path):
    """PEFT's layer_replication stacks copies of the base's layers into a deeper model, which stays
    deeper with the adapter switched off: no base to cross-patch layer for layer (it was scored
    against the expanded model as its base)."""
    from peft import LoraConfig, get_peft_model

    from crosspatch.errors import UnsupportedAdapterError
    from crosspatch.execution import pair_from_peft_model
    from crosspatch.testing import char_tokenizer

    base = tiny_model("llama")
    base.save_pretrained(tmp_path / "base")
    char_tokenizer().save_pretrained(tmp_path / "base")
    expanded = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"],
                                                              layer_replication=[[0, 3], [1, 4]]))
    assert len(expanded.base_model.model.model.layers) == 6
    expanded.save_pretrained(tmp_path / "lora")
    with pytest.raises(UnsupportedAdapterError, match=r"layer_replication \[\[0, 3\], \[1, 4\]\]: a model of 6 layers"):
        load_pair(str(tmp_path / "base"), adapter=str(tmp_path / "lora"))
    with pytest.raises(UnsupportedAdapterError, match="layer_replication"):
        pair_from_peft_model(expanded, char_tokenizer())


def test_a_peft_model_in_memory_scores_the_adapter_named_or_its_one_active_adapter():
    from peft import LoraConfig, get_peft_model

    from crosspatch.errors import OptionError
    from crosspatch.execution import pair_from_peft_model
    from crosspatch.testing import char_tokenizer

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False),
                           adapter_name="a")
    model.add_adapter("b", LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False))
    assert pair_from_peft_model(model, char_tokenizer()).provenance["adapter"]["adapter_name"] == "a"  # the active one
    assert pair_from_peft_model(model, char_tokenizer(), adapter_name="b").provenance["adapter"]["adapter_name"] == "b"
    with pytest.raises(OptionError, match="'zzz' is not an adapter of this PEFT model \\(it holds 'a', 'b'\\)"):
        pair_from_peft_model(model, char_tokenizer(), adapter_name="zzz")
    model.base_model.set_adapter(["a", "b"])  # a combination no one adapter's switch reproduces
    with pytest.raises(OptionError, match="several active adapters \\('a', 'b'\\)"):
        pair_from_peft_model(model, char_tokenizer())


def test_a_run_on_another_adapter_of_a_peft_model_in_memory_leaves_its_active_adapters_as_they_were():
    """A training loop scores one adapter of a model while it trains another (or several at once):
    the run scores the adapter named, and the model computes with its own active adapters after."""
    from peft import LoraConfig, get_peft_model

    from crosspatch.execution import pair_from_peft_model
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import char_tokenizer

    from ..conftest import PROMPTS

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False),
                           adapter_name="a")
    model.add_adapter("b", LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False))
    settings = dict(boundary=2, max_new_tokens=8, bootstrap=0, progress=False, controls="none", event_kinds="first_diff")
    model.set_adapter("b")
    alone = run(pair_from_peft_model(model, char_tokenizer()), PROMPTS, **settings)  # b, the model's active one
    for active in (["a"], ["a", "b"]):
        model.base_model.set_adapter(active)
        scored = run(pair_from_peft_model(model, char_tokenizer(), adapter_name="b"), PROMPTS, **settings)
        assert [r.cells for r in scored.records] == [r.cells for r in alone.records] and alone.records
        assert list(model.active_adapters) == active


def test_a_peft_model_with_its_adapter_merged_is_scored_unmerged_and_left_merged():
    """``merge_adapter()`` (merged into the layers for fast inference): the run switched the adapter
    off for the base's passes, which unmerges it, so its passes mixed merged and unmerged weights
    and the model was left unmerged. Every pass now computes the adapter unmerged, the base's
    digest is of the base's own weights, and the model is merged again after."""
    import torch
    from peft import LoraConfig, get_peft_model

    from crosspatch.execution import pair_from_peft_model
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import char_tokenizer

    from ..conftest import PROMPTS

    torch.manual_seed(0)
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False))
    settings = dict(boundary=2, max_new_tokens=8, bootstrap=0, progress=False, controls="none", event_kinds="first_diff")
    unmerged = run(pair_from_peft_model(model, char_tokenizer()), PROMPTS, **settings)
    model.merge_adapter()
    pair = pair_from_peft_model(model, char_tokenizer())
    assert all(layer.merged for layer in model.modules() if hasattr(layer, "merged_adapters"))  # left merged
    from crosspatch.execution.in_memory import module_digest

    assert pair.provenance["base"]["weights_digest"] != module_digest(model.get_base_model())  # (read unmerged)
    merged = run(pair, PROMPTS, **settings)
    assert all(layer.merged for layer in model.modules() if hasattr(layer, "merged_adapters"))
    assert [r.key for r in merged.records] == [r.key for r in unmerged.records] and unmerged.records
    assert max(abs(a.cells[n][c] - b.cells[n][c]) for a, b in zip(merged.records, unmerged.records)
               for n in a.cells for c in a.cells[n]) <= 1e-5  # (a merge and unmerge round the weights)


def test_a_peft_model_with_its_adapter_layers_switched_off_is_scored_with_them_on_and_left_off():
    """``disable_adapter_layers()`` (an evaluation of the base in the middle of training): the
    descendant's passes computed the base, the run found no divergence and read it as "no late
    effect". The adapter is scored as it is, and its layers are off again after."""
    import torch
    from peft import LoraConfig, get_peft_model

    from crosspatch.execution import pair_from_peft_model
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import char_tokenizer

    from ..conftest import PROMPTS

    torch.manual_seed(0)
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False))
    settings = dict(boundary=2, max_new_tokens=8, bootstrap=0, progress=False, controls="none", event_kinds="first_diff")
    enabled = run(pair_from_peft_model(model, char_tokenizer()), PROMPTS, **settings)
    model.base_model.disable_adapter_layers()
    switched_off = run(pair_from_peft_model(model, char_tokenizer()), PROMPTS, **settings)
    assert [r.cells for r in switched_off.records] == [r.cells for r in enabled.records] and enabled.records
    assert all(layer.disable_adapters for layer in model.modules() if hasattr(layer, "merged_adapters"))


def test_a_descendant_that_is_the_base_is_named_in_the_run_warnings(tmp_path, prompts):
    """An adapter saved before its first training step (every lora_B zero, as PEFT initialises
    them) or a checkpoint that is a copy of the base computes exactly the base: the run found no
    divergence and said "no-late-effect: nothing it changed reaches these decisions", as if a
    fine-tune had been measured, and `gate` passed it. Both are named in the run's warnings and
    recorded with the model, and gate calls such a run unusable; trained ones are neither."""
    import shutil

    from peft import LoraConfig, get_peft_model

    from crosspatch.testing import tiny_model

    base, trained, merged = _lora_dirs(tmp_path)
    fresh = tmp_path / "fresh"
    get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(fresh)
    shutil.copytree(base, tmp_path / "copy")
    warned = {name: [w for w in load_pair(str(base), **{kind: str(path)}).warnings
                     if "changes nothing" in w or "byte for byte" in w]
              for name, kind, path in (("fresh", "adapter", fresh), ("trained", "adapter", trained),
                                       ("copy", "tuned", tmp_path / "copy"), ("merged", "tuned", merged))}
    assert [len(w) for w in warned.values()] == [1, 0, 1, 0], warned
    assert "all 8 of its lora_B matrices are zero" in warned["fresh"][0]
    assert "weight files are the base's, byte for byte" in warned["copy"][0]
    assert not [w for w in load_pair(str(base), tuned=str(tmp_path / "copy"), hash_weights=False).warnings
                if "byte for byte" in w]  # (unhashed weights: nothing to compare)
    from crosspatch.workflows.gate import gate_run

    for name, kind, path in (("fresh", "adapter", fresh), ("trained", "adapter", trained)):
        pair = load_pair(str(base), **{kind: str(path)})
        assert pair.provenance["adapter"].get("computes_the_base") == (warned[name] or [None])[0]
        run(pair, prompts, max_new_tokens=4, bootstrap=0, progress=False, out=tmp_path / f"run-{name}")
        outcome = gate_run(tmp_path / f"run-{name}")
        assert (outcome["status"] == "unusable") == (name == "fresh"), outcome
    assert "the run measured no fine-tune: the descendant (" in gate_run(tmp_path / "run-fresh")["reason"]


def _confined_lora(root, layers: list[int]):
    """A tiny base and a LoRA adapter on it that changes only ``layers`` (PEFT's layers_to_transform)."""
    from peft import LoraConfig, get_peft_model

    from crosspatch.testing.tiny import char_tokenizer

    tiny_model("llama").save_pretrained(str(root / "base"))
    char_tokenizer().save_pretrained(str(root / "base"))
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                           target_modules=["q_proj", "v_proj", "down_proj"],
                                                           layers_to_transform=layers))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(50)  # (changes decisions)
    model.save_pretrained(str(root / "adapter"))
    return load_pair(str(root / "base"), adapter=str(root / "adapter"))


@pytest.mark.parametrize("layers, boundary", [([0, 1], 2), ([2, 3], 2)])
def test_an_adapter_confined_to_one_side_of_the_boundary_scores_as_the_factorial_says(tmp_path, prompts, layers,
                                                                                      boundary):
    """An adapter on the early layers alone leaves the two late stacks the same: no late effect
    (a late-only pass stood in for those layers and PEFT, switching the adapter off, found none of
    its layers: ValueError). One on the late layers alone gives the same late effect on either
    upstream state: no interaction."""
    pair = _confined_lora(tmp_path, layers)
    result = run(pair, prompts, boundary=boundary, max_new_tokens=12, bootstrap=0, controls="none", progress=False,
                 event_kinds="first_diff")
    assert result.records, "the adapter must change the model"
    for record in result.records:
        cells = record.cells["common_it"]
        late_pt, late_it = cells["upt_lit"] - cells["upt_lpt"], cells["uit_lit"] - cells["uit_lpt"]
        if layers[0] >= boundary:
            assert late_it == pytest.approx(late_pt, abs=1e-5)  # interaction 0
        else:
            assert late_pt == pytest.approx(0, abs=1e-5) and late_it == pytest.approx(0, abs=1e-5)


def test_an_adapter_config_peft_cannot_build_from_is_named_with_its_file(tmp_path):
    """A damaged adapter_config.json raised PEFT's own errors (TypeError as PEFT builds the
    configuration from a target_parameters of text; AttributeError and TypeError as it builds the
    layers from a null bias or rank), tracebacks instead of a named error: the first before any
    model loads, the others as the adapter loads."""
    from crosspatch.errors import ModelLoadError
    from crosspatch.models.adapters import check_adapter_files

    base, adapter, _ = _lora_dirs(tmp_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "target_parameters": "x"}))
    with pytest.raises(ModelLoadError, match=r"adapter_config.json is not a LORA configuration PEFT can build "
                                             r"\(TypeError"):
        check_adapter_files(str(adapter), allow_pickle=False, base=str(base))
    for field, error in (("bias", "AttributeError"), ("r", "TypeError")):
        (adapter / "adapter_config.json").write_text(json.dumps({**config, field: None}))
        with pytest.raises(ModelLoadError, match=rf"could not load adapter .* as PEFT builds them\): {error}"):
            load_pair(str(base), adapter=str(adapter))
