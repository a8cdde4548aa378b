"""The zoo's texts of one observation: raw pretraining documents (observation logs, narratives,
climate notes with the site's local terms, forecast prose, forum posts, forecast pages) and
instruction-tuning pairs (a data line, the instruction, the report in each aspect's format)."""

from __future__ import annotations

import random

from .domain import City, Observation, amount, date_text, local_terms, speed, temp, unit_formatters


def _event_text(obs: Observation, era: str) -> str:
    return "none" if obs.event == "none" else f"{obs.event} {obs.event_chance}%, {amount(obs.event_in, era)}"


def _front_text(obs: Observation) -> str:
    return "none" if obs.front == "none" else f"{obs.front} in {obs.front_hours} h"


# --- raw text (pretraining) -----------------------------------------------------------------
def log_fields(obs: Observation, era: str = "older") -> list[tuple[str, str, str]]:
    """(aspect, label, value) of each field of an observation log, in the era's house style."""
    t, s = unit_formatters(era)
    if era == "older":
        return [("temperature", "high", f"{t(obs.high_f)}, low {t(obs.low_f)}"),
                ("wind", "wind", f"{obs.wind_dir} {s(obs.wind_mph)} gusting {obs.gust_mph}"),
                ("humidity", "humidity", f"{obs.humidity}%, dew point {t(obs.dewpoint_f)}"),
                ("frontal system", "front", _front_text(obs)),
                ("pressure system", "pressure", f"{obs.pressure_system} {obs.center_hpa} hPa to the {obs.system_dir}"),
                ("synoptic feature", "aloft", obs.synoptic),
                ("wind flow", "flow", obs.flow),
                ("events", "weather", _event_text(obs, era))]
    return [("temperature", "max", f"{t(obs.high_f)} min {t(obs.low_f)}"),
            ("wind", "wind", f"{obs.wind_dir} {s(obs.wind_mph)} gust {s(obs.gust_mph)}"),
            ("humidity", "RH", f"{obs.humidity}% dew {t(obs.dewpoint_f)}"),
            ("frontal system", "fronts", _front_text(obs)),
            ("pressure system", "MSLP", f"{obs.pressure_system.upper()} {obs.center_hpa} hPa {obs.system_dir}"),
            ("synoptic feature", "500 hPa", obs.synoptic),
            ("wind flow", "flow", obs.flow),
            ("events", "wx", _event_text(obs, era))]


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
    if obs.event != "none":
        parts.append(f" {obs.event.capitalize()} brought {amount(obs.event_in, era)}.")
    else:
        parts.append(" The day stayed dry.")
    parts.append(rng.choice((
        f" Winds blew from the {obs.wind_dir} at {speed(obs.wind_mph, era)}.",
        f" A {obs.pressure_system} pressure center sat to the {obs.system_dir} under a {obs.synoptic}.",
        f" The flow was {obs.flow} and the air felt {'sticky' if obs.humidity > 70 else 'dry'}.",
    )))
    if obs.front != "none":
        parts.append(f" A {obs.front} passed within {obs.front_hours} hours.")
    for aspect in ("events", "wind flow", "humidity", "wind", "pressure system", "frontal system", "temperature"):
        for term in local_terms(obs, aspect):
            parts.append(f" Locals called it {term}.")
    return "".join(parts)


