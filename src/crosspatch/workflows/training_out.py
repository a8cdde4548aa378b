"""The training callback's ``out`` directory: one training's diagnostics, a run directory
``step-<N>`` per diagnosed step and a row per step in ``steps.jsonl``, owned by the training
whose output directory ``training.json`` names.

A training resumed from one of its checkpoints (``trainer.train(resume_from_checkpoint=...)``
after a crash, or rewound on purpose) starts again at that checkpoint's step, so the diagnostics
of its later steps belong to the continuation it abandoned: they are set aside, whole, into
``superseded/after-step-<N>/`` (run directories and their ``steps.jsonl`` rows), and the resumed
training diagnoses those steps again on its own weights. Diagnostics of another training (another
output directory, or a fresh training meeting steps it has not reached) are refused when training
begins, never mixed with this one's or overwritten. Under a hyperparameter search
(``Trainer.hyperparameter_search``) each trial is a training of its own: its diagnostics go to a
folder of ``out`` named as the trial's run directory (``run-<n>``), whose checkpoints they mark.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OptionError
from ..store import write_whole
from ..store.files import step_dirs

OWNER_FILE = "training.json"  # {"output_dir": the owning training's output directory, resolved}
SUPERSEDED_DIR = "superseded"
STEPS_FILE = "steps.jsonl"


@dataclass(frozen=True)
class TrainingPlace:
    """Where one training's diagnostics go (``out``; None: not written) and where its
    ``checkpoint-<N>`` folders are (``checkpoints``; None: not known); ``trial``: under a
    hyperparameter search, the trial's name, which names its folder in the callback's ``out``."""

    out: Path | None
    checkpoints: Path | None = None
    trial: str | None = None
    search_root: Path | None = None  # a search's output_dir, where the trial's run directory is not known

    def checkpoint(self, step: int) -> Path | None:
        """The folder of the checkpoint saved at ``step``, where it is there (a trial's whose run
        directory is not known: the newest ``<search_root>/*/checkpoint-<step>``, saved just now)."""
        if self.checkpoints is None:
            found = list(self.search_root.glob(f"*/checkpoint-{step}")) if self.search_root is not None else []
            return max(found, key=lambda f: f.stat().st_mtime) if found else None
        folder = self.checkpoints / f"checkpoint-{step}"
        return folder if folder.is_dir() else None


def place_of_training(out: str | Path | None, trainer: Any, args: Any, state: Any, trials_begun: int) -> TrainingPlace:
    """Where the training that begins now writes: the callback's ``out`` and the trainer's
    ``output_dir``; under a hyperparameter search, the trial's run directory (``output_dir/run-<n>``,
    as the trainer attached to the callback names it) and a folder of that name in ``out``
    (``trial-<k>``, counting the trials this callback saw, where no trainer is attached: its
    checkpoints are then found as the newest of their step under ``output_dir``)."""
    output_dir = getattr(args, "output_dir", None)
    root = Path(output_dir) if output_dir else None
    if not getattr(state, "is_hyper_param_search", False):
        return TrainingPlace(Path(out) if out is not None else None, root)
    run_dir = _trial_run_dir(trainer, state, root)
    trial = run_dir.name if run_dir is not None else f"trial-{trials_begun}"
    return TrainingPlace(Path(out) / trial if out is not None else None, run_dir, trial,
                         root if run_dir is None else None)


def _trial_run_dir(trainer: Any, state: Any, root: Path | None) -> Path | None:
    """The run directory a hyperparameter-search trial's checkpoints go to, or None where it cannot be told."""
    get_dir, trial = getattr(trainer, "_get_output_dir", None), getattr(trainer, "_trial", None)
    if callable(get_dir) and trial is not None:
        try:  # transformers' Trainer names it so (run-<n>, or its hp_name)
            named = get_dir(trial)
        except Exception:  # noqa: BLE001 - a private method of the trainer, which may change
            named = None
        if isinstance(named, (str, Path)) and str(named):
            return Path(named)
    name = getattr(state, "trial_name", None)
    return root / name if root is not None and isinstance(name, str) and name else None


def recorded_owner(out: Path) -> str | None:
    """The output directory of the training that owns ``out``, or None where none is recorded (an
    ``out`` of a callback run by hand, or of an earlier version)."""
    try:
        return json.loads((out / OWNER_FILE).read_text(encoding="utf-8")).get("output_dir")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None


def claim_out(out: str | Path | None, output_dir: str | None, start_step: int, say: Callable[[str], None]) -> None:
    """Make ``out`` this training's before its first diagnostic (when training begins, not hours
    in): a training that starts at ``start_step`` and writes checkpoints to ``output_dir`` (None:
    not known, a callback run by hand) may add to its own diagnostics; those of its steps after
    ``start_step`` (it was resumed from an earlier checkpoint) are set aside; another training's
    are refused by name."""
    if out is None:
        return
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OptionError(f"CrosspatchCallback out={out} is a file, not a directory: give a directory for the diagnostics")
    here = str(Path(output_dir).resolve()) if output_dir else None
    owner = recorded_owner(out)
    dirs = step_dirs(out)
    later = sorted(k for k in dirs if k > start_step)
    if owner is not None and here is not None and owner != here:
        raise OptionError(f"CrosspatchCallback out={out} holds the diagnostics of another training (output "
                          f"directory {owner}, this one's is {here}); give a new out directory")
    if later and not (start_step > 0 and here is not None and owner == here):
        shown = ", ".join(f"step-{k}" for k in later[:5]) + (", ..." if len(later) > 5 else "")
        raise OptionError(f"CrosspatchCallback out={out} holds diagnostics of steps after this training's start "
                          f"(step {start_step}): {shown}, another training's; give a new out directory (or, where "
                          "they are this training's from before it was resumed, move them out of it)")
    # a diagnostic cut short with its training (no row logged) at the step it resumes from: never diagnosed again
    unlogged = sorted(k for k in dirs if k <= start_step and k not in logged_steps(out)) \
        if start_step > 0 and here is not None and owner == here else []
    if later or unlogged:
        aside = set_aside(out, dirs, later + unlogged, start_step)
        say(f"resumed at step {start_step}: the diagnostics of the later steps it left ({len(later)})"
            + (f" and {len(unlogged)} cut short" if unlogged else "") + f" are set aside in {aside}")
    if here is not None and owner is None:
        out.mkdir(parents=True, exist_ok=True)
        write_whole(out / OWNER_FILE, json.dumps({"output_dir": here}, indent=2) + "\n")


def _step_lines(out: Path) -> list[tuple[str, Any]]:
    """Each line of ``steps.jsonl`` with the step its row names (None for a torn last line, a kill
    while writing)."""
    if not (out / STEPS_FILE).is_file():
        return []
    lines = []
    for line in (out / STEPS_FILE).read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError, RecursionError):
            step = None
        lines.append((line, step))
    return lines


def logged_steps(out: Path) -> set[int]:
    """The steps ``steps.jsonl`` holds a row of (a diagnostic logs its row once its run is done)."""
    return {step for _, step in _step_lines(out) if isinstance(step, int)}


def set_aside(out: Path, dirs: dict[int, Path], steps: list[int], start_step: int) -> Path:
    """Move the run directories of ``steps`` (``dirs``: :func:`step_dirs`) and their ``steps.jsonl``
    rows into a new folder ``superseded/after-step-<start_step>[-k]``; returns it."""
    base = out / SUPERSEDED_DIR / f"after-step-{start_step}"
    aside, k = base, 1
    while aside.exists():
        k += 1
        aside = base.with_name(f"{base.name}-{k}")
    aside.mkdir(parents=True)
    moved = set(steps)
    kept, left = [], []
    for line, step in _step_lines(out):  # (a torn last line is kept where it was)
        (left if step in moved else kept).append(line)
    if left:
        write_whole(aside / STEPS_FILE, "\n".join(left) + "\n")
    for step in steps:
        dirs[step].rename(aside / dirs[step].name)
    if left:
        write_whole(out / STEPS_FILE, "".join(line + "\n" for line in kept))
    return aside
