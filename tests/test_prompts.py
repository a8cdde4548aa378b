"""Prompt files: JSONL, CSV, Parquet; malformed input names the line and field."""

from __future__ import annotations

import codecs
import json
import re

import pandas as pd
import pytest

from crosspatch.errors import PromptFileError
from crosspatch.inputs.prompts import Prompt, as_prompts, load_prompts


def _jsonl(tmp_path, lines):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_with_metadata(tmp_path):
    path = _jsonl(tmp_path, [json.dumps({"id": 1, "prompt": "Rain?", "category": "precip", "split": "id"}),
                             "", json.dumps({"id": "b", "prompt": "Wind?"})])
    got = load_prompts(path)
    assert [(p.id, p.category, p.metadata) for p in got] == [("1", "precip", {"split": "id"}), ("b", None, {})]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "a", "prompt": "x"', r"p.jsonl:2: not valid JSON"),
        ('["a", "x"]', r"p.jsonl:2: each line must be a JSON object"),
        ('{"prompt": "x"}', r"p.jsonl:2: field 'id' is missing"),
        ('{"id": "b"}', r"p.jsonl:2: field 'prompt' is missing \(or give 'messages', a chat\)$"),
        ('{"id": "b", "text": "x", "n": 2}', r"p.jsonl:2: field 'prompt' is missing .*this row's fields: 'text', 'n': "
                                             r"name the prompt's field with --fields prompt=FIELD .*prompt=text$"),
        ('{"id": "b", "prompt": ""}', r"p.jsonl:2: field 'prompt' must be a non-empty string"),
        ('{"id": "b", "prompt": 3}', r"p.jsonl:2: field 'prompt' must be a non-empty string"),
        ('{"id": "b", "prompt": "x", "category": [4]}', r"p.jsonl:2: field 'category' must be a string or a number"),
        ('{"id": "b", "prompt": "x", "category": true}', r"p.jsonl:2: field 'category' must be a string or a number"),
        ('{"id": "a", "prompt": "y"}', r"p.jsonl:2: field 'id' 'a' repeats .*p.jsonl:1"),
        ('{"id": "b", "prompt": "x", "id": "c"}', r"p.jsonl:2: field 'id' appears more than once"),  # json keeps the last
        ('{"id": "b", "prompt": "x", "meta": {"k": 1, "k": 2}}', r"p.jsonl:2: field 'k' appears more than once"),
    ],
)
def test_malformed_jsonl_names_line_and_field(tmp_path, line, message):
    path = _jsonl(tmp_path, ['{"id": "a", "prompt": "ok"}', line])
    with pytest.raises(PromptFileError, match=message):
        load_prompts(path)


def test_csv_and_parquet(tmp_path):
    frame = pd.DataFrame({"id": ["001", "2"], "prompt": ["Rain?", "Sun?"], "category": ["a", None]})
    frame.to_csv(tmp_path / "p.csv", index=False)
    frame.to_parquet(tmp_path / "p.parquet")
    for name in ("p.csv", "p.parquet"):
        got = load_prompts(tmp_path / name)
        assert [(p.id, p.prompt, p.category) for p in got] == [("001", "Rain?", "a"), ("2", "Sun?", None)]


def test_a_data_frame_without_ids_is_told_the_python_spelling_of_numbering_its_rows():
    # a notebook user holds a DataFrame, not a command line: the error names fields= beside --fields
    frame = pd.DataFrame({"prompt": ["Rain?", "Sun?"]})
    with pytest.raises(PromptFileError, match=r"required column 'id' is missing.*in Python, fields='id=@row'"):
        as_prompts(frame)
    assert [p.id for p in as_prompts(frame, fields="id=@row")] == ["0", "1"]
    with pytest.raises(PromptFileError, match=r"required column 'prompt' is missing.*fields='prompt=COLUMN' in Python"):
        as_prompts(pd.DataFrame({"id": ["a"], "text": ["Rain?"]}))


@pytest.mark.parametrize("codec, suffix", [("gzip", ".gz"), ("bz2", ".bz2"), ("lzma", ".xz")])
def test_a_prompt_file_compressed_whole_reads_as_the_file_itself(tmp_path, codec, suffix):
    # as datasets and pandas read prompts.jsonl.gz; lines are still named in the file given
    import importlib

    compress = importlib.import_module(codec).compress
    frame = pd.DataFrame({"id": ["001", "2"], "prompt": ["Rain, then sun", "Sun?"], "category": ["a", None]})
    frame.to_csv(tmp_path / "p.csv", index=False)
    frame.to_csv(tmp_path / "p.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "p.parquet")
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in frame.to_dict(orient="records")) + "\n")
    (tmp_path / "p.json").write_text(json.dumps(frame.to_dict(orient="records")))
    for name in ("p.csv", "p.tsv", "p.parquet", "p.jsonl", "p.json"):
        packed = tmp_path / f"{name}{suffix}"
        packed.write_bytes(compress((tmp_path / name).read_bytes()))
        assert load_prompts(packed) == load_prompts(tmp_path / name), name
    assert as_prompts(str(tmp_path / f"p.jsonl{suffix}")) == load_prompts(tmp_path / "p.jsonl")  # a path, not a prompt
    bad = tmp_path / f"bad.jsonl{suffix}"
    bad.write_bytes(compress(b'{"id": "a", "prompt": "ok"}\n{"id": "a", "prompt": "again"}\n'))
    with pytest.raises(PromptFileError, match=rf"bad.jsonl{suffix}:2: field 'id' 'a' repeats"):
        load_prompts(bad)
    truncated = tmp_path / f"cut.jsonl{suffix}"
    truncated.write_bytes((tmp_path / f"p.jsonl{suffix}").read_bytes()[:20])
    with pytest.raises(PromptFileError, match=rf"cut.jsonl{suffix}: cannot be decompressed as {codec}"):
        load_prompts(truncated)
    (tmp_path / f"p.txt{suffix}").write_bytes(compress(b"x"))
    with pytest.raises(PromptFileError, match=rf"unknown prompt file type '.txt{suffix}'"):
        load_prompts(tmp_path / f"p.txt{suffix}")


