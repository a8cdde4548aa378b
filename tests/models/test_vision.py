"""Vision-language pairs: the boundary lies in the language tower, an image prompt goes through
the model's own processor, its image tokens are part of the shared prefix and the cells patch
the whole prefix, image positions included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crosspatch.errors import PromptFileError, PromptImageError
from crosspatch.execution import load_pair, pair_from_models
from crosspatch.inputs.prompts import load_prompts
from crosspatch.models.anatomy import find_anatomy
from crosspatch.models.media import image_placeholder
from crosspatch.runner.pipeline import run
from crosspatch.testing.vision import VLM_ARCHITECTURES, save_vlm_pair, tiny_vlm_pair, vision_processor, weather_chart

OPTIONS = dict(boundary=2, max_new_tokens=12, bootstrap=0, progress=False, controls="none", event_kinds="first_diff")


@pytest.fixture(scope="module")
def charts(tmp_path_factory):
    root = tmp_path_factory.mktemp("charts")
    return [weather_chart(root / f"chart{i}.png", seed=i, kind="line" if i % 2 else "bar") for i in range(4)]


def image_prompts(charts):
    return [{"id": f"c{i}", "prompt": f"Forecast for city {i}:", "image": str(c), "category": "chart"}
            for i, c in enumerate(charts)]


def natural_logits(model, processor, prompt: dict, continuation: list[int]) -> torch.Tensor:
    """The unpatched model's own next-token logits after prompt (with its image) + continuation."""
    from PIL import Image

    enc = processor(text=image_placeholder(processor) + prompt["prompt"], images=Image.open(prompt["image"]).convert("RGB"),
                    return_tensors="pt")
    ids = torch.cat([enc["input_ids"], torch.tensor([continuation], dtype=torch.long)], 1)
    extra = {}
    if "token_type_ids" in enc:  # image tokens attend to each other (Gemma 3)
        extra["token_type_ids"] = torch.cat([enc["token_type_ids"], torch.zeros(1, len(continuation), dtype=torch.long)], 1)
    with torch.inference_mode():
        return model(input_ids=ids, pixel_values=enc["pixel_values"], **extra).logits[0, -1].float()


@pytest.mark.parametrize("arch", VLM_ARCHITECTURES)
def test_anatomy_is_the_language_tower(arch):
    base, _, _ = tiny_vlm_pair(arch, layers=4)
    a = find_anatomy(base)
    assert a.num_layers == 4 and a.layers is base.model.language_model.layers
    assert a.final_norm is base.model.language_model.norm and a.backbone is base.model
    assert a.image_token_id == base.config.image_token_id and a.hidden_size == 32


def test_multimodal_rotary_positions_are_refused_by_name():
    import transformers as t

    from crosspatch.errors import UnsupportedArchitectureError

    if not hasattr(t, "Qwen2VLForConditionalGeneration"):
        pytest.skip("no Qwen2-VL in this transformers")
    config = t.Qwen2VLConfig(text_config=dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2),
                             vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2))
    with pytest.raises(UnsupportedArchitectureError, match="multimodal rotary"):
        find_anatomy(t.Qwen2VLForConditionalGeneration(config))


@pytest.mark.parametrize("arch", VLM_ARCHITECTURES)
def test_diagonal_cells_reproduce_the_model_with_its_image(arch, charts):
    base, child, processor = tiny_vlm_pair(arch, layers=4)
    pair = pair_from_models(base, child, processor.tokenizer, processors=processor)
    prompts = image_prompts(charts)
    result = run(pair, prompts, **OPTIONS)
    assert len(result.records) == len(prompts)
    by_id = {p["id"]: p for p in prompts}
    for rec in result.records:
        n_prompt = rec.prompt_len
        per_image = {"llava": 16, "gemma3_vision": 4}[arch]
        assert rec.prefix_ids[:n_prompt].count(base.config.image_token_id) == per_image  # image tokens in the prefix
        cont = rec.prefix_ids[n_prompt:]
        for model, cell in ((child, "uit_lit"), (base, "upt_lpt")):
            ref = natural_logits(model, processor, by_id[rec.prompt_id], cont)
            readout = "common_it" if cell == "uit_lit" else "common_pt"
            assert abs(rec.cells[readout][cell] - float(ref[rec.t_it] - ref[rec.t_pt])) <= 1e-4


