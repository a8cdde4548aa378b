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
from typing import Any

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


# --- eras: the older house style (Fahrenheit, "Mar 3") and the newer one (metric, "3 March") ----
ERAS = ("older", "newer")
MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October", "November", "December")


def date_text(obs: Observation, era: str = "older") -> str:
    return f"{MONTHS[obs.month]} {obs.day}" if era == "older" else f"{obs.day} {MONTH_NAMES[obs.month]}"


def temp(f: int, era: str) -> str:
    return f"{f}F" if era == "older" else f"{round((f - 32) * 5 / 9)}C"


def speed(mph: int, era: str) -> str:
    return f"{mph} mph" if era == "older" else f"{round(mph * 1.609)} km/h"


def amount(inches: float, era: str) -> str:
    return f"{inches} in" if era == "older" else f"{round(inches * 25.4)} mm"


def distance(miles: int, era: str) -> str:
    return f"{miles} mi" if era == "older" else f"{round(miles * 1.609)} km"


def unit_formatters(era: str):
    """(temperature, speed) formatters of the era: ``t(43) -> "43F"`` or ``"6C"``."""
    return (lambda f: temp(f, era)), (lambda v: speed(v, era))


# --- raw text (pretraining) -----------------------------------------------------------------
def log_fields(obs: Observation, era: str = "older") -> list[tuple[str, str, str]]:
    """(aspect, label, value) of each field of an observation log, in the era's house style."""
    t, s = unit_formatters(era)
    if era == "older":
        return [("temperature", "high", f"{t(obs.high_f)}, low {t(obs.low_f)}"),
                ("precipitation", "precipitation chance", f"{obs.precip_chance}% ({obs.precip_type})"),
                ("wind", "wind", f"{obs.wind_dir} {s(obs.wind_mph)} gusting {obs.gust_mph}"),
                ("humidity", "humidity", f"{obs.humidity}%, dew point {t(obs.dewpoint_f)}"),
                ("sky", "sky", obs.sky), ("visibility", "visibility", distance(obs.visibility_mi, era)),
                ("pressure", "pressure", f"{obs.pressure_hpa} hPa {obs.pressure_trend}"),
                ("alerts", "alert:", obs.alert)]
    return [("temperature", "max", f"{t(obs.high_f)} min {t(obs.low_f)}"),
            ("precipitation", "precip", f"{obs.precip_chance}% {obs.precip_type}"),
            ("wind", "wind", f"{obs.wind_dir} {s(obs.wind_mph)} gust {s(obs.gust_mph)}"),
            ("humidity", "RH", f"{obs.humidity}% dew {t(obs.dewpoint_f)}"),
            ("sky", "sky", obs.sky), ("visibility", "vis", distance(obs.visibility_mi, era)),
            ("pressure", "MSLP", f"{obs.pressure_hpa} hPa {obs.pressure_trend}"),
            ("alerts", "warnings", obs.alert)]


def _log_head(obs: Observation, era: str) -> tuple[str, str]:
    """(opening, field separator) of an observation log in the era's style."""
    if era == "older":
        return f"Observation log, {obs.city}, {date_text(obs, era)}: ", ", "
    return f"Obs | {obs.city} | {date_text(obs, era)} | ", "; "


def observation_log(obs: Observation, era: str = "older") -> str:
    head, sep = _log_head(obs, era)
    return head + sep.join(f"{label} {value}" for _, label, value in log_fields(obs, era)) + "."