@pytest.mark.parametrize("codec, suffix", [("gzip", ".gz"), ("bz2", ".bz2"), ("lzma", ".xz")])
def test_a_compressed_prompt_file_that_decompresses_past_any_prompt_set_is_refused(tmp_path, codec, suffix, monkeypatch):
    """A megabyte of gzip can stand for gigabytes of zeros: it was decompressed whole into memory."""
    import importlib

    import crosspatch.inputs.prompt_files as prompt_files

    monkeypatch.setattr(prompt_files, "MAX_DECOMPRESSED_BYTES", 1000)
    bomb = tmp_path / f"bomb.jsonl{suffix}"
    bomb.write_bytes(importlib.import_module(codec).compress(b" " * 5000 + b'{"id": "a", "prompt": "Rain"}\n'))
    with pytest.raises(PromptFileError, match=rf"bomb.jsonl{suffix}: decompresses to more than"):
        load_prompts(bomb)
    fits = tmp_path / f"fits.jsonl{suffix}"
    fits.write_bytes(importlib.import_module(codec).compress(b'{"id": "a", "prompt": "Rain"}\n'))
    assert [p.id for p in load_prompts(fits)] == ["a"]


def test_a_json_object_wrapping_the_prompts_is_named_as_such(tmp_path):
    """``{"data": [...]}`` is no prompt (it was read as one row, then refused for its missing
    ``id``); one prompt object alone is still one prompt."""
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": [{"id": "a", "prompt": "Rain?"}]}))
    with pytest.raises(PromptFileError, match=r"holds one JSON object \(keys 'data'\), not prompts"):
        load_prompts(tmp_path / "wrapped.json")
    (tmp_path / "one.json").write_text(json.dumps({"id": "a", "prompt": "Rain?"}))
    assert [p.id for p in load_prompts(tmp_path / "one.json")] == ["a"]


def test_numbers_as_categories_are_labels_kept_as_written(tmp_path):
    """A category column of numbers (a difficulty level, a year) groups as text: a CSV keeps the
    cell as written (``01`` stays ``01``); JSON and Parquet numbers read as their text, a whole
    number without its ``.0`` (a Parquet integer column with a gap is stored as floats)."""
    (tmp_path / "p.csv").write_text("id,prompt,category\n1,Rain?,01\n2,Sun?,2\n3,Fog?,\n")
    assert [(p.id, p.category) for p in load_prompts(tmp_path / "p.csv")] == [("1", "01"), ("2", "2"), ("3", None)]
    pd.DataFrame({"id": [1, 2, 3], "prompt": ["Rain?", "Sun?", "Fog?"], "category": [1, None, 2.5]}).to_parquet(
        tmp_path / "p.parquet")
    assert [(p.id, p.category) for p in load_prompts(tmp_path / "p.parquet")] == [("1", "1"), ("2", None), ("3", "2.5")]
    path = _jsonl(tmp_path, ['{"id": "a", "prompt": "x", "category": 2024}'])
    assert load_prompts(path)[0].category == "2024"


def test_spreadsheet_exports_read_as_written(tmp_path):
    """A byte-order mark, a semicolon or tab delimiter (Excel's exports), .tsv and CRLF line
    ends are read as their writer meant; a delimiter inside a quoted prompt stays text."""
    rows = [("001", "Rain, then sun; later wind", "a"), ("2", "Sun?", "b")]
    for name, delimiter in (("semi.csv", ";"), ("tab.csv", "\t"), ("t.tsv", "\t"), ("comma.csv", ",")):
        lines = [delimiter.join(["id", "prompt", "category"])]
        lines += [delimiter.join([i, f'"{p}"', c]) for i, p, c in rows]
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
        got = load_prompts(tmp_path / name)
        assert [(p.id, p.prompt, p.category) for p in got] == rows, name