@pytest.mark.parametrize("arch", VLM_ARCHITECTURES)
def test_the_image_matters_and_batching_does_not(arch, charts):
    base, child, processor = tiny_vlm_pair(arch, layers=4)
    pair = pair_from_models(base, child, processor.tokenizer, processors=processor)
    same_text = [{"id": f"c{i}", "prompt": f"Chart {i}. Forecast:", "image": str(c)} for i, c in enumerate(charts)]
    one = run(pair, same_text, batch_size=1, **OPTIONS)
    many = run(pair, same_text, batch_size=4, **OPTIONS)
    assert [r.key for r in one.records] == [r.key for r in many.records]
    for a, b in zip(one.records, many.records):
        assert a.position == b.position and a.t_pt == b.t_pt and a.t_it == b.t_it
        for cell, y in a.cells["common_it"].items():
            assert abs(y - b.cells["common_it"][cell]) <= 1e-5
    # another chart under the same text changes what the model reads
    prompt = dict(same_text[0])
    swapped = dict(prompt, image=str(charts[1]))
    assert not torch.allclose(natural_logits(base, processor, prompt, []), natural_logits(base, processor, swapped, []))


@pytest.mark.parametrize("arch", VLM_ARCHITECTURES)
def test_static_decoding_reads_the_images_and_finds_the_eager_events(arch, charts):
    """A static cache's prompt pass carries a padding mask over the cache's whole length; the image
    hook took it for a decoding step and left the images out, so `--decode static` (the default on
    CUDA) searched on placeholder tokens alone: other events, cells off by many logits. The same
    events and, under the exact plan, bit-identical cells as eager decoding, with rows joining the
    slots of rows that ended (two rows a batch, four prompts) and without."""
    base, child, processor = tiny_vlm_pair(arch, layers=4)
    pair = pair_from_models(base, child, processor.tokenizer, processors=processor)
    prompts = image_prompts(charts)
    options = {**OPTIONS, "plan": "exact", "max_batch_tokens": None}
    for batch_size in (2, 4):  # (the same batches of events for the cells: no padding differs)
        eager = run(pair, prompts, decode="eager", batch_size=batch_size, **options)
        static = run(pair, prompts, decode="static", batch_size=batch_size, **options)
        assert eager.records and static.summary["cost_this_session"]["decode"]["mode"] == "static"
        assert [(r.key, r.position, r.t_pt, r.t_it, r.cells) for r in static.records] == \
            [(r.key, r.position, r.t_pt, r.t_it, r.cells) for r in eager.records]


def test_models_taken_into_a_second_set_find_that_sets_images(charts):
    """A model's image hook read the registry of the first set it joined: a pair made again from
    the same models (a notebook) stopped with "starts with no image prompt of this run", and a run
    with synthetic nulls (the set rebuilt around the models, without their processors) with "no
    processor". Each set that takes a model now points its hook at its own images."""
    base, child, processor = tiny_vlm_pair("llava", layers=4)
    first = run(pair_from_models(base, child, processor.tokenizer, processors=processor), image_prompts(charts)[:2],
                **OPTIONS)
    others = [dict(p, id=f"other-{p['id']}", prompt=f"Another city {i}:") for i, p in enumerate(image_prompts(charts))]
    again = run(pair_from_models(base, child, processor.tokenizer, processors=processor), others, **OPTIONS)
    assert first.records and again.records
    with_nulls = run(pair_from_models(base, child, processor.tokenizer, processors=processor), image_prompts(charts),
                     synthetic_nulls=1, **{**OPTIONS, "controls": "null_calibration"})
    row = next(r for r in with_nulls.summary["controls"] if r["control"] == "null_calibration")
    assert row["details"]["by_null"]["null-synthetic-1"]["interaction"] is not None, row


