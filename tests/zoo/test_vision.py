"""The vision-language pair's data: charts that show the day's weather, captions, pages and
reports that say what the chart shows, labels on the text to learn only."""

from __future__ import annotations

import numpy as np

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