def test_files_marked_as_utf16_or_utf32_read_as_their_writer_meant(tmp_path):
    """Windows PowerShell 5's ``>`` writes UTF-16 LE with a byte-order mark, as Excel's "Unicode
    Text" export does: a mark names the encoding, so the file reads exactly (JSON lines, a JSON
    array, CSV and TSV, compressed too); bytes the marked encoding cannot hold are named with
    their line."""
    import gzip

    rows = [("a", "Rain in Zürich – later", None), ("b", "Sun, then wind", "x")]
    jsonl = "".join(json.dumps({"id": i, "prompt": p, **({"category": c} if c else {})}) + "\r\n" for i, p, c in rows)
    table = "id\tprompt\tcategory\r\n" + "".join(f"{i}\t{p}\t{c or ''}\r\n" for i, p, c in rows)
    files = {"p.jsonl": jsonl.encode("utf-16"), "be.jsonl": codecs.BOM_UTF16_BE + jsonl.encode("utf-16-be"),
             "p32.jsonl": jsonl.encode("utf-32"), "p.tsv": table.encode("utf-16"),
             "a.json": json.dumps([{"id": i, "prompt": p, "category": c} for i, p, c in rows]).encode("utf-16"),
             "p.jsonl.gz": gzip.compress(jsonl.encode("utf-16"))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert [(p.id, p.prompt, p.category) for p in load_prompts(tmp_path / name)] == rows, name
    (tmp_path / "bad.jsonl").write_bytes(jsonl.encode("utf-16") + b"\x00\xd8\x41\x00")  # a lone surrogate
    with pytest.raises(PromptFileError, match=r"bad.jsonl:3: not UTF-16 text, though the file begins with its byte-order"):
        load_prompts(tmp_path / "bad.jsonl")


def test_a_row_with_more_fields_than_the_header_is_named_not_shifted(tmp_path):
    """pandas takes the first column for an index when every row has one field more than the
    header: a tab in every prompt of a .tsv made the prompt its id and the text after the tab its
    prompt. Extra fields with text are refused with their line; empty ones (a trailing delimiter,
    as spreadsheets write) are dropped."""
    (tmp_path / "p.tsv").write_text("id\tprompt\na\tRain\tthen sun\n")
    with pytest.raises(PromptFileError, match=r"p.tsv:2: 3 fields where the header names 2: a tab inside a field"):
        load_prompts(tmp_path / "p.tsv")
    (tmp_path / "q.csv").write_text('id,prompt\na,"Rain, then sun"\nb,Sun,later\n')
    with pytest.raises(PromptFileError, match=r"q.csv:3: 3 fields .* a comma inside a field must be quoted"):
        load_prompts(tmp_path / "q.csv")
    (tmp_path / "r.csv").write_text("id,prompt\na,Rain,\nb,Sun,\n")
    assert [(p.id, p.prompt) for p in load_prompts(tmp_path / "r.csv")] == [("a", "Rain"), ("b", "Sun")]
    (tmp_path / "j.json").write_text('[{"id": "a", "prompt": "x", "prompt": "y"}]')
    with pytest.raises(PromptFileError, match=r"j.json: field 'prompt' appears more than once"):
        load_prompts(tmp_path / "j.json")


def test_csv_missing_column_and_empty_prompt(tmp_path):
    (tmp_path / "a.csv").write_text("id,text\n1,Rain\n")
    with pytest.raises(PromptFileError, match="required column 'prompt'"):
        load_prompts(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("id,prompt\n1,Rain\n2,\n")
    with pytest.raises(PromptFileError, match=r"b.csv:3: field 'prompt' is empty"):
        load_prompts(tmp_path / "b.csv")


def test_unknown_suffix_missing_and_empty_files(tmp_path):
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(PromptFileError, match="unknown prompt file type"):
        load_prompts(tmp_path / "p.txt")
    with pytest.raises(PromptFileError, match="no such prompt file"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(PromptFileError, match="contains no prompts"):
        load_prompts(tmp_path / "e.jsonl")


def test_prompts_that_repeat_another_are_warned_about_not_dropped():
    """Two ids with the same text are two prompts (none is dropped), but greedy decoding gives
    them the same events, which the bootstrap counts as independent: the repeated_prompts control
    warns, and the verdict's sentence carries it as a caveat."""
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    prompts = [{"id": "a", "prompt": "Rain in Boston"}, {"id": "b", "prompt": "Rain in Boston"},
               {"id": "c", "prompt": "Snow in Denver"}]
    result = run(make_pair("llama"), prompts, max_new_tokens=4, bootstrap=0, progress=False)
    assert result.summary["counts"]["prompts"] == 3
    row = next(c for c in result.summary["controls"] if c["control"] == "repeated_prompts")
    assert row["status"] == "warn" and row["details"]["repeats"] == 1 and "(b = a)" in row["summary"]
    assert row["value"] == pytest.approx(1 / 3)
    if result.verdict["verdict"] != "inconclusive":  # a caveat of the sentence, never a change of grade
        assert "repeated-prompts: 1 of 3 event(s)" in result.verdict["reason"]
    unique = run(make_pair("llama"), prompts[1:], max_new_tokens=4, bootstrap=0, progress=False)
    row = next(c for c in unique.summary["controls"] if c["control"] == "repeated_prompts")
    assert row["status"] == "pass" and row["details"]["repeats"] == 0


def test_prompts_the_tokenizer_cannot_spell_are_warned_about_by_name():
    """Text a tokenizer has no piece for becomes its unknown token: both models read that token,
    not the text, so the run says which prompts hold it (and how often) instead of scoring them
    silently; a tokenizer whose ``unk_token`` is its end-of-text token (GPT-2's) is not held to it."""
    from crosspatch.models.vocab import unknown_token_warning
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    prompts = [{"id": "tokyo", "prompt": "Rain in 東京"}, {"id": "plain", "prompt": "Snow in Denver"}]
    result = run(make_pair("llama"), prompts, max_new_tokens=4, bootstrap=0, progress=False)
    assert result.summary["counts"]["prompts"] == 2
    said = [w for w in result.summary["warnings"] if "unknown token" in w]
    assert len(said) == 1 and "1 prompt(s)" in said[0] and "'tokyo' (2)" in said[0] and "plain" not in said[0]
    clean = run(make_pair("llama"), prompts[1:], max_new_tokens=4, bootstrap=0, progress=False)
    assert not any("unknown token" in w for w in clean.summary["warnings"])

    class EndOfTextAsUnknown:
        unk_token, unk_token_id, eos_token_id, bos_token_id, pad_token_id = "<|endoftext|>", 7, 7, 7, None

    assert unknown_token_warning(EndOfTextAsUnknown(), ["a"], [[3, 7, 7]]) is None


def test_prompts_that_end_with_the_end_of_sequence_token_are_warned_about_by_name():
    """A tokenizer saved to append its EOS (``add_eos_token``, a training setting) made every prompt
    end with it: both models decoded past the end of a text, and the run scored those events without
    a word. The run says which prompts end with it (and what to change); a prompt that merely
    holds the token elsewhere, or GPT-2's one special token (which opens texts too), is not flagged."""
    from tokenizers import processors

    from crosspatch.execution import pair_from_models
    from crosspatch.models.vocab import trailing_eos_warning
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import char_tokenizer, tiny_pair

    base, child, _ = tiny_pair("llama")
    appends = char_tokenizer()
    appends._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    prompts = [{"id": "rain", "prompt": "Rain in Boston"}, {"id": "snow", "prompt": "Snow in Denver"}]
    result = run(pair_from_models(base, child, appends), prompts, max_new_tokens=4, bootstrap=0, progress=False)
    said = [w for w in result.summary["warnings"] if "end-of-sequence" in w]
    assert len(said) == 1 and "2 of 2 prompt(s)" in said[0] and "'rain', 'snow'" in said[0] and "add_eos_token" in said[0]
    plain = run(pair_from_models(base, child, char_tokenizer()), prompts, max_new_tokens=4, bootstrap=0, progress=False)
    assert not any("end-of-sequence" in w for w in plain.summary["warnings"])
    assert trailing_eos_warning(char_tokenizer(), ["a"], [[1, 2, 5]]) is None  # EOS inside a prompt: its text

    class OneSpecialToken:  # GPT-2's <|endoftext|> is its BOS and EOS
        eos_token, eos_token_id, bos_token_id = "<|endoftext|>", 7, 7

    assert trailing_eos_warning(OneSpecialToken(), ["a"], [[3, 7]]) is None


def test_chat_template_is_an_explicit_recorded_option():
    from crosspatch.runner.pipeline import run
    from crosspatch.testing import make_pair

    pair = make_pair("llama")
    pair.tokenizer_it.chat_template = "{% for m in messages %}U: {{ m['content'] }}\n{% endfor %}A:"
    raw = run(pair, [{"id": "a", "prompt": "Rain?"}], max_new_tokens=4, bootstrap=0, progress=False)
    templated = run(pair, [{"id": "a", "prompt": "Rain?"}], max_new_tokens=4, bootstrap=0, progress=False,
                    chat_template=True)
    assert raw.config["options"]["chat_template"] is False and templated.config["options"]["chat_template"] is True
    assert raw.config["fingerprint"] != templated.config["fingerprint"]
    from crosspatch.inputs.prompts import Prompt
    from crosspatch.runner.prepare import _prompt_text

    assert _prompt_text(pair, Prompt("a", "Rain?"), templated_config(templated)) == "U: Rain?\nA:"
    # raw text gets the tokenizer's BOS; templated text is what the template renders, special
    # tokens included, as apply_chat_template(tokenize=True) gives it: BOS only if it has one
    from crosspatch.runner.pipeline import RunConfig
    from crosspatch.runner.prepare import prompt_token_ids

    def ids(chat_template):
        return prompt_token_ids(pair, [Prompt("a", "Rain?")], "tuned", RunConfig(chat_template=chat_template))[0]

    def rendered():
        return pair.tokenizer_it.apply_chat_template([{"role": "user", "content": "Rain?"}], add_generation_prompt=True,
                                                     tokenize=True, return_dict=False)

    bos = pair.tokenizer_it.bos_token_id
    assert ids(False) == [bos] + pair.tokenizer_it("Rain?", add_special_tokens=False)["input_ids"]
    assert ids(True) == rendered() and bos not in ids(True)
    pair.tokenizer_it.chat_template = "{{ bos_token }}" + pair.tokenizer_it.chat_template
    assert ids(True) == rendered() and ids(True).count(bos) == 1  # not doubled


@pytest.mark.parametrize("template", [
    # Llama 3.x: today's date where the renderer offers a clock, else its own fixed one
    '{% if strftime_now is defined %}{% set d = strftime_now("%d %b %Y") %}{% else %}{% set d = "26 Jul 2024" %}'
    '{% endif %}Today Date: {{ d }}\n{% for m in messages %}U: {{ m["content"] }}\n{% endfor %}A:',
    # Granite, Mistral: the clock called directly
    'Today is {{ strftime_now("%B %d, %Y") }}.\n{% for m in messages %}U: {{ m["content"] }}\n{% endfor %}A:',
])
def test_a_chat_template_that_writes_todays_date_renders_one_fixed_date(template, monkeypatch):
    """A template that writes the date (Llama 3.x, Granite, Mistral) made the prompts depend on the
    day a run was made: a run resumed or a shard run the next day fed other tokens than its
    records'. Templates see one fixed date (CHAT_TEMPLATE_DATE), whatever the clock says."""
    import datetime

    from crosspatch.inputs.prompts import Prompt
    from crosspatch.runner.reading import CHAT_TEMPLATE_DATE, render_chat
    from crosspatch.testing import make_pair

    tokenizer = make_pair("llama").tokenizer_it
    tokenizer.chat_template = template
    today = render_chat(tokenizer, Prompt("a", "Rain?"), "it")

    class Tomorrow(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2031, 2, 3, 4, 5, tzinfo=tz)

    import transformers.utils.chat_template_utils as chat_template_utils

    monkeypatch.setattr(chat_template_utils, "datetime", Tomorrow)
    assert render_chat(tokenizer, Prompt("a", "Rain?"), "it") == today
    assert CHAT_TEMPLATE_DATE.strftime("%Y") in today and "2031" not in today


def test_a_chat_row_is_rendered_whole_by_the_chat_template_and_never_fed_as_raw_text(tmp_path):
    """A row may give its prompt as a chat (``messages``, as Hugging Face chat datasets hold it):
    the descendant's template renders every turn; without --chat-template it is refused, not
    cut down to its last turn; the chat is part of what identifies the prompt set."""
    from crosspatch.inputs.prompts import prompts_digest
    from crosspatch.runner.pipeline import RunConfig, run
    from crosspatch.runner.prepare import _prompt_text
    from crosspatch.testing import make_pair

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Rain?"}]
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"id": "a", "messages": chat, "category": "c"}) + "\n"
                    + json.dumps({"id": "b", "prompt": "Snow?"}) + "\n")
    a, b = load_prompts(path)
    assert (a.prompt, list(a.messages), a.metadata) == ("Rain?", chat, {}) and b.messages is None
    csv_path = tmp_path / "chats.csv"
    csv_path.write_text('id,messages\na,"' + json.dumps(chat).replace('"', '""') + '"\n')
    assert load_prompts(csv_path)[0].messages == a.messages
    assert prompts_digest([a]) != prompts_digest([Prompt("a", "Rain?", "c")])  # the system turn counts

    pair = make_pair("llama")
    pair.tokenizer_it.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}A:"
    assert _prompt_text(pair, a, RunConfig(chat_template=True)) == "system: Be brief.\nuser: Rain?\nA:"
    assert _prompt_text(pair, b, RunConfig(chat_template=True)) == "user: Snow?\nA:"
    with pytest.raises(PromptFileError, match=r"prompt\(s\) a are chats .*add --chat-template"):
        run(pair, path, max_new_tokens=4, bootstrap=0, progress=False)
    result = run(pair, path, max_new_tokens=4, bootstrap=0, progress=False, chat_template=True)
    assert {r.prompt_id for r in result.records} | {n.prompt_id for n in result.no_divergence} == {"a", "b"}
    pair.tokenizer_it.chat_template = "{{ raise_exception('no system role') if messages[0]['role'] == 'system' }}x"
    with pytest.raises(PromptFileError, match="prompt 'a': the chat template of 'tuned' refuses its chat"):
        _prompt_text(pair, a, RunConfig(chat_template=True))