def test_a_peft_vision_language_model_in_memory_takes_its_processor(charts):
    """pair_from_peft_model took no processors (a TypeError from the load options), so a LoRA on a
    vision-language model in memory could not read image prompts. It scores as its merge does."""
    import copy

    from peft import LoraConfig, get_peft_model

    from crosspatch.execution import pair_from_peft_model

    base, _, processor = tiny_vlm_pair("llava", layers=4)
    plain = copy.deepcopy(base)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    options = {**OPTIONS, "plan": "exact"}
    adapter = run(pair_from_peft_model(peft_model, processor.tokenizer, processors=processor), image_prompts(charts),
                  **options)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    whole = run(pair_from_models(plain, merged, processor.tokenizer, processors=processor), image_prompts(charts),
                **options)
    assert adapter.records and [(r.key, r.t_pt, r.t_it) for r in adapter.records] == \
        [(r.key, r.t_pt, r.t_it) for r in whole.records]
    for a, b in zip(adapter.records, whole.records):
        assert all(abs(y - b.cells["common_it"][c]) <= 1e-4 for c, y in a.cells["common_it"].items())


def test_the_training_callback_diagnoses_a_vision_language_adapter_on_image_prompts(tmp_path, charts):
    """The callback took the trainer's processor for a tokenizer and had no way to pass images'
    processors: a VLM's training stopped at the first diagnostic. It reads the tokenizer inside the
    processor and gives the processor to the pair; without a processor, or on a text-only model,
    image prompts are refused when training begins."""
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from crosspatch.execution import pair_from_peft_model
    from crosspatch.testing import make_pair
    from crosspatch.workflows.callback import CrosspatchCallback

    base, _, processor = tiny_vlm_pair("llava", layers=4)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    settings = dict(boundary=2, max_new_tokens=12, bootstrap=0, verbose=False)
    callback = CrosspatchCallback(image_prompts(charts), **settings)
    state, control = TrainerState(global_step=3), TrainerControl()
    callback.on_train_begin(None, state, control, model=peft_model, processing_class=processor)
    callback.on_save(TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True), state, control,
                     model=peft_model)
    row = callback.history[-1]
    alone = run(pair_from_peft_model(peft_model, processor.tokenizer, processors=processor), image_prompts(charts),
                **{**OPTIONS, "controls": "default", "event_kinds": "all", "max_new_tokens": 12})
    assert row["events"] == alone.summary["counts"]["events"] > 0
    assert row["metrics"]["interaction"] == pytest.approx(alone.verdict.numbers["interaction"]["mean"], abs=1e-5)
    with pytest.raises(PromptImageError, match="processor"):
        CrosspatchCallback(image_prompts(charts), **settings).on_train_begin(
            None, SimpleNamespace(global_step=0), None, model=peft_model, processing_class=processor.tokenizer)
    with pytest.raises(PromptImageError, match="text-only"):
        text_model = make_pair("llama").handle("tuned").module
        CrosspatchCallback(image_prompts(charts), base=text_model, **settings).on_train_begin(
            None, SimpleNamespace(global_step=0), None, model=text_model, processing_class=processor)


def test_the_float32_check_of_near_ties_reads_the_images(charts):
    """--verify-fp32 searches the near-tie prompts again with float32 copies of the models, a set
    of their own: their image prompts must be read again there (each event a near tie here)."""
    base, child, processor = tiny_vlm_pair("llava", layers=4)
    pair = pair_from_models(base.to(torch.bfloat16), child.to(torch.bfloat16), processor.tokenizer,
                            processors=processor)
    result = run(pair, image_prompts(charts), verify_fp32=True, near_tie_threshold=1e9, **OPTIONS)
    checked = result.summary["fp32_verification"]
    assert checked["checked"] == len([r for r in result.records if r.kind == "first_diff"]) > 0, checked
    # one question asked of every chart: the check searches the twins apart too (it stopped at "in one pass")
    twins = run(pair, [dict(p, prompt="Forecast:") for p in image_prompts(charts)], verify_fp32=True,
                near_tie_threshold=1e9, **OPTIONS)
    assert twins.summary["fp32_verification"]["checked"] == len(twins.records) == len(charts)


