"""``dx migrate``, ``dx apply`` and ``dx docs``: the control schema, the configuration and the error codes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg

from dx.cli.command import EXIT_FAILED, EXIT_OK, Command, out
from dx.shared import db
from dx.shared.errors import render_error_codes_markdown

#: The error-code reference, relative to the repository root.
DOCS_FILE = Path("docs", "error-codes.md")


def default_docs_path() -> Path:
    """``docs/error-codes.md`` of the checkout this file is in (the first parent directory that holds
    it), else under the current directory."""
    for parent in Path(__file__).resolve().parents:
        if (parent / DOCS_FILE).is_file():
            return parent / DOCS_FILE
    return Path.cwd() / DOCS_FILE


def cmd_migrate(args: argparse.Namespace) -> int:
    applied = db.migrate()
    out("applied: " + ", ".join(applied) if applied else "the control schema is up to date")
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from dx.shared.catalog import apply_config, known
    from dx.shared.config import parse_config
    from dx.shared.settings import get_settings

    text = Path(args.file).read_text(encoding="utf-8")
    db.ensure_schema()
    with db.connect() as conn:
        cfg = parse_config(text, known(conn), get_settings().trusted_hosts,
                           min_chunk_bytes=get_settings().min_chunk_bytes)
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
    path: Path = args.path or default_docs_path()
    text = render_error_codes_markdown()
    if args.check:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            print(f"{path} is out of date: run `dx docs`", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def _apply_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", required=True)
    p.add_argument("--dry-run", action="store_true", help="validate only; change nothing")
    p.add_argument("--discard-console-changes", action="store_true",
                   help="let the file's schedule and notifications replace those changed in the console since")


def _docs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true", help="fail if the file is out of date")
    p.add_argument("--path", type=Path, default=None,
                   help="the file (default: docs/error-codes.md of the checkout dx runs from)")


COMMANDS = (
    Command("migrate", cmd_migrate, "create or upgrade the control schema"),
    Command("apply", cmd_apply, "apply a YAML configuration (tenants, connections, databases, modules)",
            _apply_arguments),
    Command("docs", cmd_docs, "regenerate docs/error-codes.md from the code", _docs_arguments),
)
