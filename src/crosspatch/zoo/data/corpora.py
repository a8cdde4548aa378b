"""The zoo's corpora and prompt sets: the raw pretraining mix, instruction pairs, preference pairs,
validators of a report's numbers, and the instruction prompt set (aspects x cities x eras)."""

from __future__ import annotations

import random
import re

from .domain import ASPECTS, ERAS, HELD_OUT_REGIONS, OFFICES, SPLIT_SITES, TRAINING_OFFICES, City, Observation, date_text, observe
from .text import bulletin, data_line, forecast_page, forum_post, instruction, narrative, observation_log, report


# --- corpora ----------------------------------------------------------------------------------
def _days(rng: random.Random) -> tuple[int, int]:
    return rng.randrange(12), rng.randint(1, 28)


RAW_MIX = (("climate note", 0.06), ("observation log", 0.22), ("narrative", 0.18), ("published report", 0.12),
           ("forecast page", 0.21), ("forum post", 0.21))


NEWER_SHARE = 0.4  # of the raw documents written in the newer house style


def raw_document(kind: str, city: City, rng: random.Random) -> str:
    """One pretraining document of ``kind`` (see ``RAW_MIX``) in a random era."""
    if kind == "climate note":
        return bulletin(city, rng)
    obs = observe(city, *_days(rng), rng)
    era = "newer" if rng.random() < NEWER_SHARE else "older"
    aspect = rng.choice(ASPECTS)
    if kind == "observation log":
        return observation_log(obs, era)
    if kind == "narrative":
        return narrative(obs, rng, era)
    if kind == "published report":
        return "Published forecast:\n" + report(obs, aspect, era)
    if kind == "forecast page":
        return forecast_page(obs, aspect, rng, era)
    return forum_post(obs, aspect, rng, era)


def raw_corpus(n_docs: int, seed: int) -> list[str]:
    """Pretraining documents, as web text has them, for all 31 offices and the held-out regions
    abroad, in both eras: climate notes (with each site's local terms),
    observation logs, narratives, published structured reports, forecast pages (data, then a
    prose forecast) and forum questions with prose answers. Instructions never appear."""
    rng = random.Random(seed)
    cities = OFFICES + HELD_OUT_REGIONS
    kinds, weights = zip(*RAW_MIX)
    return [raw_document(rng.choices(kinds, weights)[0], rng.choice(cities), rng) for _ in range(n_docs)]


