"""What every command module shares: exit codes, the command table's entry and output lines."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

#: 0 done (a run completed), 1 a run failed or completed with errors, 2 bad usage or configuration,
#: 3 a service (PostgreSQL, RabbitMQ, Redis) not reachable: try again later.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
#: The reader of the output went away (``dx runs | head -1``): 128 + SIGPIPE, as a shell reports a
#: program that SIGPIPE ended, but quietly.
EXIT_BROKEN_PIPE = 141


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command without arguments."""


@dataclass(frozen=True)
class Command:
    """One ``dx`` command: its name, function, help text and arguments."""

    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    #: reads or writes the control schema without migrating it first: `dx migrate` must have run
    needs_schema: bool = False
    #: a long-running role (worker, scheduler, serve): logs at the configured level, not WARNING
    role: bool = False


def out(text: str = "") -> None:
    """A line of the command's result, on stdout."""
    print(text, flush=True)


def _json_default(value: Any) -> Any:
    """What JSON lacks: times and dates in ISO 8601."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def out_json(doc: Mapping[str, Any] | Sequence[Any]) -> None:
    """``--json``: one document on stdout (a listing is an array), times in ISO 8601."""
    out(json.dumps(doc, indent=2, default=_json_default))


def json_argument(p: argparse.ArgumentParser) -> None:
    """The ``--json`` flag of a listing."""
    p.add_argument("--json", action="store_true", help="print one JSON array instead of the table")


#: The metavar of an option whose value is a file name: ``dx completion``'s scripts complete file names there.
FILE = "FILE"


def usage_error(message: str) -> int:
    """Say what is wrong with the command line or configuration on stderr; returns EXIT_USAGE."""
    print(f"dx: {message}", file=sys.stderr)
    return EXIT_USAGE
