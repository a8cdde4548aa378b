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
the first disagreement where either token is an assistant-style opener (``ASSISTANT_MARKERS``)
that is a whole word there, not a piece of one (see :func:`find_event_kinds`).

The three word lists are a :class:`TokenClasses`; ``--format-tokens`` and ``--marker-words``
replace the structural words and the assistant markers (``docs/controls.md`` lists how the
defaults differ from the method's authors' lists, and why).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

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
    "hello", "hi", "great", "happy", "glad", "thanks", "thank", "OK",
})
_MARKUP = re.compile(r"^<[^<>]{1,40}>$")
_STRIP = ".,:;!?*#_()[]{}\"'`"


def _normalise(word: str, keep_case: bool = False) -> str:
    word = word.strip().strip(_STRIP)
    return word if keep_case else word.lower()


@dataclass(frozen=True)
class TokenClasses:
    """The word lists behind token categories and assistant markers (lower-case, matched after
    stripping whitespace and surrounding punctuation). The defaults are crosspatch's lists."""

    format_words: frozenset[str] = STRUCTURAL_WORDS
    function_words: frozenset[str] = FUNCTION_WORDS
    marker_words: frozenset[str] = ASSISTANT_MARKERS

    @classmethod
    def from_options(cls, format_tokens: Iterable[str] | str | None = None,
                     marker_words: Iterable[str] | str | None = None) -> "TokenClasses":
        """The defaults with ``format_tokens`` replacing the structural words and ``marker_words``
        the assistant markers; each a list, a comma list, or ``@FILE`` (one entry per line)."""
        return cls(format_words=STRUCTURAL_WORDS if format_tokens is None else word_list(format_tokens, "--format-tokens"),
                   marker_words=ASSISTANT_MARKERS if marker_words is None
                   else word_list(marker_words, "--marker-words", keep_case=True))


DEFAULT_TOKEN_CLASSES = TokenClasses()


def word_list(value: Iterable[str] | str, option: str, keep_case: bool = False) -> frozenset[str]:
    """A user's word list: a comma list, ``@FILE`` (one entry per line, ``#`` comments), or a list
    of strings; entries are normalised as tokens are (stripped of whitespace and surrounding
    punctuation; lower-case unless ``keep_case``). An empty list or an entry that is only
    punctuation (it could never match a word) is an :class:`OptionError`."""
    from ..errors import OptionError
    from ..inputs.text import read_text

    if isinstance(value, str):
        if value.startswith("@"):
            path = Path(value[1:]).expanduser()
            try:
                lines = read_text(path).splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise OptionError(f"{option} {value}: cannot read {path} ({exc.__class__.__name__})") from None
            items = [ln for ln in lines if not ln.strip().startswith("#")]  # '#' lines are comments
        else:
            items = value.split(",")
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise OptionError(f"{option} takes a list of words, a comma list or @FILE, not {value!r}")
    if not all(isinstance(x, str) for x in items):
        raise OptionError(f"{option}: every entry must be a string")
    words = {_normalise(x, keep_case) for x in items if x.strip()}
    if "" in words:
        bad = [x for x in items if x.strip() and not _normalise(x)]
        raise OptionError(f"{option}: {bad[0]!r} is only punctuation, so it can never match a word (punctuation, "
                          "whitespace and markup tags are FORMAT by rule)")
    if not words:
        raise OptionError(f"{option} {value!r} names no word")
    return frozenset(words)


def ordered_kinds(kinds) -> list[str]:
    """Distinct event kinds in the order of :data:`EVENT_KINDS` (others after, by name)."""
    order = {k: n for n, k in enumerate(EVENT_KINDS)}
    return sorted(set(kinds), key=lambda k: (order.get(k, len(order)), k))


def _is_symbolic(text: str) -> bool:
    return all(unicodedata.category(ch)[0] in "PSZ" or ch.isspace() for ch in text)


def token_category(text: str, special: bool = False, classes: TokenClasses = DEFAULT_TOKEN_CLASSES) -> str:
    """``FORMAT``, ``FUNCTION_OTHER`` or ``CONTENT`` for a token's decoded ``text`` (see module)."""
    stripped = text.strip()
    if special or not stripped or _is_symbolic(stripped) or _MARKUP.match(stripped):
        return FORMAT
    word = _normalise(stripped)
    if word in classes.format_words:
        return FORMAT
    if word in classes.function_words:
        return FUNCTION_OTHER
    return CONTENT


def is_assistant_marker(text: str, classes: TokenClasses = DEFAULT_TOKEN_CLASSES) -> bool:
    """Whether a token's text is an assistant-style opener ("Sure", " Certainly", "I", ...): a
    lower-case entry matches its lower-case and capitalised forms (``sure``, ``Sure``), an entry
    with capitals only itself (``OK``); an all-capitals word (``HI``, a weather report's "high")
    is no marker unless listed so."""
    word = _normalise(text, keep_case=True)
    if word in classes.marker_words:
        return True
    return word.lower() in classes.marker_words and word in (word.lower(), word.capitalize())


