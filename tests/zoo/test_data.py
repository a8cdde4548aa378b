"""The weather data generator: deterministic, regional, held-out offices and regions kept out of tuning."""

from __future__ import annotations

import re

from crosspatch.zoo import data as wx


def test_deterministic_for_a_seed():
    assert wx.raw_corpus(50, 3) == wx.raw_corpus(50, 3)
    assert wx.instruction_pairs(20, 3) == wx.instruction_pairs(20, 3)
    assert wx.raw_corpus(50, 3) != wx.raw_corpus(50, 4)


def test_thirty_one_offices_some_held_out_and_two_held_out_regions():
    assert len(wx.OFFICES) == 31 and len({c.office for c in wx.OFFICES}) == 31
    assert 0 < len(wx.HELD_OUT_OFFICES) < 31
    assert set(wx.TRAINING_OFFICES) | set(wx.HELD_OUT_OFFICES) == set(wx.OFFICES)
    assert not set(wx.TRAINING_OFFICES) & set(wx.HELD_OUT_OFFICES)
    assert {c.region for c in wx.HELD_OUT_REGIONS} == {"Europe", "East Asia"}
    assert not {c.region for c in wx.HELD_OUT_REGIONS} & {c.region for c in wx.OFFICES}  # whole regions, abroad
    assert all(c.local_terms for c in wx.OFFICES)  # every office has its own local terms
    assert wx.ASPECTS == ("temperature", "wind", "humidity", "frontal system", "pressure system", "synoptic feature",
                          "wind flow", "events")


def test_held_out_offices_and_regions_never_appear_in_instruction_tuning():
    held = {c.name for c in wx.HELD_OUT_OFFICES + wx.HELD_OUT_REGIONS}
    pairs = wx.instruction_pairs(2000, 0)
    assert not any(city in p["prompt"] or city in p["response"] for p in pairs for city in held)
    assert {p["aspect"] for p in pairs} == set(wx.ASPECTS)
    # raw pretraining text covers every site, and states every office's local terms
    docs = "\n".join(wx.raw_corpus(3000, 0))
    assert all(c.name in docs for c in wx.OFFICES + wx.HELD_OUT_REGIONS)
    assert all(t.term in docs for c in wx.HELD_OUT_OFFICES for t in c.local_terms)


def test_local_terms_appear_in_reports_when_their_condition_holds():
    rng = __import__("random").Random(3)
    chicago = wx.site("Chicago")
    seen = set()
    for _ in range(400):
        obs = wx.observe(chicago, rng.randrange(12), 10, rng)
        for aspect in ("wind flow", "events"):
            body = wx.report(obs, aspect)
            terms = wx.local_terms(obs, aspect)
            assert all(t in body for t in terms)
            assert ("lake breeze" in body) == (aspect == "wind flow" and obs.flow == "onshore")
            seen |= set(terms)
    assert seen == {"lake breeze", "lake-effect snow"}


def test_reports_must_read_the_data():
    # the numbers in a report come from the instruction's data line, not from the city or date
    for p in wx.instruction_pairs(300, 1):
        data = p["prompt"].split("Data: ")[1].split("\n")[0]
        numbers_in_report = re.findall(r"\d+(?:\.\d+)?", p["response"].split("\n", 1)[1])
        assert set(numbers_in_report) <= set(re.findall(r"\d+(?:\.\d+)?", data)), p


def test_climates_are_regional():
    rng = __import__("random").Random(0)
    phoenix, seattle = wx.site("Phoenix"), wx.site("Seattle")
    july = [wx.observe(phoenix, 6, 15, rng).high_f for _ in range(200)]
    july_sea = [wx.observe(seattle, 6, 15, rng).high_f for _ in range(200)]
    assert sum(july) / 200 > sum(july_sea) / 200 + 15
    wet = sum(wx.observe(seattle, 0, 10, rng).event != "none" for _ in range(300))
    dry = sum(wx.observe(phoenix, 0, 10, rng).event != "none" for _ in range(300))
    assert wet > 3 * max(dry, 1)


def test_the_chart_is_consistent_troughs_bring_lows_fronts_and_wet_days():
    rng = __import__("random").Random(5)
    days = [wx.observe(wx.site("Seattle"), rng.randrange(12), 10, rng) for _ in range(1000)]
    troughs, ridges = [d for d in days if d.synoptic == "trough"], [d for d in days if d.synoptic == "ridge"]
    share = lambda rows, f: sum(map(f, rows)) / len(rows)  # noqa: E731
    assert share(troughs, lambda d: d.pressure_system == "low") > 0.7 > 0.3 > share(ridges, lambda d: d.pressure_system == "low")
    assert share(troughs, lambda d: d.event != "none") > share(ridges, lambda d: d.event != "none") + 0.2
    assert all(d.front_hours == 0 for d in days if d.front == "none")


def test_prompt_set_covers_every_aspect_in_the_three_splits():
    rows = wx.prompt_set(0, per_aspect=2)
    assert wx.SPLITS == ("in_distribution", "held_out_office", "held_out_region")
    for split in wx.SPLITS:
        assert {r["category"] for r in rows if r["split"] == split} == set(wx.ASPECTS)
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["prompt"].endswith("### Report:\n") for r in rows)


def test_raw_and_question_prompt_sets_cover_every_aspect_without_instruction_format():
    raw = wx.raw_prompt_set(0, per_aspect=1)
    assert {r["style"] for r in raw} == {"log", "narrative"}
    assert {r["category"] for r in raw} == set(wx.ASPECTS) and {r["split"] for r in raw} == set(wx.SPLITS)
    assert len({r["id"] for r in raw}) == len(raw)
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
    obs = wx.observe(wx.OFFICES[0], 6, 15, __import__("random").Random(1))
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
    obs = wx.observe(wx.OFFICES[3], 2, 9, __import__("random").Random(2))
    q = wx.raw_prompt(obs, "wind", "question", "newer")
    assert wx.forum_post(obs, "wind", __import__("random").Random(0), "newer").startswith(q + " ")
    log = wx.raw_prompt(obs, "humidity", "log", "newer")
    assert wx.observation_log(obs, "newer").startswith(log + " ")


def test_consequence_validators_judge_a_continuation_from_any_point():
    from crosspatch.inputs.validators import parse_validator

    rng = __import__("random").Random(4)
    for era in wx.ERAS:
        for aspect in wx.ASPECTS:
            obs = wx.observe(wx.HELD_OUT_REGIONS[2], rng.randrange(12), 9, rng)
            check = parse_validator(wx.continuation_validator(obs, aspect, era), "t").check
            body = wx.report(obs, aspect, era).split("\n", 1)[1]
            assert check(body) and check(body[body.index(" ") + 1:] if " " in body.split("\n")[0] else body)
            assert not check(body.replace("\n### End", ""))  # the report must end
            assert not check("Value 987654 stated.\n### End\n")  # a number the data does not give
    obs = wx.observe(wx.OFFICES[1], 3, 4, rng)
    answer = parse_validator(wx.answer_validator(obs, "wind", "older"), "t").check
    assert answer(f" Expect a {obs.wind_dir} breeze around {obs.wind_mph} mph.")
    assert not answer(" Expect a breeze around 987654 mph.") and not answer(" Expect a breeze.")