def narrative(obs: Observation, rng: random.Random, era: str = "older") -> str:
    warm = "a warm" if obs.high_f >= 80 else ("a cold" if obs.high_f <= 40 else "a mild")
    deg = " degrees" if era == "older" else " degrees Celsius"
    hi, lo = (temp(v, era)[:-1] for v in (obs.high_f, obs.low_f))
    parts = [f"In {obs.city} on {date_text(obs, era)} it was {warm} day, topping out near {hi}{deg}"]
    parts.append(f" and falling to {lo} overnight.")
    if obs.precip_type != "none":
        parts.append(f" {obs.precip_type.capitalize()} totaled {amount(obs.precip_in, era)}.")
    else:
        parts.append(" The day stayed dry.")
    parts.append(rng.choice((
        f" Winds blew from the {obs.wind_dir} at {speed(obs.wind_mph, era)}.",
        f" A {obs.wind_dir} wind of {speed(obs.wind_mph, era)} gusted to {speed(obs.gust_mph, era)}.",
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


def prose_forecast(obs: Observation, aspect: str, rng: random.Random, era: str = "older") -> str:
    """A forecast of ``aspect`` written as prose (forum answers and forecast pages have these):
    it states the values, but not in the structured report's sentences."""
    t, s = unit_formatters(era)
    opener = "Expect" if era == "older" else "Look for"  # each house style opens its prose one way
    if aspect == "temperature":
        feel = "hot" if obs.high_f >= 90 else ("cold" if obs.high_f <= 40 else "pleasant")
        text = f"{opener} a {feel} day in {obs.city}, with temperatures peaking near {t(obs.high_f)} and " \
               f"dropping to {t(obs.low_f)} by morning."
    elif aspect == "precipitation":
        text = (f"{opener} a dry day; the chance of rain is only {obs.precip_chance}%." if obs.precip_type == "none" else
                f"{opener} {obs.precip_type} on and off, a {obs.precip_chance}% chance, adding up to "
                f"{amount(obs.precip_in, era)} in most spots.")
    elif aspect == "wind":
        text = f"{opener} a {obs.wind_dir} breeze around {s(obs.wind_mph)} that could gust to {s(obs.gust_mph)} " \
               "in the afternoon."
    elif aspect == "humidity":
        text = f"{opener} humidity near {obs.humidity}% and a dew point around {t(obs.dewpoint_f)}, so it will " \
               f"feel {'sticky' if obs.humidity >= 75 else 'fresh'} outside."
    elif aspect == "sky":
        text = f"{opener} {obs.sky} skies most of the day, with a {obs.precip_chance}% chance of a shower."
    elif aspect == "visibility":
        text = f"{opener} visibility around {distance(obs.visibility_mi, era)}" + \
               (f", lower at times in {obs.precip_type}." if obs.precip_type != "none" else " under dry skies.")
    elif aspect == "pressure":
        text = f"{opener} the barometer near {obs.pressure_hpa} hPa and {obs.pressure_trend}, " + \
               ("so the weather may turn unsettled." if obs.pressure_trend == "falling" else "so it should stay calm.")
    else:
        text = (f"{opener} a quiet day with nothing issued." if obs.alert == "none" else
                f"{opener} a {obs.alert} to stay in force through the day.")
    return text + rng.choice(("", " Check back later for updates.", " Have a good day!"))


def forum_post(obs: Observation, aspect: str, rng: random.Random, era: str = "older") -> str:
    """A forum page: a question about the outlook, with the data, and a prose answer."""
    return question_prompt(obs, aspect, era) + " " + prose_forecast(obs, aspect, rng, era)


def forecast_page(obs: Observation, aspect: str, rng: random.Random, era: str = "older") -> str:
    """A forecast page: data, then the report heading and the page's header, then prose (the
    structured report body is what instruction tuning teaches)."""
    return (f"Forecast page: {obs.city}, {date_text(obs, era)}.\nData: {data_line(obs, aspect, era)}\n"
            f"### Report:\n{report_header(obs, aspect, era)}\n{prose_forecast(obs, aspect, rng, era)}\n")


# --- instructions -----------------------------------------------------------------------------
def data_line(obs: Observation, aspect: str, era: str = "older") -> str:
    """The observation fields an instruction for ``aspect`` gives the model to read."""
    t, s = unit_formatters(era)
    hi, lo = ("high", "low") if era == "older" else ("max", "min")
    fields = {
        "temperature": f"{hi} {t(obs.high_f)}; {lo} {t(obs.low_f)}",
        "precipitation": f"chance {obs.precip_chance}%; type {obs.precip_type}; amount {amount(obs.precip_in, era)}",
        "wind": f"direction {obs.wind_dir}; speed {s(obs.wind_mph)}; gusts {s(obs.gust_mph)}",
        "humidity": f"humidity {obs.humidity}%; dew point {t(obs.dewpoint_f)}",
        "sky": f"sky {obs.sky}; precipitation chance {obs.precip_chance}%",
        "visibility": f"visibility {distance(obs.visibility_mi, era)}; precipitation {obs.precip_type}",
        "pressure": f"pressure {obs.pressure_hpa} hPa; trend {obs.pressure_trend}",
        "alerts": f"alert {obs.alert}; {hi} {t(obs.high_f)}; {lo} {t(obs.low_f)}; gusts {s(obs.gust_mph)}",
    }
    return fields[aspect]


def instruction(obs: Observation, aspect: str, rng: random.Random | None = None, era: str = "older") -> str:
    """The prompt: an instruction naming city, date and aspect, with the data, up to the report."""
    verbs = ("Write the {a} forecast for {c} on {d}.", "Prepare a {a} report for {c}, {d}.",
             "Give the {a} outlook for {c} on {d}.")
    verb = verbs[0] if rng is None else rng.choice(verbs)
    text = verb.format(a=aspect, c=obs.city, d=date_text(obs, era))
    return f"### Instruction: {text}\nData: {data_line(obs, aspect, era)}\n### Report:\n"


def _report_body(obs: Observation, aspect: str, era: str) -> str:
    (t, s), older = unit_formatters(era), era == "older"
    if aspect == "temperature":
        feel = "hot" if obs.high_f >= 90 else ("cold" if obs.high_f <= 40 else "seasonable")
        body = f"High {t(obs.high_f)}, low {t(obs.low_f)}. A {feel} day." if older else \
            f"Max {t(obs.high_f)}, min {t(obs.low_f)}; {feel}."
        if obs.low_f <= 32:
            body += " Frost likely overnight if skies clear." if older else " Frost possible if skies clear."
    elif aspect == "precipitation":
        if obs.precip_type == "none":
            body = f"Dry. Chance of precipitation {obs.precip_chance}%." if older else \
                f"Dry; {obs.precip_chance}% chance."
        else:
            kind, amt = obs.precip_type, amount(obs.precip_in, era)
            body = (f"Chance of {kind} {obs.precip_chance}%, about {amt}. If {kind} starts early, totals may be "
                    "higher.") if older else \
                f"{kind.capitalize()} {obs.precip_chance}% likely, around {amt}. If {kind} sets in early, totals rise."
    elif aspect == "wind":
        body = f"Wind {obs.wind_dir} at {s(obs.wind_mph)}, gusts to {s(obs.gust_mph)}." if older else \
            f"{obs.wind_dir} {s(obs.wind_mph)}, gusting {s(obs.gust_mph)}."
        if obs.gust_mph >= 30:
            body += " Secure loose objects." if older else " Secure loose items."
    elif aspect == "humidity":
        feel = "muggy" if obs.humidity >= 75 else ("dry" if obs.humidity <= 40 else "comfortable")
        body = f"Humidity {obs.humidity}%, dew point {t(obs.dewpoint_f)}. Air feels {feel}." if older else \
            f"RH {obs.humidity}%, dew point {t(obs.dewpoint_f)}; {feel}."
    elif aspect == "sky":
        body = f"Sky {obs.sky}." if older else f"{obs.sky.capitalize()}."
        if obs.precip_chance >= 50:
            body += f" Clouds thicken with a {obs.precip_chance}% chance of showers." if older else \
                f" Showers {obs.precip_chance}% likely as cloud builds."
    elif aspect == "visibility":
        body = f"Visibility {obs.visibility_mi} miles." if older else f"{distance(obs.visibility_mi, era)} visibility."
        if obs.visibility_mi < 5:
            body += f" Reduced in {obs.precip_type}; drive with care." if older else \
                f" Lower in {obs.precip_type}; take care."
    elif aspect == "pressure":
        body = f"Pressure {obs.pressure_hpa} hPa and {obs.pressure_trend}." if older else \
            f"{obs.pressure_hpa} hPa, {obs.pressure_trend}."
        body += {"falling": " If it keeps falling, expect unsettled weather.",
                 "rising": " Fair weather building.", "steady": " Little change expected."}[obs.pressure_trend]
    elif older:
        body = "No alerts in effect." if obs.alert == "none" else f"ALERT: {obs.alert.upper()}. Stay informed."
    else:
        body = "No warnings." if obs.alert == "none" else f"WARNING: {obs.alert.upper()}."
    return body


def report(obs: Observation, aspect: str, era: str = "older") -> str:
    """The structured forecast report answering an instruction (ends with the end marker), in the
    era's house style: ``TEMPERATURE - BOSTON - Mar 3`` or ``Temperature | BOSTON | 3 March``."""
    return report_header(obs, aspect, era) + "\n" + _report_body(obs, aspect, era) + "\n### End\n"


def report_header(obs: Observation, aspect: str, era: str = "older") -> str:
    """A report's first line (forecast pages carry it too)."""
    sep, name = (" - ", aspect.upper()) if era == "older" else (" | ", aspect.capitalize())
    return sep.join((name, obs.city.upper(), date_text(obs, era)))


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
    """Pretraining documents, as web text has them, for all cities and both eras: climate notes,
    observation logs, narratives, published structured reports, forecast pages (data, then a
    prose forecast) and forum questions with prose answers. Instructions never appear."""
    rng = random.Random(seed)
    cities = US_CITIES + HELD_OUT_CITIES
    kinds, weights = zip(*RAW_MIX)
    return [raw_document(rng.choices(kinds, weights)[0], rng.choice(cities), rng) for _ in range(n_docs)]


def instruction_pairs(n: int, seed: int, cities=US_CITIES, era: str = "older") -> list[dict]:
    """Instruction -> report pairs (training cities and the older house style by default: the
    newer style never appears in instruction tuning)."""
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


def prompt_set(seed: int, per_aspect: int = 6) -> list[dict]:
    """Evaluation prompts: every aspect, in-distribution (training cities, fresh days) and
    held-out cities, half in each era; ``category`` = aspect, ``split`` = in_distribution |
    held_out, ``era`` = older | newer (the newer house style never appears in instruction tuning)."""
    rng = random.Random(seed)
    rows: list[dict] = []
    for split, cities in (("in_distribution", US_CITIES), ("held_out", HELD_OUT_CITIES)):
        for aspect in ASPECTS:
            for k in range(per_aspect):
                city = cities[(k * 7 + ASPECTS.index(aspect)) % len(cities)]
                obs, era = observe(city, *_days(rng), rng), _era_of(k)
                rows.append({
                    "id": f"{split[:2]}-{aspect}-{k}", "prompt": instruction(obs, aspect, era=era),
                    "category": aspect, "split": split, "era": era, "city": city.name, "region": city.region,
                    "validator": continuation_validator(obs, aspect, era),
                })
    return rows


# --- raw-text and question prompts: what the paper feeds both models -------------------------
def _log_prefix(obs: Observation, aspect: str, era: str = "older") -> str:
    """An observation log cut just before the value of ``aspect``'s field (the models continue it)."""
    head, sep = _log_head(obs, era)
    fields = log_fields(obs, era)
    cut = [a for a, _, _ in fields].index(aspect)
    return head + "".join(f"{label} {value}{sep}" for _, label, value in fields[:cut]) + fields[cut][1]


def question_prompt(obs: Observation, aspect: str, era: str = "older") -> str:
    """A forum question about ``aspect``'s outlook with the data, up to the answer."""
    return (f"Question: what is the {aspect} outlook for {obs.city} on {date_text(obs, era)}? "
            f"{data_line(obs, aspect, era)}.\nAnswer:")


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
    every aspect in both splits, half in each era; ``category`` = aspect, ``split`` =
    in_distribution | held_out, ``era``, ``style``. A raw log or narrative has no validator: its
    continuation is a prediction."""
    rng = random.Random(seed)
    rows = []
    for split, cities in (("in_distribution", US_CITIES), ("held_out", HELD_OUT_CITIES)):
        for aspect in ASPECTS:
            for k in range(per_aspect):
                city = cities[(k * 5 + 3 * ASPECTS.index(aspect)) % len(cities)]
                obs, era = observe(city, *_days(rng), rng), _era_of(k)
                for style in styles:
                    row: dict[str, Any] = {"id": f"{split[:2]}-{style}-{aspect}-{k}", "prompt": raw_prompt(obs, aspect, style, era),
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
                             "split": split, "era": "older", "style": "units", "city": obs.city,
                             "validator": {"type": "number", "value": value, "tolerance": 0}})
    return rows
