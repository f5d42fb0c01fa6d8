"""``dx generate`` and ``dx demo``: demo and benchmark data, and the Importer end to end."""

from __future__ import annotations

import argparse
import sys
from importlib.util import find_spec
from pathlib import Path

from dx.cli.command import EXIT_OK, FILE, Command, usage_error
from dx.shared import db

#: What to do when the development kit is not installed (a server's install leaves it out).
NO_DEVKIT = ("dx generate and dx demo come with the development kit, which is not installed: from a checkout, "
             "pip install ./devkit './shared[embedded]' (or bash scripts/bootstrap.sh)")


def cmd_generate(args: argparse.Namespace) -> int:
    if find_spec("dx.devkit") is None:
        return usage_error(NO_DEVKIT)
    if args.what == "events":
        return _generate_events(args)
    from dx.devkit.generate import contacts, updates, write_csv

    if args.what == "updates":
        frame = updates(contacts(args.base_rows, seed=args.seed)["email"], args.rows, seed=args.seed,
                        bad_ratio=args.bad_ratio)
    else:
        frame = contacts(args.rows, seed=args.seed, bad_ratio=args.bad_ratio, start=args.start)
    write_csv(frame, Path(args.output), delimiter=args.delimiter, encoding=args.encoding)
    print(f"{args.rows:,} {args.what} written to {args.output}", file=sys.stderr)
    return EXIT_OK


def _generate_events(args: argparse.Namespace) -> int:
    from dx.devkit import events
    from dx.shared.catalog import primary_key

    db.migrate()
    with db.transaction() as conn:
        key = primary_key(conn, args.tenant, args.database)
        if key is None:
            return usage_error(f"no database {args.database!r} for tenant {args.tenant!r}; "
                               "apply a configuration first")
        keys = events.contact_keys(conn, args.tenant, args.database, key, args.contacts)
        first = events.next_delivery_id(conn, args.tenant, args.database)
        stream = events.generate_events(args.deliveries, keys, seed=args.seed, first_delivery=first)
        n = events.insert_events(conn, args.tenant, args.database, stream)
    print(f"{n:,} events of deliveries {first}..{first + args.deliveries - 1} to {len(keys):,} contacts "
          f"written for {args.tenant}/{args.database}", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    if find_spec("dx.devkit") is None:
        return usage_error(NO_DEVKIT)
    from dx.cli.runs import run_module
    from dx.devkit.demo import run_demo

    return run_demo(args.rows, run_module)


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    gen = p.add_subparsers(dest="what", required=True)
    for what, help_text in (("contacts", "a contact CSV file"),
                            ("updates", "an Updater CSV file: ~60%% U, 25%% I, 15%% D over the contacts of "
                                        "`generate contacts --rows BASE_ROWS` with the same seed")):
        g = gen.add_parser(what, help=help_text)
        g.add_argument("--rows", type=int, default=10_000)
        g.add_argument("--bad-ratio", type=float, default=0.0 if what == "contacts" else 0.01)
        g.add_argument("--seed", type=int, default=7)
        if what == "contacts":
            g.add_argument("--start", type=int, default=0, help="number of the first contact")
        else:
            g.add_argument("--base-rows", type=int, required=True, help="contacts already in the database")
        g.add_argument("--delimiter", default=",")
        g.add_argument("--encoding", default="utf-8")
        g.add_argument("-o", "--output", required=True, metavar=FILE)
    g = gen.add_parser("events", help="a feedback event stream, into the platform's events table")
    g.add_argument("--tenant", required=True)
    g.add_argument("--database", required=True)
    g.add_argument("--deliveries", type=int, default=3)
    g.add_argument("--contacts", type=int, default=1000, help="contacts per delivery (the database's first keys)")
    g.add_argument("--seed", type=int, default=7)


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=100_000)


COMMANDS = (
    Command("generate", cmd_generate, "generate demo and benchmark data", _generate_arguments),
    Command("demo", cmd_demo, "import a generated file end to end on embedded defaults", _demo_arguments),
)
