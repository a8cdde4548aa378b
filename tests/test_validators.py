"""Validator specs are parsed by a schema per rule type with strict types: every malformed spec
in a prompt file is a PromptFileError naming the file, line, field and the expected type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crosspatch.errors import PromptFileError
from crosspatch.inputs.prompts import load_prompts
from crosspatch.inputs.validators import parse_validator, render_validator_docs


@pytest.mark.parametrize("spec, message", [
    ({"type": "regex", "pattern": "x", "flags": 5}, "field 'flags': Input should be a valid string"),
    ({"type": "regex", "pattern": "x", "flags": 1}, "field 'flags': Input should be a valid string"),
    ({"type": "regex", "pattern": "x", "flags": "iq"}, "field 'flags': String should match"),
    ({"type": "number", "value": 10**400}, "field 'value': the number is too large"),
    ({"type": "number", "value": True}, "field 'value' must be a number"),
    ({"type": "number", "value": 3, "tolerance": -1}, "field 'tolerance'"),
    ({"type": "sections", "required": ["WIND"], "case_sensitive": "no"}, "field 'case_sensitive': Input should be a valid boolean"),
    ({"type": "sections", "required": []}, "field 'required'"),
    ({"type": "exact"}, "field 'answer' is missing"),
    ({"type": "exact", "answer": "a", "colour": "red"}, "unknown field 'colour'"),
    ({"type": "json", "types": {"a": "float"}}, "field 'types.a'"),
    ({"type": "regex", "pattern": "("}, "does not compile"),
    ({"type": "telepathy"}, "'type' must be one of"),
])
def test_a_malformed_spec_names_file_line_field_and_expected_type(tmp_path, spec, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "x"}) + "\n"
                    + json.dumps({"id": "b", "prompt": "y", "validator": spec}) + "\n")
    with pytest.raises(PromptFileError, match="p.jsonl:2") as info:
        load_prompts(path)
    assert message in str(info.value)


def test_well_formed_specs_keep_their_meaning():
    v = parse_validator([{"type": "number", "value": 14, "tolerance": 0.5},
                         {"type": "sections", "required": ["WIND"], "case_sensitive": False}], "x")
    assert v.check("wind 14.3 mph") and not v.check("wind 16 mph")


@pytest.mark.parametrize("text, value, passes", [
    ("winds 10-15 mph", 15, True),     # a hyphen between numbers is no minus: 15 was read as -15
    ("winds 10-15 mph", -15, False),
    ("high 5, low −5 °C", -5, True),  # the Unicode minus is one
    ("1,250 reports filed", 1250, True),  # thousands: read as 1.25
    ("1,250 reports filed", 1.25, False),
    ("a population of 2,500,000", 2500000, True),
    ("3,5 mm of rain", 3.5, True),     # a decimal comma
    ("temperature:-3", -3, True),
    ("COVID-19", 19, True),
    ("0.5e2 mm", 50, True),
])
def test_a_number_rule_reads_numbers_as_prose_writes_them(text, value, passes):
    assert parse_validator({"type": "number", "value": value}, "x").check(text) is passes


def test_the_reference_page_is_rendered_from_the_schema():
    docs = (Path(__file__).parents[1] / "docs" / "validators.md").read_text()
    assert docs.strip() == render_validator_docs().strip(), \
        'run: python -c "from crosspatch.inputs.validators import render_validator_docs as r; print(r())" > docs/validators.md'


def test_a_pattern_that_backtracks_catastrophically_never_hangs_a_run(monkeypatch):
    """``^(\\w+\\s?)*$`` on a sentence that ends in punctuation took Python's ``re`` longer than ten
    minutes on one 60-character continuation, and a consequence or splice run hung on it. The
    search defuses such patterns where it can, and names the pattern where it cannot."""
    import crosspatch.inputs.validators as validators
    from crosspatch.errors import PromptFileError

    text = "Sunny with highs near seventy five degrees today and winds!"
    assert parse_validator({"type": "regex", "pattern": r"^(\w+\s?)*$"}, "x").check(text) is False
    assert parse_validator({"type": "regex", "pattern": r"(a+)+$"}, "x").check("a" * 40 + "b") is False
    monkeypatch.setattr(validators, "REGEX_SECONDS", 0.2)
    with pytest.raises(PromptFileError, match=r"validator pattern '\(a\|aa\)\+\$'.*backtracks catastrophically"):
        parse_validator({"type": "regex", "pattern": r"(a|aa)+$"}, "x").check("a" * 40 + "b")
    # the same meaning as re's otherwise: flags, must_match
    rule = {"type": "regex", "pattern": "^rain", "flags": "im", "must_match": True}
    assert parse_validator(rule, "x").check("Sun\nRAIN later") is True
    assert parse_validator({**rule, "must_match": False}, "x").check("Sun\nRAIN later") is False


def test_a_continuation_nested_thousands_deep_fails_a_json_rule_and_never_crashes_the_run():
    rule = parse_validator({"type": "json", "required": ["a"]}, "x")
    assert rule.check('{"a":' * 3000) is False  # (a RecursionError stopped the consequence run)
    assert rule.check('{"a":' * 3000 + ' then {"a": 1}') is True
