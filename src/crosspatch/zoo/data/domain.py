"""The zoo's domain: eight aspects, 31 US forecast offices with regional climates and their own
local terms, offices held out of instruction tuning, regions held out as a whole, a day's
weather, and the house-style eras with their units.

Deterministic for a seed. The miniature follows an instruction-tuned weather-report model: 31 US
forecast offices report eight aspects of a day's weather chart,

    temperature, wind, humidity, frontal system, pressure system, synoptic feature (ridge or
    trough), wind flow (onshore/offshore, or upslope/downslope inland) and events (rain, snow,
    thunderstorms)

and two kinds of held-out data test transfer: six of the 31 offices (``HELD_OUT_OFFICES``) never
appear in instruction tuning (the same geography, other sites), and two whole regions abroad
(``HELD_OUT_REGIONS``: Europe and East Asia, other climates) appear only in raw text, as a
pretraining corpus covers the world. Each office has local terms its reports use when their
condition holds (Boston's nor'easter, Los Angeles's Santa Ana winds); raw text states them for
every office, instruction tuning only for the training offices.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

ASPECTS = ("temperature", "wind", "humidity", "frontal system", "pressure system", "synoptic feature", "wind flow",
           "events")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
WIND_DIRS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
FRONTS = ("cold front", "warm front", "stationary front", "occluded front", "none")
SYNOPTIC = ("ridge", "trough", "zonal flow")
EVENTS = ("rain", "snow", "thunderstorms", "none")


@dataclass(frozen=True)
class Climate:
    """Annual temperature cycle (F), wetness, humidity, windiness of a site."""

    winter_f: float
    summer_f: float
    wet: float  # base chance of precipitation, 0..1
    humid: float  # mean relative humidity, %
    windy: float  # mean wind speed, mph


@dataclass(frozen=True)
class LocalTerm:
    """A site's own word for a condition: ``term`` appears in ``aspect``'s report when
    ``condition`` (a name of :data:`CONDITIONS`) holds for the day."""

    aspect: str
    condition: str
    term: str


@dataclass(frozen=True)
class City:
    """A forecast site: name, office code (US) or country, region, climate, the direction its
    wind-flow reference lies in (open water, or rising terrain inland) with the two flow words, and
    its local terms."""

    name: str
    region: str
    climate: Climate
    office: str = ""
    flow_from: str = "E"  # a wind from this direction is onshore (upslope inland)
    flow_words: tuple[str, str] = ("onshore", "offshore")
    local_terms: tuple[LocalTerm, ...] = ()


def _c(w, s, wet, hum, wind):
    return Climate(w, s, wet, hum, wind)


def _t(aspect: str, condition: str, term: str) -> LocalTerm:
    return LocalTerm(aspect, condition, term)


_UP = ("upslope", "downslope")


def _site(name, office, region, climate, flow_from, terms, flow_words=("onshore", "offshore")) -> City:
    return City(name, region, climate, office, flow_from, flow_words, tuple(terms))


OFFICES = (
    _site("Boston", "BOX", "Northeast", _c(36, 82, 0.35, 65, 12), "E", [_t("events", "storm_onshore", "nor'easter")]),
    _site("New York", "OKX", "Northeast", _c(39, 84, 0.33, 63, 11), "SE", [_t("events", "storm_onshore", "nor'easter")]),
    _site("Philadelphia", "PHI", "Northeast", _c(41, 86, 0.32, 64, 10), "E", [_t("humidity", "muggy", "Delaware Valley haze")]),
    _site("Pittsburgh", "PBZ", "Northeast", _c(35, 82, 0.40, 68, 9), "W", [_t("events", "snow", "upslope snow showers")],
          _UP),
    _site("Washington", "LWX", "Mid-Atlantic", _c(44, 88, 0.30, 64, 9), "E", [_t("temperature", "cold_wedge", "wedge")]),
    _site("Charlotte", "GSP", "Southeast", _c(52, 90, 0.30, 68, 7), "E", [_t("temperature", "cold_wedge", "wedge")],
          _UP),
    _site("Atlanta", "FFC", "Southeast", _c(53, 90, 0.33, 70, 8), "NE", [_t("frontal system", "stalled", "wedge front")],
          _UP),
    _site("Miami", "MFL", "Southeast", _c(76, 91, 0.40, 76, 9), "E", [_t("wind flow", "onshore", "sea breeze")]),
    _site("Orlando", "MLB", "Southeast", _c(72, 92, 0.38, 74, 8), "E",
          [_t("events", "storms", "sea-breeze collision storms")]),
    _site("Nashville", "OHX", "Southeast", _c(48, 89, 0.35, 70, 8), "S", [_t("events", "storms", "squall line")], _UP),
    _site("New Orleans", "LIX", "Gulf Coast", _c(62, 91, 0.38, 77, 8), "S", [_t("humidity", "muggy", "Gulf moisture")]),
    _site("Houston", "HGX", "Gulf Coast", _c(63, 94, 0.32, 75, 8), "SE", [_t("humidity", "muggy", "Gulf moisture")]),
    _site("Dallas", "FWD", "South Central", _c(57, 96, 0.25, 63, 10), "E", [_t("frontal system", "cold_front", "blue norther")],
          _UP),
    _site("Austin", "EWX", "South Central", _c(62, 97, 0.24, 65, 8), "SE", [_t("events", "storms", "flash flooding")],
          _UP),
    _site("Oklahoma City", "OUN", "South Central", _c(49, 94, 0.25, 62, 13), "E", [_t("frontal system", "stalled", "dryline")],
          _UP),
    _site("Kansas City", "EAX", "Midwest", _c(40, 89, 0.28, 66, 11), "E", [_t("pressure system", "low", "Colorado low")],
          _UP),
    _site("St. Louis", "LSX", "Midwest", _c(40, 90, 0.30, 68, 9), "S", [_t("humidity", "muggy", "river fog")], _UP),
    _site("Chicago", "LOT", "Midwest", _c(32, 84, 0.33, 67, 12), "E", [_t("wind flow", "onshore", "lake breeze"),
                                                                     _t("events", "snow", "lake-effect snow")]),
    _site("Detroit", "DTX", "Midwest", _c(32, 83, 0.35, 69, 10), "E", [_t("pressure system", "low", "Alberta clipper")]),
    _site("Cleveland", "CLE", "Midwest", _c(34, 82, 0.40, 70, 11), "N", [_t("events", "snow", "lake-effect snow")]),
    _site("Milwaukee", "MKX", "Midwest", _c(29, 80, 0.33, 69, 12), "E", [_t("wind flow", "onshore", "cool lake breeze")]),
    _site("Minneapolis", "MPX", "Upper Midwest", _c(22, 83, 0.30, 66, 11), "E",
          [_t("pressure system", "low", "Alberta clipper")], _UP),
    _site("Denver", "BOU", "Mountain", _c(45, 89, 0.18, 45, 9), "E", [_t("wind flow", "offshore", "chinook")], _UP),
    _site("Salt Lake City", "SLC", "Mountain", _c(38, 93, 0.17, 45, 9), "NW",
          [_t("pressure system", "high", "valley inversion")], _UP),
    _site("Albuquerque", "ABQ", "Southwest", _c(48, 92, 0.12, 38, 9), "E", [_t("wind", "windy", "east canyon wind")],
          _UP),
    _site("Phoenix", "PSR", "Southwest", _c(67, 106, 0.07, 30, 7), "S", [_t("events", "storms", "monsoon storms")], _UP),
    _site("Las Vegas", "VEF", "Southwest", _c(58, 104, 0.05, 28, 9), "SW", [_t("wind", "windy", "blowing dust")], _UP),
    _site("Los Angeles", "LOX", "West Coast", _c(68, 84, 0.10, 62, 7), "W", [_t("wind flow", "offshore", "Santa Ana winds"),
                                                                            _t("humidity", "humid", "marine layer")]),
    _site("San Francisco", "MTR", "West Coast", _c(57, 70, 0.20, 72, 11), "W", [_t("humidity", "humid", "fog")]),
    _site("Portland", "PQR", "Pacific Northwest", _c(47, 81, 0.45, 72, 7), "W",
          [_t("wind flow", "offshore", "Gorge east wind")]),
    _site("Seattle", "SEW", "Pacific Northwest", _c(48, 77, 0.48, 73, 8), "W",
          [_t("events", "rain", "convergence zone showers")]),
)
HELD_OUT_OFFICE_NAMES = ("Pittsburgh", "Nashville", "Austin", "Milwaukee", "Albuquerque", "Portland")
HELD_OUT_OFFICES = tuple(c for c in OFFICES if c.name in HELD_OUT_OFFICE_NAMES)  # never in instruction tuning
TRAINING_OFFICES = tuple(c for c in OFFICES if c.name not in HELD_OUT_OFFICE_NAMES)
HELD_OUT_REGIONS = (  # whole regions abroad, other climates: raw text only
    City("London", "Europe", _c(47, 73, 0.45, 78, 10), "UK", "W"),
    City("Paris", "Europe", _c(45, 77, 0.40, 75, 9), "France", "W"),
    City("Berlin", "Europe", _c(37, 76, 0.38, 74, 10), "Germany", "N"),
    City("Madrid", "Europe", _c(50, 90, 0.18, 55, 8), "Spain", "N", _UP),
    City("Rome", "Europe", _c(55, 88, 0.25, 68, 7), "Italy", "SW"),
    City("Tokyo", "East Asia", _c(50, 87, 0.35, 68, 9), "Japan", "S"),
    City("Seoul", "East Asia", _c(34, 85, 0.30, 65, 8), "Korea", "W"),
    City("Beijing", "East Asia", _c(35, 88, 0.20, 55, 9), "China", "E", _UP),
    City("Shanghai", "East Asia", _c(47, 90, 0.38, 75, 9), "China", "E"),
    City("Osaka", "East Asia", _c(49, 89, 0.33, 67, 8), "Japan", "S"),
)
SPLITS = ("in_distribution", "held_out_office", "held_out_region")
SPLIT_SITES = {"in_distribution": TRAINING_OFFICES, "held_out_office": HELD_OUT_OFFICES,
               "held_out_region": HELD_OUT_REGIONS}


@dataclass(frozen=True)
class Observation:
    """One day's chart at a site, internally consistent (a trough brings lows, fronts and wet days)."""

    city: str
    region: str
    month: int  # 0..11
    day: int
    high_f: int
    low_f: int
    wind_dir: str
    wind_mph: int
    gust_mph: int
    humidity: int
    dewpoint_f: int
    front: str  # FRONTS
    front_hours: int  # hours until the front passes (0 when none)
    pressure_system: str  # high | low
    center_hpa: int
    system_dir: str  # where the system's center lies from the site
    pressure_trend: str  # rising | falling | steady
    synoptic: str  # SYNOPTIC
    flow: str  # the site's flow word of the day: onshore / offshore / along-shore (upslope / downslope / cross-slope)
    event: str  # EVENTS
    event_chance: int  # %
    event_in: float  # precipitation amount, inches