@pytest.mark.parametrize("arch", VLM_ARCHITECTURES)
def test_identical_models_give_zero_effects_and_late_only_gives_zero_interaction(arch, charts):
    base, _, processor = tiny_vlm_pair(arch, layers=4)
    _, late, _ = tiny_vlm_pair(arch, layers=4, perturb=[2, 3])
    pair = pair_from_models(base, late, processor.tokenizer, processors=processor)
    result = run(pair, image_prompts(charts), plan="exact", **OPTIONS)
    assert result.records
    for rec in result.records:
        y = rec.cells["common_it"]
        assert (y["uit_lit"] - y["uit_lpt"]) - (y["upt_lit"] - y["upt_lpt"]) == 0.0
    same = pair_from_models(base, tiny_vlm_pair(arch, layers=4)[0], processor.tokenizer, processors=processor)
    assert run(same, image_prompts(charts), **OPTIONS).records == []  # identical models never diverge


@pytest.mark.slow
@pytest.mark.parametrize("arch", VLM_ARCHITECTURES)
def test_checkpoints_on_disk_with_image_prompts_in_jsonl_and_sequential_residency(arch, tmp_path, charts):
    base_dir, tuned_dir = save_vlm_pair(tmp_path / "pair", arch)
    (tmp_path / "img").mkdir()
    rows = []
    for i, c in enumerate(charts[:3]):
        (tmp_path / "img" / c.name).write_bytes(c.read_bytes())
        rows.append({"id": f"c{i}", "prompt": f"City {i}:", "image": f"img/{c.name}"})  # relative to the file
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = load_prompts(prompt_file)
    assert all(p.metadata["image"].startswith(str(tmp_path)) for p in prompts)
    both = run(load_pair(str(base_dir), tuned=str(tuned_dir)), prompts, **OPTIONS)
    seq = run(load_pair(str(base_dir), tuned=str(tuned_dir), residency="sequential"), prompts, **OPTIONS)
    assert both.records and [r.key for r in both.records] == [r.key for r in seq.records]
    for a, b in zip(both.records, seq.records):
        assert all(abs(a.cells["common_it"][c] - b.cells["common_it"][c]) <= 1e-5 for c in a.cells["common_it"])


def test_bad_image_prompts_are_named_errors(tmp_path, charts):
    missing = tmp_path / "p.jsonl"
    missing.write_text(json.dumps({"id": "a", "prompt": "x", "image": "nope.png"}) + "\n")
    with pytest.raises(PromptFileError, match="image"):
        load_prompts(missing)
    for url in ("https://example.com/chart.png", "data:image/png;base64,iVBOR"):  # named, not looked for on disk
        missing.write_text(json.dumps({"id": "a", "prompt": "x", "image": url}) + "\n")
        with pytest.raises(PromptFileError, match="is a URL .* local files only"):
            load_prompts(missing)
    base, child, processor = tiny_vlm_pair("llava", layers=4)
    pair = pair_from_models(base, child, processor.tokenizer, processors=processor)
    with pytest.raises(PromptImageError, match="no 'image' field"):
        run(pair, [{"id": "a", "prompt": "<image> but no image"}], **OPTIONS)
    not_an_image = tmp_path / "chart.png"
    not_an_image.write_text("not a png")
    with pytest.raises(PromptImageError, match="cannot read image"):
        run(pair, [{"id": "a", "prompt": "x", "image": str(not_an_image)}], **OPTIONS)
    from PIL import Image

    bomb = tmp_path / "bomb.png"  # (past PIL's pixel limit, a decompression bomb: its own error, not an OSError)
    Image.new("1", (64, 64)).save(bomb)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        with pytest.raises(PromptImageError, match="cannot read image.*decompression bomb"):
            run(pair, [{"id": "a", "prompt": "x", "image": str(bomb)}], **OPTIONS)
    from crosspatch.testing import make_pair

    with pytest.raises(PromptImageError, match="text-only"):
        run(make_pair("llama"), [{"id": "a", "prompt": "x", "image": str(charts[0])}], **OPTIONS)


