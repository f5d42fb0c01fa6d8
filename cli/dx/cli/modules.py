"""``dx modules``, ``dx schedule``, ``dx pause`` and ``dx resume``: the modules and their schedules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime

from dx.cli.command import EXIT_OK, Command, json_argument, out, out_json, usage_error
from dx.shared import db


def cmd_modules(args: argparse.Namespace) -> int:
    from dx.scheduler.clock import Clock
    from dx.scheduler.schedule import next_fire
    from dx.shared.catalog import module_rows

    with db.connect() as conn:
        rows = module_rows(conn)
    now = Clock.from_settings().now()
    listing = []
    for r in rows:
        fire = next_fire(r["config"], now, r["tenant_timezone"])
        # a disabled tenant's modules run in no way, which says more than their pause
        state = "disabled" if not r["tenant_enabled"] else "paused" if r["paused"] else "active"
        listing.append({"id": r["id"], "tenant": r["tenant"], "kind": r["kind"], "database": r["database"],
                        "mode": r["mode"], "state": state, "next_fire": fire, "last_run": r["last_run"],
                        "last_status": r["last_status"]})
    if args.json:
        out_json(listing)
        return EXIT_OK
    out(f"{'module':<28} {'tenant':<12} {'kind':<9} {'mode':<9} {'state':<8} {'next fire':<26} last run")
    for m in listing:
        last = f"{m['last_run']} {m['last_status']}" if m["last_run"] else "-"
        nxt = "-" if m["next_fire"] is None else m["next_fire"].isoformat(timespec="minutes")
        out(f"{m['id']:<28} {m['tenant']:<12} {m['kind']:<9} {m['mode'] or '-':<9} "
            f"{m['state']:<8} {nxt:<26} {last}")
    return EXIT_OK


def cmd_schedule(args: argparse.Namespace) -> int:
    from dx.scheduler.clock import Clock
    from dx.scheduler.schedule import schedule_of
    from dx.shared.catalog import module_state

    if args.next < 1:
        return usage_error("--next must be at least 1")
    try:
        start = datetime.fromisoformat(args.from_time) if args.from_time else Clock.from_settings().now()
    except ValueError:
        return usage_error(f"--from {args.from_time!r}: expected an ISO time, e.g. 2026-10-24T12:00+02:00")
    with db.connect() as conn:
        state = module_state(conn, args.module)
    if state is None:
        return usage_error(f"no module {args.module!r}; `dx modules` lists them")
    schedule = schedule_of(state["config"])
    if schedule is None:
        return usage_error(f"module {args.module} has no schedule (it runs on demand only)")
    compiled = schedule.compile(state["tenant_timezone"])
    if start.tzinfo is None:  # a time without offset is read in the module's time zone
        start = start.replace(tzinfo=compiled.tz)
    if not state["tenant_enabled"]:
        print(f"dx: {args.module}'s tenant is disabled; these are the times it would fire once enabled",
              file=sys.stderr)
    elif state["paused"]:
        print(f"dx: {args.module} is paused; these are the times it would fire once resumed", file=sys.stderr)
    fires = compiled.next_fires(start, args.next)
    if args.json:
        out_json(fires)
        return EXIT_OK
    for instant in fires:
        out(instant.isoformat())
    return EXIT_OK


def _set_paused(paused: bool) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from dx.scheduler.clock import Clock
        from dx.scheduler.schedule import set_paused

        with db.transaction() as conn:
            found = set_paused(conn, args.module, paused, Clock.from_settings().now())
        if not found:
            return usage_error(f"no module {args.module!r}; `dx modules` lists them")
        out(f"{args.module} {'paused' if paused else 'resumed'}")
        return EXIT_OK
    return run


def _module_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("module")


def _schedule_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("module")
    p.add_argument("--next", type=int, default=5, metavar="N")
    p.add_argument("--from", dest="from_time", default=None, metavar="ISO-TIME",
                   help="count from this time (default: now; no offset: the module's time zone)")
    json_argument(p)


COMMANDS = (
    Command("modules", cmd_modules, "list the modules", json_argument, needs_schema=True),
    Command("pause", _set_paused(True), "pause a module's schedule", _module_argument, needs_schema=True),
    Command("resume", _set_paused(False), "resume a module's schedule", _module_argument, needs_schema=True),
    Command("schedule", cmd_schedule, "print a module's next fire times, in its time zone", _schedule_arguments,
            needs_schema=True),
)
