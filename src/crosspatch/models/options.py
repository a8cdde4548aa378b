"""How to load checkpoints: :class:`LoadOptions` (torch-free, so that the command line builds its
options from it without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadOptions:
    """How to load checkpoints (every field is recorded in the run's config.json). The fields with
    help are the loading options of every command that loads models (``cli.options``)."""

    dtype: str = field(default="auto", metadata={"help": "auto (bfloat16 on a GPU, float16 on one without "
                                                        "bfloat16, float32 on the CPU) | float32 | "
                                                        "bfloat16 (bf16) | float16 (fp16)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present, else the CPU) | cpu | cuda | "
                                                          "cuda:N | map (accelerate device map over every GPU and the "
                                                          "CPU)."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Run model code shipped with a checkpoint (off by default)."})
    allow_pickle: bool = field(default=False, metadata={"help": "Allow pickle (.bin) weights."})
    revision: str | None = field(default=None, metadata={
        "help": "Hub revision (branch, tag or commit) of the checkpoints."})
    allow_special_token_mismatch: bool = field(default=False, metadata={
        "help": "Accept differing BOS/EOS/UNK (recorded as a warning; a PAD that alone differs is always accepted and recorded)."})
    hash_weights: bool = True
    residency: str | None = field(default=None, metadata={
        "help": "both | sequential | adapter (default: chosen, reason printed)."})  # None: execution.choose_residency
    verbose: bool = False  # show transformers' loading bars and advisory warnings

    @classmethod
    def with_overrides(cls, options: "LoadOptions | None" = None, **overrides) -> "LoadOptions":
        """A copy of ``options`` (a fresh default when None; the caller's object is never changed,
        not by these overrides nor by the resolving and the choices a load makes on it) with
        ``overrides`` set, as the Python API's ``**load_overrides`` give them (``dtype="bf16"``,
        ``residency="sequential"``); an unknown name is a ``TypeError``, ``options`` that is no
        LoadOptions an ``OptionError``. Not validated: call :func:`validate_load_options`."""
        return copy_with_overrides(cls, options, overrides, "options", "load option")


def copy_with_overrides(cls, given, overrides: dict, argument: str, option: str):
    """A copy of ``given`` (an instance of the options dataclass ``cls``, or None for its defaults)
    with ``overrides`` set: what the Python API does with an options object and keyword
    arguments, never changing the caller's object. ``given`` of another type is an
    ``OptionError`` naming ``argument``; an override ``cls`` has no field for, a ``TypeError``
    naming it an unknown ``option``."""
    from dataclasses import replace

    if given is not None and not isinstance(given, cls):
        from ..errors import OptionError

        raise OptionError(f"{argument} must be a {cls.__name__} (or None; options may also be given as keyword "
                          f"arguments), not {type(given).__name__}")
    copy = replace(given) if given is not None else cls()
    for key, value in overrides.items():
        if key not in cls.__dataclass_fields__:
            import difflib

            close = difflib.get_close_matches(key, list(cls.__dataclass_fields__), n=3, cutoff=0.7)
            raise TypeError(f"unknown {option} {key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)"
                                                           if close else ""))
        setattr(copy, key, value)
    return copy


def check_switches(**switches) -> None:
    """Switches given in Python (``resume=``, ``trust_remote_code=``, ...) are booleans: a string
    such as "no" would switch them on. An ``OptionError`` names the first that is not."""
    for name, value in switches.items():
        if not isinstance(value, bool):
            from ..errors import OptionError

            raise OptionError(f"{name} must be True or False, not {value!r}")


def check_progress(progress) -> None:
    """``progress=`` of a run (and of compare and lineage): True (bars on a terminal, lines
    otherwise, on standard error), False (silent) or a function of one line of text (a notebook's
    or a job's own logger: each progress line and message is given to it)."""
    if not isinstance(progress, bool) and not callable(progress):
        from ..errors import OptionError

        raise OptionError(f"progress must be True, False or a function of one line of text, not {progress!r}")


def plain_scalar(value: Any) -> Any:
    """``value`` with numpy scalars as the Python numbers they hold (``np.int64(2)`` is ``2``, as a
    notebook's ``for b in np.arange(...)`` gives them), in lists and tuples too; other values as given."""
    if isinstance(value, (list, tuple)):
        return type(value)(plain_scalar(v) for v in value)
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == () and hasattr(value, "item"):
        return value.item()
    return value
