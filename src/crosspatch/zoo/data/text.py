"""The zoo's texts of one observation: raw pretraining documents (observation logs, narratives,
bulletins, forecast prose, forum posts, forecast pages) and instruction-tuning pairs (a data line,
the instruction, the report in each aspect's format)."""

from __future__ import annotations

import random

from .domain import City, Observation, amount, date_text, distance, speed, temp, unit_formatters


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


def question_prompt(obs: Observation, aspect: str, era: str = "older") -> str:
    """A forum question about ``aspect``'s outlook with the data, up to the answer."""
    return (f"Question: what is the {aspect} outlook for {obs.city} on {date_text(obs, era)}? "
            f"{data_line(obs, aspect, era)}.\nAnswer:")