def test_processors_that_disagree_are_refused(charts):
    base, child, processor = tiny_vlm_pair("llava", layers=4)
    other = vision_processor("llava", processor.tokenizer, image_mean=[0.0, 0.0, 0.0])
    pair = pair_from_models(base, child, processor.tokenizer, processors={"base": processor, "tuned": other})
    with pytest.raises(PromptImageError, match="processors"):
        run(pair, image_prompts(charts)[:1], **OPTIONS)


def test_the_cli_runs_an_image_prompt_file_end_to_end(tmp_path, charts):
    from typer.testing import CliRunner

    from crosspatch.cli import app

    base_dir, tuned_dir = save_vlm_pair(tmp_path / "pair", "llava")
    rows = [{"id": f"c{i}", "prompt": f"<image> City {i} <b>today</b>:", "image": str(c), "category": "chart"}
            for i, c in enumerate(charts[:3])]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--base", str(base_dir), "--tuned", str(tuned_dir), "--prompts", str(prompts),
                                   "--out", str(out), "--boundary", "2", "--max-new-tokens", "8", "--bootstrap", "0",
                                   "--controls", "none"])
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text()
    assert "t o d a y" in html and "<b>" not in html  # the prompt is shown (char tokenizer: spaced), escaped
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events and all(e["prefix_ids"].count(events[0]["prefix_ids"][1]) >= 16 for e in events)


def test_an_image_prompt_too_long_with_its_image_tokens_is_named_before_any_weight_loads(tmp_path, charts):
    """The checks before loading counted an image prompt by its text alone: a prompt whose image
    tokens carried it past the model's positions was named only once every model had loaded
    (minutes, for a large pair), an image the processor refuses likewise, and the dry run
    estimated an image prompt's work by its text. The base's processor now reads image prompts
    before any weight loads."""
    from transformers.modeling_utils import PreTrainedModel
    from typer.testing import CliRunner

    from crosspatch.cli import app
    from crosspatch.models.config_dicts import local_max_positions

    base_dir, tuned_dir = save_vlm_pair(tmp_path / "pair", "llava")
    text = "City 0 today:"
    rows = [{"id": "c0", "prompt": text, "image": str(charts[0])}]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps(rows[0]) + "\n")
    positions = local_max_positions(str(base_dir))
    budget = positions - len(text) - 4  # the text (one token a character, and BOS) fits; with its image, not
    loaded = []
    load = PreTrainedModel.from_pretrained.__func__  # pyright: ignore[reportFunctionMemberAccess]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PreTrainedModel, "from_pretrained",
                      classmethod(lambda cls, *a, **k: loaded.append(cls.__name__) or load(cls, *a, **k)))
        res = CliRunner().invoke(app, ["run", "--base", str(base_dir), "--tuned", str(tuned_dir), "--prompts",
                                       str(prompts), "--out", str(tmp_path / "run"), "--max-new-tokens", str(budget),
                                       "--bootstrap", "0", "--controls", "none", "--event-kinds", "first_diff"])
        assert res.exit_code == 2 and "PromptTooLongError" in res.output and "c0" in res.output, res.output
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"not an image")
        prompts.write_text(json.dumps(dict(rows[0], image=str(broken))) + "\n")
        res = CliRunner().invoke(app, ["run", "--base", str(base_dir), "--tuned", str(tuned_dir), "--prompts",
                                       str(prompts), "--out", str(tmp_path / "run"), "--bootstrap", "0"])
        assert res.exit_code == 2 and "PromptImageError" in res.output, res.output
        prompts.write_text(json.dumps(rows[0]) + "\n")  # the dry run's estimate counts the image's tokens too
        res = CliRunner().invoke(app, ["run", "--base", str(base_dir), "--tuned", str(tuned_dir), "--prompts",
                                       str(prompts), "--out", str(tmp_path / "run"), "--max-new-tokens", "8", "--dry-run"])
        assert res.exit_code == 0, res.output
        counted = int(res.output.split(" prompt+budget tokens")[0].split()[-1].replace(",", ""))
        assert counted >= len(text) + 1 + 8 + 16  # BOS, the text, the budget and LLaVA's (at least) 16 image tokens
    assert not loaded, f"named only after loading {loaded}"


