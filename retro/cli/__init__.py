"""The ``retro`` command line: parse, open the app, call one method, render (Rich).

Exit codes: 0 success; 1 the command ran and failed (an unexpected error);
2 bad usage or configuration (bad option, bad URL, unreachable database or
Redis, missing tables, another daemon holds the database). Errors are one line
on stderr; ``--verbose`` adds the traceback. Every option that says how to
connect, log or print also reads a ``RETRO_*`` environment variable, shown in
``--help``; an option that chooses what a command does (:data:`COMMAND_LINE_ONLY`)
is read from the command line only (docs/config.md).
"""

from __future__ import annotations

import sys

import click

from retro.cli.backfills import backfills, pause, resume
from retro.cli.common import COMMAND_LINE_ONLY, fail, option_envvars
from retro.cli.configure import config_command, db
from retro.cli.daemon import board, demo, run, workers
from retro.cli.operator import cancel, history, retry, start, verify
from retro.cli.runs import runs
from retro.cli.status import status
from retro.errors import EXIT_OK
from retro.text import escape

__all__ = ["COMMAND_LINE_ONLY", "cli", "main", "option_envvars"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="retro")
def cli() -> None:
    """Find gaps in a match-prediction pipeline and heal them through its BullMQ stages."""


for command in (
    start,
    retry,
    verify,
    status,
    run,
    workers,
    config_command,
    demo,
    db,
    history,
    cancel,
    backfills,
    pause,
    resume,
    runs,
    board,
):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors become one line and exit code 2. An
    argument that is not UTF-8 (Python keeps its bytes as lone surrogates) is one
    at once: no database or file could take it."""
    for arg in sys.argv[1:] if argv is None else argv:
        try:
            arg.encode()
        except UnicodeEncodeError:
            fail(f"the argument '{escape(arg)}' is not valid UTF-8")
    try:
        cli.main(args=argv, prog_name="retro", standalone_mode=False)
    except click.UsageError as exc:
        fail(exc.format_message())
    except click.exceptions.Abort:
        raise SystemExit(130) from None
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    raise SystemExit(EXIT_OK)
