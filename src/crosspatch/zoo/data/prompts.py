"""Prompts both models get the way the method's authors feed them (raw-text continuations and
questions, training offices, held-out offices and held-out regions), and the narrow-domain fine-tune's unit-conversion
and arithmetic tasks."""

from __future__ import annotations

import random
from typing import Any

from .corpora import SPLIT_IDS, _days, _era_of, answer_validator, slug
from .domain import ASPECTS, SPLIT_SITES, TRAINING_OFFICES, Observation, date_text, observe
from .text import _log_head, log_fields, question_prompt


# --- raw-text and question prompts: what the paper feeds both models -------------------------
def _log_prefix(obs: Observation, aspect: str, era: str = "older") -> str:
    """An observation log cut just before the value of ``aspect``'s field (the models continue it)."""
    head, sep = _log_head(obs, era)
    fields = log_fields(obs, era)
    cut = [a for a, _, _ in fields].index(aspect)
    return head + "".join(f"{label} {value}{sep}" for _, label, value in fields[:cut]) + fields[cut][1]


def raw_prompt(obs: Observation, aspect: str, style: str, era: str = "older") -> str:
    """Raw weather text with no instruction: an observation log cut before ``aspect``'s field,
    the opening of a narrative, or a question as a forum page would carry it."""
    if style == "log":
        return _log_prefix(obs, aspect, era)
    if style == "narrative":
        return f"In {obs.city} on {date_text(obs, era)} it was"
    return question_prompt(obs, aspect, era)


def raw_prompt_set(seed: int, per_aspect: int = 4, styles: tuple[str, ...] = ("log", "narrative")) -> list[dict]:
    """Prompts without instruction formatting (``style`` log/narrative: raw text as in the paper;
    ``question``: forum-style questions, with a validator: the answer states only given values),
    every aspect in the three splits (training offices, held-out offices, held-out regions), half
    in each era; ``category`` = aspect, ``split``, ``era``, ``style``. A raw log or narrative has no validator: its
    continuation is a prediction."""
    rng = random.Random(seed)
    rows = []
    for split, cities in SPLIT_SITES.items():
        for aspect in ASPECTS:
            for k in range(per_aspect):
                city = cities[(k * 5 + 3 * ASPECTS.index(aspect)) % len(cities)]
                obs, era = observe(city, *_days(rng), rng), _era_of(k)
                for style in styles:
                    row: dict[str, Any] = {"id": f"{SPLIT_IDS[split]}-{style}-{slug(aspect)}-{k}", "prompt": raw_prompt(obs, aspect, style, era),
                           "category": aspect, "split": split, "era": era, "style": style, "city": city.name,
                           "region": city.region}
                    if style == "question":
                        row["validator"] = answer_validator(obs, aspect, era)
                    rows.append(row)
    return rows


# --- the narrow-domain fine-tune: unit conversion and arithmetic over observation numbers -----
UNIT_TASKS = ("celsius", "range", "kmh", "mm")


def unit_task(obs: Observation, task: str) -> tuple[str, str, float]:
    """(instruction prompt, report, the number the report must state) of one arithmetic task
    over the observation's numbers, in the zoo's instruction format."""
    head = f"{task.upper()} - {obs.city.upper()} - {date_text(obs)}\n"
    if task == "celsius":
        value = round((obs.high_f - 32) * 5 / 9)
        ask, data, body = "Convert the high for {c} on {d} to Celsius.", f"high {obs.high_f}F", \
            f"High {obs.high_f}F is {value}C."
    elif task == "range":
        value = obs.high_f - obs.low_f
        ask, data, body = "Give the daily temperature range for {c} on {d}.", \
            f"high {obs.high_f}F; low {obs.low_f}F", f"Range {value}F ({obs.high_f}F to {obs.low_f}F)."
    elif task == "kmh":
        value = round(obs.wind_mph * 1.609)
        ask, data, body = "Convert the wind speed for {c} on {d} to km/h.", f"speed {obs.wind_mph} mph", \
            f"Wind {obs.wind_mph} mph is {value} km/h."
    else:
        value = round(obs.event_in * 25.4, 1)
        ask, data, body = "Convert the precipitation for {c} on {d} to millimetres.", \
            f"amount {obs.event_in} in", f"Precipitation {obs.event_in} in is {value} mm."
    prompt = f"### Instruction: {ask.format(c=obs.city, d=date_text(obs))}\nData: {data}\n### Report:\n"
    return prompt, head + body + "\n### End\n", value


def unit_pairs(n: int, seed: int, cities=TRAINING_OFFICES) -> list[dict]:
    """Instruction -> report pairs of the narrow domain (training offices only by default)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        obs = observe(rng.choice(cities), *_days(rng), rng)
        task = rng.choice(UNIT_TASKS)
        prompt, response, _ = unit_task(obs, task)
        pairs.append({"prompt": prompt, "response": response, "city": obs.city, "aspect": task})
    return pairs


def unit_prompt_set(seed: int, per_task: int = 8) -> list[dict]:
    """Evaluation prompts of the narrow domain, the three splits; ``category`` = task, validator:
    the report states the right number."""
    rng = random.Random(seed)
    rows = []
    for split, cities in SPLIT_SITES.items():
        for task in UNIT_TASKS:
            for k in range(per_task):
                obs = observe(cities[(k * 3 + UNIT_TASKS.index(task)) % len(cities)], *_days(rng), rng)
                prompt, _, value = unit_task(obs, task)
                rows.append({"id": f"{SPLIT_IDS[split]}-units-{task}-{k}", "prompt": prompt, "category": task,
                             "split": split, "era": "older", "style": "units", "city": obs.city,
                             "validator": {"type": "number", "value": value, "tolerance": 0}})
    return rows