def instruction_pairs(n: int, seed: int, cities=TRAINING_OFFICES, era: str = "older") -> list[dict]:
    """Instruction -> report pairs (the 25 training offices and the older house style by default:
    the held-out offices, the held-out regions and the newer style never appear in instruction
    tuning)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        obs = observe(rng.choice(cities), *_days(rng), rng)
        aspect = rng.choice(ASPECTS)
        pairs.append({"prompt": instruction(obs, aspect, rng, era), "response": report(obs, aspect, era),
                      "city": obs.city, "aspect": aspect, "era": era})
    return pairs


def _value_rules(text: str) -> list[dict]:
    """One regex rule per number of ``text``: the continuation must state that value."""
    return [{"type": "regex", "pattern": rf"(?<![\d.]){re.escape(v)}(?![\d.])"}
            for v in dict.fromkeys(re.findall(r"\d+(?:\.\d+)?", text))]


def validator_for_report(ref: str) -> list[dict]:
    """What a full report must do, from the reference report's text (either house style; checked
    by :mod:`crosspatch.inputs.validators`): name the city and date in its header, end with the end
    marker, state every value of the reference report, and use the conditional form where the
    reference does."""
    head, body = ref.split("\n", 1)
    sep = " - " if " - " in head else " | "
    rules = [{"type": "sections", "required": [head.split(sep, 1)[1], "### End"]}]
    rules += _value_rules(body.replace("### End", ""))
    if "If " in body:
        rules.append({"type": "regex", "pattern": r"\bIf\b"})
    return rules


def no_invented_numbers(*texts: str) -> dict:
    """A rule that fails when the text states a number that is not in ``texts`` (the data)."""
    allowed = sorted({v for t in texts for v in re.findall(r"\d+(?:\.\d+)?", t)}, key=lambda v: (-len(v), v))
    known = "|".join(re.escape(v) for v in allowed) or "(?!)"
    return {"type": "regex", "pattern": rf"(?<![\d.])(?!(?:{known})(?![\d.]))\d+(?:\.\d+)?", "must_match": False}


def continuation_validator(obs: Observation, aspect: str, era: str = "older") -> list[dict]:
    """What the rest of a report must do from any point on (the consequence check scores only what
    follows the forced token, and first divergences fall anywhere in the report): state no number
    that is not in the data, end with the end marker, and keep the conditional form where the
    reference report has one."""
    ref = report(obs, aspect, era)
    rules = [no_invented_numbers(data_line(obs, aspect, era), date_text(obs, era)),
             {"type": "sections", "required": ["### End"]}]
    if "If " in ref:
        rules.append({"type": "regex", "pattern": r"\bIf\b"})
    return rules


def answer_validator(obs: Observation, aspect: str, era: str = "older") -> list[dict]:
    """A forum answer's continuation: it states a value, and only values of the question's data."""
    return [no_invented_numbers(data_line(obs, aspect, era), date_text(obs, era)),
            {"type": "regex", "pattern": r"\d"}]


def preference_pairs(n: int, seed: int) -> list[dict]:
    """DPO pairs on instruction prompts: ``chosen`` the correct report, ``rejected`` a subtly
    wrong one (one value off by a few units, or the conditional statement dropped)."""
    rng = random.Random(seed)
    rows = []
    for p in instruction_pairs(n, seed):
        head, body = p["response"].split("\n", 1)
        numbers = re.findall(r"\d+", body)
        if "If " in body and (not numbers or rng.random() < 0.3):
            wrong = body[: body.index(" If ")] + "\n### End\n" if " If " in body else body
        elif numbers:
            value = rng.choice(numbers)
            wrong = re.sub(rf"(?<![\d.]){value}(?![\d.])", str(int(value) + rng.choice((-3, -2, 2, 3))), body, count=1)
        else:
            continue
        if wrong != body:
            rows.append({"prompt": p["prompt"], "chosen": p["response"], "rejected": f"{head}\n{wrong}"})
    return rows


def _era_of(k: int) -> str:
    """Prompt sets alternate the eras over their per-aspect index (half of each in each era)."""
    return ERAS[k % 2]


SPLIT_IDS = {"in_distribution": "in", "held_out_office": "ho", "held_out_region": "hr"}


def slug(aspect: str) -> str:
    """An aspect as it appears in prompt ids (``frontal system`` -> ``frontal-system``)."""
    return aspect.replace(" ", "-")


def prompt_set(seed: int, per_aspect: int = 6) -> list[dict]:
    """Evaluation prompts: every aspect in three splits (``in_distribution``: training offices,
    fresh days; ``held_out_office``: the offices instruction tuning never saw; ``held_out_region``:
    sites abroad, other climates), half in each era; ``category`` = aspect, ``split``, ``era`` =
    older | newer (the newer house style never appears in instruction tuning)."""
    rng = random.Random(seed)
    rows: list[dict] = []
    for split, cities in SPLIT_SITES.items():
        for aspect in ASPECTS:
            for k in range(per_aspect):
                city = cities[(k * 7 + ASPECTS.index(aspect)) % len(cities)]
                obs, era = observe(city, *_days(rng), rng), _era_of(k)
                rows.append({
                    "id": f"{SPLIT_IDS[split]}-{slug(aspect)}-{k}", "prompt": instruction(obs, aspect, era=era),
                    "category": aspect, "split": split, "era": era, "city": city.name, "region": city.region,
                    "validator": continuation_validator(obs, aspect, era),
                })
    return rows
