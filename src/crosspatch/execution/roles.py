"""Role names of a model set: ``NAME=PATH`` arguments, safe names, and the names descendants,
stages and adapters get when none is given (from their paths)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import OptionError

BASE = "base"  # the role name of the base model


def model_path_arg(value, what: str) -> str:
    """A model given in Python: a non-empty string or path-like (a directory or a hub id), else an
    :class:`OptionError` (``""`` would be the working directory, ``None`` a hub id "None")."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        if callable(getattr(value, "state_dict", None)) and callable(getattr(value, "parameters", None)):
            raise OptionError(f"{what} must be a model directory or a hub id, not a model in memory "
                              f"({type(value).__name__}): save it with save_pretrained(DIR) and give DIR; "
                              "crosspatch.run takes models in memory through crosspatch.pair_from_models")
        shown = repr(value)
        raise OptionError(f"{what} must be a model directory or a hub id (a non-empty string), not "
                          f"{shown if len(shown) <= 120 else shown[:117] + '...'}")
    return value


ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_role_name(name: str) -> str:
    """A role name is a safe file name: letters, digits, '.', '_' and '-', not starting with a
    dot or a dash (so never '', '.', '..' or a path): it names a run directory under --out."""
    if not isinstance(name, str) or not ROLE_NAME.match(name):
        raise OptionError(f"role name {name!r} is not a safe name (letters, digits, '.', '_', '-'; starting with a "
                          "letter or digit): it names a run directory; give another name")
    return name


def role_name_of(path: str) -> str:
    """The role a descendant path gets: its resolved directory's name (``runs/sft/..`` is the
    parent's name, never ``..``), or a hub id's last part (with its revision: ``REPO@step1000`` is
    ``NAME-step1000``); characters that are unsafe in a file name become '-'."""
    from ..models.paths import split_hub_revision

    p = Path(str(path)).expanduser()
    if (split := split_hub_revision(path)) is not None:
        name = f"{split[0].rsplit('/', 1)[-1]}-{split[1]}"
    else:
        name = p.resolve().name if p.exists() else str(path).rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip(".-")
    return name or "tuned"


def named_path(value: str) -> tuple[str, str] | None:
    """``NAME=PATH`` (a role name for a descendant, as ``--tuned sft=./out/checkpoint-500``) unless
    the whole value is itself an existing path; the name must be a safe name."""
    if "=" not in value or Path(value).expanduser().exists():
        return None
    name, _, path = value.partition("=")
    if not path:
        raise OptionError(f"{value!r}: NAME=PATH needs a path after '='")
    return check_role_name(name), path


def _role_names(descendants: dict[str, str] | list[str] | str | None, what: str = "role",
                each: str = "descendant") -> dict[str, str]:
    """{role: path} of descendants given as a path, a list (directory names made unique, or
    ``NAME=PATH``) or a dict; ``what``/``each`` name them in the messages (``stage`` for a
    lineage)."""
    if descendants is None:
        return {}
    if isinstance(descendants, (str, os.PathLike)):
        return {"tuned": model_path_arg(descendants, "a descendant")}
    if isinstance(descendants, dict):
        if BASE in descendants:
            raise OptionError(f"{what} name {BASE!r} is the base's: give each {each} a name of its own")
        return {check_role_name(str(k)): model_path_arg(v, f"descendant {k!r}") for k, v in descendants.items()}
    if not isinstance(descendants, (list, tuple)):
        raise OptionError(f"descendants are a path, a list of paths or a {{role: path}} dict, not {descendants!r}")
    names: dict[str, str] = {}
    given = _given_names(descendants)  # names made from directories keep clear of the names given
    for path in map(lambda x: model_path_arg(x, "a descendant"), descendants):
        named = named_path(path)
        if named is not None:  # NAME=PATH: the role is named by the user
            name, path = named
            if name in names or name == BASE:
                raise OptionError(f"{what} name {name!r} is given twice (or is the base's): each {each} needs its own")
            names[name] = path
            continue
        names[_unique_name(role_name_of(path), {*names, *given, BASE})] = str(path)
    return names


def _unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``, ... : the first that is not ``taken``."""
    unique, k = name, 2
    while unique in taken:
        unique, k = f"{name}-{k}", k + 1
    return unique


def descendant_roles(tuned=None, adapters=None) -> tuple[dict[str, str], dict[str, str]]:
    """The role names :func:`load_models` gives descendant checkpoints and adapters (their
    directory names, made unique), each -> its path: known before any model loads. A directory
    given twice (however spelt) is an :class:`OptionError`."""
    from ..models.paths import check_given_once

    tuned_roles = _role_names(tuned)
    adapter_roles = dict(_role_names(adapters))
    named = _given_names(tuned) | _given_names(adapters)
    check_given_once([*tuned_roles.values(), *adapter_roles.values()], "descendant",
                     "it would be loaded, scored and counted twice; give each once",
                     names=[role if role in named else None for role in [*tuned_roles, *adapter_roles]])
    taken = {*tuned_roles, *adapter_roles}
    for role in list(adapter_roles):
        if role not in tuned_roles:
            continue
        if role in named:  # a name the user gave is never changed: a role of that name is a clash
            raise OptionError(f"role name {role!r} is given to a checkpoint and to an adapter: each descendant needs "
                              "its own")
        # two descendants in directories of the same name: the adapter's role is made unique
        unique = _unique_name(f"{role}-adapter", taken)
        adapter_roles[unique] = adapter_roles.pop(role)
        taken.add(unique)
    return tuned_roles, adapter_roles


def _given_names(descendants) -> set[str]:
    """The role names the user gave (``NAME=PATH``, a dict's keys), not made from directory names."""
    if isinstance(descendants, dict):
        return {str(k) for k in descendants}
    if isinstance(descendants, (list, tuple)):
        return {named[0] for value in descendants if isinstance(value, str) and (named := named_path(value))}
    return set()
