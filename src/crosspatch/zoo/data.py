"""Synthetic weather data for the zoo: observations, raw pretraining text, instruction pairs.

Deterministic for a seed. 31 US training cities with regional climates; held-out cities in
Europe and East Asia never appear in instruction tuning (they do appear in raw text, as a
pretraining corpus would cover the world). Eight aspects, each with its own report format:

    temperature, precipitation, wind, humidity, sky, visibility, pressure, alerts
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

ASPECTS = ("temperature", "precipitation", "wind", "humidity", "sky", "visibility", "pressure", "alerts")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
WIND_DIRS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
SKY = ("clear", "mostly clear", "partly cloudy", "mostly cloudy", "overcast")


@dataclass(frozen=True)
class Climate:
    """Annual temperature cycle (F), wetness, humidity, windiness of a city."""

    winter_f: float
    summer_f: float
    wet: float  # base chance of precipitation, 0..1
    humid: float  # mean relative humidity, %
    windy: float  # mean wind speed, mph


@dataclass(frozen=True)
class City:
    name: str
    region: str
    climate: Climate


def _c(w, s, wet, hum, wind):
    return Climate(w, s, wet, hum, wind)


US_CITIES = (
    City("Boston", "Northeast", _c(36, 82, 0.35, 65, 12)),
    City("New York", "Northeast", _c(39, 84, 0.33, 63, 11)),
    City("Philadelphia", "Northeast", _c(41, 86, 0.32, 64, 10)),
    City("Pittsburgh", "Northeast", _c(35, 82, 0.40, 68, 9)),
    City("Washington", "Mid-Atlantic", _c(44, 88, 0.30, 64, 9)),
    City("Charlotte", "Southeast", _c(52, 90, 0.30, 68, 7)),
    City("Atlanta", "Southeast", _c(53, 90, 0.33, 70, 8)),
    City("Miami", "Southeast", _c(76, 91, 0.40, 76, 9)),
    City("Orlando", "Southeast", _c(72, 92, 0.38, 74, 8)),
    City("Nashville", "Southeast", _c(48, 89, 0.35, 70, 8)),
    City("New Orleans", "Gulf Coast", _c(62, 91, 0.38, 77, 8)),
    City("Houston", "Gulf Coast", _c(63, 94, 0.32, 75, 8)),
    City("Dallas", "South Central", _c(57, 96, 0.25, 63, 10)),
    City("Austin", "South Central", _c(62, 97, 0.24, 65, 8)),
    City("Oklahoma City", "South Central", _c(49, 94, 0.25, 62, 13)),
    City("Kansas City", "Midwest", _c(40, 89, 0.28, 66, 11)),
    City("St. Louis", "Midwest", _c(40, 90, 0.30, 68, 9)),
    City("Chicago", "Midwest", _c(32, 84, 0.33, 67, 12)),
    City("Detroit", "Midwest", _c(32, 83, 0.35, 69, 10)),
    City("Cleveland", "Midwest", _c(34, 82, 0.40, 70, 11)),
    City("Milwaukee", "Midwest", _c(29, 80, 0.33, 69, 12)),
    City("Minneapolis", "Upper Midwest", _c(22, 83, 0.30, 66, 11)),
    City("Denver", "Mountain", _c(45, 89, 0.18, 45, 9)),
    City("Salt Lake City", "Mountain", _c(38, 93, 0.17, 45, 9)),
    City("Albuquerque", "Southwest", _c(48, 92, 0.12, 38, 9)),
    City("Phoenix", "Southwest", _c(67, 106, 0.07, 30, 7)),
    City("Las Vegas", "Southwest", _c(58, 104, 0.05, 28, 9)),
    City("Los Angeles", "West Coast", _c(68, 84, 0.10, 62, 7)),
    City("San Francisco", "West Coast", _c(57, 70, 0.20, 72, 11)),
    City("Portland", "Pacific Northwest", _c(47, 81, 0.45, 72, 7)),
    City("Seattle", "Pacific Northwest", _c(48, 77, 0.48, 73, 8)),
)
HELD_OUT_CITIES = (
    City("London", "Europe", _c(47, 73, 0.45, 78, 10)),
    City("Paris", "Europe", _c(45, 77, 0.40, 75, 9)),
    City("Berlin", "Europe", _c(37, 76, 0.38, 74, 10)),
    City("Madrid", "Europe", _c(50, 90, 0.18, 55, 8)),
    City("Rome", "Europe", _c(55, 88, 0.25, 68, 7)),
    City("Tokyo", "East Asia", _c(50, 87, 0.35, 68, 9)),
    City("Seoul", "East Asia", _c(34, 85, 0.30, 65, 8)),
    City("Beijing", "East Asia", _c(35, 88, 0.20, 55, 9)),
    City("Shanghai", "East Asia", _c(47, 90, 0.38, 75, 9)),
    City("Osaka", "East Asia", _c(49, 89, 0.33, 67, 8)),
)


@dataclass(frozen=True)
class Observation:
    city: str
    region: str
    month: int  # 0..11
    day: int
    high_f: int
    low_f: int
    precip_chance: int  # %
    precip_type: str  # rain | snow | none
    precip_in: float
    wind_dir: str
    wind_mph: int
    gust_mph: int
    humidity: int
    dewpoint_f: int
    sky: str
    visibility_mi: int
    pressure_hpa: int
    pressure_trend: str  # rising | falling | steady
    alert: str  # none | heat advisory | freeze warning | wind advisory | flood watch | winter storm warning


def observe(city: City, month: int, day: int, rng: random.Random) -> Observation:
    """One day's weather for a city: seasonal cycle plus noise, internally consistent."""
    cl = city.climate
    season = (1 - math.cos(2 * math.pi * (month + day / 31 - 0.5) / 12)) / 2  # 0 in Jan, 1 in Jul
    mean_high = cl.winter_f + (cl.summer_f - cl.winter_f) * season
    high = int(round(mean_high + rng.gauss(0, 6)))
    low = int(round(high - rng.uniform(9, 22)))
    chance = max(0, min(100, int(round(100 * min(0.95, cl.wet * rng.uniform(0.2, 2.4))) / 10) * 10))
    precip_type = "none" if chance < 30 else ("snow" if high < 36 else "rain")
    amount = round(rng.uniform(0.05, 1.2) * chance / 100, 2) if precip_type != "none" else 0.0
    wind = max(0, int(round(rng.gauss(cl.windy, 4))))
    gust = wind + int(round(abs(rng.gauss(6, 4))))
    humidity = max(10, min(100, int(round(rng.gauss(cl.humid + (chance - 30) * 0.2, 8)))))
    dew = int(round(low - (100 - humidity) / 5))
    sky = SKY[min(4, max(0, int(chance / 22) + rng.choice((-1, 0, 0, 1))))]
    vis = 10 if chance < 40 else max(1, int(round(10 - chance / 12 + rng.uniform(-1, 1))))
    pressure = int(round(rng.gauss(1016 - chance * 0.12, 5)))
    trend = "falling" if chance >= 60 else rng.choice(("rising", "steady", "rising", "falling"))
    alert = "none"
    if high >= 100:
        alert = "heat advisory"
    elif low <= 20 and precip_type == "snow" and amount > 0.4:
        alert = "winter storm warning"
    elif low <= 28:
        alert = "freeze warning"
    elif gust >= 35:
        alert = "wind advisory"
    elif amount >= 0.8:
        alert = "flood watch"
    return Observation(city.name, city.region, month, day, high, low, chance, precip_type, amount,
                       rng.choice(WIND_DIRS), wind, gust, humidity, dew, sky, vis, pressure, trend, alert)


