"""The vision-language pair's data: charts that show the day's weather, captions, pages and
reports that say what the chart shows, labels on the text to learn only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crosspatch.zoo import data as wx
from crosspatch.zoo.vision import (
    CHART_ASPECTS,
    CHART_SIZE,
    IMAGE_TOKEN,
    chart_batch,
    chart_caption,
    chart_days,
    chart_instruction,
    chart_page,
    chart_processor,
    chart_report,
    draw_chart,
    vision_tokenizer,
)


def _day(**changes):
    return wx.Observation(**{**chart_days(1, 0)[0].__dict__, **changes})


def test_a_chart_is_deterministic_and_shows_what_the_day_holds():
    day = _day(front="none", event="none", pressure_system="high", synoptic="zonal flow", high_f=60)
    image = np.asarray(draw_chart(day))
    assert image.shape == (CHART_SIZE, CHART_SIZE, 3) and (image == np.asarray(draw_chart(day))).all()

    def differs(**change) -> bool:
        return bool((np.asarray(draw_chart(_day(**{**day.__dict__, **change}))) != image).any())

    for change in ({"front": "cold front", "front_hours": 6}, {"event": "rain", "event_chance": 70},
                   {"pressure_system": "low"}, {"synoptic": "ridge"}, {"high_f": 95}, {"system_dir": "N"}):
        assert differs(**change), change
    cold = np.asarray(draw_chart(_day(**{**day.__dict__, "high_f": 20}))).astype(float)
    hot = np.asarray(draw_chart(_day(**{**day.__dict__, "high_f": 100}))).astype(float)
    assert hot[..., 0].mean() > cold[..., 0].mean() and hot[..., 2].mean() < cold[..., 2].mean()


def test_captions_pages_and_reports_say_what_the_chart_shows():
    day = _day(front="warm front", front_hours=9, pressure_system="low", system_dir="NW", synoptic="trough",
               event="snow", event_chance=60, high_f=30)
    assert chart_caption(day) == "Chart: cold air, low pressure to the NW, a warm front, trough aloft, snow."
    assert chart_report(day, "frontal system").split("\n")[1] == "A warm front crosses the chart."
    assert chart_report(day, "pressure system").split("\n")[1] == "Low pressure to the NW."
    head, rest = chart_page(day, "events")
    assert IMAGE_TOKEN in head and "events chart" in head and rest.startswith("### Report:\n" + wx.report_header(day, "events"))
    days = chart_days(30, 1)
    prompts = {chart_instruction(a, d) for a in CHART_ASPECTS for d in days}
    assert len(prompts) == len({(a, d.city, wx.date_text(d)) for a in CHART_ASPECTS for d in days})  # site and date
    assert all(p.count(IMAGE_TOKEN) == 1 and p.endswith("### Report:\n") for p in prompts)


def test_instruction_labels_cover_the_report_only_and_never_the_image():
    from transformers import AutoTokenizer

    from crosspatch.zoo import zoo_path

    tok = vision_tokenizer(AutoTokenizer.from_pretrained(zoo_path() / "tokenizer"))
    processor = chart_processor(tok)
    days = chart_days(2, 3)
    rows = [(draw_chart(d), chart_instruction("events", d), chart_report(d, "events")) for d in days]
    enc, labels = chart_batch(rows, processor, prompt_only_loss=True)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert int((enc["input_ids"][0] == image_id).sum()) == (CHART_SIZE // 8) ** 2
    for i, (_, _, report) in enumerate(rows):
        kept = labels[i][labels[i] != -100].tolist()
        assert tok.decode(kept) == report
    _, all_text = chart_batch(rows, processor, prompt_only_loss=False)
    assert not (all_text == image_id).any() and (all_text != -100).sum() > (labels != -100).sum()


def test_under_transformers_4_the_vision_pair_is_refused_by_name_and_the_demo_skips_it(monkeypatch):
    """The vision pair's processor was saved by transformers 5: under transformers 4 loading it is
    a named error before anything loads, and the demo's vision section is skipped with the reason
    said, in its log and its report's reading (the rest of the demo runs)."""
    import transformers

    from crosspatch.runner.config import RunConfig
    from crosspatch.zoo import ZooEnvironmentError, load_zoo_vision_pair, vision_pair_unavailable, zoo_path
    from crosspatch.zoo.demo_sections import run_vision

    assert vision_pair_unavailable() is None  # this environment: transformers 5
    monkeypatch.setattr(transformers, "__version__", "4.57.6")
    with pytest.raises(ZooEnvironmentError, match=r"transformers >= 5 \(installed: 4.57.6\)"):
        load_zoo_vision_pair()
    said = []
    vision, skipped = run_vision(zoo_path(), Path("/nonexistent"), RunConfig(), False, said.append)
    assert vision is None and skipped == vision_pair_unavailable()
    assert said and "vision-language pair skipped" in said[0] and "transformers>=5" in said[0]
    assert run_vision(Path("/nonexistent"), Path("/nonexistent"), RunConfig(), False, said.append) == (None, None), \
        "a zoo without the vision pair is not 'skipped because of transformers'"
    from crosspatch.zoo.reading import preflight_and_vision

    (line,) = preflight_and_vision({"vision": None, "vision_skipped": skipped})
    assert line.startswith("**Vision-language pair**: skipped here") and "4.57.6" in line  # the report says why


def test_a_tokenizer_saved_by_transformers_5_loads_as_a_fast_tokenizer_where_its_class_is_unknown(monkeypatch):
    """transformers 5 saves a fast tokenizer as class ``TokenizersBackend``, which transformers 4
    does not know: there the loader falls back to ``PreTrainedTokenizerFast`` over the same
    ``tokenizer.json`` (simulated here: the class removed and AutoTokenizer failing as 4.x does),
    with the same ids and special tokens; any other failure stays a ModelLoadError."""
    import transformers

    from crosspatch.errors import ModelLoadError
    from crosspatch.models import loading
    from crosspatch.models.loading import LoadOptions, load_tokenizer
    from crosspatch.zoo import zoo_path

    path = str(zoo_path() / "base")
    native = load_tokenizer(path, LoadOptions())

    def unknown_class(*args, **kwargs):
        raise ValueError("Tokenizer class TokenizersBackend does not exist or is not currently imported.")

    monkeypatch.setattr(loading, "_transformers_has", lambda name: name != "TokenizersBackend")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unknown_class)
    fallback = load_tokenizer(path, LoadOptions())
    assert isinstance(fallback, transformers.PreTrainedTokenizerFast)  # (in transformers 5 the same class)
    text = "BOS 2026-03-04 KBOS temperature 41F, wind NW 12 kt."
    assert fallback(text)["input_ids"] == native(text)["input_ids"]
    assert (fallback.eos_token, fallback.pad_token, fallback.bos_token) == (native.eos_token, native.pad_token,
                                                                           native.bos_token)
    with pytest.raises(ModelLoadError, match="TokenizersBackend"):
        load_tokenizer(str(zoo_path() / "prompts"), LoadOptions())  # no tokenizer there: the first failure
