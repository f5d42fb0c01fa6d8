"""``dx run``, ``dx runs``, ``dx show`` and ``dx report``: runs, followed with a progress bar."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from psycopg import sql

from dx.cli.command import EXIT_FAILED, EXIT_OK, FILE, Command, json_argument, out, out_json, usage_error
from dx.shared import db, messages
from dx.shared.db import Conn
from dx.shared.errors import DxError
from dx.shared.runs import (
    COUNTERS,
    ENDED_CHANNEL,
    Run,
    RunStatus,
    Trigger,
    chunks_done,
    error_counts,
    file_source,
    get_run,
    list_runs,
    next_run,
)
from dx.shared.settings import get_settings

#: Seconds between two redraws of a waited-for run's progress (its end wakes the wait at once).
POLL_S = 0.2
#: Width of the progress bar, in characters.
BAR_WIDTH = 30
#: Seconds to wait, after a run of a file source ended, for what follows its end (a rejected file, a next run).
FOLLOW_S = 30.0


class Progress:
    """A run's progress on stderr: one line redrawn on a terminal, each change on its own line otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""

    def draw(self, run: Run, done: int) -> None:
        n = run["n_chunks"]
        if n:
            filled = int(BAR_WIDTH * done / n)
            line = (f"run {run['id']} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{n} chunks  "
                    f"{run['status']}")
        else:
            line = f"run {run['id']} {run['status']}" + (" (planning)" if run["status"] == "running" else "")
        if self.tty:
            sys.stderr.write("\r" + line.ljust(78))
            sys.stderr.flush()
        elif line != self.last:
            print(line, file=sys.stderr, flush=True)
        self.last = line

    def end(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


@contextmanager
def _listening() -> Iterator[Conn]:
    """A connection told of every run's end and e-mail (``ENDED_CHANNEL``)."""
    with db.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ENDED_CHANNEL)))
        yield conn


def _nudged(conn: Conn) -> None:
    """Wait until a run announces something, or POLL_S has passed (for the progress bar)."""
    for _ in conn.notifies(timeout=POLL_S, stop_after=1):
        pass


def wait_for(run_id: int, timeout_s: float | None = None) -> Run:
    """Follow the run until it ends, drawing a progress bar on stderr."""
    progress = Progress()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with _listening() as conn:
        while True:
            run = get_run(conn, run_id)
            assert run is not None
            progress.draw(run, chunks_done(conn, run_id))
            if RunStatus(run["status"]).terminal:
                progress.end()
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise DxError(f"run {run_id} did not end within {timeout_s} s; it goes on: dx show {run_id}")
            _nudged(conn)


def exit_code(run: Run) -> int:
    """The exit code of a command that waited for the run: 0 only if it completed (or was skipped)."""
    return EXIT_OK if run["status"] in (RunStatus.COMPLETED.value, RunStatus.SKIPPED.value) else EXIT_FAILED


def run_module(module: str, *, wait: bool, requested_by: str | None, timeout_s: float | None = None) -> int:
    """Request a run; with the embedded broker the work happens in this process. With ``files: all``
    the runs its end makes for the next pending files are followed too: the worst outcome decides."""
    from dx.cli.roles import embedded_worker
    from dx.scheduler.requests import request_run

    with embedded_worker(get_settings()) as worker:
        run_id = request_run(module, Trigger.MANUAL, requested_by)
        if worker is None:  # the plan is sent: nothing more goes through the broker
            messages.close()
        if not wait and worker is None:
            out(f"run {run_id} queued; follow it with: dx show {run_id}")
            return EXIT_OK
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        codes = []
        following: int | None = run_id
        while following is not None:  # files: all: each run's end may make the next file's run
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            run, following = reported(wait_for(following, left))
            print_run(run, brief=True)
            codes.append(exit_code(run))
    return max(codes)


def reported(run: Run) -> tuple[Run, int | None]:
    """An ended run of a file source once what follows its end is done (its e-mail is sent last): its
    file rejected, which its message says, and with ``files: all`` the next file's run, returned too.
    The run as it ended if that takes longer than FOLLOW_S."""
    source = file_source(run)
    if source is None:
        return run, None
    deadline = time.monotonic() + FOLLOW_S
    with _listening() as conn:
        while True:
            ended = get_run(conn, run["id"])
            assert ended is not None
            if ended["email_sent_at"] is not None:
                return ended, next_run(conn, run["id"]) if source.get("files") == "all" else None
            if time.monotonic() > deadline:
                print(f"dx: run {run['id']} has not sent its e-mail yet; later runs of {run['module']}: "
                      f"dx runs --module {run['module']}", file=sys.stderr)
                return ended, None
            _nudged(conn)


