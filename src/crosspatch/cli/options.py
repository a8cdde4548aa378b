"""Command-line options generated from the options dataclasses (the one place their defaults and
help live).

A command declares a parameter annotated with an options dataclass (``config: RunConfig``,
``load: LoadOptions``, ``target: PairTarget``); :func:`command` turns each field of it that carries
``metadata["help"]`` into one ``--option`` and hands the command the dataclass built from what was
given. Fields without help are not on the command line (they keep their defaults). The metadata
keys a field may carry:

``help``
    the option's help (required to be on the command line);
``flag``
    its declaration when not ``--field-name`` (``"--resume/--no-resume"``);
``metavar``
    what to give, when the type does not say it (``WORDS``, ``[NAME=]DIR``);
``cli_type``
    the type the command line reads, when the field holds a parsed value (``str`` for a
    boundary the field holds as an int or a fraction);
``parse``
    ``text -> value`` applied to what was given (named errors for bad text), ``None`` kept;
``argument``
    a positional argument instead of an option.

Other parameters of a command are ordinary typer parameters and pass through unchanged."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import Any, Callable, Optional, Union

import typer

from ..errors import CrosspatchError

MISSING = dataclasses.MISSING


def cli_fields(cls: type, only: tuple[str, ...] | None = None) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are command-line options (those with help), in declaration
    order; ``only`` keeps those names (in that order)."""
    fields = [f for f in dataclasses.fields(cls) if "help" in f.metadata]
    if only is None:
        return fields
    by_name = {f.name: f for f in fields}
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise TypeError(f"{cls.__name__} has no command-line option {', '.join(unknown)}")
    return [by_name[name] for name in only]


def field_default(field: dataclasses.Field) -> Any:
    """The field's default (a fresh value from its factory), or ``...`` when it is required."""
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return ...


def shown_default(default: Any, annotation: Any) -> Any:
    """A field's default as the command line reads it: an empty list or dict is ``None`` (not
    given), and a value the command line reads as text (a boundary, a word list) is that text."""
    if isinstance(default, (list, dict)) and not default:
        return None
    if annotation in (str, Optional[str]) and default not in (None, ...) and not isinstance(default, str):
        return ",".join(map(str, default)) if isinstance(default, list) else str(default)
    return default


def _command_line_type(field: dataclasses.Field, hints: dict) -> Any:
    """What typer reads: ``cli_type`` when given, else the field's type with ``X | None`` as
    ``Optional[X]``."""
    if "cli_type" in field.metadata:
        return field.metadata["cli_type"]
    hint = hints[field.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return Optional[args[0]]
    return hint


def _parameter(field: dataclasses.Field, hints: dict, default_override: Any = MISSING) -> inspect.Parameter:
    meta = field.metadata
    default = field_default(field) if default_override is MISSING else default_override
    annotation = _command_line_type(field, hints)
    default = shown_default(default, annotation)
    declaration = meta.get("flag", "--" + field.name.replace("_", "-"))
    if meta.get("argument"):
        info = typer.Argument(default, metavar=meta.get("metavar"), help=meta["help"])
    else:
        info = typer.Option(default, *declaration.split(" "), metavar=meta.get("metavar"), help=meta["help"])
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=info)


def build(cls: type, given: dict, only: tuple[str, ...] | None = None) -> Any:
    """An instance of ``cls`` from the command line's values (each parsed by its field's
    ``parse``); fields not on the command line, or not given there (``None``), keep their
    defaults."""
    values = {}
    for field in cli_fields(cls, only):
        value = given[field.name]
        if value is None and field_default(field) is not None:
            continue
        parse = field.metadata.get("parse")
        values[field.name] = parse(value) if parse is not None and value is not None else value
    return cls(**values)


def command(fn: Callable | None = None, *, only: dict[str, tuple[str, ...]] | None = None,
            defaults: dict[str, Any] | None = None) -> Callable:
    """Wrap ``fn`` for typer: each parameter annotated with an options dataclass becomes that
    dataclass's options (``only={param: names}`` keeps some of them; ``defaults={field: value}``
    changes a default shown and used by this command, as ``sweep``'s ``--boundaries all``); a
    value the dataclass cannot take is a named error on the command line."""
    if fn is None:
        return functools.partial(command, only=only, defaults=defaults)
    only, defaults = only or {}, dict(defaults or {})
    signature = inspect.signature(fn, eval_str=True)
    groups: dict[str, type] = {}
    parameters: list[inspect.Parameter] = []
    for p in signature.parameters.values():
        if dataclasses.is_dataclass(p.annotation) and isinstance(p.annotation, type):
            groups[p.name] = p.annotation
            hints = typing.get_type_hints(p.annotation)
            for field in cli_fields(p.annotation, only.get(p.name)):
                parameters.append(_parameter(field, hints, defaults.pop(field.name, MISSING)))
        else:
            parameters.append(p)
    if defaults:
        raise TypeError(f"{fn.__name__}: no option {', '.join(defaults)} to change the default of")
    names = [p.name for p in parameters]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise TypeError(f"{fn.__name__}: option {', '.join(repeated)} is declared twice")
    # positional arguments first (typer reads them in order), then the options in declaration order
    parameters.sort(key=lambda p: not isinstance(p.default, typer.models.ArgumentInfo))
    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters]

    @functools.wraps(fn)
    def run_command(**given):
        from .app import _fail

        try:
            built = {name: build(cls, given, only.get(name)) for name, cls in groups.items()}
        except (CrosspatchError, ValueError) as exc:
            _fail(exc)
            return None
        plain = {p: v for p, v in given.items() if p in signature.parameters and p not in groups}
        return fn(**built, **plain)

    run_command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run_command.__annotations__ = {p.name: p.annotation for p in parameters}  # typer reads these too
    del run_command.__wrapped__  # typer must read the generated signature, not fn's
    return run_command
