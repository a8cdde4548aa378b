"""Calls into an analysis' own code (its ``build``, ``program``, ``summarize`` and ``render``), with a failure
there named as that analysis' failure: :class:`~crosspatch.errors.AnalysisPluginError` names the
analysis, the step, the exception and the line of the analysis' code it came from (a command line
prints the message, not a traceback), and says that the records written so far are kept. What an
analysis returns is checked here too, so that crosspatch never stores what it cannot read back or
blames itself for a plug-in's value."""

from __future__ import annotations

import traceback
from collections.abc import Generator
from typing import Any, NoReturn

from ..errors import AnalysisPluginError, CrosspatchError, is_out_of_memory


def _passes_through(exc: BaseException) -> bool:
    """Errors that are not the analysis' fault: crosspatch's own named errors (a device out of
    memory, a write that failed) and memory exhaustion, raised inside its program by a pass."""
    return isinstance(exc, CrosspatchError) or is_out_of_memory(exc)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f" at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""


def plugin_failure(name: str, step: str, owner: str, problem: str) -> AnalysisPluginError:
    """The named error for analysis ``name`` whose ``step`` (build, program, summarize, render) failed
    with ``problem``; ``owner``: the module of the code that failed (crosspatch's own: a bug to report)."""
    ours = owner.split(".")[0] == "crosspatch"
    advice = ("its stored records may be damaged (its .jsonl file in the run directory: compare it with the "
              "others' lines), else a crosspatch bug: please report it" if ours and step == "summarize" else
              "(a crosspatch bug: please report it)" if ours else
              "once the plug-in is fixed, the same command finishes the run from them (a run without the analysis "
              "is another run: another --out)")
    return AnalysisPluginError(
        f"the analysis {name!r} ({owner}) failed in its {step}: {problem}. The records written so far are kept; "
        f"{advice}")


def _reraise(name: str, step: str, owner: str, exc: Exception) -> NoReturn:
    """Raise ``exc``, raised in analysis ``name``'s ``step``, again: itself when it is not the
    analysis' fault (:func:`_passes_through`), else as its named failure."""
    if _passes_through(exc):
        raise exc
    raise plugin_failure(name, step, owner, f"{type(exc).__name__}: {exc}{_where(exc)}") from exc


def _owner(func: Any) -> str:
    return getattr(func, "__module__", None) or type(func).__module__


def call_plugin(name: str, step: str, func, *args, returns: tuple[type, ...] | None = None, what: str = ""):
    """``func(*args)``, an analysis' ``build``, ``summarize`` or ``render``, with its failure named;
    with ``returns``, a value of another type (or None) is named too (``what``: what it should be)."""
    try:
        value = func(*args)
    except Exception as exc:
        _reraise(name, step, _owner(func), exc)
    if returns is not None and value is not None and not isinstance(value, returns):
        raise plugin_failure(name, step, _owner(func), f"it returned {type(value).__name__}, not {what} (or None)")
    return value


def guarded_program(analysis, ex, events) -> Generator[Any, Any, Any]:
    """``analysis.program(ex, events)`` (a generator of passes, or a plain function when it asks for
    none), with a failure inside it named; its value is checked to be
    records crosspatch can store (a list of dicts, or of objects with ``to_record``) unless the
    analysis scores events with the 2x2 (its value is its own, read by ``cell_records``)."""
    name = getattr(analysis, "name", type(analysis).__name__)
    owner = type(analysis).__module__
    try:
        program = analysis.program(ex, events)
        # a program that asks for no pass may be a plain function: its value is its records
        value = (yield from program) if hasattr(program, "send") else program
    except Exception as exc:
        _reraise(name, "program", owner, exc)
    if getattr(analysis, "scores_cells", False):
        return value
    if value is None:
        return []
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise plugin_failure(name, "program", owner, f"it returned {type(value).__name__}, not a list of records")
    rows = list(value)
    bad = next((r for r in rows if not isinstance(r, dict) and not hasattr(r, "to_record")), None)
    if bad is not None:
        raise plugin_failure(name, "program", owner, f"it returned a record that is {type(bad).__name__}, not a "
                             "dict (or an object with to_record)")
    return rows


def checked_control_row(plugin, row) -> dict:
    """A control's ``summarize`` value, if it is a row of the Controls table
    (:func:`~crosspatch.core.registry.control_row`'s shape), else its failure named."""
    from .registry import STATUSES

    problem = None
    if not isinstance(row, dict):
        problem = f"it returned {type(row).__name__}, not a row of the Controls table (control_row(...))"
    elif row.get("status") not in STATUSES or not isinstance(row.get("summary"), str):
        problem = (f"its row has status {row.get('status')!r} and summary {type(row.get('summary')).__name__}: a row "
                   f"of the Controls table has a status of {', '.join(STATUSES)} and a text summary (control_row(...))")
    if problem:
        raise plugin_failure(plugin.name, "summarize", _owner(plugin.summarize), problem)
    return row