def date_text(obs: Observation) -> str:
    return f"{MONTHS[obs.month]} {obs.day}"


# --- raw text (pretraining) -----------------------------------------------------------------
def observation_log(obs: Observation) -> str:
    return (
        f"Observation log, {obs.city}, {date_text(obs)}: high {obs.high_f}F, low {obs.low_f}F, "
        f"precipitation chance {obs.precip_chance}% ({obs.precip_type}), wind {obs.wind_dir} {obs.wind_mph} mph "
        f"gusting {obs.gust_mph}, humidity {obs.humidity}%, dew point {obs.dewpoint_f}F, sky {obs.sky}, "
        f"visibility {obs.visibility_mi} mi, pressure {obs.pressure_hpa} hPa {obs.pressure_trend}, "
        f"alert: {obs.alert}."
    )


def narrative(obs: Observation, rng: random.Random) -> str:
    warm = "a warm" if obs.high_f >= 80 else ("a cold" if obs.high_f <= 40 else "a mild")
    parts = [f"In {obs.city} on {date_text(obs)} it was {warm} day, topping out near {obs.high_f} degrees"]
    parts.append(f" and falling to {obs.low_f} overnight.")
    if obs.precip_type != "none":
        parts.append(f" {obs.precip_type.capitalize()} totaled {obs.precip_in} inches.")
    else:
        parts.append(" The day stayed dry.")
    parts.append(rng.choice((
        f" Winds blew from the {obs.wind_dir} at {obs.wind_mph} miles per hour.",
        f" A {obs.wind_dir} wind of {obs.wind_mph} mph gusted to {obs.gust_mph}.",
        f" Skies were {obs.sky} and the air felt {'sticky' if obs.humidity > 70 else 'dry'}.",
    )))
    if obs.alert != "none":
        parts.append(f" Forecasters issued a {obs.alert}.")
    return "".join(parts)


