"""The ``dx`` command line: the parser assembled from the command modules, errors and exit codes.

Exit codes: 0 completed, 1 failed or completed with errors, 2 bad usage or
configuration. Each command module imports at its top only what parsing needs;
a command imports the rest when it runs, so that the control plane's commands
never load the workers or their libraries.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import psycopg

from dx.cli import config, dev, modules, roles, runs, tokens, users
from dx.cli.command import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Command
from dx.cli.runs import run_module, wait_for
from dx.shared import db
from dx.shared.errors import ConfigError, DxError
from dx.shared.logging import configure
from dx.shared.settings import get_settings

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main", "run_module", "wait_for"]

#: Every command, by name.
COMMANDS: dict[str, Command] = {c.name: c for m in (config, modules, runs, roles, tokens, users, dev) for c in m.COMMANDS}
#: The order in which ``dx --help`` lists them.
ORDER = ("migrate", "apply", "modules", "pause", "resume", "run", "runs", "show", "report", "schedule",
         "scheduler", "serve", "token", "user", "worker", "generate", "demo", "docs")
assert sorted(ORDER) == sorted(COMMANDS), "every command is listed once in ORDER"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each parsed command's ``command`` names its entry in COMMANDS."""
    parser = argparse.ArgumentParser(prog="dx", description="DataExchange: contact data in and out of the platform.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ORDER:
        command = COMMANDS[name]
        command.arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def _schema_due() -> ConfigError | None:
    """A clear error, instead of a missing table or column, when `dx migrate` is due."""
    with db.connect() as conn:
        missing = db.missing_migrations(conn)
    if not missing:
        return None
    return ConfigError([f"the control schema lacks {', '.join(missing)}: run `dx migrate` "
                        "(dx worker, dx scheduler and dx serve migrate when they start, unless DX_MIGRATE_ON_START=false)"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``dx`` command; returns its exit code."""
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    try:
        settings = get_settings()
        configure("WARNING" if not command.role and settings.log_level == "INFO" else settings.log_level)
        try:
            return int(command.run(args))
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
            # looked for only then: a check before every command would cost each a connection
            due = _schema_due() if command.needs_schema else None
            if due is None:
                raise
            raise due from None
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"dx: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except DxError as exc:
        print(f"dx: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        print(f"dx: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return EXIT_USAGE


def entry() -> NoReturn:
    """The ``dx`` console script: ``main``, then an exit without the interpreter's teardown of every
    loaded module, which takes a short command longer than its own work (streams are flushed first)."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    logging.shutdown()
    os._exit(code)
