"""The ``dx`` command line: the parser assembled from the command modules, errors and exit codes.

Exit codes: 0 completed, 1 failed or completed with errors, 2 bad usage or
configuration, 3 a service not reachable (PostgreSQL, RabbitMQ, Redis), 141 the
reader of the output went away (``dx runs | head -1``; nothing is printed).
Each command module imports at its top only what parsing needs; a command
imports the rest when it runs, so that the control plane's commands never load
the workers or their libraries.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import psycopg

from dx.cli import completion, config, dev, modules, roles, runs, tokens, users
from dx.cli.command import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, Command
from dx.cli.runs import run_module, wait_for
from dx.shared import db
from dx.shared.errors import ConfigError, DxError, RetriableError
from dx.shared.logging import configure
from dx.shared.settings import get_settings

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_FAILED", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "build_parser", "main",
           "run_module", "wait_for"]

#: Every command, by name.
COMMANDS: dict[str, Command] = {c.name: c for m in (config, modules, runs, roles, tokens, users, dev, completion)
                                for c in m.COMMANDS}
#: The order in which ``dx --help`` lists them.
ORDER = ("migrate", "apply", "modules", "pause", "resume", "run", "runs", "show", "report", "schedule",
         "scheduler", "serve", "token", "user", "worker", "generate", "demo", "docs", "completion")
assert sorted(ORDER) == sorted(COMMANDS), "every command is listed once in ORDER"
#: SQLSTATEs of a PostgreSQL that is shutting down or starting (class 08 is the connection's own failure).
PG_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03")


def version() -> str:
    """The installed dx-cli's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("dx-cli")
    except PackageNotFoundError:  # run from the sources without an install
        return "(dx-cli is not installed)"


class _Version(argparse.Action):
    """``--version``: the installed version, looked up only when asked (the metadata costs each command time)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print dx's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"dx {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each parsed command's ``command`` names its entry in COMMANDS."""
    parser = argparse.ArgumentParser(prog="dx", description="DataExchange: contact data in and out of the platform.")
    parser.add_argument("--version", action=_Version)
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


def unavailable(exc: BaseException) -> str | None:
    """What to say when ``exc`` means a service is not reachable (PostgreSQL, RabbitMQ, Redis); else None.
    Only the client libraries already loaded can have raised it, so none is imported here."""
    if isinstance(exc, RetriableError):  # dx's own: a connection failed where it was opened
        return str(exc)
    if isinstance(exc, psycopg.OperationalError) and (
            exc.sqlstate is None or exc.sqlstate.startswith("08") or exc.sqlstate in PG_UNAVAILABLE_STATES):
        return f"PostgreSQL is not reachable (DX_DATABASE_URL): {exc}"
    pika, dramatiq, redis = (sys.modules.get(m) for m in ("pika.exceptions", "dramatiq.errors", "redis.exceptions"))
    if (pika is not None and isinstance(exc, pika.AMQPConnectionError)) or (
            dramatiq is not None and isinstance(exc, dramatiq.ConnectionError)):
        return f"RabbitMQ is not reachable (DX_BROKER_URL): {exc!r}"
    if redis is not None and isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return f"Redis is not reachable (DX_REDIS_URL): {exc}"
    return None


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on its end)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file (e.g. captured by a test)
        return False
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR and POLLHUP are reported whatever the mask
    return any(events & select.POLLERR for _, events in poller.poll(0))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``dx`` command; returns its exit code."""
    try:
        return _run(argv)
    except BrokenPipeError:
        if not _stdout_gone():  # a socket's, not the reader of our output
            raise
        # the rest of the output, and the flush at exit, go nowhere instead of failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    try:
        settings = get_settings()
        configure("WARNING" if not command.role and settings.log_level == "INFO" else settings.log_level)
        if not command.role:  # a failed connection comes back as an exception, said once below
            logging.getLogger("pika").setLevel(logging.CRITICAL)
        try:
            code = int(command.run(args))
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
            # looked for only then: a check before every command would cost each a connection
            due = _schema_due() if command.needs_schema else None
            if due is None:
                raise
            raise due from None
        sys.stdout.flush()  # here, so that a reader gone shows now and not at exit
        return code
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"dx: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        print(f"dx: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        service = unavailable(exc)
        if service is not None:
            print(f"dx: {service}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        if isinstance(exc, DxError):
            print(f"dx: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise


def entry() -> NoReturn:
    """The ``dx`` console script: ``main``, then an exit without the interpreter's teardown of every
    loaded module, which takes a short command longer than its own work (streams are flushed first)."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    logging.shutdown()
    os._exit(code)