def bulletin(city: City, rng: random.Random) -> str:
    cl = city.climate
    return (
        f"Climate note for {city.name} ({city.region}): winter highs average {int(cl.winter_f)}F and summer "
        f"highs {int(cl.summer_f)}F; precipitation falls on about {int(100 * cl.wet)}% of days, humidity "
        f"averages {int(cl.humid)}% and winds {int(cl.windy)} mph."
    )


# --- instructions -----------------------------------------------------------------------------
def data_line(obs: Observation, aspect: str) -> str:
    """The observation fields an instruction for ``aspect`` gives the model to read."""
    fields = {
        "temperature": f"high {obs.high_f}F; low {obs.low_f}F",
        "precipitation": f"chance {obs.precip_chance}%; type {obs.precip_type}; amount {obs.precip_in} in",
        "wind": f"direction {obs.wind_dir}; speed {obs.wind_mph} mph; gusts {obs.gust_mph} mph",
        "humidity": f"humidity {obs.humidity}%; dew point {obs.dewpoint_f}F",
        "sky": f"sky {obs.sky}; precipitation chance {obs.precip_chance}%",
        "visibility": f"visibility {obs.visibility_mi} mi; precipitation {obs.precip_type}",
        "pressure": f"pressure {obs.pressure_hpa} hPa; trend {obs.pressure_trend}",
        "alerts": f"alert {obs.alert}; high {obs.high_f}F; low {obs.low_f}F; gusts {obs.gust_mph} mph",
    }
    return fields[aspect]


def instruction(obs: Observation, aspect: str, rng: random.Random | None = None) -> str:
    """The prompt: an instruction naming city, date and aspect, with the data, up to the report."""
    verbs = ("Write the {a} forecast for {c} on {d}.", "Prepare a {a} report for {c}, {d}.",
             "Give the {a} outlook for {c} on {d}.")
    verb = verbs[0] if rng is None else rng.choice(verbs)
    text = verb.format(a=aspect, c=obs.city, d=date_text(obs))
    return f"### Instruction: {text}\nData: {data_line(obs, aspect)}\n### Report:\n"


def report(obs: Observation, aspect: str) -> str:
    """The structured forecast report answering an instruction (ends with the end marker)."""
    head = f"{aspect.upper()} - {obs.city.upper()} - {date_text(obs)}\n"
    if aspect == "temperature":
        feel = "hot" if obs.high_f >= 90 else ("cold" if obs.high_f <= 40 else "seasonable")
        body = f"High {obs.high_f}F, low {obs.low_f}F. A {feel} day."
        if obs.low_f <= 32:
            body += " Frost likely overnight if skies clear."
    elif aspect == "precipitation":
        if obs.precip_type == "none":
            body = f"Dry. Chance of precipitation {obs.precip_chance}%."
        else:
            body = (f"Chance of {obs.precip_type} {obs.precip_chance}%, about {obs.precip_in} in. "
                    f"If {obs.precip_type} starts early, totals may be higher.")
    elif aspect == "wind":
        body = f"Wind {obs.wind_dir} at {obs.wind_mph} mph, gusts to {obs.gust_mph} mph."
        if obs.gust_mph >= 30:
            body += " Secure loose objects."
    elif aspect == "humidity":
        feel = "muggy" if obs.humidity >= 75 else ("dry" if obs.humidity <= 40 else "comfortable")
        body = f"Humidity {obs.humidity}%, dew point {obs.dewpoint_f}F. Air feels {feel}."
    elif aspect == "sky":
        body = f"Sky {obs.sky}."
        if obs.precip_chance >= 50:
            body += f" Clouds thicken with a {obs.precip_chance}% chance of showers."
    elif aspect == "visibility":
        body = f"Visibility {obs.visibility_mi} miles."
        if obs.visibility_mi < 5:
            body += f" Reduced in {obs.precip_type}; drive with care."
    elif aspect == "pressure":
        body = f"Pressure {obs.pressure_hpa} hPa and {obs.pressure_trend}."
        body += {"falling": " If it keeps falling, expect unsettled weather.",
                 "rising": " Fair weather building.", "steady": " Little change expected."}[obs.pressure_trend]
    else:
        body = "No alerts in effect." if obs.alert == "none" else f"ALERT: {obs.alert.upper()}. Stay informed."
    return head + body + "\n### End\n"