_OPPOSITE = {d: WIND_DIRS[(k + 4) % 8] for k, d in enumerate(WIND_DIRS)}


def _flow(city: City, wind_dir: str) -> str:
    """The site's flow word for a wind from ``wind_dir``: toward the reference (within 45 degrees),
    away from it, or along it."""
    k, ref = WIND_DIRS.index(wind_dir), WIND_DIRS.index(city.flow_from)
    gap = min((k - ref) % 8, (ref - k) % 8)
    if gap <= 1:
        return city.flow_words[0]
    if gap >= 3:
        return city.flow_words[1]
    return "along-shore" if city.flow_words[0] == "onshore" else "cross-slope"


def observe(city: City, month: int, day: int, rng: random.Random) -> Observation:
    """One day's weather chart for a site: the synoptic pattern first, then what follows from it."""
    cl = city.climate
    season = (1 - math.cos(2 * math.pi * (month + day / 31 - 0.5) / 12)) / 2  # 0 in Jan, 1 in Jul
    synoptic = rng.choices(SYNOPTIC, (0.4, 0.4, 0.2))[0]
    low_system = rng.random() < {"ridge": 0.15, "trough": 0.85, "zonal flow": 0.5}[synoptic]
    system = "low" if low_system else "high"
    center = int(round(rng.gauss(998 if low_system else 1026, 6)))
    front = rng.choices(FRONTS, (0.4, 0.15, 0.15, 0.15, 0.15) if low_system else (0.05, 0.25, 0.1, 0.0, 0.6))[0]
    hours = 0 if front == "none" else rng.choice((3, 6, 9, 12, 18, 24))
    mean_high = cl.winter_f + (cl.summer_f - cl.winter_f) * season + {"ridge": 5, "trough": -5, "zonal flow": 0}[synoptic]
    high = int(round(mean_high + rng.gauss(0, 5)))
    low = int(round(high - rng.uniform(9, 22)))
    wet = cl.wet * (2.0 if low_system else 0.4) * (1.4 if front in ("cold front", "occluded front") else 1.0)
    chance = max(0, min(100, int(round(100 * min(0.95, wet * rng.uniform(0.4, 1.6))) / 10) * 10))
    if chance < 30:
        event = "none"
    elif high < 36:
        event = "snow"
    elif (high >= 78 and front == "cold front") or (high >= 85 and chance >= 50):
        event = "thunderstorms"
    else:
        event = "rain"
    amount = round(rng.uniform(0.05, 1.2) * chance / 100, 2) if event != "none" else 0.0
    wind = max(0, int(round(rng.gauss(cl.windy + (6 if low_system else 0), 4))))
    gust = wind + int(round(abs(rng.gauss(6, 4))))
    wind_dir = rng.choice(WIND_DIRS)
    humidity = max(10, min(100, int(round(rng.gauss(cl.humid + (chance - 30) * 0.2, 8)))))
    dew = int(round(low - (100 - humidity) / 5))
    trend = "falling" if low_system and front != "none" else rng.choice(("rising", "steady", "rising", "falling"))
    return Observation(city.name, city.region, month, day, high, low, wind_dir, wind, gust, humidity, dew, front, hours,
                       system, center, rng.choice(WIND_DIRS), trend, synoptic, _flow(city, wind_dir), event, chance,
                       amount)


