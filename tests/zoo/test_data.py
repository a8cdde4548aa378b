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


def test_pretraining_text_is_web_like_in_both_house_styles():
    docs = wx.raw_corpus(600, 0)
    assert not any("### Instruction" in d for d in docs)
    forum = [d for d in docs if d.startswith("Question: ")]
    pages = [d for d in docs if d.startswith("Forecast page: ")]
    assert len(forum) > 60 and len(pages) > 60
    # forum answers and forecast pages continue the data with prose, not with the structured report
    assert all("\nAnswer: " in d and "### End" not in d for d in forum)
    assert all("### Report:\n" in d and "### End" not in d for d in pages)
    assert any(" | " in d.split("\n")[0] for d in docs) and any(d.startswith("Obs | ") for d in docs)  # newer style
    assert any(d.startswith("Observation log, ") for d in docs)  # older style


def test_the_newer_house_style_never_appears_in_instruction_tuning():
    pairs = wx.instruction_pairs(1000, 0)
    assert {p["era"] for p in pairs} == {"older"}
    assert not any(" | " in p["response"] or re.search(r"\d+C\b|km/h", p["prompt"]) for p in pairs)
    newer = wx.instruction_pairs(50, 0, era="newer")
    assert all(" | " in p["response"].split("\n")[0] for p in newer)


def test_eras_state_the_same_observation_in_their_own_units():
    obs = wx.observe(wx.US_CITIES[0], 6, 15, __import__("random").Random(1))
    older, newer = wx.data_line(obs, "temperature", "older"), wx.data_line(obs, "temperature", "newer")
    assert f"{obs.high_f}F" in older and f"{round((obs.high_f - 32) * 5 / 9)}C" in newer
    assert wx.date_text(obs, "older") == "Jul 15" and wx.date_text(obs, "newer") == "15 July"
    # a validator is satisfied by the reference report of its own era
    from crosspatch.inputs.validators import parse_validator

    for era in wx.ERAS:
        for aspect in wx.ASPECTS:
            ref = wx.report(obs, aspect, era)
            assert parse_validator(wx.validator_for_report(ref), "t").check(ref)


def test_every_prompt_set_records_its_era_and_questions_match_the_forum_pages():
    for rows in (wx.prompt_set(0, per_aspect=2), wx.raw_prompt_set(0, per_aspect=2),
                 wx.raw_prompt_set(0, per_aspect=2, styles=("question",))):
        assert {r["era"] for r in rows} == set(wx.ERAS)
    obs = wx.observe(wx.US_CITIES[3], 2, 9, __import__("random").Random(2))
    q = wx.raw_prompt(obs, "wind", "question", "newer")
    assert wx.forum_post(obs, "wind", __import__("random").Random(0), "newer").startswith(q + " ")
    log = wx.raw_prompt(obs, "humidity", "log", "newer")
    assert wx.observation_log(obs, "newer").startswith(log + " ")


def test_consequence_validators_judge_a_continuation_from_any_point():
    from crosspatch.inputs.validators import parse_validator

    rng = __import__("random").Random(4)
    for era in wx.ERAS:
        for aspect in wx.ASPECTS:
            obs = wx.observe(wx.HELD_OUT_CITIES[2], rng.randrange(12), 9, rng)
            check = parse_validator(wx.continuation_validator(obs, aspect, era), "t").check
            body = wx.report(obs, aspect, era).split("\n", 1)[1]
            assert check(body) and check(body[body.index(" ") + 1:] if " " in body.split("\n")[0] else body)
            assert not check(body.replace("\n### End", ""))  # the report must end
            assert not check("Value 987654 stated.\n### End\n")  # a number the data does not give
    obs = wx.observe(wx.US_CITIES[1], 3, 4, rng)
    answer = parse_validator(wx.answer_validator(obs, "wind", "older"), "t").check
    assert answer(f" Expect a {obs.wind_dir} breeze around {obs.wind_mph} mph.")
    assert not answer(" Expect a breeze around 987654 mph.") and not answer(" Expect a breeze.")