# --- corpora ----------------------------------------------------------------------------------
def _days(rng: random.Random) -> tuple[int, int]:
    return rng.randrange(12), rng.randint(1, 28)


def raw_corpus(n_docs: int, seed: int) -> list[str]:
    """Pretraining documents: observation logs, narratives, climate notes and published
    forecast reports (as web text has them), for all cities. Instructions never appear."""
    rng = random.Random(seed)
    cities = US_CITIES + HELD_OUT_CITIES
    docs = []
    for _ in range(n_docs):
        city = rng.choice(cities)
        kind = rng.random()
        if kind < 0.1:
            docs.append(bulletin(city, rng))
            continue
        obs = observe(city, *_days(rng), rng)
        if kind < 0.45:
            docs.append(observation_log(obs))
        elif kind < 0.8:
            docs.append(narrative(obs, rng))
        else:
            docs.append("Published forecast:\n" + report(obs, rng.choice(ASPECTS)))
    return docs


def instruction_pairs(n: int, seed: int, cities=US_CITIES) -> list[dict]:
    """Instruction -> report pairs (training cities only by default)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        obs = observe(rng.choice(cities), *_days(rng), rng)
        aspect = rng.choice(ASPECTS)
        pairs.append({"prompt": instruction(obs, aspect, rng), "response": report(obs, aspect),
                      "city": obs.city, "aspect": aspect})
    return pairs


def _value_rules(text: str) -> list[dict]:
    """One regex rule per number of ``text``: the continuation must state that value."""
    return [{"type": "regex", "pattern": rf"(?<![\d.]){re.escape(v)}(?![\d.])"}
            for v in dict.fromkeys(re.findall(r"\d+(?:\.\d+)?", text))]


def report_validator(obs: Observation, aspect: str) -> list[dict]:
    """What a correct report of ``obs`` must do (checked on a continuation by
    :mod:`crosspatch.validators`): name the city and date in its header, end with the end marker,
    state every value of the reference report, and use the conditional form where the reference
    does. (The header's first word, the aspect, is often the forced token itself, which the
    consequence check does not score.)"""
    return validator_for_report(report(obs, aspect))


def validator_for_report(ref: str) -> list[dict]:
    """:func:`report_validator` from the reference report's text."""
    head, body = ref.split("\n", 1)
    rules = [{"type": "sections", "required": [head.split(" - ", 1)[1], "### End"]}]
    rules += _value_rules(body.replace("### End", ""))
    if "If " in body:
        rules.append({"type": "regex", "pattern": r"\bIf\b"})
    return rules


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


def prompt_set(seed: int, per_aspect: int = 6) -> list[dict]:
    """Evaluation prompts: every aspect, in-distribution (training cities, fresh days) and
    held-out cities; ``category`` = aspect, ``split`` = in_distribution | held_out."""
    rng = random.Random(seed)
    rows = []
    for split, cities in (("in_distribution", US_CITIES), ("held_out", HELD_OUT_CITIES)):
        for aspect in ASPECTS:
            for k in range(per_aspect):
                city = cities[(k * 7 + ASPECTS.index(aspect)) % len(cities)]
                obs = observe(city, *_days(rng), rng)
                rows.append({
                    "id": f"{split[:2]}-{aspect}-{k}", "prompt": instruction(obs, aspect),
                    "category": aspect, "split": split, "city": city.name, "region": city.region,
                    "validator": report_validator(obs, aspect),
                })
    return rows


