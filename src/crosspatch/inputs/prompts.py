"""Prompt sets: JSONL (or a .json array), CSV or Parquet rows with ``id``, ``prompt``, optional ``category``.

Any other column is kept as metadata. A malformed file raises PromptFileError naming the file,
the line (1-based, as an editor shows it) and the field.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PromptFileError
from .chats import IMAGE_PART, chat_messages, with_messages
from .fields import mapped_row, parse_fields, source_columns
from .images import image_field_path
from .prompt_files import check_columns, file_type, is_stdin, read_json_array, read_jsonl, read_table

_JSON_SUFFIXES, _TABLE_SUFFIXES = (".jsonl", ".json"), (".csv", ".tsv", ".parquet", ".pq")  # the prompt file types


@dataclass(frozen=True)
class Prompt:
    """One prompt: ``prompt`` is its text; a row given as a chat (``messages``, a list of
    ``{"role", "content"}`` as Hugging Face chat datasets hold it) keeps the conversation in
    ``messages``, rendered by the descendant's chat template (``--chat-template``), and its last
    user turn in ``prompt``."""

    id: str
    prompt: str
    category: str | None = None
    metadata: dict = field(default_factory=dict, compare=False, hash=False)
    validator: object = field(default=None, compare=False, hash=False)  # validators.Validator or None
    messages: tuple | None = field(default=None, hash=False)  # ({"role", "content"}, ...) or None


class PromptSet(list):
    """The prompts :func:`load_prompts` read from a file, a saved dataset or standard input: a
    list of :class:`Prompt` that remembers its ``source`` (the path as given, or ``standard
    input``) and the ``fields`` it was read with (``--fields``), which a run records in config.json
    and prints in its report (not in its fingerprint: the same prompts under another name are the
    same run), so that its prompts can be read again (an image run's images, after the run)."""

    def __init__(self, prompts=(), source: str | None = None, fields: dict[str, str] | None = None) -> None:
        super().__init__(prompts)
        self.source = source
        self.fields = dict(fields) if fields else None


def prompts_label(prompts) -> str | None:
    """How a command records the prompts it was given: a path as given, a loaded set's
    ``source`` (:class:`PromptSet`), ``given`` for prompts made in Python, None for none."""
    if prompts is None:
        return None
    if isinstance(prompts, (str, os.PathLike)):
        return str(prompts)
    return getattr(prompts, "source", None) or "given"


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _label(value) -> str:
    """An id or category as text; a whole number as a table column holds it (``3``, ``3.0``) is ``"3"``."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


_TEXT_FIELDS = ("text", "instruction", "question", "input", "query", "content", "prompt_text", "sentence")


def _field_hint(row: dict) -> str:
    """What a row without a ``prompt`` holds, and how to name its text field (``--fields``)."""
    names = [str(k) for k in row if k != "id"]
    if not names:
        return ""
    likely = next((k for k in _TEXT_FIELDS if isinstance(row.get(k), str)), None)
    shown = ", ".join(repr(k) for k in names[:8]) + (", ..." if len(names) > 8 else "")
    return (f"; this row's fields: {shown}: name the prompt's field with --fields prompt=FIELD (fields= in Python)"
            + (f", e.g. --fields prompt={likely}" if likely else ""))


def _row_to_prompt(row: dict, where: str) -> Prompt:
    if "id" not in row:
        raise PromptFileError(f"{where}: field 'id' is missing or empty (a set without ids: --fields id=@row numbers "
                              "the rows; another field is named with --fields id=FIELD; in Python, "
                              "load_prompts(prompts, fields='id=@row'))")
    if _is_missing(row["id"]) or str(row["id"]).strip() == "":
        raise PromptFileError(f"{where}: field 'id' is missing or empty")
    if isinstance(row["id"], (dict, list, bool)):
        raise PromptFileError(f"{where}: field 'id' must be a string or number, not {row['id']!r}")
    messages, row = None, with_messages(row, where)
    if not _is_missing(row.get("messages")):
        if not _is_missing(row.get("prompt")) and not (isinstance(row["prompt"], str) and not row["prompt"].strip()):
            raise PromptFileError(f"{where}: give the prompt as 'prompt' (text) or 'messages' (a chat), not both")
        messages = chat_messages(row["messages"], where)
        for k, turn in enumerate(messages):
            _check_text(turn["content"], where, f"messages[{k}].content")
        row = dict(row, prompt=[t["content"] for t in messages if t["role"] == "user"][-1])
    if "prompt" not in row:
        raise PromptFileError(f"{where}: field 'prompt' is missing (or give 'messages', a chat){_field_hint(row)}")
    if _is_missing(row["prompt"]):
        raise PromptFileError(f"{where}: field 'prompt' is {'null' if row['prompt'] is None else 'empty'}: "
                              "give the prompt's text")
    if not isinstance(row["prompt"], str) or not row["prompt"]:
        raise PromptFileError(f"{where}: field 'prompt' must be a non-empty string")
    if not row["prompt"].strip():
        raise PromptFileError(f"{where}: field 'prompt' holds only whitespace")
    category = row.get("category")
    if not _is_missing(category) and (not isinstance(category, (str, int, float)) or isinstance(category, bool)):
        raise PromptFileError(f"{where}: field 'category' must be a string or a number (a label), not {category!r}")
    for name in ("id", "prompt", "category"):
        _check_text(row.get(name), where, name)
    if isinstance(row["id"], float) and not row["id"].is_integer():
        raise PromptFileError(f"{where}: field 'id' must be a string or an integer, not {row['id']!r}")
    validator = None
    if not _is_missing(row.get("validator")):
        from .validators import parse_validator

        spec = row["validator"]
        if isinstance(spec, str):  # CSV/Parquet cells hold JSON text
            try:
                spec = json.loads(spec)
            except (ValueError, RecursionError) as exc:  # (invalid, nested too deeply, a number too long to read)
                raise PromptFileError(f"{where}: field 'validator' is not valid JSON ({getattr(exc, 'msg', exc)})") from None
        validator = parse_validator(spec, where)
    meta = {k: v for k, v in row.items()
            if k not in ("id", "prompt", "category", "validator", "messages") and not _is_missing(v)}
    if "image" in meta and (path := image_field_path(meta.pop("image"), where)) is not None:
        meta["image"] = path  # an image held in the row (datasets' Image column): written to the image cache
    if messages and not meta.get("image") and any(IMAGE_PART in t["content"] for t in messages):
        raise PromptFileError(f"{where}: the chat holds an image part but the row gives no image (its 'image' field)")
    if "image" in meta and (not isinstance(meta["image"], str) or not meta["image"].strip()):
        raise PromptFileError(f"{where}: field 'image' must be a path to an image file")
    if "image" in meta and meta["image"].strip().lower().startswith(("http://", "https://", "data:")):
        raise PromptFileError(f"{where}: field 'image' is a URL ({meta['image'][:60]!r}): crosspatch reads images from "
                              "local files only and downloads nothing; save the image and give its path (relative "
                              "to the prompt file, or absolute)")
    return Prompt(_label(row["id"]), row["prompt"], None if _is_missing(category) else _label(category), meta, validator,
                  messages)


def _check_text(value, where: str, name: str) -> None:
    """Strings must be encodable: a lone surrogate (from a ``\\ud800`` JSON escape) is refused."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PromptFileError(f"{where}: field {name!r} contains a lone surrogate ({value[exc.start]!a} at "
                                  f"character {exc.start}); it is not valid Unicode text") from None


def load_prompts(path, fields: str | dict[str, str] | None = None) -> list[Prompt]:
    """Read and validate a prompt file (JSONL, a .json array, CSV, Parquet) or a dataset saved with
    ``datasets``' ``save_to_disk`` (a directory), or take a pandas DataFrame, a ``datasets.Dataset``
    or a list of dicts/strings; ids must be unique. ``fields`` (``"prompt=instruction,id=uid"``,
    or a dict): the columns that stand for the prompt fields (:mod:`crosspatch.inputs.fields`)."""
    mapping = parse_fields(fields)
    if not isinstance(path, (str, Path)):
        return as_prompts(path, mapping)
    as_given = str(path)
    path = Path(path) if is_stdin(path) else Path(path).expanduser()  # ~ as model paths take it
    if is_stdin(path):  # piped JSON lines, or one JSON array; image paths relative to the working directory
        rows = read_json_array(path)
        return PromptSet(_checked_rows(read_jsonl(path) if rows is None else rows, Path("standard input"), Path("."),
                                       mapping), "standard input", mapping)
    if not path.exists():
        text = str(path)
        if url := re.match(r"([A-Za-z][A-Za-z0-9+.-]*):/", text):  # (a Path keeps one slash of "https://")
            hub = url.group(1).lower() == "hf" and "datasets/" in text
            slashes = "///" if url.group(1).lower() == "file" else "//"  # (as typed: file:///path, https://host)
            given = as_given if "://" in as_given else re.sub(r"^([^:]+):/+", lambda m: m.group(1) + ":" + slashes, text)
            raise PromptFileError(
                f"{given}: a URL; crosspatch reads prompt files from disk (nothing is fetched while it runs): "
                + ("save a split of that Hub dataset with datasets' save_to_disk where there is network and give "
                   "its directory" if hub else "download the file and give its path"))
        if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not path.suffix:  # a Hub dataset's id, as given elsewhere
            raise PromptFileError(
                f"{text}: no such prompt file. If it names a dataset on the Hugging Face Hub, save a split of it "
                f"where there is network and give that: python -c \"import datasets; datasets.load_dataset("
                f"'{text}', split='train').save_to_disk('{path.name}')\", then --prompts "
                f"{path.name} (with --fields naming its columns, e.g. prompt=instruction,id=@row)")
        raise PromptFileError(f"{path}: no such prompt file")
    if path.is_dir():
        if any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
            return PromptSet(_saved_dataset(path, mapping), str(path), mapping)
        raise PromptFileError(f"{path}: is a directory; give a .jsonl, .json, .csv, .tsv or .parquet file (or a "
                              "dataset saved with datasets' save_to_disk)")
    if not path.is_file():  # (/dev/zero behind a link would be read until the memory runs out)
        raise PromptFileError(f"{path}: not a regular file (a device or pipe, which may never end); pipe it to --prompts -")
    kind = file_type(path)  # the suffix before a compression's (prompts.jsonl.gz)
    if kind == ".json" and (array := read_json_array(path)) is not None:
        rows = array
    elif kind in _JSON_SUFFIXES:
        rows = read_jsonl(path)
    elif kind in _TABLE_SUFFIXES:
        rows = read_table(path, mapping)
    else:
        shown = "".join(path.suffixes[-2:]) if kind != path.suffix else path.suffix  # a compressed file: both
        raise PromptFileError(f"{path}: " + (f"unknown prompt file type {shown!r}" if shown else "a file without a suffix")
                              + " (use .jsonl, .json, .csv, .tsv, .parquet, each optionally compressed as .gz, .bz2 or "
                              ".xz, or - for JSON lines on standard input)")
    return PromptSet(_checked_rows(rows, path, path.parent, mapping), str(path), mapping)


def _checked_rows(rows: list[tuple[str, dict]], source: Path, images: Path, fields: dict[str, str]) -> list[Prompt]:
    """The prompts of a file's ``(where, row)`` pairs (their columns renamed by ``fields``): each
    row checked, ids unique, none empty."""
    prompts, seen = [], {}
    for index, (where, row) in enumerate(rows):
        prompt = _with_image_path(_row_to_prompt(mapped_row(row, fields, index, where), where), images, where)
        if prompt.id in seen:
            raise PromptFileError(f"{where}: field 'id' {prompt.id!r} repeats {seen[prompt.id]}")
        seen[prompt.id] = where
        prompts.append(prompt)
    if not prompts:
        raise PromptFileError(f"{source}: contains no prompts")
    return prompts


def raw_text_prompts(prompts, what: str) -> list[Prompt]:
    """``prompts`` (what :func:`load_prompts` takes) for a command that feeds their raw text,
    ``what``: a chat or an image prompt is a PromptFileError naming it, never fed as text alone."""
    from .chats import check_chat_rows

    items = load_prompts(prompts)
    check_chat_rows(items, False, what, "give them as 'prompt' text")
    images = [p.id for p in items if p.metadata.get("image")]
    if images:
        raise PromptFileError(f"{what} feeds raw text: prompts with images ({', '.join(images[:3])}) are not "
                              "supported here")
    return items


def _saved_dataset(path: Path, fields: dict[str, str]) -> list[Prompt]:
    """The prompts of a dataset saved with ``datasets``' ``save_to_disk`` (one split, or a
    dataset dict of one split): its rows, checked as a file's are."""
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise PromptFileError(f"{path} is a saved Hugging Face dataset; reading it needs `pip install datasets`") from None
    try:
        data = load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for a damaged directory
        raise PromptFileError(f"{path}: cannot be read as a saved dataset ({exc.__class__.__name__}: {exc})") from None
    if isinstance(data, DatasetDict):
        data = _one_split(data, str(path), f"one split's directory ({path / str(next(iter(data)))})")
    return as_prompts(data, fields)


def _one_split(splits: dict, where: str, give: str):
    """The one split of a ``datasets.DatasetDict``; several are a PromptFileError naming them."""
    if len(splits) != 1:
        raise PromptFileError(f"{where} holds the splits {', '.join(str(name) for name in splits)}: give {give}")
    return next(iter(splits.values()))


def _with_image_path(prompt: Prompt, base: Path, where: str) -> Prompt:
    """An ``image`` field resolved against ``base`` (the prompt file's folder) and checked to exist."""
    image = prompt.metadata.get("image")
    if image is None:
        return prompt
    try:  # (a path with a NUL byte, or too long for the file system, is no path)
        resolved = (base / Path(image).expanduser()).resolve()
        found = resolved.is_file()
    except (OSError, ValueError) as exc:
        raise PromptFileError(f"{where}: field 'image' {str(image)[:80]!r}: not a usable path ({exc})"[:300]) from None
    if not found:
        raise PromptFileError(f"{where}: field 'image' {image!r}: no such file ({resolved})")
    prompt.metadata["image"] = str(resolved)
    return prompt


def as_prompts(items: Any, fields: str | dict[str, str] | None = None) -> list[Prompt]:
    """Accept a list of Prompt objects, dicts or plain strings (ids become their index), a pandas
    or polars DataFrame, a pyarrow Table, a ``datasets.Dataset`` (columns ``id``, ``prompt``, optional ``category``,
    others kept as metadata) or a dict of such columns (``Dataset[:10]``), a path to a prompt file (a ``Path``, or a string ending in .jsonl,
    .json, .csv, .tsv, .parquet or naming an existing file), or one prompt (a string, dict or Prompt).
    No prompt at all is a :class:`PromptFileError`, as for an empty file. ``fields``: as for
    :func:`load_prompts` (rows, DataFrames and datasets)."""
    fields = parse_fields(fields)
    if not fields and isinstance(items, PromptSet):  # read and checked: keeps its source
        return items
    if isinstance(items, Path) or (isinstance(items, str) and _names_a_file(items)):
        return load_prompts(items, fields)
    if isinstance(items, (bytes, bytearray, memoryview)):
        raise PromptFileError("prompts given as bytes: give a prompt file's path as a str or Path, or the prompts as "
                              "text (a list of strings or rows)")
    if isinstance(items, (str, Prompt)):  # one prompt
        items = [items]
    elif isinstance(items, dict) and isinstance(getattr(items, "column_names", None), dict):  # a DatasetDict
        splits = list(items)
        return as_prompts(_one_split(items, "the DatasetDict", f"one of them (prompts['{splits[0]}'])"), fields)
    elif isinstance(items, dict):
        if not {"prompt", "messages", "conversations"} & set(source_columns(items, fields)):
            raise PromptFileError("a dict is one prompt row with 'id' and 'prompt' (or 'messages') fields, or columns "
                                  "of such fields (lists of one length); give a list of rows for several prompts")
        items = _column_rows(items, fields)
    elif hasattr(items, "to_dicts") and hasattr(items, "columns"):  # a polars DataFrame
        check_columns(source_columns(list(items.columns), fields), "DataFrame")
        items = items.to_dicts()
    elif hasattr(items, "to_pylist") and hasattr(items, "column_names"):  # a pyarrow Table
        check_columns(source_columns(list(items.column_names), fields), "Table")
        items = items.to_pylist()
    elif hasattr(items, "to_dict") and hasattr(items, "columns"):  # pandas DataFrame
        check_columns(source_columns(items.columns, fields), "DataFrame")
        items = items.to_dict(orient="records")
    elif hasattr(items, "column_names") and hasattr(items, "to_list"):  # datasets.Dataset
        check_columns(source_columns(items.column_names, fields), "Dataset")
        items = _label_names(items.to_list(), getattr(items, "features", None))
    elif hasattr(items, "features") and hasattr(items, "__iter__"):  # a datasets.IterableDataset (streamed)
        items = _label_names([dict(row) for row in items], items.features)
    elif items is None or not hasattr(items, "__iter__"):
        raise PromptFileError(f"prompts must be a list of strings, dicts or Prompt objects, a DataFrame (pandas or "
                              f"polars), a pyarrow Table, a Dataset or the path of a prompt file, not "
                              f"{type(items).__name__}")
    out = []
    for k, item in enumerate(items):
        if isinstance(item, Prompt):
            if not isinstance(item.id, str) or not item.id.strip():
                raise PromptFileError(f"prompt #{k}: a Prompt's id must be a non-empty string, not {item.id!r}")
            if not isinstance(item.prompt, str) or not item.prompt.strip():
                raise PromptFileError(f"prompt #{k} ({item.id}): a Prompt's text must be a non-empty string, not "
                                      f"{item.prompt!r}")
            out.append(item)
        elif isinstance(item, str):  # checked as a row of a file is: no empty or blank prompt
            out.append(_row_to_prompt({"id": str(k), "prompt": item}, f"prompt #{k}"))
        elif isinstance(item, dict):
            row = mapped_row(item, fields, k, f"prompt #{k}")
            out.append(_with_image_path(_row_to_prompt(row, f"prompt #{k}"), Path.cwd(), f"prompt #{k}"))
        else:
            raise PromptFileError(f"prompt #{k}: expected a str, dict or Prompt, got {type(item).__name__}")
    if not out:
        raise PromptFileError("no prompts given")
    seen: dict[str, int] = {}
    for k, p in enumerate(out):
        if p.id in seen:
            raise PromptFileError(f"prompt #{k}: id {p.id!r} repeats prompt #{seen[p.id]}'s (ids must be unique)")
        seen[p.id] = k
    return out


def _label_names(rows: list[dict], features) -> list[dict]:
    """``rows`` of a datasets table with each ``ClassLabel`` column's integers as their label names (a
    category or a ``--group-by`` field reads "sports", not "1"; -1, datasets' missing label, is none)."""
    labels = {name: f for name, f in dict(features or {}).items()
              if type(f).__name__ == "ClassLabel" and callable(getattr(f, "int2str", None))}
    for row in rows if labels else []:
        for name, feature in labels.items():
            value = row.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and -1 <= value < feature.num_classes:
                row[name] = feature.int2str(value) if value >= 0 else None
    return rows


def _column_rows(table: dict, fields: dict[str, str]) -> list[dict]:
    """The rows of ``table``: one row, or, where its text column holds one text (or chat) per
    prompt, columns of equal length (what ``Dataset[:10]``, ``Dataset.to_dict()`` and
    ``DataFrame.to_dict("list")`` give), one row per position. Columns of unequal length are a
    PromptFileError naming them."""
    text = next(fields.get(name, name) for name in ("prompt", "messages", "conversations")
                if fields.get(name, name) in table)
    values = table[text]
    if not isinstance(values, (list, tuple)) or (text != fields.get("prompt", "prompt") and not all(
            isinstance(chat, (list, tuple)) for chat in values)):
        return [table]  # one row (a chat row's text column is one list of turns)
    lengths = {str(name): len(column) if isinstance(column, (list, tuple)) else None for name, column in table.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}: {'not a list' if n is None else n}" for name, n in lengths.items())
        raise PromptFileError(f"a dict of columns (one list per field) needs lists of one length, not {shown}")
    return [{name: column[k] for name, column in table.items()} for k in range(len(values))]


def _names_a_file(text: str) -> bool:
    """Whether a string passed as prompts is the path of a prompt file (a known suffix, or an
    existing file) rather than the text of one prompt."""
    if "\n" in text:
        return False
    try:
        return file_type(Path(text)) in _JSON_SUFFIXES + _TABLE_SUFFIXES or Path(text).is_file()
    except (OSError, ValueError):  # a long or NUL-bearing text is no path
        return False


def prompts_digest(prompts: list[Prompt]) -> str:
    """sha256 of the prompts' ids, texts, categories, chats and images' bytes: what identifies a prompt set."""
    import hashlib

    h = hashlib.sha256()
    for p in prompts:
        h.update(f"{p.id}\x00{p.prompt}\x00{p.category}\x01".encode())
        if p.messages:  # a chat: every turn is part of the prompt
            h.update(json.dumps(list(p.messages), sort_keys=True).encode() + b"\x02")
        if p.metadata.get("image"):  # an image prompt: the image's bytes are part of the prompt
            h.update(hashlib.sha256(Path(p.metadata["image"]).read_bytes()).digest())
    return h.hexdigest()
