"""Reading prompt files into ``(where, row)`` pairs, before any row is checked as a prompt
(:mod:`crosspatch.inputs.prompts`): JSON lines or one .json array (a key named twice in an object
is refused, not kept as its last value), CSV/TSV (the delimiter sniffed, a row with more fields than
the header named) and Parquet. ``where`` names the file and line (1-based, as an editor shows it)."""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import sys
import warnings
from pathlib import Path

from ..errors import PromptFileError
from .fields import source_columns
from .text import marked_encoding

__all__ = ["COMPRESSIONS", "STDIN", "check_columns", "file_type", "is_stdin", "read_json_array", "read_jsonl",
           "read_table"]

# a prompt file compressed whole (``prompts.jsonl.gz``), as datasets and pandas read them: the
# standard library's codecs, the file type named by the suffix before the compression's
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}
# the most a compressed prompt file may decompress to: a prompt set is megabytes; a few megabytes of
# zeros compressed (a "decompression bomb") would otherwise fill the memory before any check
MAX_DECOMPRESSED_BYTES = 1 << 30


STDIN = "-"  # ``--prompts -``: JSON lines (or one JSON array) piped in on standard input
_piped: dict[int, bytes] = {}  # standard input's bytes, read once per stream (a command may read its prompts twice)


def is_stdin(path) -> bool:
    return str(path) == STDIN


def _name(path: Path) -> str:
    """How a message names the prompt source."""
    return "standard input" if is_stdin(path) else str(path)


def file_type(path: Path) -> str:
    """A prompt file's type by its suffix, the one before a compression's (``.jsonl`` for
    ``prompts.jsonl.gz``)."""
    suffixes = path.suffixes
    return suffixes[-2] if len(suffixes) >= 2 and suffixes[-1] in COMPRESSIONS else path.suffix


def _read_bytes(path: Path) -> bytes:
    """The file's bytes (standard input's for ``-``), decompressed when its suffix names a
    compression; a file that cannot be read or decompressed is a named error."""
    import importlib

    try:
        if is_stdin(path):
            return _stdin_bytes()
        data = path.read_bytes()  # (a regular file: load_prompts refuses a device or pipe before any read)
    except OSError as exc:
        raise PromptFileError(f"{_name(path)}: cannot be read ({exc.strerror or exc})") from None
    codec = COMPRESSIONS.get(path.suffix)
    if codec is None:
        return data
    try:
        with importlib.import_module(codec).open(io.BytesIO(data), "rb") as stream:
            content = stream.read(MAX_DECOMPRESSED_BYTES + 1)
    except Exception as exc:  # each codec raises its own error types (OSError, EOFError, LZMAError, ...)
        raise PromptFileError(f"{path}: cannot be decompressed as {codec} ({exc}): a damaged or truncated "
                              "file, or not compressed as its name says") from None
    if len(content) > MAX_DECOMPRESSED_BYTES:
        raise PromptFileError(f"{path}: decompresses to more than {MAX_DECOMPRESSED_BYTES / 2**30:g} GiB, far more "
                              "than any prompt set (a compressed file of repeated bytes?); check the file")
    return content


def _stdin_bytes() -> bytes:
    stream = sys.stdin
    if stream is None or stream.isatty():
        raise PromptFileError("--prompts -: reads JSON lines from standard input, but nothing is piped in "
                              "(cat prompts.jsonl | crosspatch run ... --prompts -)")
    if id(stream) not in _piped:
        _piped.clear()
        _piped[id(stream)] = stream.buffer.read()
    return _piped[id(stream)]


