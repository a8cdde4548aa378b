"""The ``crosspatch`` command: thin subcommands over the library."""

from __future__ import annotations

import sys

import typer
import typer.core
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..runner.config import load_policy  # noqa: F401  (the commands' policy files)
from ..runner.config import parse_boundaries as _boundaries  # noqa: F401
from ..runner.config import parse_boundary as _boundary  # noqa: F401
from ..runner.progress import safe_console


def _plain_argument_help() -> None:
    """Typer writes a required argument as ``{RUN_DIR}`` on the usage line and adds its Python
    type (``<list[Path]>``) to the help; crosspatch's arguments carry a metavar that says what to
    give, so both show it plainly (``RUN_DIR``, ``RUN_DIR...``, ``[PATH]``). A typer without these
    hooks is left as it is (the help is then only less plain)."""
    import typer.core

    cls = getattr(typer.core, "TyperArgument", None)
    if cls is None or not hasattr(cls, "_usage_display_name") or not hasattr(cls, "display_type_rich"):
        return

    def usage(self) -> str:
        name = self.display_name_raw
        if self.nargs != 1 and not name.endswith("..."):
            name += "..."
        return name if self.required else f"[{name}]"

    cls._usage_display_name = usage
    cls.display_type_rich = lambda self, ctx: None


class CommandGroup(typer.core.TyperGroup):
    """crosspatch's command groups: a command that takes options only, given bare words
    (``crosspatch run BASE TUNED``), says so and names the options, where click would first report
    the first required option as missing."""

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if command is None or hasattr(command, "commands") or any(getattr(p, "param_type_name", "") == "argument"
                                                                   for p in command.params):
            return name, command, rest  # a group, or a command that takes positional arguments
        try:  # typer carries its own click: the classes are those of the context and command at hand
            _, bare, _ = command.make_parser(type(ctx)(command, parent=ctx, info_name=name)).parse_args(list(rest))
        except Exception:  # an unknown option or a missing value: click says so as usual
            return name, command, rest
        if bare:
            options = {o for p in command.params for o in getattr(p, "opts", ())}
            example = " (e.g. --base BASE --tuned DESCENDANT)" if {"--base", "--tuned"} <= options else ""
            ctx.fail(f"crosspatch {name} takes no positional arguments, got {' '.join(map(repr, bare))}: give each "
                     f"value after its option{example}; crosspatch {name} -h lists them")
        return name, command, rest

    def invoke(self, ctx):
        """The command, with a path no file system holds (a name between slashes longer than its
        255 bytes: Python's path checks raise where they would say "no such file") named as a
        :class:`~crosspatch.errors.OptionError` rather than a traceback, wherever it is checked."""
        import errno

        from ..errors import OptionError

        try:
            return super().invoke(ctx)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            name = str(exc.filename)
            shown = name if len(name) <= 160 else f"{name[:100]}...{name[-40:]}"
            _fail(OptionError(f"{shown}: a path no file system can hold ({exc.strerror}: a name between its slashes is "
                              "longer than the 255 bytes a file name may have); check the path given"))


_plain_argument_help()
HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, context_settings=HELP_OPTIONS,
                  cls=CommandGroup, help="First-divergence cross-patching of a base model and its fine-tuned descendant.")
zoo_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, context_settings=HELP_OPTIONS, cls=CommandGroup,
                      help="The embedded weather-report model zoo.")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"crosspatch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print crosspatch's version and exit.")) -> None:
    """First-divergence cross-patching of a base model and its fine-tuned descendant."""
app.add_typer(zoo_app, name="zoo")
# No console markup: what crosspatch prints holds paths, model and role names, prompt ids and error
# messages quoting them, and rich would read '[exp1]' in runs/[exp1] as a style (dropped from the
# line) and '[/]' as a tag (MarkupError). Styles are given as Text spans instead.
# Control characters (an ANSI escape in a prompt id or a token) print as symbols: runner.progress.safe_console.
console = safe_console(stderr=True, markup=False)


def _stdout() -> Console:
    """Console for result tables: never narrower than the tables when output is not a terminal."""
    probe = safe_console(markup=False)
    return probe if probe.is_terminal else safe_console(width=140, markup=False)


def print_warnings(warnings) -> None:
    """Each warning (of a run's summary, a workflow's document, a compare or a lineage) on standard
    error, as every command prints them."""
    for warning in warnings or []:
        console.print(Text.assemble(("warning ", "yellow"), str(warning)), soft_wrap=True)


def _fail(exc: Exception) -> None:
    console.print(Text.assemble(("error ", "bold red"), f"{type(exc).__name__}: {exc}"), soft_wrap=True)
    raise typer.Exit(code=2)


