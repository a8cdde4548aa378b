"""Synthetic weather data for the zoo (deterministic for a seed): the domain (``domain``: aspects,
cities and their climates, observations, house-style eras and units), the texts of one
observation (``text``), the corpora and instruction prompt set (``corpora``), and the prompts the
method's authors would feed both models with the unit-conversion tasks (``prompts``)."""

from __future__ import annotations

from .corpora import (
    NEWER_SHARE,
    RAW_MIX,
    SPLIT_IDS,
    answer_validator,
    continuation_validator,
    instruction_pairs,
    no_invented_numbers,
    preference_pairs,
    prompt_set,
    raw_corpus,
    raw_document,
    slug,
    validator_for_report,
)
from .domain import (
    ASPECTS,
    ERAS,
    EVENTS,
    FRONTS,
    HELD_OUT_OFFICES,
    HELD_OUT_REGIONS,
    MONTH_NAMES,
    MONTHS,
    OFFICES,
    SPLIT_SITES,
    SPLITS,
    SYNOPTIC,
    TRAINING_OFFICES,
    WIND_DIRS,
    City,
    Climate,
    LocalTerm,
    Observation,
    amount,
    date_text,
    local_terms,
    observe,
    site,
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
    "ASPECTS", "City", "Climate", "ERAS", "EVENTS", "FRONTS", "HELD_OUT_OFFICES", "HELD_OUT_REGIONS", "LocalTerm",
    "MONTHS", "MONTH_NAMES", "NEWER_SHARE", "OFFICES", "Observation", "RAW_MIX", "SPLITS", "SPLIT_IDS", "SPLIT_SITES",
    "SYNOPTIC", "TRAINING_OFFICES", "UNIT_TASKS", "WIND_DIRS", "amount", "answer_validator", "bulletin",
    "continuation_validator", "data_line", "date_text", "forecast_page", "forum_post", "instruction",
    "instruction_pairs", "local_terms", "log_fields", "narrative", "no_invented_numbers", "observation_log", "observe",
    "preference_pairs", "prompt_set", "prose_forecast", "question_prompt", "raw_corpus", "raw_document", "raw_prompt",
    "raw_prompt_set", "report", "report_header", "site", "slug", "speed", "temp", "unit_formatters", "unit_pairs",
    "unit_prompt_set", "unit_task", "validator_for_report",
]