def test_chat_turns_as_text_parts_and_llama_tool_roles_are_read(tmp_path):
    """A turn's content may be a list of text parts (``[{"type": "text", "text": ...}]``), read as
    their text joined; Llama 3's ``ipython`` (tool output) and the older ``function`` are roles."""
    chat = [{"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
            {"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Calling the tool."},
            {"role": "ipython", "content": "{\"rain\": 3}"}, {"role": "function", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "Rain?"}]}]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "messages": chat}) + "\n")
    (got,) = load_prompts(path)
    assert got.prompt == "Rain?" and [t["content"] for t in got.messages] == [
        "Be brief.", "Weather?", "Calling the tool.", '{"rain": 3}', "ok", "Rain?"]
    assert [t["role"] for t in got.messages] == [t["role"] for t in chat]


def test_a_sharegpt_chat_reads_as_the_same_messages(tmp_path):
    """``conversations`` of ``{"from", "value"}`` turns (ShareGPT, as Axolotl and LLaMA-Factory
    datasets hold chats) is the chat its ``messages`` would be, in JSON lines, a CSV cell or a
    DataFrame; an unknown speaker, or both forms in one row, is named."""
    from crosspatch.inputs.prompts import as_prompts

    shared = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Weather?"},
              {"from": "gpt", "value": "Where?"}, {"from": "human", "value": "Oslo"}]
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "Where?"}, {"role": "user", "content": "Oslo"}]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "conversations": shared, "split": "eval"}) + "\n")
    csv_path = tmp_path / "p.csv"
    csv_path.write_text('id,conversations\na,"' + json.dumps(shared).replace('"', '""') + '"\n')
    frame = pd.DataFrame({"id": ["a"], "conversations": [shared]})
    for got in (load_prompts(path), load_prompts(csv_path), as_prompts(frame),
                as_prompts({"id": "a", "conversations": shared})):
        assert [(p.id, p.prompt, list(p.messages)) for p in got] == [("a", "Oslo", chat)]
    assert load_prompts(path)[0].metadata == {"split": "eval"}
    mixed = pd.DataFrame({"id": ["a", "b"], "prompt": [None, "Snow?"], "conversations": [shared, None]})
    assert [(p.prompt, p.messages is None) for p in as_prompts(mixed)] == [("Oslo", False), ("Snow?", True)]
    for row, message in (({"id": "a", "conversations": [{"from": "bot", "value": "x"}]}, r"conversations\[0\] is from 'bot'"),
                         ({"id": "a", "conversations": shared, "messages": chat}, "not both"),
                         ({"id": "a", "conversations": shared[:3]}, "last turn is the assistant's"),
                         ({"id": "a", "conversations": []}, "'conversations' must be a non-empty list")):
        path.write_text(json.dumps(row) + "\n")
        with pytest.raises(PromptFileError, match=message):
            load_prompts(path)


