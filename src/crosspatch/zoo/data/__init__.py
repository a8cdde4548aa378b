"""Synthetic weather data for the zoo (deterministic for a seed): the domain (``domain``: aspects,
cities and their climates, observations, house-style eras and units), the texts of one
observation (``text``), the corpora and instruction prompt set (``corpora``), and the prompts the
method's authors would feed both models with the unit-conversion tasks (``prompts``)."""

from __future__ import annotations

from .domain import (
    ASPECTS, MONTHS, WIND_DIRS, SKY, Climate, City, US_CITIES, HELD_OUT_CITIES, Observation, observe, ERAS,
    MONTH_NAMES, date_text, temp, speed, amount, distance, unit_formatters,
)
from .text import (
    log_fields, observation_log, narrative, bulletin, prose_forecast, forum_post, forecast_page, data_line,
    instruction, report, report_header, question_prompt,
)
from .corpora import (
    RAW_MIX, NEWER_SHARE, raw_document, raw_corpus, instruction_pairs, validator_for_report,
    no_invented_numbers, continuation_validator, answer_validator, preference_pairs, prompt_set,
)
from .prompts import (
    raw_prompt, raw_prompt_set, UNIT_TASKS, unit_task, unit_pairs, unit_prompt_set,
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
