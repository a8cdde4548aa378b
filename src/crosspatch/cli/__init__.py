"""The ``crosspatch`` command line (typer): :mod:`.app` holds the application, its shared helpers
and ``main``; :mod:`.run`, :mod:`.several`, :mod:`.commands` and :mod:`.workflows` register the subcommands on it
when this package is imported."""

from __future__ import annotations

import importlib

from .app import app, console, main

for _module in ("run", "several", "commands", "workflows"):  # importing each registers its subcommands, in this order
    importlib.import_module(f".{_module}", __name__)

from .run import run_cmd  # noqa: E402 - registered above

__all__ = ["app", "console", "main", "run_cmd"]
