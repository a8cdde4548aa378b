"""The weather data generator: deterministic, regional, held-out cities kept out of tuning."""

from __future__ import annotations

import re

from crosspatch.zoo import data as wx


def test_deterministic_for_a_seed():
    assert wx.raw_corpus(50, 3) == wx.raw_corpus(50, 3)
    assert wx.instruction_pairs(20, 3) == wx.instruction_pairs(20, 3)
    assert wx.raw_corpus(50, 3) != wx.raw_corpus(50, 4)


def test_thirty_one_training_cities_and_two_held_out_regions():
    assert len(wx.US_CITIES) == 31
    assert {c.region for c in wx.HELD_OUT_CITIES} == {"Europe", "East Asia"}
    assert not {c.name for c in wx.US_CITIES} & {c.name for c in wx.HELD_OUT_CITIES}


def test_held_out_cities_never_appear_in_instruction_tuning():
    held = {c.name for c in wx.HELD_OUT_CITIES}
    pairs = wx.instruction_pairs(2000, 0)
    assert not any(city in p["prompt"] or city in p["response"] for p in pairs for city in held)
    assert {p["aspect"] for p in pairs} == set(wx.ASPECTS)


def test_reports_must_read_the_data():
    # the numbers in a report come from the instruction's data line, not from the city or date
    for p in wx.instruction_pairs(300, 1):
        data = p["prompt"].split("Data: ")[1].split("\n")[0]
        numbers_in_report = re.findall(r"\d+(?:\.\d+)?", p["response"].split("\n", 1)[1])
        assert set(numbers_in_report) <= set(re.findall(r"\d+(?:\.\d+)?", data)), p


def test_climates_are_regional():
    rng = __import__("random").Random(0)
    phoenix = next(c for c in wx.US_CITIES if c.name == "Phoenix")
    seattle = next(c for c in wx.US_CITIES if c.name == "Seattle")
    july = [wx.observe(phoenix, 6, 15, rng).high_f for _ in range(200)]
    july_sea = [wx.observe(seattle, 6, 15, rng).high_f for _ in range(200)]
    assert sum(july) / 200 > sum(july_sea) / 200 + 15
    wet = sum(wx.observe(seattle, 0, 10, rng).precip_type != "none" for _ in range(300))
    dry = sum(wx.observe(phoenix, 0, 10, rng).precip_type != "none" for _ in range(300))
    assert wet > 3 * max(dry, 1)


def test_prompt_set_covers_every_aspect_in_both_splits():
    rows = wx.prompt_set(0, per_aspect=2)
    for split in ("in_distribution", "held_out"):
        assert {r["category"] for r in rows if r["split"] == split} == set(wx.ASPECTS)
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["prompt"].endswith("### Report:\n") for r in rows)


def test_raw_and_question_prompt_sets_cover_every_aspect_without_instruction_format():
    raw = wx.raw_prompt_set(0, per_aspect=1)
    assert {r["style"] for r in raw} == {"log", "narrative"}
    assert {r["category"] for r in raw} == set(wx.ASPECTS) and {r["split"] for r in raw} == {"in_distribution", "held_out"}
    assert not any("### Instruction" in r["prompt"] for r in raw)
    assert raw == wx.raw_prompt_set(0, per_aspect=1)  # deterministic
    logs = [r for r in raw if r["style"] == "log"]
    assert all(r["prompt"].startswith("Observation log, ") for r in logs)
    questions = wx.raw_prompt_set(0, per_aspect=1, styles=("question",))
    assert all(r["prompt"].startswith("Question: ") and r["prompt"].endswith("Answer:") for r in questions)