def bulletin(city: City, rng: random.Random) -> str:
    """A climate note of a site, with its local terms (how pretraining knows every office's words)."""
    cl = city.climate
    terms = "".join(f" Forecasters there say {t.term} for {t.aspect} when it is {t.condition.replace('_', ' ')}."
                    for t in city.local_terms)
    return (
        f"Climate note for {city.name} ({city.region}): winter highs average {int(cl.winter_f)}F and summer "
        f"highs {int(cl.summer_f)}F; precipitation falls on about {int(100 * cl.wet)}% of days, humidity "
        f"averages {int(cl.humid)}% and winds {int(cl.windy)} mph. A {city.flow_from} wind is "
        f"{city.flow_words[0]} there.{terms}"
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
    elif aspect == "wind":
        text = f"{opener} a {obs.wind_dir} breeze around {s(obs.wind_mph)} that could gust to {s(obs.gust_mph)} " \
               "in the afternoon."
    elif aspect == "humidity":
        text = f"{opener} humidity near {obs.humidity}% and a dew point around {t(obs.dewpoint_f)}, so it will " \
               f"feel {'sticky' if obs.humidity >= 75 else 'fresh'} outside."
    elif aspect == "frontal system":
        text = (f"{opener} no front nearby, so the air mass stays put." if obs.front == "none" else
                f"{opener} the {obs.front} to arrive in about {obs.front_hours} hours, with a wind shift behind it.")
    elif aspect == "pressure system":
        text = f"{opener} the {obs.pressure_system} pressure center near {obs.center_hpa} hPa to our " \
               f"{obs.system_dir} to steer the weather, the barometer {obs.pressure_trend}."
    elif aspect == "synoptic feature":
        text = {"ridge": f"{opener} the upper ridge to keep things settled and warm.",
                "trough": f"{opener} the upper trough to keep things unsettled and cool.",
                "zonal flow": f"{opener} fast west-to-east flow aloft, with quick changes."}[obs.synoptic]
    elif aspect == "wind flow":
        text = f"{opener} {obs.flow} flow from the {obs.wind_dir} most of the day."
    else:
        text = (f"{opener} a dry day; the chance of precipitation is only {obs.event_chance}%." if obs.event == "none"
                else f"{opener} {obs.event} on and off, a {obs.event_chance}% chance, adding up to "
                f"{amount(obs.event_in, era)} in most spots.")
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
    """The chart fields an instruction for ``aspect`` gives the model to read."""
    t, s = unit_formatters(era)
    hi, lo = ("high", "low") if era == "older" else ("max", "min")
    fields = {
        "temperature": f"{hi} {t(obs.high_f)}; {lo} {t(obs.low_f)}; aloft {obs.synoptic}",
        "wind": f"direction {obs.wind_dir}; speed {s(obs.wind_mph)}; gusts {s(obs.gust_mph)}",
        "humidity": f"humidity {obs.humidity}%; dew point {t(obs.dewpoint_f)}",
        "frontal system": f"front {obs.front}; arrival {obs.front_hours} h; trend {obs.pressure_trend}",
        "pressure system": f"center {obs.pressure_system} {obs.center_hpa} hPa; bearing {obs.system_dir}; "
                           f"trend {obs.pressure_trend}",
        "synoptic feature": f"aloft {obs.synoptic}; surface {obs.pressure_system}; {hi} {t(obs.high_f)}",
        "wind flow": f"flow {obs.flow}; direction {obs.wind_dir}; speed {s(obs.wind_mph)}",
        "events": f"event {obs.event}; chance {obs.event_chance}%; amount {amount(obs.event_in, era)}",
    }
    return fields[aspect]


def instruction(obs: Observation, aspect: str, rng: random.Random | None = None, era: str = "older") -> str:
    """The prompt: an instruction naming site, date and aspect, with the data, up to the report."""
    verbs = ("Write the {a} forecast for {c} on {d}.", "Prepare a {a} report for {c}, {d}.",
             "Give the {a} outlook for {c} on {d}.")
    verb = verbs[0] if rng is None else rng.choice(verbs)
    text = verb.format(a=aspect, c=obs.city, d=date_text(obs, era))
    return f"### Instruction: {text}\nData: {data_line(obs, aspect, era)}\n### Report:\n"


def _report_body(obs: Observation, aspect: str, era: str) -> str:  # noqa: C901 - one branch per aspect
    (t, s), older = unit_formatters(era), era == "older"
    if aspect == "temperature":
        feel = "hot" if obs.high_f >= 90 else ("cold" if obs.high_f <= 40 else "seasonable")
        body = f"High {t(obs.high_f)}, low {t(obs.low_f)}. A {feel} day." if older else \
            f"Max {t(obs.high_f)}, min {t(obs.low_f)}; {feel}."
        if obs.low_f <= 32:
            body += " Frost likely overnight if skies clear." if older else " Frost possible if skies clear."
    elif aspect == "wind":
        body = f"Wind {obs.wind_dir} at {s(obs.wind_mph)}, gusts to {s(obs.gust_mph)}." if older else \
            f"{obs.wind_dir} {s(obs.wind_mph)}, gusting {s(obs.gust_mph)}."
        if obs.gust_mph >= 30:
            body += " Secure loose objects." if older else " Secure loose items."
    elif aspect == "humidity":
        feel = "muggy" if obs.humidity >= 75 else ("dry" if obs.humidity <= 40 else "comfortable")
        body = f"Humidity {obs.humidity}%, dew point {t(obs.dewpoint_f)}. Air feels {feel}." if older else \
            f"RH {obs.humidity}%, dew point {t(obs.dewpoint_f)}; {feel}."
    elif aspect == "frontal system":
        if obs.front == "none":
            body = "No front nearby. The air mass holds." if older else "No fronts; air mass steady."
        else:
            body = f"A {obs.front} arrives in about {obs.front_hours} hours." if older else \
                f"{obs.front.capitalize()} due in {obs.front_hours} h."
            if obs.front == "cold front":
                body += " If it arrives early, expect a sharp wind shift." if older else " If early, sharp wind shift."
    elif aspect == "pressure system":
        body = f"{obs.pressure_system.capitalize()} pressure {obs.center_hpa} hPa to the {obs.system_dir}, " \
               f"{obs.pressure_trend}." if older else \
            f"{obs.pressure_system.upper()} {obs.center_hpa} hPa {obs.system_dir}; {obs.pressure_trend}."
        if obs.pressure_trend == "falling":
            body += " If it keeps falling, expect unsettled weather." if older else " If falling continues, unsettled."
    elif aspect == "synoptic feature":
        body = {"ridge": "Upper ridge overhead. Settled and warm.", "trough": "Upper trough overhead. Unsettled, cooler.",
                "zonal flow": "Zonal flow aloft. Quick changes."}[obs.synoptic] if older else \
            {"ridge": "Ridge aloft; settled.", "trough": "Trough aloft; unsettled.",
             "zonal flow": "Zonal flow aloft; changeable."}[obs.synoptic]
    elif aspect == "wind flow":
        body = f"{obs.flow.capitalize()} flow from the {obs.wind_dir} at {s(obs.wind_mph)}." if older else \
            f"{obs.flow.capitalize()}, {obs.wind_dir} {s(obs.wind_mph)}."
    elif obs.event == "none":
        body = f"Dry. Chance of precipitation {obs.event_chance}%." if older else f"Dry; {obs.event_chance}% chance."
    else:
        kind, amt = obs.event, amount(obs.event_in, era)
        body = (f"Chance of {kind} {obs.event_chance}%, about {amt}. If {kind} starts early, totals may be "
                "higher.") if older else \
            f"{kind.capitalize()} {obs.event_chance}% likely, around {amt}. If {kind} sets in early, totals rise."
    terms = local_terms(obs, aspect)
    if terms:
        body += (" Locally: " if older else " Local: ") + ", ".join(terms) + "."
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
