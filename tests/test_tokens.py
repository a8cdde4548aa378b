"""Token categories and the event-kind finder (DESIGN 1.2)."""

from __future__ import annotations

import random

import pytest

from crosspatch.tokens import (
    CONTENT, FORMAT, FUNCTION_OTHER, find_event_kinds, is_assistant_marker, token_category,
)


@pytest.mark.parametrize("text, special, expected", [
    ("\n", False, FORMAT), ("  ", False, FORMAT), ("", False, FORMAT), ("##", False, FORMAT), (":", False, FORMAT),
    (" **", False, FORMAT), ("</s>", True, FORMAT), ("<|im_end|>", False, FORMAT), ("<b>", False, FORMAT),
    (" Answer", False, FORMAT), ("However", False, FORMAT), ("Step", False, FORMAT),
    (" the", False, FUNCTION_OTHER), ("I", False, FUNCTION_OTHER), (" of", False, FUNCTION_OTHER),
    (" rain", False, CONTENT), ("Denver", False, CONTENT), (" 71", False, CONTENT), ("TEMPERATURE", False, CONTENT),
    ("rain", True, FORMAT),  # a special token is formatting whatever its text
])
def test_token_category_rule(text, special, expected):
    assert token_category(text, special) == expected


def test_assistant_markers():
    assert is_assistant_marker(" Sure") and is_assistant_marker("Certainly,") and is_assistant_marker("I")
    assert is_assistant_marker("Let's") and not is_assistant_marker(" rain") and not is_assistant_marker("\n")


def _naive(history, other, describe):
    """Reference: list every disagreement, then take the first that qualifies for each kind."""
    diffs = [j for j in range(min(len(history), len(other))) if history[j] != other[j]]
    out = {}
    if diffs:
        out["first_diff"] = diffs[0]
    nonformat = [j for j in diffs if describe(history[j])[0] != FORMAT and describe(other[j])[0] != FORMAT]
    if nonformat:
        out["first_nonformat_diff"] = nonformat[0]
    marker = [j for j in diffs if describe(history[j])[1] or describe(other[j])[1]]
    if marker:
        out["first_assistant_marker_diff"] = marker[0]
    return out


VOCAB = {0: ("\n", False), 1: (":", False), 2: (" the", False), 3: (" rain", False), 4: (" Sure", False),
         5: ("</s>", True), 6: (" wind", False), 7: ("I", False)}


def _describe(tok):
    text, special = VOCAB[tok]
    return token_category(text, special), is_assistant_marker(text)


def test_event_kind_finder_matches_a_naive_reference_on_hand_made_sequences():
    cases = [
        ([3, 0, 6], [3, 1, 3]),  # first diff is formatting (\n vs :), first non-format at 2
        ([4, 3], [3, 3]),  # first diff is an assistant opener
        ([2, 2, 2], [2, 2, 2]),  # no disagreement at all
        ([0, 6, 7], [1, 3, 3]),  # all three at different positions
    ]
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(0, 12)
        history = [rng.randrange(8) for _ in range(n)]
        cases.append((history, [t if rng.random() < 0.6 else rng.randrange(8) for t in history]))
    for history, other in cases:
        assert find_event_kinds(history, other, _describe) == _naive(history, other, _describe), (history, other)
    found = find_event_kinds([0, 6, 7], [1, 3, 3], _describe)
    assert found == {"first_diff": 0, "first_nonformat_diff": 1, "first_assistant_marker_diff": 2}
