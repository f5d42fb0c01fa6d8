"""``dx migrate``, ``dx apply`` and ``dx docs``: the control schema, the configuration and the error codes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg

from dx.cli.command import EXIT_FAILED, EXIT_OK, FILE, Command, out, usage_error
from dx.shared import db
from dx.shared.errors import render_error_codes_markdown

#: The error-code reference, relative to the repository root.
DOCS_FILE = Path("docs", "error-codes.md")


def checkout_docs_path() -> Path | None:
    """``docs/error-codes.md`` of the checkout dx runs from (an editable install: this file is
    ``cli/dx/cli/config.py`` of it); None when dx is installed from its wheel."""
    root = Path(__file__).resolve().parent.parent.parent.parent
    if (root / "cli" / "pyproject.toml").is_file() and (root / DOCS_FILE).is_file():
        return root / DOCS_FILE
    return None


def cmd_migrate(args: argparse.Namespace) -> int:
    applied = db.migrate()
    out("applied: " + ", ".join(applied) if applied else "the control schema is up to date")
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from dx.shared.catalog import apply_config, known
    from dx.shared.config import parse_config, read_config_file
    from dx.shared.settings import get_settings

    text = read_config_file(Path(args.file))
    db.ensure_schema()
    with db.connect() as conn:
        cfg = parse_config(text, known(conn), get_settings().trusted_hosts,
                           min_chunk_bytes=get_settings().min_chunk_bytes, local_roots=get_settings().local_roots)
        try:
            with conn.transaction():
                changes = apply_config(conn, cfg, discard_console_changes=args.discard_console_changes)
                if args.dry_run:  # everything was checked against the database; nothing is kept
                    raise psycopg.Rollback()
        except psycopg.Rollback:
            pass
    verb = "would apply" if args.dry_run else "applied"
    out(f"{verb}: " + "; ".join(changes) if changes else "nothing to apply")
    return EXIT_OK


def cmd_docs(args: argparse.Namespace) -> int:
    text = render_error_codes_markdown()
    # `-o -`, or installed from the wheel (no checkout to write into): stdout
    path: Path | None = None if str(args.output) == "-" else args.output or checkout_docs_path()
    if args.check:
        if path is None:
            return usage_error("--check compares with a file: give it with -o FILE")
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            print(f"{path} is out of date: run `dx docs`", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    if path is None:
        sys.stdout.write(text)
        return EXIT_OK
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def _apply_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", required=True, metavar=FILE)
    p.add_argument("--dry-run", action="store_true", help="validate only; change nothing")
    p.add_argument("--discard-console-changes", action="store_true",
                   help="let the file's schedule and notifications replace those changed in the console since")


def _docs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", help="fail if the file differs from the code's reference")
    p.add_argument("-o", "--output", "--path", type=Path, default=None, metavar=FILE,
                   help="the file to write or check, - for stdout (default: docs/error-codes.md of the "
                        "checkout dx runs from; installed from the wheel, stdout)")


COMMANDS = (
    Command("migrate", cmd_migrate, "create or upgrade the control schema"),
    Command("apply", cmd_apply, "apply a YAML configuration (tenants, connections, databases, modules)",
            _apply_arguments),
    Command("docs", cmd_docs, "the error-code reference (docs/error-codes.md) generated from the code",
            _docs_arguments),
)