def _text_lines(path: Path) -> list[str]:
    """The file's lines as text (standard input for ``-``): a UTF-8 byte-order mark is accepted
    (and dropped), and a UTF-16 or UTF-32 one reads the file in that encoding; bytes that are
    not UTF-8 (or not the marked encoding) are a named error with their line."""
    data = _read_bytes(path)
    marked = marked_encoding(data)
    if marked == "utf-8-sig":  # read line by line below, so that a line that is not UTF-8 is named
        data = data[len(codecs.BOM_UTF8):]
    elif marked != "utf-8":
        try:
            text = data.decode(marked)
        except UnicodeDecodeError as exc:
            line = data[:exc.start].decode(marked, errors="replace").count("\n") + 1
            raise PromptFileError(f"{_name(path)}:{line}: not {marked.upper()} text, though the file begins with "
                                  f"its byte-order mark ({exc.reason}); save the file as UTF-8") from None
        return text.split("\n")  # (the codec drops the mark)
    lines = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise PromptFileError(f"{_name(path)}:{lineno}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                  f"{exc.start + 1}); save the file as UTF-8") from None
    return lines


class _RepeatedKey(ValueError):
    """A JSON object names one key twice (``json`` would keep the last value silently)."""


def _object_without_repeats(pairs: list[tuple[str, object]]) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)
    return dict(pairs)


def _json(text: str):
    """``json.loads`` refusing an object that names a key twice (:class:`_RepeatedKey`)."""
    return json.loads(text, object_pairs_hook=_object_without_repeats)


def _repeated(where: str, exc: _RepeatedKey) -> PromptFileError:
    return PromptFileError(f"{where}: field {exc.args[0]!r} appears more than once in one object (which value is "
                           "meant cannot be told)")


def read_jsonl(path: Path) -> list[tuple[str, dict]]:
    rows = []
    for lineno, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{_name(path)}:{lineno}"
        try:
            row = _json(line)
        except _RepeatedKey as exc:
            raise _repeated(where, exc) from None
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise PromptFileError(f"{where}: JSON nested too deeply") from None
        except ValueError as exc:  # (a number of more digits than Python converts: sys.get_int_max_str_digits)
            raise PromptFileError(f"{where}: not readable JSON ({exc})") from None
        if not isinstance(row, dict):
            raise PromptFileError(f"{where}: each line must be a JSON object")
        rows.append((where, row))
    return rows


def read_json_array(path: Path) -> list[tuple[str, dict]] | None:
    """The rows of a .json file holding one JSON array of prompt objects, or None when the file
    is not one JSON document (then it is read as JSON lines)."""
    text = "\n".join(_text_lines(path))
    try:
        data = _json(text)
    except _RepeatedKey as exc:
        raise _repeated(_name(path), exc) from None
    except (ValueError, RecursionError):  # (read as JSON lines, which names the line)
        return None
    if isinstance(data, dict) and not {"id", "prompt", "messages", "conversations"} & set(data):  # e.g. {"data": [...]}
        keys = ", ".join(repr(k) for k in list(data)[:5]) or "none"
        raise PromptFileError(f"{_name(path)}: holds one JSON object (keys {keys}), not prompts: give a .json array of "
                              "prompt objects, or one prompt object per line (.jsonl)")
    if not isinstance(data, list):
        return None  # one prompt object: read as a JSON-lines file of one line
    rows = []
    for k, row in enumerate(data):
        if not isinstance(row, dict):
            raise PromptFileError(f"{_name(path)}: item {k} of the array must be a JSON object")
        rows.append((f"{_name(path)}: item {k}", row))
    return rows


def check_columns(columns, where: str) -> None:
    """A table names its prompts' ``id`` and their ``prompt`` (text) or ``messages`` (a chat; or
    ShareGPT's ``conversations``)."""
    if "id" not in columns:
        raise PromptFileError(f"{where}: required column 'id' is missing (another column is named with --fields "
                              "id=COLUMN; --fields id=@row numbers the rows; in Python, fields='id=@row')")
    if not {"prompt", "messages", "conversations"} & set(columns):
        raise PromptFileError(f"{where}: required column 'prompt' is missing (or give 'messages', a chat; another "
                              "column is named with --fields prompt=COLUMN, fields='prompt=COLUMN' in Python)")