def starts_a_word(previous_text: str | None, text: str) -> bool:
    """Whether a token begins a word: it opens with whitespace, or it is the first token, or the
    token before it ends in whitespace or punctuation (not in a letter or digit)."""
    return previous_text is None or text[:1].isspace() or not previous_text[-1:].isalnum()


def ends_a_word(text: str, next_text: str | None) -> bool:
    """Whether a word ends with this token: no next token, or the next one does not continue it
    with a letter or digit."""
    return next_text is None or not next_text[:1].isalnum()


def find_event_kinds(history: list[int], other: list[int], describe, text: Callable[[int], str] | None = None,
                     before: int | None = None, continues: Callable[[int, int], bool] | None = None) -> dict[str, int]:
    """Index of each event kind on a shared history: ``history[j]`` is the rollout model's
    token at generated position ``j``, ``other[j]`` the other model's argmax there;
    ``describe(token_id) -> (category, is_assistant_marker)``. Kinds with no qualifying
    disagreement are absent.

    With ``text(token_id) -> decoded text`` (and ``before``, the prompt's last token), a marker
    counts only as a whole word: it must start a word (:func:`starts_a_word`, after the shared
    history's previous token), and the rollout model's token must also end one (its own next
    token does not continue it, :func:`ends_a_word`). The other model's continuation is not
    generated, so its marker is held to the start of a word only. ``continues(previous_id, token_id)``
    (:meth:`TokenDescriber.continues`) tells word boundaries from the tokens decoded together
    instead of from each one's text alone, which a SentencePiece tokenizer strips of its space."""
    found: dict[str, int] = {}
    for j, (a, b) in enumerate(zip(history, other)):
        if a == b:
            continue
        found.setdefault("first_diff", j)
        (cat_a, marker_a), (cat_b, marker_b) = describe(a), describe(b)
        if cat_a != FORMAT and cat_b != FORMAT:
            found.setdefault("first_nonformat_diff", j)
        prev_id = history[j - 1] if j > 0 else before
        next_id = history[j + 1] if j + 1 < len(history) else None
        if continues is not None and (marker_a or marker_b):
            marker_a = marker_a and (prev_id is None or not continues(prev_id, a)) and (
                next_id is None or not continues(a, next_id))
            marker_b = marker_b and (prev_id is None or not continues(prev_id, b))
        elif text is not None and (marker_a or marker_b):
            prev = None if prev_id is None else text(prev_id)
            nxt = None if next_id is None else text(next_id)
            marker_a = marker_a and starts_a_word(prev, text(a)) and ends_a_word(text(a), nxt)
            marker_b = marker_b and starts_a_word(prev, text(b))
        if marker_a or marker_b:
            found.setdefault("first_assistant_marker_diff", j)
        if len(found) == len(EVENT_KINDS):
            break
    return found


class TokenDescriber:
    """Category and assistant-marker flag per token id, from a tokenizer and the word lists
    ``classes`` (cached)."""

    def __init__(self, tokenizer, classes: TokenClasses = DEFAULT_TOKEN_CLASSES) -> None:
        self.tokenizer = tokenizer
        self.classes = classes
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._cache: dict[int, tuple[str, bool]] = {}
        self._texts: dict[int, str] = {}
        self._pairs: dict[tuple[int, int], bool] = {}
        backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer without a decoder joins with spaces
        self.decodes_jointly = backend is None or getattr(backend, "decoder", None) is not None

    def __call__(self, token_id: int) -> tuple[str, bool]:
        if token_id not in self._cache:
            text = self.text(token_id)
            self._cache[token_id] = (token_category(text, token_id in self.special, self.classes),
                                     token_id not in self.special and is_assistant_marker(text, self.classes))
        return self._cache[token_id]

    def text(self, token_id: int) -> str:
        """The token's decoded text (a special token's is empty: it is no word)."""
        if token_id not in self._texts:
            self._texts[token_id] = "" if token_id in self.special else self.tokenizer.decode([token_id])
        return self._texts[token_id]

    def category(self, token_id: int) -> str:
        return self(token_id)[0]

    def continues(self, previous_id: int, token_id: int) -> bool:
        """Whether ``token_id`` continues the word that ``previous_id`` ends: the two decoded
        together join a letter or digit to a letter or digit. Read off the pair's joint decoding,
        not each token's alone: a SentencePiece tokenizer (Llama 2, Mistral) decodes ``▁I`` alone as
        ``I``, without the space that makes it a word of its own."""
        previous, text = self.text(previous_id), self.text(token_id)
        if not previous[-1:].isalnum() or text[:1].isspace() or not text:
            return False
        if not self.decodes_jointly:  # no decoder: every pair decodes joined by a space, so the texts alone tell
            return text[:1].isalnum()
        key = (previous_id, token_id)
        if key not in self._pairs:
            joined = self.tokenizer.decode([previous_id, token_id])
            rest = joined[len(previous):] if joined.startswith(previous) else text
            self._pairs[key] = rest[:1].isalnum()
        return self._pairs[key]
