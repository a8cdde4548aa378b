"""The zoo's domain: aspects, US training cities with regional climates and held-out cities,
a day's observation, and the house-style eras with their units.

Deterministic for a seed. 31 US training cities with regional climates; held-out cities in
Europe and East Asia never appear in instruction tuning (they do appear in raw text, as a
pretraining corpus would cover the world). Eight aspects, each with its own report format:

    temperature, precipitation, wind, humidity, sky, visibility, pressure, alerts
"""

from __future__ import annotations

import math
import random
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