def _crashed(command: str) -> None:
    """Inside an ``except``: the traceback of a crash of ``command``, a command whose exit code 1 is
    a finding (preflight: a check failed; report --check: a number the stored data does not back),
    and exit 2 (unusable): Python's own exit code for an uncaught exception, 1, would read to CI as
    that finding."""
    console.print_exception()
    console.print(Text.assemble(("error ", "bold red"), f"crosspatch {command} failed (the traceback above is a "
                                "crosspatch bug, please report it): unusable, exit 2"), soft_wrap=True)
    raise typer.Exit(code=2)


def print_summary_table(summary: dict, title: str = "crosspatch") -> None:
    """A short rich table of the headline effects: at the verdict's boundary, in the readout the
    verdict reads (common-IT unless the policy says common-PT), so that it shows the numbers the
    verdict's sentence quotes."""
    from ..core.records import readout_label, verdict_readout
    from ..report.markdown import fmt_effect, has_intervals

    out = _stdout()
    verdict = summary.get("verdict") or {}
    readout = verdict_readout(verdict)
    if len(summary["boundaries"]) > 1:  # a sweep: one row per boundary
        table = Table(title=f"{title}: layer sweep, {readout_label(readout)} readout (plot: sweep.png in the run "
                            "directory)")
        for col in ("boundary", "events", "E_PT", "E_IT", "interaction"):
            table.add_column(col, justify="right")
        for b in summary["boundaries"]:
            block = summary["results"][b][readout]["all"]
            table.add_row(b, str(block["n_events"]), *[fmt_effect(block, k) for k in ("E_PT", "E_IT", "interaction")])
        out.print(table)
    b = str(verdict.get("boundary", summary["boundaries"][0]))
    block = summary["results"][b][readout]["all"]
    table = Table(title=f"{title}: boundary {b}, {readout_label(readout)} readout, {block['n_events']} events")
    table.add_column("quantity")
    table.add_column("mean [95% CI]" if has_intervals(block) else "mean (no intervals)", justify="right")
    for name in ("E_PT", "E_IT", "interaction", "direct_share", "native_shift"):
        table.add_row(name, fmt_effect(block, name))
    out.print(table)
    nd = summary["counts"]["no_divergence"]
    out.print(f"prompts {summary['counts']['prompts']}, events {summary['counts']['events']}, "
              f"no divergence {sum(nd.values())}, invalid {summary['counts']['invalid']}")



def _print_section(section, written: str) -> None:
    """A report section (a :class:`~crosspatch.core.registry.Section`, or None) on stdout as
    Markdown, then what was written (stderr)."""
    from ..report.sections import section_markdown

    for line in section_markdown(section) if section is not None else []:
        _stdout().print(line, soft_wrap=True, markup=False)
    console.print(f"wrote {written}", soft_wrap=True)



def _quiet_libraries() -> None:
    """Keep the terminal for crosspatch's own progress: no per-file loading bars or deprecation
    chatter from transformers/peft (warnings that matter to the run go into its report). Set
    through the environment, so that nothing heavy is imported before a command needs it."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")


def _interrupted(exc: BaseException | None, kind: type[BaseException] = KeyboardInterrupt) -> bool:
    """Whether ``exc`` came of Ctrl-C (``kind``: or of SIGTERM, :class:`_Terminated`): typer turns a
    KeyboardInterrupt into a silent exit 130 (older click into "Aborted!" and exit 1); the interrupt
    stays in the exception's chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _tolerant_streams() -> None:
    """Standard output and error that cannot encode some text (an ASCII or Latin-1 locale, a legacy
    Windows console, a pipe under ``PYTHONIOENCODING=ascii``) write '?' for it: the verdict's dash or a
    token's text once crashed a finished run's last line, and ``gate``, with exit code 1 (a 'fail')."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if callable(reconfigure) and getattr(stream, "errors", None) == "strict":
            reconfigure(errors="replace")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so that it unwinds as Ctrl-C does."""


def _terminate_as_interrupt() -> None:
    """SIGTERM (a scheduler preempting the job, ``kill``, a container stopping) ends a command as
    Ctrl-C does: what is being written is finished or left as it was, the lock is released, and the
    command says to run it again (exit 143) instead of dying silently."""
    import signal

    def terminate(signum, frame):
        raise _Terminated()

    try:
        signal.signal(signal.SIGTERM, terminate)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGTERM on this platform
        pass


def main() -> None:
    from ..models.collector import pause_full_collections

    _tolerant_streams()
    _terminate_as_interrupt()
    _quiet_libraries()
    pause_full_collections()  # until the first weight loads (models.collector.settle)
    try:
        app()
    except (KeyboardInterrupt, SystemExit) as exc:  # records already appended stay: the same command resumes
        if not _interrupted(exc):
            raise
        terminated = _interrupted(exc, _Terminated)
        console.print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}; run the same command again to resume")
        sys.exit(143 if terminated else 130)


if __name__ == "__main__":
    main()
