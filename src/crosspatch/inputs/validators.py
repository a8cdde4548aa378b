"""Deterministic validators of a generated continuation (DESIGN 1.6, forced-token consequence).

A prompt may carry ``"validator"``: one rule or a list of rules (all must pass). Each rule is an
object with a ``type``:

| type | fields | passes when |
|---|---|---|
| ``exact`` | ``answer`` | the first non-empty line of the text equals ``answer`` (case and surrounding punctuation/whitespace ignored) |
| ``regex`` | ``pattern``, ``must_match`` (default true), ``flags`` (``i``, ``m``, ``s``) | the pattern is found (or, with ``must_match: false``, is not found) |
| ``sections`` | ``required`` (list of strings), ``case_sensitive`` (default true) | every required header/section string occurs in the text |
| ``number`` | ``value``, ``tolerance`` (default 0) | some number in the text is within ``tolerance`` of ``value`` (``10-15`` is 10 and 15, ``1,250`` is 1250, ``3,5`` is 3.5) |
| ``json`` | ``required`` (keys), ``types`` (key -> string, number, integer, boolean, array, object) | the first ``{...}`` object in the text parses and has the keys with those types |

Each rule type is a pydantic model with strict types (``ExactRule``, ``RegexRule``, ...);
docs/validators.md is rendered from their JSON Schema. A malformed validator is a
:class:`~crosspatch.errors.PromptFileError` naming the file, line, field and expected type.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Iterator, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from ..errors import PromptFileError

TYPES = ("exact", "regex", "sections", "number", "json")
_JSON_TYPES = {"string": str, "number": (int, float), "integer": int, "boolean": bool, "array": list, "object": dict}
# A number as prose writes it: a sign only where it is not a hyphen ("10-15 mph" is 10 and 15, not
# 10 and -15; the Unicode minus too); groups of three after commas are thousands ("1,250" is
# 1250), any other comma a decimal comma ("3,5" is 3.5).
_NUMBER = re.compile(r"(?:(?<![\w.])(?P<sign>[-+\u2212]))?(?:(?P<grouped>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?)"
                     r"|(?P<plain>\d+(?:[.,]\d+)?|\.\d+))(?P<exponent>[eE][-+]?\d+)?")


def numbers_in(text: str) -> Iterator[float]:
    """Each number ``text`` states, as a float (see ``_NUMBER``; inf where its exponent is too
    large), in order."""
    for m in _NUMBER.finditer(text):
        body = m["grouped"].replace(",", "") if m["grouped"] else m["plain"].replace(",", ".")
        yield float(("-" if m["sign"] in ("-", "\u2212") else "") + body + (m["exponent"] or ""))


def _norm(text: str) -> str:
    return text.strip().strip(".,;:!?\"'`*").strip().casefold()


@dataclass(frozen=True)
class Validator:
    """One or more rules; :meth:`check` is a pure function of the text."""

    rules: tuple[dict, ...]

    def check(self, text: str) -> bool:
        return all(_check_rule(rule, text) for rule in self.rules)

    def as_record(self) -> list[dict]:
        return list(self.rules)


# how long one regex rule may search one text: a pattern that backtracks catastrophically (nested
# quantifiers, (a|aa)+$) would otherwise hang a consequence or splice run on a continuation it cannot match
REGEX_SECONDS = 2.0


def _search(pattern: str, flags: str, text: str):
    """``pattern`` searched in ``text`` by the ``regex`` package (``re``'s syntax and meaning, with
    safeguards against most catastrophic backtracking, and a timeout): past :data:`REGEX_SECONDS`, a
    PromptFileError naming the pattern."""
    import regex

    try:
        return regex.search(pattern, text, sum({"i": regex.I, "m": regex.M, "s": regex.S}[f] for f in flags),
                            timeout=REGEX_SECONDS)
    except TimeoutError:
        raise PromptFileError(f"validator pattern {pattern!r} searched a {len(text)}-character text for more than "
                              f"{REGEX_SECONDS:g} s: it backtracks catastrophically (a repetition of alternatives or "
                              "quantifiers that can match the same text in many ways, as (a|aa)+); rewrite it "
                              "(e.g. a+ for (a|aa)+) and run the command again (a consequence run resumes where it stopped)") from None


def _check_rule(rule: dict, text: str) -> bool:
    kind = rule["type"]
    if kind == "exact":
        first = next((line for line in text.splitlines() if line.strip()), "")
        return _norm(first) == _norm(rule["answer"])
    if kind == "regex":
        found = _search(rule["pattern"], rule.get("flags", ""), text) is not None
        return found if rule.get("must_match", True) else not found
    if kind == "sections":
        case = rule.get("case_sensitive", True)
        hay = text if case else text.casefold()
        return all((s if case else s.casefold()) in hay for s in rule["required"])
    if kind == "number":
        tol = float(rule.get("tolerance", 0))
        return any(math.isfinite(value) and abs(value - float(rule["value"])) <= tol + 1e-12
                   for value in numbers_in(text))
    if kind == "json":
        start = text.find("{")
        while start != -1:
            try:
                obj, _ = json.JSONDecoder().raw_decode(text[start:])
            except (ValueError, RecursionError):  # (an object nested thousands deep parses as none)
                start = text.find("{", start + 1)
                continue
            if not isinstance(obj, dict):
                return False
            for key in rule.get("required", []):
                if key not in obj:
                    return False
            for key, type_name in rule.get("types", {}).items():
                if key in obj:
                    want = _JSON_TYPES[type_name]
                    value = obj[key]
                    if isinstance(value, bool) and type_name in ("number", "integer"):
                        return False
                    if not isinstance(value, want):
                        return False
            return True
        return False
    raise ValueError(f"unknown validator type {kind!r}")


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ExactRule(_Rule):
    """The first non-empty line equals ``answer`` (case and surrounding punctuation ignored)."""

    type: Literal["exact"]
    answer: str


class RegexRule(_Rule):
    """``pattern`` is found (or, with ``must_match: false``, is not found). The pattern is written
    as for Python's ``re`` and searched by the ``regex`` package, which defuses most catastrophic
    backtracking; a search that still runs past 2 seconds on one text is a ``PromptFileError``
    naming the pattern, never a run that hangs."""

    type: Literal["regex"]
    pattern: str
    must_match: bool = True
    flags: Annotated[str, Field(pattern=r"^[ims]*$", description="any of i, m, s")] = ""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        import regex

        try:  # (as the search reads it: the regex package, re's syntax)
            regex.compile(value)
        except regex.error as exc:
            raise ValueError(f"the pattern does not compile ({exc})") from None
        return value


class SectionsRule(_Rule):
    """Every required header/section string occurs in the text."""

    type: Literal["sections"]
    required: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    case_sensitive: bool = True


def _finite(value: int | float) -> int | float:
    try:
        as_float = float(value)
    except OverflowError:
        raise ValueError("the number is too large to compare (beyond a 64-bit float)") from None
    if not math.isfinite(as_float):
        raise ValueError("the number must be finite")
    return value


class NumberRule(_Rule):
    """Some number in the text is within ``tolerance`` of ``value``. Numbers are read as prose
    writes them: a hyphen between two numbers is not a minus (``10-15`` is 10 and 15), the Unicode
    minus is one (``−5``), commas before groups of three digits separate thousands (``1,250`` is
    1250), any other comma is a decimal comma (``3,5`` is 3.5)."""

    type: Literal["number"]
    value: Annotated[Union[int, float], AfterValidator(_finite)]
    tolerance: Annotated[Union[int, float], AfterValidator(_finite), Field(ge=0)] = 0


class JsonRule(_Rule):
    """The first ``{...}`` object in the text parses and has the keys with those types."""

    type: Literal["json"]
    required: list[str] = []
    types: dict[str, Literal["string", "number", "integer", "boolean", "array", "object"]] = {}


Rule = Annotated[Union[ExactRule, RegexRule, SectionsRule, NumberRule, JsonRule], Field(discriminator="type")]
_RULE = TypeAdapter(Rule)


def validator_schema() -> dict:
    """The JSON Schema of one validator rule (docs/validators.md is rendered from it)."""
    return _RULE.json_schema()


_BRANCHES = ("int", "float", "str", "bool")  # the union members pydantic names in an error's location


def _explain(error: dict) -> tuple[str, str]:
    """(field, explanation) of one pydantic error, the field named as in the spec."""
    parts = [str(x) for x in error["loc"][1:]
             if str(x) not in _BRANCHES and not str(x).startswith(("function-", "constrained-"))]
    loc = ".".join(parts)
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return loc, f"unknown field {loc!r}"
    if error["type"] == "missing":
        return loc, f"field {loc!r} is missing"
    if error["type"] in ("int_type", "float_type"):
        return loc, f"field {loc!r} must be a number (got {error.get('input')!r:.60})"
    return loc, f"field {loc!r}: {msg} (got {error.get('input')!r:.60})"


def _explain_all(errors: list) -> str:
    seen: dict[str, str] = {}
    for error in errors:
        loc, text = _explain(error)
        seen.setdefault(loc, text)  # one explanation per field (a union reports one error per member)
    return "; ".join(seen.values())


def _without_nulls(value):
    """``value`` with every null-valued key of its objects left out, at any depth: a field given as
    null is a field not given. (Rows read through Arrow, a pyarrow Table, a Parquet file or a
    ``datasets.Dataset``, give each rule every field any rule of the column has, the others null.)"""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def parse_validator(spec, where: str) -> Validator:
    """A validator from a prompt row's ``validator`` field (one rule or a list of rules), checked
    against the schema of its rule type with strict types (no coercion: ``"no"`` is not a
    boolean): every malformed rule is a :class:`PromptFileError` naming ``where`` (file and
    line), the field and what it must be. A field given as null is not given (its default, or
    named as missing where it is required)."""
    rules = [_without_nulls(rule) for rule in (spec if isinstance(spec, list) else [spec])]
    if not rules:
        raise PromptFileError(f"{where}: field 'validator' is an empty list")
    out = []
    for k, rule in enumerate(rules):
        at = f"{where}: validator{'' if len(rules) == 1 else f' #{k}'}"
        if not isinstance(rule, dict):
            raise PromptFileError(f"{at} must be an object with a 'type', not {type(rule).__name__}")
        if rule.get("type") not in TYPES:
            raise PromptFileError(f"{at}: 'type' must be one of {', '.join(TYPES)}, not {rule.get('type')!r}")
        try:
            _RULE.validate_python(rule)
        except ValidationError as exc:
            raise PromptFileError(f"{at} ({rule['type']}): " + _explain_all(exc.errors())) from None
        out.append(dict(rule))
    return Validator(tuple(out))


def render_validator_docs() -> str:
    """docs/validators.md: the reference of validator specs, rendered from the rule schemas
    (``python -c "from crosspatch.inputs.validators import render_validator_docs as r; print(r())"``)."""
    schema = validator_schema()
    defs = schema.get("$defs", {})
    lines = ["# Validator specs", "",
             "A prompt's `validator` field holds one rule or a list of rules (all must pass). Each rule is an "
             "object whose `type` selects one of the schemas below; types are strict (`\"no\"` is not a boolean, "
             "`5` is not a string), unknown fields are refused, a field given as `null` is one not given (so rules "
             "read back from Arrow, Parquet or a `datasets.Dataset`, which give each rule every field of its "
             "column, are the rules written), and every malformed rule is a `PromptFileError` "
             "naming the file, line, field and what it must be. Generated from `crosspatch.inputs.validators` "
             "(`validator_schema()` gives the JSON Schema); a test keeps this page in sync.", ""]
    for name in ("ExactRule", "RegexRule", "SectionsRule", "NumberRule", "JsonRule"):
        model = defs[name]
        kind = model["properties"]["type"]["const"]
        lines += [f"## `{kind}`", "", model.get("description", ""), "", "| field | type | default |", "|---|---|---|"]
        for field_name, prop in model["properties"].items():
            if field_name == "type":
                continue
            lines.append(f"| `{field_name}` | {_type_text(prop)} | "
                         f"{'required' if field_name in model.get('required', []) else json.dumps(prop.get('default'))} |")
        lines.append("")
    return "\n".join(lines)


def _type_text(prop: dict) -> str:
    if "anyOf" in prop:
        return " or ".join(_type_text(p) for p in prop["anyOf"])
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"])
    kind = prop.get("type", "any")
    if kind == "array":
        text = f"list of {_type_text(prop.get('items', {}))}"
        return text + (f", at least {prop['minItems']}" if prop.get("minItems") else "")
    if kind == "object":
        return f"object of {_type_text(prop.get('additionalProperties', {}))}"
    extra = []
    if "pattern" in prop:
        extra.append(f"matching `{prop['pattern']}`")
    if "minimum" in prop:
        extra.append(f">= {prop['minimum']}")
    if prop.get("minLength"):
        extra.append("non-empty")
    return kind + (f" ({', '.join(extra)})" if extra else "")
