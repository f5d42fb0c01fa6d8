"""``dx token create|list|revoke``: the HTTP API's bearer tokens."""

from __future__ import annotations

import argparse
import sys

from dx.cli.command import EXIT_OK, Command, json_argument, out, out_json, usage_error
from dx.shared import db


def cmd_token(args: argparse.Namespace) -> int:
    from dx.scheduler import tokens
    from dx.shared.catalog import tenant_exists

    db.ensure_schema()
    with db.transaction() as conn:
        if args.action == "create":
            if not tenant_exists(conn, args.tenant):
                return usage_error(f"no tenant {args.tenant!r}; apply a configuration first")
            token_id, token = tokens.create_token(conn, args.tenant, args.name)
            print(f"token {token_id} for tenant {args.tenant}; it is shown once, keep it now:", file=sys.stderr)
            out(token)
        elif args.action == "list" and args.json:
            out_json(tokens.list_tokens(conn, args.tenant))
        elif args.action == "list":
            out(f"{'id':>5} {'tenant':<12} {'name':<20} {'created':<20} {'last used':<20} revoked")
            for t in tokens.list_tokens(conn, args.tenant):
                out(f"{t['id']:>5} {t['tenant']:<12} {t['name']:<20} " + " ".join(
                    f"{t[k]:%Y-%m-%d %H:%M:%S} " if t[k] else f"{'-':<20}" for k in
                    ("created_at", "last_used_at", "revoked_at")).rstrip())
        elif not tokens.revoke_token(conn, args.id):
            return usage_error(f"no live token {args.id}; `dx token list` shows them")
        else:
            out(f"token {args.id} revoked")
    return EXIT_OK


def _token_arguments(p: argparse.ArgumentParser) -> None:
    tok = p.add_subparsers(dest="action", required=True)
    t = tok.add_parser("create", help="make a token for a tenant and print it (once)")
    t.add_argument("--tenant", required=True)
    t.add_argument("--name", default="default", help="what the token is for, e.g. crm")
    t = tok.add_parser("list", help="tokens (never their value)")
    t.add_argument("--tenant")
    json_argument(t)
    t = tok.add_parser("revoke", help="revoke a token by id: it stops working at once")
    t.add_argument("id", type=int)


COMMANDS = (
    Command("token", cmd_token, "create, list and revoke the HTTP API's bearer tokens", _token_arguments),
)