@pytest.mark.parametrize("row, message", [
    ({"id": "a", "messages": []}, "non-empty list"),
    ({"id": "a", "messages": [{"role": "user"}]}, r"messages\[0\] must be an object with 'role' and 'content'"),
    ({"id": "a", "messages": [{"role": "narrator", "content": "x"}]}, "role 'narrator'"),
    ({"id": "a", "messages": [{"role": "user", "content": 5}]}, "content must be text"),
    ({"id": "a", "messages": [{"role": "user", "content": []}]}, "content must be text"),
    ({"id": "a", "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]},
     "the chat holds an image part but the row gives no image"),
    ({"id": "a", "image": "c.png", "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}]},
     "holds 2 image parts; crosspatch runs one image per prompt"),
    ({"id": "a", "messages": [{"role": "user", "content": [{"type": "image", "url": "https://x/c.png"}]}]},
     r"messages\[0\] holds a 'image' part naming its image"),
    ({"id": "a", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, r"messages\[0\] holds a 'audio' part"),
    ({"id": "a", "messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "holds a 'text' part"),
    ({"id": "a", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
     "last turn is the assistant's"),
    ({"id": "a", "messages": [{"role": "system", "content": "x"}]}, "no user turn"),
    ({"id": "a", "messages": [{"role": "user", "content": "x"}], "prompt": "x"}, "not both"),
    ({"id": "a", "messages": "[oops"}, "'messages' is not valid JSON"),
])
def test_a_malformed_chat_row_is_named(tmp_path, row, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(PromptFileError, match=message):
        load_prompts(path)


def test_workflows_that_feed_raw_text_refuse_chats_and_images(tmp_path):
    from crosspatch.inputs.prompts import as_prompts
    from crosspatch.workflows.preflight_measures import _prompt_texts

    chat = as_prompts([{"id": "a", "messages": [{"role": "user", "content": "Rain?"}]}])
    with pytest.raises(PromptFileError, match="preflight feeds raw text"):
        _prompt_texts(chat)
    with pytest.raises(PromptFileError, match="images"):
        (tmp_path / "sky.png").write_bytes(b"\x89PNG")
        _prompt_texts(as_prompts([{"id": "a", "prompt": "<image> Rain?", "image": str(tmp_path / "sky.png")}]))


def templated_config(result):
    from crosspatch.runner.pipeline import RunConfig

    return RunConfig(chat_template=result.config["options"]["chat_template"])


def test_in_python_one_prompt_is_one_prompt_and_a_path_is_a_file(tmp_path):
    from crosspatch.inputs.prompts import Prompt, as_prompts

    assert [(p.id, p.prompt) for p in as_prompts("Rain in Oslo")] == [("0", "Rain in Oslo")]  # not 12 characters
    assert [p.id for p in as_prompts({"id": "a", "prompt": "Rain"})] == ["a"]
    assert [p.id for p in as_prompts(Prompt("b", "Sun"))] == ["b"]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "c", "prompt": "Fog"}) + "\n")
    assert [p.id for p in as_prompts(str(path))] == [p.id for p in as_prompts(path)] == ["c"]
    with pytest.raises(PromptFileError, match="no such prompt file"):
        as_prompts(str(tmp_path / "missing.jsonl"))


def test_in_python_a_dict_of_columns_is_one_prompt_per_position():
    """What slicing a ``datasets.Dataset`` (``ds[:2]``), ``Dataset.to_dict()`` and
    ``DataFrame.to_dict("list")`` give; a chat row's ``messages`` (one list of turns) stays one row."""
    import datasets

    frame = pd.DataFrame({"id": ["a", "b", "c"], "prompt": ["Rain?", "Sun?", "Fog?"], "category": ["x", "y", "x"],
                          "split": ["s", "t", "s"]})
    rows = [(p.id, p.prompt, p.category, p.metadata) for p in as_prompts(frame)]
    assert [(p.id, p.prompt, p.category, p.metadata) for p in as_prompts(frame.to_dict("list"))] == rows
    assert [p.id for p in as_prompts(datasets.Dataset.from_pandas(frame)[:2])] == ["a", "b"]
    renamed = {"instruction": ["Rain?", "Sun?"], "uid": [1, 2]}
    assert [(p.id, p.prompt) for p in as_prompts(renamed, "prompt=instruction,id=uid")] == [("1", "Rain?"), ("2", "Sun?")]
    turn = {"role": "user", "content": "Rain?"}
    assert [p.messages for p in as_prompts({"id": "a", "messages": [turn]})] == [(turn,)]
    assert [p.id for p in as_prompts({"id": ["a", "b"], "messages": [[turn], [turn]]})] == ["a", "b"]


@pytest.mark.parametrize("items, message", [
    ([], "no prompts given"),
    (None, "prompts must be a list"),
    (7, "prompts must be a list"),
    ({"a": "Rain"}, "one prompt row"),
    ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], r"prompt #1: id 'a' repeats prompt #0's"),
    ({"id": ["a", "b"], "prompt": ["x", "y", "z"]}, "lists of one length, not id: 2, prompt: 3"),
    ({"id": "a", "prompt": ["x", "y"]}, "not id: not a list, prompt: 2"),
    ({"id": [], "prompt": []}, "no prompts given"),
    (["Rain in Boston", ""], "non-empty string"),  # a plain string is checked as a file's row is
    (["  \n"], "holds only whitespace"),
    ([Prompt("a", "")], "non-empty string"),
    ([Prompt("", "Rain")], "id must be a non-empty string"),
])
def test_in_python_no_prompt_or_a_shapeless_value_is_a_named_error(items, message):
    from crosspatch.inputs.prompts import as_prompts

    with pytest.raises(PromptFileError, match=message):
        as_prompts(items)


def test_a_json_file_may_hold_one_array_of_prompts_or_json_lines(tmp_path):
    rows = [{"id": "a", "prompt": "Rain", "category": "rain"}, {"id": "b", "prompt": "Sun"}]
    (tmp_path / "array.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("array.json", "lines.json"):
        assert [(p.id, p.prompt, p.category) for p in load_prompts(tmp_path / name)] == \
            [("a", "Rain", "rain"), ("b", "Sun", None)]
    (tmp_path / "mixed.json").write_text(json.dumps([rows[0], "Fog"]))
    with pytest.raises(PromptFileError, match="item 1 of the array must be a JSON object"):
        load_prompts(tmp_path / "mixed.json")


def test_a_null_prompt_text_is_named_as_null_not_missing(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": null}\n')
    with pytest.raises(PromptFileError, match=r"p.jsonl:1: field 'prompt' is null"):
        load_prompts(path)


def test_a_missing_lineage_stage_is_named_as_a_stage(tmp_path):
    from typer.testing import CliRunner

    from crosspatch.cli import app
    from crosspatch.testing import save_tiny_pair

    root = save_tiny_pair(tmp_path / "m")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Rain"}\n')
    res = CliRunner().invoke(app, ["lineage", str(root / "base"), str(tmp_path / "nowhere"), "--prompts", str(prompts),
                                   "--out", str(tmp_path / "lin")])
    assert res.exit_code == 2 and "lineage stage" in res.output and "--tuned" not in res.output


def test_a_dataset_saved_to_disk_is_a_prompt_set(tmp_path):
    """A directory written by ``datasets``' ``save_to_disk`` (a split, or a dataset dict of one)
    is read as a prompt file is; several splits are refused, naming them; another directory is
    still no prompt file."""
    datasets = pytest.importorskip("datasets")
    rows = {"id": ["a", "b"], "messages": [[{"role": "user", "content": "Rain?"}], [{"role": "user", "content": "Fog?"}]],
            "category": ["rain", "fog"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "split"))
    prompts = load_prompts(tmp_path / "split")
    assert [(p.id, p.prompt, p.category) for p in prompts] == [("a", "Rain?", "rain"), ("b", "Fog?", "fog")]
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "one"))
    assert [p.id for p in load_prompts(tmp_path / "one")] == ["a", "b"]
    two = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "test": datasets.Dataset.from_dict(rows)})
    two.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(PromptFileError, match="holds the splits train, test: give one split's directory"):
        load_prompts(tmp_path / "two")
    (tmp_path / "plain").mkdir()
    with pytest.raises(PromptFileError, match="is a directory"):
        load_prompts(tmp_path / "plain")
    from crosspatch.inputs.prompts import as_prompts  # in Python: a DatasetDict of one split, not its split names

    assert [p.id for p in as_prompts(datasets.load_from_disk(str(tmp_path / "one")))] == ["a", "b"]
    with pytest.raises(PromptFileError, match=r"the DatasetDict holds the splits train, test: give one of them"):
        as_prompts(two)


