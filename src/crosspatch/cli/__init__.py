"""The ``crosspatch`` command line (typer): :mod:`.app` holds the application, its shared helpers
and ``main``; :mod:`.run`, :mod:`.several`, :mod:`.commands` and :mod:`.workflows` register the subcommands on it
when this package is imported."""

from __future__ import annotations

from . import run, several, commands, workflows  # noqa: F401, I001 - importing them registers their subcommands, in this order
from .app import app, console, main
from .run import run_cmd

__all__ = ["app", "console", "main", "run_cmd"]