def test_after_the_fact_commands_find_a_finished_runs_images_again(tmp_path, charts):
    """A run directory keeps its images' paths, not their pixels: `consequence` and `features`
    stopped with "starts with no image prompt of this run" on every image run. They now take the
    images from the given prompt file, or the run's own (checked by its sha256), before loading."""
    from typer.testing import CliRunner

    from crosspatch.cli import app
    from crosspatch.runner.on_finished import run_features

    base_dir, tuned_dir = save_vlm_pair(tmp_path / "pair", "llava")
    # the prompt set's own column names (--fields): read again with them after the run
    rows = [{"id": f"c{i}", "text": f"City {i}:", "image": str(c), "validator": {"type": "regex", "pattern": "."}}
            for i, c in enumerate(charts[:3])]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--base", str(base_dir), "--tuned", str(tuned_dir), "--prompts", str(prompts),
                                   "--fields", "prompt=text", "--out", str(out), "--boundary", "2", "--max-new-tokens",
                                   "8", "--bootstrap", "0", "--controls", "none", "--quiet"])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    events = sum(r["kind"] == "first_diff" for r in records)  # what the after-the-fact analyses score
    # another text under a run's id, with its image: its validator would judge another prompt's continuation
    edited = tmp_path / "edited.jsonl"
    edited.write_text(json.dumps(dict(rows[0], text="Town 0:")) + "\n")
    res = CliRunner().invoke(app, ["consequence", str(out), "--prompts", str(edited), "--fields", "prompt=text",
                                   "--budget", "2", "--allow-partial"])
    assert res.exit_code == 2 and "PromptSetMismatchError" in res.output, res.output
    assert not (out / "consequence_partial.json").exists()  # a refused call leaves no record of what it left out
    res = CliRunner().invoke(app, ["consequence", str(out), "--prompts", str(prompts), "--fields", "prompt=text",
                                   "--budget", "2"])
    assert res.exit_code == 0, res.output
    assert len((out / "consequence.jsonl").read_text().splitlines()) == events
    # any analysis added to the finished run (the one after-the-fact path) reads the run's own prompt file's images
    from crosspatch.runner.finished import run_on_finished

    assert len(run_on_finished(out, "hybrid_state")["controls"]) == 1
    assert len((out / "control_hybrid_state.jsonl").read_text().splitlines()) == events
    import crosspatch.runner.on_finished as on_finished
    from crosspatch.errors import OptionError

    def no_loading(config):
        raise AssertionError("a model was loaded")

    original, on_finished.reopen_models = on_finished.reopen_models, no_loading
    try:
        # Ray workers load their own copies, without the images: named before loading (they crashed in the workers)
        with pytest.raises(OptionError, match="local engine"):
            run_features(out, steps=2, engine="ray", log=lambda message: None)
        # the run's own prompt file gone: named, before any model loads
        prompts.rename(tmp_path / "elsewhere.jsonl")
        with pytest.raises(PromptImageError, match="gone or no longer the run's"):
            run_features(out, steps=2, train_only=True, log=lambda message: None)
    finally:
        on_finished.reopen_models = original


def _by_prompt(records) -> dict:
    return {r.prompt_id: (r.position, r.t_pt, r.t_it, r.cells) for r in records}