def test_prompts_piped_on_standard_input(monkeypatch):
    """``--prompts -`` reads JSON lines (or one JSON array) from standard input, once per stream
    (a command that reads its prompts twice gets them twice); nothing piped in is named."""
    import io
    import sys

    for data in (b'{"id": "a", "prompt": "Rain?"}\n{"id": "b", "prompt": "Sun?"}\n',
                 b'[{"id": "a", "prompt": "Rain?"}, {"id": "b", "prompt": "Sun?"}]'):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        assert [p.id for p in load_prompts("-")] == ["a", "b"] == [p.id for p in load_prompts("-")]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"id": "a"}\n')))
    with pytest.raises(PromptFileError, match=r"^standard input:1: field 'prompt' is missing"):
        load_prompts("-")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    with pytest.raises(PromptFileError, match="nothing is piped in"):
        load_prompts("-")


def test_a_prompt_sets_own_columns_stand_for_the_fields(tmp_path):
    """``fields`` (``--fields prompt=instruction,id=uid``) reads a set whose columns are named
    otherwise, in every form a prompt set comes in, as the same prompts; ``id=@row`` numbers the
    rows; the renamed columns do not linger as metadata; a missing column, a clash with the
    field's own column, or a malformed map is named."""
    from crosspatch.inputs.prompts import as_prompts

    rows = [{"uid": "001", "instruction": "Rain?", "task": "precip", "output": "Yes."},
            {"uid": "2", "instruction": "Sun?", "task": "sky", "output": "No."}]
    want = [("001", "Rain?", "precip", {"output": "Yes."}), ("2", "Sun?", "sky", {"output": "No."})]
    fields = "prompt=instruction,id=uid,category=task"
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame(rows).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    for got in (load_prompts(tmp_path / "p.jsonl", fields), load_prompts(tmp_path / "p.csv", fields),
                load_prompts(tmp_path / "p.parquet", fields), as_prompts(pd.DataFrame(rows), fields),
                as_prompts(rows, {"prompt": "instruction", "id": "uid", "category": "task"})):
        assert [(p.id, p.prompt, p.category, p.metadata) for p in got] == want
    assert [p.id for p in load_prompts(tmp_path / "p.jsonl", "prompt=instruction,id=@row")] == ["0", "1"]
    for bad, message in (("prompt=instr,id=uid", r"p.jsonl:1: --fields prompt=instr: the row has no field 'instr'"),
                         ("prompt=instruction,id=uid,category=@row", "can only be the id"),
                         ("prompt=instruction,id=instruction", "column 'instruction' for two fields"),
                         ("prompt=instruction,prompt=uid", "names 'prompt' twice"),
                         ("text=instruction", "'text' is no prompt field"),
                         ("prompt", "is not FIELD=COLUMN"), (" , ", "names no column")):
        with pytest.raises(PromptFileError, match=message):
            load_prompts(tmp_path / "p.jsonl", bad)
    with pytest.raises(PromptFileError, match="--fields id=@row numbers the rows"):  # a set without ids: said how
        load_prompts(tmp_path / "p.jsonl", "prompt=instruction")
    with pytest.raises(PromptFileError, match="--fields id=@row numbers the rows"):
        load_prompts(tmp_path / "p.csv", "prompt=instruction")
    (tmp_path / "both.jsonl").write_text(json.dumps({"id": "a", "prompt": "x", "instruction": "y"}) + "\n")
    with pytest.raises(PromptFileError, match="has its own 'prompt' too"):
        load_prompts(tmp_path / "both.jsonl", "prompt=instruction")


