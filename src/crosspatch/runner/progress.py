"""Progress where standard error is not a terminal (CI logs, ``nohup``, a notebook's subprocess):
plain lines, ``stage: done/total (rate/s, ETA)``, at most every few seconds and when a stage
finishes, so that a slow machine can be told from a hang. Same interface as the part of
``rich.progress.Progress`` the pipeline uses."""

from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable

from ..report.mdtext import CONTROL, visible_controls


class LineProgress:
    """``add_task`` / ``update`` / context manager, printing lines to ``stream`` (or giving each
    to ``emit``, a function of one line)."""

    def __init__(self, stream=None, every: float = 5.0, emit=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.every, self.emit = every, emit
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        for task_id, task in self.tasks.items():
            if not task["printed_done"]:
                self._print(task_id, final=True)

    def add_task(self, description: str, total: int | None = None, completed: int = 0) -> int:
        task_id = len(self.tasks)
        now = time.monotonic()
        self.tasks[task_id] = {"description": description, "total": total, "completed": completed, "start": now,
                               "start_done": completed, "last": 0.0, "printed_done": False}
        self._print(task_id)
        return task_id

    def update(self, task_id: int, advance: int | None = None, total: int | None = None,
               completed: int | None = None) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task["total"] = total
        if completed is not None:
            task["completed"] = completed
        if advance:
            task["completed"] += advance
        done = task["total"] is not None and task["completed"] >= task["total"]
        if done and not task["printed_done"] or time.monotonic() - task["last"] >= self.every:
            self._print(task_id, final=done)

    def _print(self, task_id: int, final: bool = False) -> None:
        task = self.tasks[task_id]
        now = time.monotonic()
        elapsed = now - task["start"]
        done, total = task["completed"], task["total"]
        rate = (done - task["start_done"]) / elapsed if elapsed > 0 else 0.0
        text = f"{task['description']}: {done}/{total if total is not None else '?'}"
        if elapsed >= 0.5:
            text += f" ({rate:.2f}/s, {elapsed:.0f} s elapsed"
            if total is not None and rate > 0 and done < total:
                text += f", ETA {(total - done) / rate:.0f} s"
            text += ")"
        if self.emit is not None:
            self.emit(text)
        else:
            print(text, file=self.stream, flush=True)
        task["last"] = now
        task["printed_done"] = final or (total is not None and done >= total)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class StageClock:
    """An overall stage counter across a multi-run command (the demo): each stage's first log
    line reads ``[k/N] message (m:ss elapsed, about m:ss left)``, the estimate from the time per
    unit of weight of the stages done so far (stages have rough relative ``weights``)."""

    def __init__(self, weights: list[float], log, clock=time.monotonic) -> None:
        self.weights, self.log, self.clock = list(weights), log, clock
        self.started = clock()
        self.index = 0  # stages begun
        self.pending = False

    def next(self) -> None:
        """The next stage begins."""
        self.index += 1
        self.pending = True

    def stage(self, message: str) -> None:
        """The next stage begins, announced by ``message``."""
        self.next()
        self(message)

    def __call__(self, message: str) -> None:
        if not self.pending:
            self.log(message)
            return
        self.pending = False
        elapsed = self.clock() - self.started
        done = sum(self.weights[: self.index - 1])
        left = sum(self.weights[self.index - 1:])
        eta = f", about {_clock(elapsed / done * left)} left" if done > 0 else ""
        self.log(f"[{self.index}/{len(self.weights)}] {message} ({_clock(elapsed)} elapsed{eta})")


@functools.lru_cache(maxsize=1)
def _safe_console_class():
    from rich.console import Console
    from rich.segment import Segment

    class SafeConsole(Console):
        """A rich Console that shows the control characters of what it prints as symbols
        (:func:`visible_controls`); rich's own styles and cursor movements are untouched. Text, and
        a table's title, headers and cells, are shown so before they are laid out (a symbol takes
        a column, where the control character it stands for took none); inside other renderables,
        as rendered."""

        def print(self, *objects, **options):
            return super().print(*(_visible(o) for o in objects), **options)

        def render(self, renderable, options=None):
            for segment in super().render(renderable, options):
                if segment.control is None and CONTROL.search(segment.text):
                    segment = Segment(visible_controls(segment.text), segment.style)
                yield segment

    return SafeConsole


def _visible(renderable: Any) -> Any:
    """A string or rich ``Text`` with its control characters as symbols (the same length: a
    Text's styles stay on their characters), a rich ``Table`` with its title, headers and cells so;
    anything else as it is."""
    from rich.table import Table
    from rich.text import Text

    if isinstance(renderable, str):
        return visible_controls(renderable)
    if isinstance(renderable, Table):  # (its parts in place: a table is printed once)
        renderable.title = _visible(renderable.title)
        for column in renderable.columns:
            column.header = _visible(column.header)
            cells = getattr(column, "_cells", None)  # (rich keeps a column's cells there)
            if isinstance(cells, list):
                cells[:] = [_visible(cell) for cell in cells]
        return renderable
    if isinstance(renderable, Text) and CONTROL.search(renderable.plain):
        shown = renderable.copy()
        shown.plain = visible_controls(renderable.plain)
        return shown
    return renderable


def safe_console(**options):
    """A rich ``Console(**options)`` that never sends the control characters of user or model text
    (an ANSI escape in a prompt id or a token) to the terminal: they print as symbols."""
    return _safe_console_class()(**options)


def say(enabled: bool | Callable[[str], Any], message: str) -> None:
    """``message`` to ``progress``: a function of one line, or standard error where it is True."""
    if callable(enabled):
        enabled(message)
    elif enabled:
        safe_console(stderr=True).print(message, soft_wrap=True, markup=False)


def progress_display(enabled: bool | Callable[[str], Any]) -> Any:
    """Progress bars on a terminal; plain progress lines (:class:`LineProgress`) when standard
    error is not one, or given to ``enabled`` where it is a function of one line. Silent (a
    disabled display of the same interface) where ``enabled`` is False."""
    if callable(enabled):
        return LineProgress(emit=enabled)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = safe_console(stderr=True)
    if enabled and not console.is_terminal:
        return LineProgress()
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=not (enabled and console.is_terminal), transient=False,
    )
