"""Deterministic validators of a generated continuation (DESIGN 1.6, forced-token consequence).

A prompt may carry ``"validator"``: one rule or a list of rules (all must pass). Each rule is an
object with a ``type``:

| type | fields | passes when |
|---|---|---|
| ``exact`` | ``answer`` | the first non-empty line of the text equals ``answer`` (case and surrounding punctuation/whitespace ignored) |
| ``regex`` | ``pattern``, ``must_match`` (default true), ``flags`` (``i``, ``m``, ``s``) | the pattern is found (or, with ``must_match: false``, is not found) |
| ``sections`` | ``required`` (list of strings), ``case_sensitive`` (default true) | every required header/section string occurs in the text |
| ``number`` | ``value``, ``tolerance`` (default 0) | some number in the text is within ``tolerance`` of ``value`` |
| ``json`` | ``required`` (keys), ``types`` (key -> string, number, integer, boolean, array, object) | the first ``{...}`` object in the text parses and has the keys with those types |

A malformed validator is a :class:`~crosspatch.errors.PromptFileError` naming the line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from .errors import PromptFileError

TYPES = ("exact", "regex", "sections", "number", "json")
_JSON_TYPES = {"string": str, "number": (int, float), "integer": int, "boolean": bool, "array": list, "object": dict}
_NUMBER = re.compile(r"[-+]?(?:\d+(?:[.,]\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


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


def _check_rule(rule: dict, text: str) -> bool:
    kind = rule["type"]
    if kind == "exact":
        first = next((line for line in text.splitlines() if line.strip()), "")
        return _norm(first) == _norm(rule["answer"])
    if kind == "regex":
        flags = sum({"i": re.I, "m": re.M, "s": re.S}[f] for f in rule.get("flags", ""))
        found = re.search(rule["pattern"], text, flags) is not None
        return found if rule.get("must_match", True) else not found
    if kind == "sections":
        case = rule.get("case_sensitive", True)
        hay = text if case else text.casefold()
        return all((s if case else s.casefold()) in hay for s in rule["required"])
    if kind == "number":
        tol = float(rule.get("tolerance", 0))
        for m in _NUMBER.finditer(text):
            try:
                value = float(m.group().replace(",", "."))
            except ValueError:
                continue
            if math.isfinite(value) and abs(value - float(rule["value"])) <= tol + 1e-12:
                return True
        return False
    if kind == "json":
        start = text.find("{")
        while start != -1:
            try:
                obj, _ = json.JSONDecoder().raw_decode(text[start:])
            except ValueError:
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


def parse_validator(spec, where: str) -> Validator:
    """A validator from a prompt row's ``validator`` field (one rule or a list of rules)."""
    rules = spec if isinstance(spec, list) else [spec]
    if not rules:
        raise PromptFileError(f"{where}: field 'validator' is an empty list")
    out = []
    for k, rule in enumerate(rules):
        at = f"{where}: validator{'' if len(rules) == 1 else f' #{k}'}"
        if not isinstance(rule, dict):
            raise PromptFileError(f"{at} must be an object with a 'type', not {type(rule).__name__}")
        kind = rule.get("type")
        if kind not in TYPES:
            raise PromptFileError(f"{at}: 'type' must be one of {', '.join(TYPES)}, not {kind!r}")

        def need(field, types, name):
            if field not in rule or isinstance(rule[field], bool) or not isinstance(rule[field], types):
                raise PromptFileError(f"{at} ({kind}): field {field!r} must be {name}")

        if kind == "exact":
            need("answer", str, "a string")
        elif kind == "regex":
            need("pattern", str, "a string")
            if "must_match" in rule and not isinstance(rule["must_match"], bool):
                raise PromptFileError(f"{at} (regex): 'must_match' must be true or false")
            if not set(rule.get("flags", "")) <= set("ims") or not isinstance(rule.get("flags", ""), str):
                raise PromptFileError(f"{at} (regex): 'flags' may only hold i, m, s")
            try:
                re.compile(rule["pattern"])
            except re.error as exc:
                raise PromptFileError(f"{at} (regex): pattern does not compile ({exc})") from None
        elif kind == "sections":
            need("required", list, "a non-empty list of strings")
            if not rule["required"] or not all(isinstance(x, str) and x for x in rule["required"]):
                raise PromptFileError(f"{at} (sections): 'required' must be a non-empty list of strings")
        elif kind == "number":
            need("value", (int, float), "a number")
            tol = rule.get("tolerance", 0)
            if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0 or not math.isfinite(tol):
                raise PromptFileError(f"{at} (number): 'tolerance' must be a number >= 0")
            if not math.isfinite(rule["value"]):
                raise PromptFileError(f"{at} (number): 'value' must be finite")
        elif kind == "json":
            req, types = rule.get("required", []), rule.get("types", {})
            if not isinstance(req, list) or not all(isinstance(x, str) for x in req):
                raise PromptFileError(f"{at} (json): 'required' must be a list of keys")
            if not isinstance(types, dict) or not all(v in _JSON_TYPES for v in types.values()):
                raise PromptFileError(f"{at} (json): 'types' maps keys to one of {', '.join(_JSON_TYPES)}")
        unknown = set(rule) - {"type", "answer", "pattern", "must_match", "flags", "required", "case_sensitive",
                               "value", "tolerance", "types"}
        if unknown:
            raise PromptFileError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
        out.append(dict(rule))
    return Validator(tuple(out))
