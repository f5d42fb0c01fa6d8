"""``dx user create|list|disable``: the console's users."""

from __future__ import annotations

import argparse
import getpass
import sys

from dx.cli.command import EXIT_OK, Command, json_argument, out, out_json, usage_error
from dx.shared import db


def _password(args: argparse.Namespace) -> str:
    """The new user's password: the first line of standard input with --password-stdin, else asked twice."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def cmd_user(args: argparse.Namespace) -> int:
    from dx.scheduler import users
    from dx.shared.catalog import tenant_exists

    db.migrate()
    with db.transaction() as conn:
        if args.action == "create":
            if not tenant_exists(conn, args.tenant):
                return usage_error(f"no tenant {args.tenant!r}; apply a configuration first")
            try:
                password = _password(args)
            except ValueError as exc:
                return usage_error(str(exc))
            if problems := users.check_new_user(args.username, args.role, password):
                return usage_error("; ".join(problems))
            if conn.execute("SELECT 1 FROM dx.users WHERE username = %s", (args.username,)).fetchone():
                return usage_error(f"user {args.username!r} exists already")
            user_id = users.create_user(conn, args.tenant, args.username, args.role, password)
            out(f"user {user_id} {args.username}: {args.role} of tenant {args.tenant}")
        elif args.action == "list" and args.json:
            out_json(users.list_users(conn, args.tenant))
        elif args.action == "list":
            out(f"{'tenant':<12} {'username':<30} {'role':<9} {'created':<17} {'last sign-in':<17} disabled")
            for u in users.list_users(conn, args.tenant):
                out(f"{u['tenant']:<12} {u['username']:<30} {u['role']:<9} " + " ".join(
                    f"{u[k]:%Y-%m-%d %H:%M}" if u[k] else f"{'-':<16}" for k in
                    ("created_at", "last_login_at", "disabled_at")).rstrip())
        elif not users.disable_user(conn, args.username):
            return usage_error(f"no enabled user {args.username!r}; `dx user list` shows them")
        else:
            out(f"user {args.username} disabled, its sessions ended")
    return EXIT_OK


def _user_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("create", help="a console user of a tenant (asks for the password)")
    c.add_argument("username", help="the sign-in name, e.g. the person's e-mail address")
    c.add_argument("--tenant", required=True)
    c.add_argument("--role", choices=("viewer", "operator"), required=True,
                   help="viewer: reads; operator: also runs, pauses and edits")
    c.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    c = sub.add_parser("list", help="users (never their password)")
    c.add_argument("--tenant")
    json_argument(c)
    c = sub.add_parser("disable", help="disable a user: its sessions end at once")
    c.add_argument("username")


COMMANDS = (
    Command("user", cmd_user, "create, list and disable the console's users", _user_arguments),
)