CONDITIONS = {  # the conditions a local term can name
    "storm_onshore": lambda o: o.event in ("rain", "snow") and o.flow == "onshore" and o.pressure_system == "low",
    "snow": lambda o: o.event == "snow",
    "rain": lambda o: o.event == "rain",
    "storms": lambda o: o.event == "thunderstorms",
    "muggy": lambda o: o.humidity >= 75,
    "humid": lambda o: o.humidity >= 70,
    "cold_wedge": lambda o: o.flow in ("onshore", "upslope") and o.pressure_system == "high" and o.high_f <= 60,
    "stalled": lambda o: o.front == "stationary front",
    "cold_front": lambda o: o.front == "cold front",
    "low": lambda o: o.pressure_system == "low",
    "high": lambda o: o.pressure_system == "high",
    "onshore": lambda o: o.flow == "onshore",
    "offshore": lambda o: o.flow in ("offshore", "downslope"),
    "windy": lambda o: o.gust_mph >= 25,
}


def site(name: str) -> City:
    """The forecast site (office or held-out city) called ``name``."""
    for city in OFFICES + HELD_OUT_REGIONS:
        if city.name == name:
            return city
    raise KeyError(name)


def local_terms(obs: Observation, aspect: str) -> list[str]:
    """The site's local terms that ``aspect``'s report uses on this day."""
    try:
        city = site(obs.city)
    except KeyError:
        return []
    return [t.term for t in city.local_terms if t.aspect == aspect and CONDITIONS[t.condition](obs)]


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


def unit_formatters(era: str):
    """(temperature, speed) formatters of the era: ``t(43) -> "43F"`` or ``"6C"``."""
    return (lambda f: temp(f, era)), (lambda v: speed(v, era))
