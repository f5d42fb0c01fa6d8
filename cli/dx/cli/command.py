"""What every command module shares: exit codes, the command table's entry and output lines."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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


def usage_error(message: str) -> int:
    """Say what is wrong with the command line or configuration on stderr; returns EXIT_USAGE."""
    print(f"dx: {message}", file=sys.stderr)
    return EXIT_USAGE