def test_a_hub_dataset_id_given_as_prompts_is_told_how_to_save_it(tmp_path, monkeypatch):
    """``--prompts tatsu-lab/alpaca`` (how models are given) is no file: the message says how to
    save a split where there is network and give that, with --fields for its columns."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PromptFileError, match=r"tatsu-lab/alpaca: no such prompt file\. If it names a dataset on the "
                       r"Hugging Face Hub.*save_to_disk\('alpaca'\).*--prompts alpaca \(with --fields"):
        load_prompts("tatsu-lab/alpaca")
    with pytest.raises(PromptFileError, match=r"^data/p\.jsonl: no such prompt file$"):
        load_prompts("data/p.jsonl")  # a file's path: no such hint


@pytest.mark.parametrize("given", ["https://example.org/prompts.jsonl", "file:///data/prompts.csv",
                                   "hf://datasets/tatsu-lab/alpaca"])
def test_a_url_given_as_prompts_is_named_as_one(given):
    """A URL is fetched by nothing (no network while a run runs): named as a URL, as typed (a Path,
    as the command line gives it, keeps one slash of '//'), with what to do instead."""
    from pathlib import Path

    what = "save a split of that Hub dataset" if given.startswith("hf") else "download the file"
    for value in (given, Path(given)):
        with pytest.raises(PromptFileError, match=rf"^{re.escape(given)}: a URL; .*{what}"):
            load_prompts(value)


def test_prompts_given_as_bytes_are_refused_by_name():
    with pytest.raises(PromptFileError, match="prompts given as bytes"):
        as_prompts(b"p.jsonl")  # (it read as prompts of single numbers: 'expected a str, got int')


def test_a_leading_tilde_is_the_home_directory_as_for_model_paths(tmp_path, monkeypatch):
    """``--prompts=~/p.jsonl`` and ``--out=~/runs/x`` reach crosspatch unexpanded (the shell expands
    ``~`` only at the start of a word); model paths always took it as the home directory, and
    prompt files and run directories now do too."""
    from crosspatch.store import check_out_path

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "Rain in"}\n')
    loaded = load_prompts("~/p.jsonl")
    assert [p.id for p in loaded] == ["a"] and loaded.source == str(tmp_path / "p.jsonl")
    assert check_out_path("~/runs/x") == tmp_path / "runs" / "x"


def test_images_held_in_rows_as_hugging_face_data_holds_them(tmp_path):
    """A datasets Image column (PIL images; ``{"bytes", "path"}`` in a saved dataset or a Parquet
    file) was refused ("must be a path"): such an image is written once to the image cache, named by
    its bytes' sha256, and the prompt names that file (the same image, the same file); a path-only
    value is a path; an empty image is no image; bytes that are no image are named."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from crosspatch.inputs.images import image_cache_dir

    images = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]  # made in memory: no file behind them
    charts = [tmp_path / "chart0.png", tmp_path / "chart1.png"]
    for image, chart in zip(images, charts):
        image.save(chart)
    data = datasets.Dataset.from_dict({"id": ["a", "b"], "prompt": ["Forecast:", "Forecast:"],
                                       "image": images}).cast_column("image", datasets.Image())
    data.save_to_disk(str(tmp_path / "saved"))
    in_memory, saved = as_prompts(data), load_prompts(tmp_path / "saved")
    for prompts in (in_memory, saved):
        paths = [p.metadata["image"] for p in prompts]
        assert all(p.startswith(str(image_cache_dir())) for p in paths) and len(set(paths)) == 2
        for path, chart in zip(paths, charts):  # the same pixels as the image given
            assert list(Image.open(path).convert("RGB").getdata()) == list(Image.open(chart).convert("RGB").getdata())
    assert [p.metadata for p in in_memory] == [p.metadata for p in saved]  # one image, one file
    pd.DataFrame({"id": ["a"], "prompt": ["x"], "image": [{"bytes": None, "path": "chart0.png"}]}).to_parquet(
        tmp_path / "paths.parquet")
    assert load_prompts(tmp_path / "paths.parquet")[0].metadata["image"] == str(charts[0])  # relative to the file
    assert as_prompts([{"id": "a", "prompt": "x", "image": {"bytes": None, "path": None}}])[0].metadata == {}
    assert as_prompts([{"id": "a", "prompt": "x", "image": charts[1].read_bytes()}])[0].metadata["image"] == \
        in_memory[1].metadata["image"]  # encoded bytes kept as they are: PNG in, the same PNG
    with pytest.raises(PromptFileError, match=r"prompt #0: field 'image' holds 5 bytes that are not an image"):
        as_prompts([{"id": "a", "prompt": "x", "image": b"hello"}])
    one = as_prompts([{"id": "a", "prompt": "x", "images": [images[0]]}], fields="image=images")  # TRL's column
    assert one[0].metadata["image"] == in_memory[0].metadata["image"]
    with pytest.raises(PromptFileError, match="holds 2 images; crosspatch runs one image per prompt"):
        as_prompts([{"id": "a", "prompt": "x", "image": images}])
    with pytest.raises(PromptFileError, match="must be the path of an image file, an image .PIL., .* not int"):
        as_prompts([{"id": "a", "prompt": "x", "image": 3}])


