"""What the commands that run the diagnostic read and write: the command line's own options
(models, prompts, run directory, resume), beside the analysis options (:class:`RunConfig`) and
the loading options (:class:`LoadOptions`). One dataclass per command shape; their fields' help
is the option's help (``cli.options``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


def _option(default: Any = ..., help: str = "", **cli: Any) -> Any:
    """A command-line field: ``...`` is a required option."""
    metadata = {"help": help, **cli}
    return field(metadata=metadata) if default is ... else field(default=default, metadata=metadata)


PROMPTS = ("Prompt file: .jsonl, .json (an array or JSON lines), .csv (comma, semicolon or tab), .tsv or .parquet, "
           "each also as .gz, .bz2 or .xz; "
           "a dataset directory saved with datasets' save_to_disk; or - for JSON lines on standard input.")
BASE = "Base model (PT): hub id or local directory."
FIELDS = ("The prompt set's own columns for crosspatch's fields, FIELD=COLUMN,... (e.g. prompt=instruction,id=uid; "
          "id=@row: each row's position as its id).")


def model_label(model: str) -> str:
    """A model's name as a directory name: a local directory's own name, a hub id's name
    (``meta-llama/Llama-3.1-8B`` -> ``Llama-3.1-8B``), characters other than letters, digits,
    ``.``, ``_`` and ``-`` replaced by ``-``."""
    path = Path(str(model).strip() or ".").expanduser()  # a hub id's name is its last part too
    name = path.name if path.name not in ("", "..") else path.resolve().name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def default_out(base: str, descendants: list[str], kind: str = "") -> Path:
    """Where a command writes when ``--out`` is not given: ``runs/BASE__DESCENDANT`` (several
    descendants joined by ``+``; ``-KIND`` after them for a sweep, compare or lineage), named
    after the models so that a run of another pair never meets this one, while the same command
    again resumes it. A name too long for a directory keeps its start and a digest of the whole."""
    name = f"{model_label(base)}__{'+'.join(model_label(d) for d in descendants)}" + (f"-{kind}" if kind else "")
    if len(name) > 120:
        name = name[:100] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]
    return Path("runs") / name


OUT_DEFAULT = ("Run directory (default: runs/BASE__DESCENDANT, named after the models: a run of another pair never "
               "meets this one, and the same command again resumes it).")


@dataclass(kw_only=True)
class Session:
    """How a command treats the output directory, and what it prints."""

    resume: bool = _option(True, "Finish an interrupted run in --out (default); --no-resume refuses a directory "
                           "that already holds this run.", flag="--resume/--no-resume")
    overwrite: bool = _option(False, "Replace the crosspatch run in --out and start afresh (never touches other "
                              "files).")
    dry_run: bool = _option(False, "Print the plan (models, residency, boundaries, prompts, estimated work and state "
                            "cache, output files) and exit before loading any weight.")
    quiet: bool = _option(False, "No progress bars.")


@dataclass(kw_only=True)
class PairTarget:
    """``run``: a base and one descendant, with optional null descendants."""

    out_kind: ClassVar[str] = ""  # what the default --out adds after the models' names (default_out)

    base: str = _option(help=BASE)
    prompts: Path = _option(help=PROMPTS)
    fields: str | None = _option(None, FIELDS, metavar="FIELD=COLUMN,...")
    tuned: str | None = _option(None, "Descendant (IT): full or merged checkpoint.")
    adapter: str | None = _option(None, "PEFT adapter directory on --base.")
    out: Path | None = _option(None, OUT_DEFAULT)
    null: list[str] | None = _option(None, "A null descendant of the same base (a checkpoint or adapter trained like "
                                     "the descendant on a null task, or with another seed): the verdict's yardstick "
                                     "(repeatable).", metavar="DIR")
    synthetic_null: int = _option(0, "Synthetic nulls of the descendant: the real weight delta's spectrum in random "
                                  "directions (a weaker yardstick than --null; needs both models in memory).")


@dataclass(kw_only=True)
class SweepTarget(PairTarget):
    """``sweep``: as ``run``, into its own directory by default."""

    out_kind: ClassVar[str] = "sweep"

    out: Path | None = _option(None, OUT_DEFAULT.replace("DESCENDANT,", "DESCENDANT-sweep,"))


@dataclass(kw_only=True)
class CompareTarget:
    """``compare``: one base, several descendants, optional cross-descendant patching."""

    base: str = _option(help=BASE)
    prompts: Path = _option(help=PROMPTS)
    fields: str | None = _option(None, FIELDS, metavar="FIELD=COLUMN,...")
    tuned: list[str] | None = _option(None, "A descendant checkpoint (repeat for several; roles are the directory "
                                      "names, or give NAME=PATH).", metavar="[NAME=]DIR")
    adapter: list[str] | None = _option(None, "A PEFT adapter directory on --base (repeatable; NAME=PATH names its "
                                        "role).", metavar="[NAME=]DIR")
    cross: str | None = _option(None, "Cross-descendant patching: 'all', or UPSTREAM:LATE pairs (comma-separated "
                                "roles).")
    out: Path | None = _option(None, "Directory of the comparison (default: runs/BASE__D1+D2...-compare, named "
                               "after the models).")


@dataclass(kw_only=True)
class LineageTarget:
    """``lineage``: a base and its training stages, in order."""

    models: list[str] = _option(help="BASE STAGE1 ... FINAL (directories, training order); with --checkpoints only "
                                "BASE.", argument=True, metavar="MODEL...")
    prompts: Path = _option(help=PROMPTS)
    fields: str | None = _option(None, FIELDS, metavar="FIELD=COLUMN,...")
    checkpoints: Path | None = _option(None, "A trainer's output_dir: its checkpoint-<step> directories (full or "
                                       "adapter) are the stages, in step order.")
    out: Path | None = _option(None, "Directory of the lineage (default: runs/BASE__FINAL-lineage, the final stage "
                               "or the --checkpoints directory, named after the models).")