def _delimiter(path: Path, header: str, fields: dict[str, str]) -> str:
    """A .tsv's tab; a .csv's comma, or the semicolon, tab or bar its header is written with
    (spreadsheets export those) when that header names the required columns (``fields``: as
    :func:`read_table`)."""
    if file_type(path) == ".tsv":
        return "\t"
    for delimiter in (",", ";", "\t", "|"):
        names = set(source_columns(next(csv.reader([header], delimiter=delimiter), []), fields))
        if "id" in names and names & {"prompt", "messages", "conversations"}:
            return delimiter
    return ","


def _check_field_counts(path: Path, text: str, delimiter: str, columns: int) -> None:
    """Every row of a .csv/.tsv (its ``text``) has at most the header's fields, or only empty ones
    past them (a trailing delimiter): a delimiter left unquoted inside a prompt would otherwise
    shift or cut its fields without a word."""
    # (the csv module refuses a field over 128 KiB by default: a long-context prompt is one, and the whole text is the bound)
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    with io.StringIO(text, newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        next(reader, None)
        for row in reader:
            if len(row) > columns and any(field.strip() for field in row[columns:]):
                name = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "bar"}.get(delimiter, repr(delimiter))
                raise PromptFileError(f"{path}:{reader.line_num}: {len(row)} fields where the header names {columns}: "
                                      f"a {name} inside a field must be quoted (\"...\")")


def read_table(path: Path, fields: dict[str, str] | None = None) -> list[tuple[str, dict]]:
    """The rows of a CSV/TSV/Parquet file; ``fields`` (:mod:`crosspatch.inputs.fields`) names the
    columns that stand for ``id``, ``prompt``, ... (a CSV keeps those of the id and category as
    written)."""
    import pandas as pd

    fields = fields or {}
    kind = file_type(path)
    try:
        if kind in (".csv", ".tsv"):
            lines = _text_lines(path)  # names a line that is not UTF-8; a byte-order mark dropped
            header = lines[0]
            delimiter = _delimiter(path, header, fields)
            names = next(csv.reader([header], delimiter=delimiter), [])
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise PromptFileError(f"{path}:1: column {repeated[0]!r} appears more than once in the header")
            text = "\n".join(lines)
            _check_field_counts(path, text, delimiter, len(names))
            # index_col=False: never take the first column for an index (pandas does when every row
            # has one field more than the header; only empty trailing fields get here)
            with warnings.catch_warnings():  # (its warning that trailing empty fields are dropped)
                warnings.simplefilter("ignore", pd.errors.ParserWarning)
                frame = pd.read_csv(io.StringIO(text), sep=delimiter, dtype={fields.get("id", "id"): str, fields.get("category", "category"): str}, keep_default_na=False, na_values=[""],
                                    index_col=False)
            first_line = 2  # header is line 1
        else:  # through pyarrow itself: nested cells (a validator's rules, a chat's turns) as Python lists and dicts
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(_read_bytes(path)) if path.suffix in COMPRESSIONS else path)
            # a DataFrame's unnamed index is no field (a named one, e.g. set_index("id"), is one)
            index = (table.schema.pandas_metadata or {}).get("index_columns") or []
            table = table.drop_columns([c for c in index if isinstance(c, str) and c in table.column_names
                                        and re.fullmatch(r"__index_level_\d+__", c)])
            check_columns(source_columns(table.column_names, fields), str(path))
            return [(f"{path}:{i + 1}", rec) for i, rec in enumerate(table.to_pylist())]
    except PromptFileError:
        raise
    except Exception as exc:  # pandas and pyarrow raise many parser types
        raise PromptFileError(f"{path}: cannot be read as {kind[1:]} ({exc})") from exc
    check_columns(source_columns(frame.columns, fields), str(path))
    return [(f"{path}:{i + first_line}", rec) for i, rec in enumerate(frame.to_dict(orient="records"))]