def test_class_label_columns_read_as_their_label_names(tmp_path):
    """A datasets ClassLabel column (a subject, a label) gave categories and --group-by fields
    "0", "1": they read as the label names, datasets' missing label (-1) as no value, from a
    Dataset, a streamed IterableDataset and a saved dataset alike."""
    datasets = pytest.importorskip("datasets")

    data = datasets.Dataset.from_dict({"id": ["a", "b", "c"], "prompt": ["x", "y", "z"], "category": [0, 1, -1],
                                       "topic": [1, 0, 1]})
    data = data.cast_column("category", datasets.ClassLabel(names=["weather", "sports"]))
    data = data.cast_column("topic", datasets.ClassLabel(names=["rain", "snow"]))
    want = [("a", "weather", {"topic": "snow"}), ("b", "sports", {"topic": "rain"}), ("c", None, {"topic": "snow"})]
    data.save_to_disk(str(tmp_path / "saved"))
    for given in (data, data.to_iterable_dataset(), tmp_path / "saved"):
        assert [(p.id, p.category, p.metadata) for p in as_prompts(given)] == want


def test_a_pyarrow_table_and_a_polars_dataframe_are_prompt_tables():
    """A pyarrow Table was refused ("not Table") and a polars DataFrame failed inside pandas'
    to_dict(orient=...): both are read as tables of rows, their columns checked as a DataFrame's."""
    import pyarrow as pa

    table = pa.table({"id": ["a", "b"], "prompt": ["Rain?", "Snow?"], "category": ["w", "w"]})
    assert [(p.id, p.prompt, p.category) for p in as_prompts(table)] == [("a", "Rain?", "w"), ("b", "Snow?", "w")]
    assert [p.prompt for p in as_prompts(table.rename_columns(["uid", "text", "category"]),
                                         fields="id=uid,prompt=text")] == ["Rain?", "Snow?"]
    with pytest.raises(PromptFileError, match="Table: required column 'prompt' is missing"):
        as_prompts(table.select(["id"]))

    class PolarsLike:  # polars' DataFrame API: columns, to_dicts(), and a to_dict without pandas' orient
        columns = ["id", "prompt"]

        def to_dicts(self):
            return [{"id": "a", "prompt": "Fog?"}]

        def to_dict(self, as_series=True):
            raise AssertionError("read as a pandas DataFrame")

    assert [(p.id, p.prompt) for p in as_prompts(PolarsLike())] == [("a", "Fog?")]


def test_prompts_with_validators_and_chats_read_through_arrow_are_the_jsonl_rows(tmp_path):
    """Arrow gives every struct of a column the fields of all of them: a regex rule beside a
    sections rule came back with ``required: null`` (a pyarrow Table, a Dataset, a Parquet file),
    refused as an unknown field; pandas' Parquet reader gave nested lists as numpy arrays ("validator
    must be an object, not ndarray"). Each is the same prompts as the JSONL rows; a DataFrame's
    unnamed index is no field, a named one is."""
    import datasets
    import pandas as pd
    import pyarrow as pa

    rows = [{"id": "a", "prompt": "Rain in", "validator": [{"type": "regex", "pattern": "mm", "flags": "i"},
                                                           {"type": "sections", "required": ["### End"]}]},
            {"id": "b", "prompt": "Snow in", "validator": [{"type": "json", "required": ["x"], "types": {"x": "number"}}]},
            {"id": "c", "prompt": "Fog in", "validator": [{"type": "json", "types": {"y": "string"}}]}]
    want = as_prompts(rows)
    frame = pd.DataFrame(rows)
    frame.to_parquet(tmp_path / "p.parquet")
    frame.iloc[1:].to_parquet(tmp_path / "sliced.parquet")  # an index from 1: stored as a column of its own
    frame.set_index("id").to_parquet(tmp_path / "indexed.parquet")  # the ids as the index: a field still
    for given in (pa.Table.from_pylist(rows), datasets.Dataset.from_list(rows), tmp_path / "p.parquet",
                  tmp_path / "indexed.parquet"):
        assert as_prompts(given) == want, given
    assert as_prompts(tmp_path / "sliced.parquet") == want[1:]
    chats = [{"id": "s", "messages": [{"role": "system", "content": "Brief."}, {"role": "user", "content": "Rain?"}]},
             {"id": "t", "messages": [{"role": "user", "content": "Snow?", "name": "ana"}]}]
    pd.DataFrame(chats).to_parquet(tmp_path / "chats.parquet")
    assert as_prompts(tmp_path / "chats.parquet") == as_prompts(pa.Table.from_pylist(chats)) == as_prompts(chats)
    with pytest.raises(PromptFileError, match="field 'pattern' is missing"):  # a required field given as null
        as_prompts([{"id": "a", "prompt": "Rain in", "validator": {"type": "regex", "pattern": None}}])


def test_an_image_field_that_is_no_usable_path_is_named(tmp_path):
    """An image path with a NUL byte (ValueError) or longer than the file system allows (OSError:
    File name too long) surfaced as Python errors while the prompt file was read; a missing file
    was already named."""
    for image, says in (("chart\x00.png", "not a usable path"), ("a" * 5000, "not a usable path"),
                        ("absent.png", "no such file")):
        path = tmp_path / "p.jsonl"
        path.write_text(json.dumps({"id": "p0", "prompt": "Rain in", "image": image}) + "\n")
        with pytest.raises(PromptFileError, match=rf"field 'image' .*{says}"):
            load_prompts(path)


def test_image_bytes_past_pils_pixel_limit_are_named(monkeypatch):
    """Bytes of an image with more pixels than PIL opens (a decompression bomb) raised PIL's own
    DecompressionBombError from reading the prompts."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (64, 64)).save(buffer, format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(PromptFileError, match="an image PIL refuses to open"):
        as_prompts([{"id": "a", "prompt": "x", "image": {"bytes": buffer.getvalue(), "path": None}}])


def test_a_csv_prompt_longer_than_the_csv_modules_field_limit_is_read(tmp_path):
    """A long-context prompt (over 128 KiB) in a CSV was refused: "cannot be read as csv (field larger
    than field limit)", the csv module's default, which the file never broke."""
    long = "rain " * 40_000
    pd.DataFrame({"id": ["a", "b"], "prompt": [long, "snow"]}).to_csv(tmp_path / "p.csv", index=False)
    assert [p.prompt for p in load_prompts(tmp_path / "p.csv")] == [long, "snow"]
