"""The `unmix` command line: a thin Typer layer over the library.

The only module that imports typer/rich or ends the process. Library code raises
`UnmixError`s; here they become one line on stderr (plus a hint), and an exit
code (0 ok, 1 some inputs failed, 2 usage, 130 interrupted).

Start-up stays fast: nothing on the `--help`/`--version` path imports torch;
commands import the heavy modules inside their bodies.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator, List, Optional

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from . import __version__
from .errors import EXIT_INTERRUPTED, UnmixError

# The command run when the first argument is not a sub-command: `unmix song.mp3`.
DEFAULT_COMMAND = "separate"

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
out_console = Console(highlight=False, soft_wrap=True)


class _DefaultCommandGroup(TyperGroup):
    """Routes `unmix FILE...` to the default command, keeps `unmix models ...` as is."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        # Show commands in the order they were defined, not alphabetically.
        return list(self.commands)

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        if DEFAULT_COMMAND in self.commands:
            first = _first_positional(args)
            if first is not None and args[first] not in self.commands:
                args = args[:first] + [DEFAULT_COMMAND] + args[first:]
        return super().parse_args(ctx, args)


def _first_positional(args: List[str]) -> Optional[int]:
    """Index of the first argument that is not a top-level option (None if there is none)."""
    top_level_flags = {"--verbose", "-v", "--version", "--help", "-h"}
    for i, a in enumerate(args):
        if a in top_level_flags:
            continue
        if a.startswith("-"):
            # An option of the default command (e.g. `unmix -m htdemucs song.mp3`).
            return i
        return i
    return None


app = typer.Typer(
    cls=_DefaultCommandGroup,
    name="unmix",
    help="Split songs into stems (vocals, drums, bass, other) with neural networks.\n\n"
    "Pretrained weights are downloaded from the Hugging Face Hub on first use.",
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


class _State:
    verbose: bool = False


state = _State()


def _version_callback(value: bool) -> None:
    if value:
        out_console.print(f"unmix {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks and debug details."),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    state.verbose = verbose


def print_error(err: UnmixError) -> None:
    """One line naming the file and cause, then a hint when one helps."""
    err_console.print(f"[bold red]error:[/] {err.one_line()}", markup=True, highlight=False)
    if err.hint:
        err_console.print(f"[yellow]hint:[/] {err.hint}", markup=True, highlight=False)


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Turn UnmixError / Ctrl-C into a message and an exit code (the CLI's only exit path)."""
    try:
        yield
    except UnmixError as err:
        if state.verbose:
            err_console.print_exception()
        print_error(err)
        raise typer.Exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C outside a command body
        err_console.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
