"""Which of a dataset's own columns are crosspatch's prompt fields (``--fields``): a prompt set
whose columns are named otherwise (an Alpaca-style ``instruction``, a QA set's ``question``, a
``uid``) is read as it is, each named column taking a field's place, instead of being rewritten
first. ``@row`` gives each row its 0-based position as its id, for sets that have none."""

from __future__ import annotations

from ..errors import PromptFileError

__all__ = ["FIELDS", "ROW_NUMBER", "mapped_row", "parse_fields", "source_columns"]

FIELDS = ("id", "prompt", "messages", "conversations", "category", "image", "validator")  # what a column may stand for
ROW_NUMBER = "@row"  # the row's position as its id


def parse_fields(spec: str | dict[str, str] | None) -> dict[str, str]:
    """``prompt=instruction,id=uid`` (or a dict field -> column) as ``{field: column}``; an unknown
    field, an empty column, a field named twice, two fields from one column, ``@row`` for a
    field other than ``id`` or text naming no pair is a PromptFileError naming it. None or an
    empty dict: no renaming."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        pairs = [(str(k).strip(), str(v).strip()) for k, v in spec.items()]
    elif isinstance(spec, str):
        pairs = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            field, sep, column = item.partition("=")
            if not sep:
                raise PromptFileError(f"--fields {spec!r}: {item!r} is not FIELD=COLUMN (e.g. prompt=instruction,id=uid)")
            pairs.append((field.strip(), column.strip()))
        if not pairs:
            raise PromptFileError(f"--fields {spec!r} names no column: give FIELD=COLUMN pairs (e.g. prompt=instruction), "
                                  "or leave it out")
    else:
        raise PromptFileError(f"fields must be FIELD=COLUMN text or a dict, not {type(spec).__name__}")
    fields: dict[str, str] = {}
    for field, column in pairs:
        if field not in FIELDS:
            raise PromptFileError(f"--fields: {field!r} is no prompt field; fields: {', '.join(FIELDS)}")
        if not column:
            raise PromptFileError(f"--fields: {field}= names no column")
        if field in fields:
            raise PromptFileError(f"--fields names {field!r} twice ({fields[field]} and {column})")
        if column == ROW_NUMBER and field != "id":
            raise PromptFileError(f"--fields: {ROW_NUMBER} (the row's position) can only be the id, not {field!r}")
        fields[field] = column
    taken = [c for c in fields.values() if c != ROW_NUMBER]
    if len(set(taken)) != len(taken):
        column = next(c for c in taken if taken.count(c) > 1)
        raise PromptFileError(f"--fields takes column {column!r} for two fields")
    return fields


def source_columns(columns, fields: dict[str, str]) -> list[str]:
    """A table's column names as the prompt fields they stand for (what the required-column check
    reads): a mapped column under its field's name."""
    renamed = {column: field for field, column in fields.items()}
    names = [renamed.get(str(c), str(c)) for c in columns]
    return names + (["id"] if fields.get("id") == ROW_NUMBER else [])


def mapped_row(row: dict, fields: dict[str, str], index: int, where: str) -> dict:
    """``row`` with each mapped column moved to its field's name (``@row``: ``index`` as the id).
    A mapped column the row lacks, or a row that also has the field's own column, is a
    PromptFileError naming ``where`` (which value would be meant?)."""
    if not fields:
        return row
    out = dict(row)
    for field, column in fields.items():
        if column != ROW_NUMBER and column not in row:
            raise PromptFileError(f"{where}: --fields {field}={column}: the row has no field {column!r}")
        if field in row and field != column:
            raise PromptFileError(f"{where}: --fields {field}={column}, but the row has its own {field!r} too: drop "
                                  "one of them")
    for field, column in fields.items():
        out[field] = str(index) if column == ROW_NUMBER else out.pop(column)
    return out