@pytest.mark.parametrize("arch", VLM_ARCHITECTURES)
def test_one_question_asked_of_many_images_reads_each_image(arch, charts):
    """Prompts with the same text and different images (a VLM evaluation asking one question of
    many charts) were refused ("same tokens and different images"): a pass found a row's image from
    the prompt tokens it starts with. Such twins now go to different chunks, each reading its own
    images: every prompt gets the event and cells it gets alone, and twins are no repeats."""
    base, child, processor = tiny_vlm_pair(arch, layers=4)
    pair = pair_from_models(base, child, processor.tokenizer, processors=processor)
    twins = [{"id": f"t{i}", "prompt": "Weather today:", "image": str(c)} for i, c in enumerate(charts)]
    twins.insert(2, {"id": "t0-again", "prompt": "Weather today:", "image": str(charts[0])})  # a true repeat
    other = [{"id": "city", "prompt": "Forecast for the city:", "image": str(charts[1])}]
    options = {**OPTIONS, "plan": "exact", "controls": "repeated_prompts"}
    together = run(pair, twins + other, batch_size=8, **options)
    alone = {}
    for p in twins + other:
        alone.update(_by_prompt(run(pair, [p], **options).records))
    got = _by_prompt(together.records)
    assert got.keys() == alone.keys()
    for prompt_id, (position, t_pt, t_it, cells) in got.items():  # (batched with others: padding moves the last bits)
        assert (position, t_pt, t_it) == alone[prompt_id][:3]
        assert all(abs(y - alone[prompt_id][3]["common_it"][c]) <= 1e-5 for c, y in cells["common_it"].items())
    outcomes = {p["id"]: alone[p["id"]][:3] + (round(alone[p["id"]][3]["common_it"]["uit_lit"], 4),)
                if p["id"] in alone else None for p in twins}  # (None: no divergence within the budget)
    assert len(set(outcomes.values())) > 1  # the images change what the twins decide
    row = next(r for r in together.summary["controls"] if r["control"] == "repeated_prompts")
    assert row["details"]["repeats"] == 1 and row["details"]["examples"] == [{"prompt_id": "t0-again", "repeats": "t0"}]


def test_after_the_fact_analyses_read_each_twins_image(tmp_path, charts):
    """A finished run of twins: an analysis added afterwards and the feature study's activations
    compute each event with its own image, as in the run or alone."""
    from crosspatch.analyses.features import cache_activations
    from crosspatch.execution import Executor
    from crosspatch.runner.finished import first_events, reopen_models, run_on_finished
    from crosspatch.runner.reading import register_run_images
    from crosspatch.store import RunStore

    base_dir, tuned_dir = save_vlm_pair(tmp_path / "pair", "llava")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"t{i}", "prompt": "Forecast:", "image": str(c)}) + "\n"
                               for i, c in enumerate(charts)))
    options = {**OPTIONS, "plan": "exact", "batch_size": 8}
    in_run = run(load_pair(str(base_dir), tuned=str(tuned_dir)), load_prompts(prompts), out=tmp_path / "a",
                 **{**options, "controls": "hybrid_state"})
    run(load_pair(str(base_dir), tuned=str(tuned_dir)), load_prompts(prompts), out=tmp_path / "b", **options)
    run_on_finished(tmp_path / "b", "hybrid_state")

    def rows(run_dir):  # each event's row, without the run's id
        lines = (run_dir / "control_hybrid_state.jsonl").read_text().splitlines()
        return {r["key"]: {k: v for k, v in r.items() if k != "run"} for r in map(json.loads, lines)}

    after, during = rows(tmp_path / "b"), rows(tmp_path / "a")
    assert in_run.records and after.keys() == during.keys() == {f"t{i}#first@2" for i in range(4)}
    for key, row in after.items():  # (batched otherwise: the last bits move)
        assert row.keys() == during[key].keys()
        assert all(np.allclose(v, during[key][k], atol=1e-5) if k not in ("key", "prompt_id") else v == during[key][k]
                   for k, v in row.items())
    store = RunStore(tmp_path / "b")
    config = store.config()
    boundary, _, events = first_events(store, config)
    models = reopen_models(config)
    register_run_images(models, config, events)
    ex = Executor.for_run(models, config["options"])
    layers = [boundary, boundary + 1]
    x_pt, x_it = cache_activations(ex, events, boundary, layers, tmp_path / "together", log=lambda m: None)
    singles = [cache_activations(ex, [e], boundary, layers, tmp_path / f"alone-{e.prompt_id}", log=lambda m: None)
               for e in events]
    assert torch.allclose(x_pt, torch.cat([p for p, _ in singles]), atol=1e-5)
    assert torch.allclose(x_it, torch.cat([i for _, i in singles]), atol=1e-5)


