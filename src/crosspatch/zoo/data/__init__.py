"""Synthetic weather data for the zoo (deterministic for a seed): the domain (``domain``: aspects,
cities and their climates, observations, house-style eras and units), the texts of one
observation (``text``), the corpora and instruction prompt set (``corpora``), and the prompts the
method's authors would feed both models with the unit-conversion tasks (``prompts``)."""

from __future__ import annotations

from .corpora import (
    NEWER_SHARE,
    RAW_MIX,
    answer_validator,
    continuation_validator,
    instruction_pairs,
    no_invented_numbers,
    preference_pairs,
    prompt_set,
    raw_corpus,
    raw_document,
    validator_for_report,
)
from .domain import (
    ASPECTS,
    ERAS,
    HELD_OUT_CITIES,
    MONTH_NAMES,
    MONTHS,
    SKY,
    US_CITIES,
    WIND_DIRS,
    City,
    Climate,
    Observation,
    amount,
    date_text,
    distance,
    observe,
    speed,
    temp,
    unit_formatters,
)
from .prompts import UNIT_TASKS, raw_prompt, raw_prompt_set, unit_pairs, unit_prompt_set, unit_task
from .text import (
    bulletin,
    data_line,
    forecast_page,
    forum_post,
    instruction,
    log_fields,
    narrative,
    observation_log,
    prose_forecast,
    question_prompt,
    report,
    report_header,
)

__all__ = [
    "ASPECTS", "City", "Climate", "ERAS", "HELD_OUT_CITIES", "MONTHS", "MONTH_NAMES", "NEWER_SHARE",
    "Observation", "RAW_MIX", "SKY", "UNIT_TASKS", "US_CITIES", "WIND_DIRS", "amount", "answer_validator",
    "bulletin", "continuation_validator", "data_line", "date_text", "distance", "forecast_page", "forum_post",
    "instruction", "instruction_pairs", "log_fields", "narrative", "no_invented_numbers", "observation_log",
    "observe", "preference_pairs", "prompt_set", "prose_forecast", "question_prompt", "raw_corpus",
    "raw_document", "raw_prompt", "raw_prompt_set", "report", "report_header", "speed", "temp",
    "unit_formatters", "unit_pairs", "unit_prompt_set", "unit_task", "validator_for_report",
]
