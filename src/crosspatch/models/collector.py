"""Python's cyclic garbage collector in a command-line process.

Importing torch and transformers creates some 400,000 objects that live as long as the process.
CPython walks all of them again in every full collection, which it starts each time the objects
that survived earlier collections grow by a quarter: seven full collections while a ``crosspatch
run`` imports its libraries, about 0.6 s of a six-second command on the zoo. The command line
(``crosspatch.cli.main``) pauses full collections while it starts (:func:`pause_full_collections`;
young objects are still collected as usual) and, before the first weight loads, moves every object
alive then out of the collector's sight and resumes them (:func:`settle`): later full collections
walk only what the run itself creates, so a model released by a sequential run is collected as
before. Nothing here changes what a library user's process (a notebook, a trainer) does: both are
no-ops unless the command line paused collections.
"""

from __future__ import annotations

import gc

__all__ = ["pause_full_collections", "settle"]

_paused_thresholds: tuple[int, int, int] | None = None
_NEVER = 1 << 30  # full collections start when the count of younger collections passes this


def pause_full_collections() -> None:
    """No full collection until :func:`settle` (the young generations are collected as usual)."""
    global _paused_thresholds
    if _paused_thresholds is None:
        _paused_thresholds = gc.get_threshold()
        young, middle = _paused_thresholds[0], _paused_thresholds[1]
        gc.set_threshold(young, middle, _NEVER)


def settle() -> None:
    """Where full collections were paused: every object alive now (imported modules, the options,
    tokenizers, prompts) goes into the permanent generation, out of every later collection's walk,
    and full collections resume with their earlier thresholds. Call it before loading weights, so
    that no model is ever frozen (a frozen object caught in a reference cycle is never freed)."""
    global _paused_thresholds
    if _paused_thresholds is None:
        return
    gc.freeze()
    gc.set_threshold(*_paused_thresholds)
    _paused_thresholds = None