def test_twins_are_cut_apart_and_other_prompts_keep_their_chunks():
    """media_chunks: without twins, consecutive chunks of the size asked; a twin goes to the first
    chunk with room and no twin of it (or, contiguous, to the last chunk or a new one); a prompt of
    the same image as its twin (a true repeat) may share a chunk with it."""
    from crosspatch.models.media import MediaRegistry, media_chunks

    registry = MediaRegistry()
    for prompt_id, tokens, pixel in (("a", [1, 2], 0.0), ("b", [1, 2], 1.0), ("c", [1, 2], 2.0), ("d", [1, 2], 0.0),
                                     ("e", [3], 0.0), ("f", [4], 5.0)):
        registry.register(prompt_id, tokens, {"pixel_values": torch.full((1, 2), pixel)})
    ids = list("abcdefg")  # g: a text prompt, never registered
    assert media_chunks(list("efg"), 2, registry) == [[0, 1], [2]]
    assert media_chunks(ids, 3, registry) == [[0, 3, 4], [1, 5, 6], [2]]
    assert media_chunks(ids, 3, registry, contiguous=True) == [[0], [1], [2], [3, 4, 5], [6]]
    with registry.only(["b", "e"]):
        assert torch.equal(registry.match([1, 2, 9])["pixel_values"], torch.full((1, 2), 1.0))
    with pytest.raises(PromptImageError, match="'a' and 'b' have the same tokens and different images in one pass"):
        registry.match([1, 2, 9])


def test_a_dataset_holding_its_images_runs_as_the_same_prompts_with_image_files(charts):
    """A datasets.Dataset with an Image column (what a VLM evaluation set loads as) runs: each image
    goes to the image cache, and the events and cells are those of the same prompts naming the files."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    base, child, processor = tiny_vlm_pair("llava", layers=4)
    pair = pair_from_models(base, child, processor.tokenizer, processors=processor)
    rows = image_prompts(charts)
    pixels = [Image.open(c).copy() for c in charts]  # in memory, no file behind them
    data = datasets.Dataset.from_dict({"id": [r["id"] for r in rows], "prompt": [r["prompt"] for r in rows],
                                       "image": pixels}).cast_column("image", datasets.Image())
    from_files, from_data = run(pair, rows, **OPTIONS), run(pair, data, **OPTIONS)
    assert from_files.records and _by_prompt(from_data.records) == _by_prompt(from_files.records)


TEXT_TEMPLATE = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
PARTS_TEMPLATE = ("{% for m in messages %}<u>{% if m['content'] is string %}{{ m['content'] }}{% else %}"
                  "{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>\n{% else %}{{ p['text'] }}{% endif %}"
                  "{% endfor %}{% endif %}</u>{% endfor %}<a>")


@pytest.mark.parametrize("template", ["text turns", "image parts"])
def test_a_chat_template_puts_the_image_inside_the_user_turn(template, charts):
    """With --chat-template an image prompt's image went before the whole rendered chat
    ("<image><u>Forecast:</u><a>"), a prompt no chat model reads. It now stands where the chat puts
    it: a TRL-style {"type": "image"} part, else first in the last user turn; a template that
    renders image parts writes it its own way, a template of text turns gets the placeholder."""
    from PIL import Image

    from crosspatch.runner.config import RunConfig
    from crosspatch.runner.reading import prompt_token_ids

    base, child, processor = tiny_vlm_pair("llava", layers=4)
    processor.tokenizer.chat_template = TEXT_TEMPLATE if template == "text turns" else PARTS_TEMPLATE
    pair = pair_from_models(base, child, processor.tokenizer, processors=processor)
    image = "<image>" if template == "text turns" else "<image>\n"
    rows = [({"id": "plain", "prompt": "Forecast:", "image": str(charts[0])}, f"<u>{image}Forecast:</u><a>"),
            ({"id": "parts", "image": str(charts[1]), "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "See "}, {"type": "image"},
                                             {"type": "text", "text": " then forecast:"}]}]},
             f"<u>Be brief.</u><u>See {image} then forecast:</u><a>")]
    ids = prompt_token_ids(pair, load_prompts([row for row, _ in rows]), pair.roles[1], RunConfig(chat_template=True))
    for got, (row, text) in zip(ids, rows):
        want = processor(text=text, images=Image.open(row["image"]).convert("RGB"), return_tensors="pt")["input_ids"][0]
        assert got == want.tolist(), processor.tokenizer.decode(got)