# --- raw-text and question prompts: what the paper feeds both models -------------------------
LOG_FIELDS = ("temperature", "precipitation", "wind", "humidity", "sky", "visibility", "pressure", "alerts")


def _log_prefix(obs: Observation, aspect: str) -> str:
    """An observation log cut just before the field of ``aspect`` (the models continue it)."""
    full = observation_log(obs)
    marks = {"temperature": " high ", "precipitation": " precipitation chance", "wind": " wind ",
             "humidity": " humidity", "sky": " sky ", "visibility": " visibility", "pressure": " pressure",
             "alerts": " alert:"}
    return full[: full.index(marks[aspect], full.index(":"))] + marks[aspect].rstrip()


def raw_prompt(obs: Observation, aspect: str, style: str) -> str:
    """Raw weather text with no instruction: an observation log cut before ``aspect``'s field,
    the opening of a narrative, or a question as a forum page would carry it."""
    if style == "log":
        return _log_prefix(obs, aspect)
    if style == "narrative":
        return f"In {obs.city} on {date_text(obs)} it was"
    return (f"Question: what is the {aspect} outlook for {obs.city} on {date_text(obs)}? "
            f"{data_line(obs, aspect)}.\nAnswer:")


def raw_prompt_set(seed: int, per_aspect: int = 4, styles: tuple[str, ...] = ("log", "narrative")) -> list[dict]:
    """Prompts without instruction formatting (``style`` log/narrative: raw text as in the paper;
    ``question``: forum-style questions, with a validator: the answer states the given values),
    every aspect in both splits; ``category`` = aspect, ``split`` = in_distribution | held_out,
    ``style``. A raw log or narrative has no validator: its continuation is a prediction."""
    rng = random.Random(seed)
    rows = []
    for split, cities in (("in_distribution", US_CITIES), ("held_out", HELD_OUT_CITIES)):
        for aspect in ASPECTS:
            for k in range(per_aspect):
                city = cities[(k * 5 + 3 * ASPECTS.index(aspect)) % len(cities)]
                obs = observe(city, *_days(rng), rng)
                for style in styles:
                    row = {"id": f"{split[:2]}-{style}-{aspect}-{k}", "prompt": raw_prompt(obs, aspect, style),
                           "category": aspect, "split": split, "style": style, "city": city.name,
                           "region": city.region}
                    if style == "question":  # the answer must state the values the question gives
                        row["validator"] = _value_rules(data_line(obs, aspect))
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
        value = round(obs.precip_in * 25.4, 1)
        ask, data, body = "Convert the precipitation for {c} on {d} to millimetres.", \
            f"amount {obs.precip_in} in", f"Precipitation {obs.precip_in} in is {value} mm."
    prompt = f"### Instruction: {ask.format(c=obs.city, d=date_text(obs))}\nData: {data}\n### Report:\n"
    return prompt, head + body + "\n### End\n", value


def unit_pairs(n: int, seed: int, cities=US_CITIES) -> list[dict]:
    """Instruction -> report pairs of the narrow domain (training cities only by default)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        obs = observe(rng.choice(cities), *_days(rng), rng)
        task = rng.choice(UNIT_TASKS)
        prompt, response, _ = unit_task(obs, task)
        pairs.append({"prompt": prompt, "response": response, "city": obs.city, "aspect": task})
    return pairs


def unit_prompt_set(seed: int, per_task: int = 8) -> list[dict]:
    """Evaluation prompts of the narrow domain, both splits; ``category`` = task, validator: the
    report states the right number."""
    rng = random.Random(seed)
    rows = []
    for split, cities in (("in_distribution", US_CITIES), ("held_out", HELD_OUT_CITIES)):
        for task in UNIT_TASKS:
            for k in range(per_task):
                obs = observe(cities[(k * 3 + UNIT_TASKS.index(task)) % len(cities)], *_days(rng), rng)
                prompt, _, value = unit_task(obs, task)
                rows.append({"id": f"{split[:2]}-units-{task}-{k}", "prompt": prompt, "category": task,
                             "split": split, "style": "units", "city": obs.city,
                             "validator": {"type": "number", "value": value, "tolerance": 0}})
    return rows
