"""``dx completion bash|zsh|tcsh``: a shell completion script for every command and option.

The script is static (shtab writes it from the parser): pressing TAB runs no Python, and a new
version of dx needs the script written again.
"""

from __future__ import annotations

import argparse

from dx.cli.command import EXIT_OK, FILE, Command

#: The shells shtab writes scripts for.
SHELLS = ("bash", "zsh", "tcsh")


def _mark_files(parser: argparse.ArgumentParser, complete_file: object) -> None:
    """Complete file names where an option's value is a FILE, in every subcommand."""
    for action in parser._actions:
        if action.metavar == FILE:
            action.complete = complete_file  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _mark_files(sub, complete_file)


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    from dx.cli import build_parser  # the whole parser: this command's module is part of it

    parser = build_parser()
    _mark_files(parser, shtab.FILE)
    print(shtab.complete(parser, shell=args.shell), end="")
    return EXIT_OK


def _completion_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=SHELLS)


COMMANDS = (
    Command("completion", cmd_completion,
            "print a shell completion script: eval \"$(dx completion bash)\" in ~/.bashrc", _completion_arguments),
)
