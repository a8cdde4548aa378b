"""Token categories and the event-kind finder (DESIGN 1.2)."""

from __future__ import annotations

import random

import pytest

from crosspatch.core.tokens import CONTENT, FORMAT, FUNCTION_OTHER, find_event_kinds, is_assistant_marker, token_category


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
    # all-capitals words are abbreviations and headings (a weather report's HI = high), not openers,
    # unless listed in capitals (OK)
    assert not is_assistant_marker(" HI") and not is_assistant_marker("SURE") and is_assistant_marker(" Hi")
    assert is_assistant_marker(" OK") and is_assistant_marker(" ok") and not is_assistant_marker(" oK")


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


# -- whole-word markers and the user's word lists --------------------------------------------------
_TEXTS = {1: " It", 2: " I", 3: "N", 4: " G", 5: " Sure", 6: ",", 7: " rain", 8: "S", 9: "\n", 10: "I", 11: " here",
          12: "ure"}


def _describe_text(token_id):
    text = _TEXTS[token_id]
    return token_category(text), is_assistant_marker(text)


@pytest.mark.parametrize("history, other, before, expected", [
    ([7, 2, 3], [7, 4, 3], 9, None),  # " I" + "N" ("IN") against " G": the marker is a piece of a word
    ([7, 2, 6], [7, 4, 6], 9, 1),  # " I" then ",": a whole word
    ([7, 4, 3], [7, 2, 3], 9, 1),  # the other model's " I" starts a word: its end is not generated, so it counts
    ([7, 8, 10], [7, 8, 4], 9, None),  # "I" glued to "S" ("SI"): it starts no word
    ([7, 9, 10, 6], [7, 9, 4, 6], 9, 2),  # "I" after a newline starts a word
    ([5, 6], [11, 6], None, 0),  # the first generated token, followed by punctuation
    ([5, 12], [7, 12], None, None),  # " Sure" continued by "ure"? not a whole word
])
def test_a_marker_counts_only_as_a_whole_word(history, other, before, expected):
    found = find_event_kinds(history, other, _describe_text, lambda t: _TEXTS[t], before)
    assert found.get("first_assistant_marker_diff") == expected
    # without the texts, the old token-only rule: any marker token counts
    loose = find_event_kinds(history, other, _describe_text)
    assert "first_assistant_marker_diff" in loose or expected is None


def _sentencepiece_tokenizer():
    """A tokenizer of the SentencePiece kind (Llama 2, Mistral): words carry ``▁``, and a token
    decoded alone loses the space it stands for (``▁I`` decodes as ``I``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "▁I", "▁weather", "▁Sure", "I", "CHICA", "GO", "▁the", ",", "▁think"]
    core = Tokenizer(models.BPE({p: k for k, p in enumerate(pieces)}, [], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("history, other, expected", [
    ([4, 3, 11], [4, 5, 11], 1),  # "the weather I think" against "... Sure": both are words of their own
    ([4, 11, 3], [4, 11, 5], 2),  # the last generated token: a word
    ([7, 6, 8], [7, 10, 8], None),  # the "I" inside "CHICAGO"
])
def test_word_boundaries_are_read_from_the_tokens_decoded_together(history, other, expected):
    """Decoded alone, a SentencePiece token loses its space (``▁I`` is ``I``), which made every marker
    after a word look like a piece of that word: Llama 2 and Mistral pairs found no
    first_assistant_marker_diff there. The boundary is read from the pair decoded together."""
    from crosspatch.core.tokens import TokenDescriber

    describe = TokenDescriber(_sentencepiece_tokenizer())
    assert describe.text(3) == "I"  # the space is gone: the text alone cannot tell
    found = find_event_kinds(history, other, describe, describe.text, 9, describe.continues)
    assert found.get("first_assistant_marker_diff") == expected


def test_users_word_lists_replace_the_defaults(tmp_path):
    from crosspatch.core.tokens import TokenClasses
    from crosspatch.errors import OptionError

    classes = TokenClasses.from_options(format_tokens="Forecast, Outlook", marker_words=["Roger"])
    assert token_category(" forecast", classes=classes) == FORMAT
    assert token_category(" Answer", classes=classes) == CONTENT  # the default list is replaced, not extended
    assert token_category(" the", classes=classes) == FUNCTION_OTHER  # function words are untouched
    assert token_category("</s>", classes=classes) == FORMAT  # markup stays FORMAT by rule
    assert is_assistant_marker(" Roger.", classes) and not is_assistant_marker(" Sure", classes)
    words = tmp_path / "markers.txt"
    words.write_text("# one per line\nSure\n  Of course \n\n")
    assert TokenClasses.from_options(marker_words=f"@{words}").marker_words == {"Sure", "Of course"}
    # Notepad's UTF-8 with a byte-order mark, PowerShell's UTF-16: the mark is no part of the first word
    for encoding in ("utf-8-sig", "utf-16"):
        words.write_bytes("Sure\nOf course\n".encode(encoding))
        assert TokenClasses.from_options(marker_words=f"@{words}").marker_words == {"Sure", "Of course"}, encoding
    for bad in ("", " , ", "**", ["ok", 3]):
        with pytest.raises(OptionError):
            TokenClasses.from_options(marker_words=bad)
    with pytest.raises(OptionError, match="cannot read"):
        TokenClasses.from_options(format_tokens=f"@{tmp_path / 'missing.txt'}")


def test_a_run_records_marker_words_with_their_case():
    from crosspatch.runner.config import RunConfig, normalise_run_config

    config = normalise_run_config(RunConfig(marker_words="sure, OK", format_tokens=["Answer", "Report"]))
    assert config.marker_words == ["OK", "sure"]  # "OK" stays a capitals-only marker once recorded
    assert config.format_tokens == ["answer", "report"]  # format words match in any case
