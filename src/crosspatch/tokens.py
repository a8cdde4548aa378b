"""Token categories and event kinds (DESIGN 1.2).

Every divergent token gets one category, decided from its decoded text alone by this rule, in
order (``docs/event-kinds.md`` restates it):

1. ``FORMAT`` — a special token (EOS, BOS, ...), or text that after stripping whitespace is
   empty (spaces, newlines, tabs), made only of punctuation/symbols (``#``, ``**``, ``:``,
   ``-``, ``|``, ``)``), a markup tag (``<b>``, ``</s>``, ``<|im_end|>``), or one of the
   structural/discourse words in ``STRUCTURAL_WORDS`` (``Answer``, ``Step``, ``However``, ...);
2. ``FUNCTION_OTHER`` — a function word (``FUNCTION_WORDS``: articles, pronouns, prepositions,
   conjunctions, auxiliaries), case-insensitive, surrounding punctuation ignored;
3. ``CONTENT`` — everything else (words, names, numbers).

Event kinds, each found on the same shared greedy history (the rollout model's, checked by the
other model token by token): ``first_diff`` — the first disagreement; ``first_nonformat_diff``
— the first disagreement where neither token is ``FORMAT``; ``first_assistant_marker_diff`` —
the first disagreement where either token is an assistant-style opener (``ASSISTANT_MARKERS``).
"""

from __future__ import annotations

import re
import unicodedata

FORMAT, CONTENT, FUNCTION_OTHER = "FORMAT", "CONTENT", "FUNCTION_OTHER"
CATEGORIES = (FORMAT, CONTENT, FUNCTION_OTHER)
EVENT_KINDS = ("first_diff", "first_nonformat_diff", "first_assistant_marker_diff")

STRUCTURAL_WORDS = frozenset({
    # section and turn labels
    "answer", "question", "step", "steps", "note", "notes", "summary", "report", "response", "instruction",
    "instructions", "output", "input", "example", "examples", "title", "section", "solution", "explanation",
    "assistant", "user", "system", "human",
    # discourse markers
    "however", "therefore", "thus", "hence", "furthermore", "moreover", "additionally", "also", "finally",
    "first", "firstly", "second", "secondly", "third", "thirdly", "next", "then", "overall", "conclusion",
})
FUNCTION_WORDS = frozenset({
    "a", "an", "the", "this", "that", "these", "those", "some", "any", "each", "every", "no",
    "i", "me", "my", "we", "us", "our", "you", "your", "he", "him", "his", "she", "her", "it", "its", "they",
    "them", "their", "who", "whom", "which", "what", "there",
    "of", "to", "in", "on", "at", "by", "for", "with", "from", "into", "onto", "over", "under", "about",
    "as", "than", "between", "through", "during", "before", "after", "above", "below", "up", "down", "out",
    "off", "near",
    "and", "or", "but", "nor", "so", "yet", "if", "because", "while", "when", "where", "although", "though",
    "is", "am", "are", "was", "were", "be", "been", "being", "do", "does", "did", "have", "has", "had",
    "will", "would", "shall", "should", "can", "could", "may", "might", "must", "not",
})
ASSISTANT_MARKERS = frozenset({
    "sure", "certainly", "here", "i", "let's", "lets", "let", "sorry", "okay", "ok", "absolutely", "of course",
    "hello", "hi", "great", "happy", "glad", "thanks", "thank",
})
_MARKUP = re.compile(r"^<[^<>]{1,40}>$")


def _is_symbolic(text: str) -> bool:
    return all(unicodedata.category(ch)[0] in "PSZ" or ch.isspace() for ch in text)


def token_category(text: str, special: bool = False) -> str:
    """``FORMAT``, ``FUNCTION_OTHER`` or ``CONTENT`` for a token's decoded ``text`` (see module)."""
    stripped = text.strip()
    if special or not stripped or _is_symbolic(stripped) or _MARKUP.match(stripped):
        return FORMAT
    word = stripped.strip(".,:;!?*#_()[]{}\"'`").lower()
    if word in STRUCTURAL_WORDS:
        return FORMAT
    if word in FUNCTION_WORDS:
        return FUNCTION_OTHER
    return CONTENT


def is_assistant_marker(text: str) -> bool:
    """Whether a token's text is an assistant-style opener ("Sure", " Certainly", "I", ...)."""
    word = text.strip().strip(".,:;!?*#_()[]{}\"`").lower()
    return word in ASSISTANT_MARKERS


def find_event_kinds(history: list[int], other: list[int], describe) -> dict[str, int]:
    """Index of each event kind on a shared history: ``history[j]`` is the rollout model's
    token at generated position ``j``, ``other[j]`` the other model's argmax there;
    ``describe(token_id) -> (category, is_assistant_marker)``. Kinds with no qualifying
    disagreement are absent."""
    found: dict[str, int] = {}
    for j, (a, b) in enumerate(zip(history, other)):
        if a == b:
            continue
        found.setdefault("first_diff", j)
        (cat_a, marker_a), (cat_b, marker_b) = describe(a), describe(b)
        if cat_a != FORMAT and cat_b != FORMAT:
            found.setdefault("first_nonformat_diff", j)
        if marker_a or marker_b:
            found.setdefault("first_assistant_marker_diff", j)
        if len(found) == len(EVENT_KINDS):
            break
    return found


class TokenDescriber:
    """Category and assistant-marker flag per token id, from a tokenizer (cached)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._cache: dict[int, tuple[str, bool]] = {}

    def __call__(self, token_id: int) -> tuple[str, bool]:
        if token_id not in self._cache:
            text = self.tokenizer.decode([token_id])
            self._cache[token_id] = (token_category(text, token_id in self.special), is_assistant_marker(text))
        return self._cache[token_id]

    def category(self, token_id: int) -> str:
        return self(token_id)[0]