def print_run(run: Run, brief: bool = False) -> None:
    """A run's status, warnings, counters and error counts (with its trigger and source unless ``brief``)."""
    with db.connect() as conn:
        errors = error_counts(conn, run["id"])
    duration = ""
    if run["started_at"] and run["finished_at"]:
        duration = f" in {(run['finished_at'] - run['started_at']).total_seconds():.2f} s"
    out(f"run {run['id']} of {run['module']} (tenant {run['tenant']}): {run['status']}{duration}")
    if run["error_code"] or run["error_message"]:
        out(f"  {run['error_code'] or 'note'}: {run['error_message']}")
    for w in run["warnings"]:
        out(f"  warning {w['code']}: {w['message']}")
    if not brief:
        out(f"  trigger {run['trigger']}" + (f" by {run['requested_by']}" if run["requested_by"] else "")
            + f", source {run['source_path'] or '-'}, chunks {run['n_chunks'] if run['n_chunks'] is not None else '-'}")
        if run["redrives"]:  # the scheduler sent a lost stage again (docs/operations.md: How runs end)
            out(f"  re-driven {run['redrives']} time{'s' if run['redrives'] > 1 else ''} after a stall")
    counters: Mapping[str, Any] = run
    out("  " + "  ".join(f"{c}={counters[c]:,}" for c in COUNTERS if counters[c] or c == "rows_read"))
    for e in errors:
        out(f"  {e['error_code']:<24} {e['n']:>10,}")
    if errors:
        out(f"  failed operations: dx report {run['id']} -o failures.csv")


def cmd_run(args: argparse.Namespace) -> int:
    return run_module(args.module, wait=args.wait, requested_by=args.requested_by, timeout_s=args.timeout)


def cmd_runs(args: argparse.Namespace) -> int:
    with db.connect() as conn:
        rows = list_runs(conn, args.module or None, args.limit)
    if args.json:
        out_json(rows)
        return EXIT_OK
    out(f"{'run':>6} {'module':<28} {'status':<22} {'read':>10} {'failed':>8} {'started':<20}")
    for r in rows:
        failed = r["not_inserted"] + r["not_updated"] + r["not_deleted"]
        started = r["started_at"].strftime("%Y-%m-%d %H:%M:%S") if r["started_at"] else "-"
        out(f"{r['id']:>6} {r['module']:<28} {r['status']:<22} {r['rows_read']:>10,} {failed:>8,} {started:<20}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    with db.connect() as conn:
        run = get_run(conn, args.run)
        if run is None:
            return usage_error(f"no run {args.run}; `dx runs` lists them")
        if args.json:
            doc = dict(run)
            doc["errors"] = {e["error_code"]: e["n"] for e in error_counts(conn, args.run)}
            doc["chunks_done"] = chunks_done(conn, args.run)
            out_json(doc)
            return EXIT_OK
    print_run(run)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from dx.shared.report import write_report

    with db.connect() as conn:
        if get_run(conn, args.run) is None:
            return usage_error(f"no run {args.run}; `dx runs` lists them")
        if args.output and args.output != "-":
            with open(args.output, "w", encoding="utf-8", newline="") as fh:
                n = write_report(conn, args.run, fh)
            print(f"{n} failed operations written to {args.output}", file=sys.stderr)
        else:
            write_report(conn, args.run, sys.stdout)
    return EXIT_OK


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("module")
    p.add_argument("--wait", action="store_true", help="wait for the end, with a progress bar")
    p.add_argument("--requested-by", default=None)
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up waiting after N seconds")


def _runs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--module")
    p.add_argument("--limit", type=int, default=20)
    json_argument(p)


def _show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=int)
    p.add_argument("--json", action="store_true", help="print the run as one JSON object")


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=int)
    p.add_argument("-o", "--output", default="-", metavar=FILE, help="the CSV file (default -: stdout)")


COMMANDS = (
    Command("run", cmd_run, "run a module now", _run_arguments, needs_schema=True),
    Command("runs", cmd_runs, "list runs, newest first", _runs_arguments, needs_schema=True),
    Command("show", cmd_show, "show one run", _show_arguments, needs_schema=True),
    Command("report", cmd_report, "the failed operations of a run, as CSV", _report_arguments, needs_schema=True),
)
