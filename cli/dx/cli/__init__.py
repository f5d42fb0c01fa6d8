"""The ``dx`` command line (DESIGN §6).

Exit codes: 0 completed, 1 failed or completed with errors, 2 bad usage or
configuration.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from dx.shared import db
from dx.shared.errors import ConfigError, DxError, render_error_codes_markdown
from dx.shared.logging import configure
from dx.shared.runs import COUNTERS, RunStatus, Trigger, chunks_done, error_counts, get_run
from dx.shared.settings import get_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Seconds between two looks at a run being waited for.
POLL_S = 0.2
#: Commands that read or write the control schema without migrating it first.
SCHEMA_USERS = ("modules", "pause", "resume", "run", "runs", "show", "report", "schedule")
DOCS_PATH = Path(__file__).resolve().parent.parent / "docs" / "error-codes.md"


def _out(text: str = "") -> None:
    print(text, flush=True)


def cmd_migrate(args: argparse.Namespace) -> int:
    applied = db.migrate()
    _out("applied: " + ", ".join(applied) if applied else "the control schema is up to date")
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from dx.shared.catalog import apply_config, known
    from dx.shared.config import parse_config

    text = Path(args.file).read_text(encoding="utf-8")
    db.migrate()
    with db.connect() as conn:
        cfg = parse_config(text, known(conn))
        try:
            with conn.transaction():
                changes = apply_config(conn, cfg)
                if args.dry_run:  # everything was checked against the database; nothing is kept
                    raise psycopg.Rollback()
        except psycopg.Rollback:
            pass
    verb = "would apply" if args.dry_run else "applied"
    _out(f"{verb}: " + "; ".join(changes) if changes else "nothing to apply")
    return EXIT_OK


def cmd_modules(args: argparse.Namespace) -> int:
    from dx.scheduler.clock import Clock
    from dx.scheduler.schedule import next_fire
    from dx.shared.catalog import module_rows

    with db.connect() as conn:
        rows = module_rows(conn)
    now = Clock.from_settings().now()
    _out(f"{'module':<28} {'tenant':<12} {'kind':<9} {'mode':<9} {'state':<7} {'next fire':<26} last run")
    for r in rows:
        last = f"{r['last_run']} {r['last_status']}" if r["last_run"] else "-"
        fire = next_fire(r["config"], now)
        nxt = "-" if fire is None else fire.isoformat(timespec="minutes")
        _out(f"{r['id']:<28} {r['tenant']:<12} {r['kind']:<9} {r['mode'] or '-':<9} "
             f"{'paused' if r['paused'] else 'active':<7} {nxt:<26} {last}")
    return EXIT_OK


def cmd_schedule(args: argparse.Namespace) -> int:
    from dx.scheduler.clock import Clock
    from dx.scheduler.schedule import schedule_of

    if args.next < 1:
        print("dx: --next must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        start = datetime.fromisoformat(args.from_time) if args.from_time else Clock.from_settings().now()
    except ValueError:
        print(f"dx: --from {args.from_time!r}: expected an ISO time, e.g. 2026-10-24T12:00+02:00", file=sys.stderr)
        return EXIT_USAGE
    with db.connect() as conn:
        row = conn.execute("SELECT config, paused FROM dx.modules WHERE id = %s", (args.module,)).fetchone()
    if row is None:
        print(f"dx: no module {args.module!r}; `dx modules` lists them", file=sys.stderr)
        return EXIT_USAGE
    schedule = schedule_of(row["config"])
    if schedule is None:
        print(f"dx: module {args.module} has no schedule (it runs on demand only)", file=sys.stderr)
        return EXIT_USAGE
    compiled = schedule.compile()
    if start.tzinfo is None:  # a time without offset is read in the module's time zone
        start = start.replace(tzinfo=compiled.tz)
    if row["paused"]:
        print(f"dx: {args.module} is paused; these are the times it would fire once resumed", file=sys.stderr)
    for instant in compiled.next_fires(start, args.next):
        _out(instant.isoformat())
    return EXIT_OK


def _set_paused(paused: bool) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from dx.scheduler.clock import Clock
        from dx.scheduler.schedule import set_paused

        with db.transaction() as conn:
            found = set_paused(conn, args.module, paused, Clock.from_settings().now())
        if not found:
            print(f"dx: no module {args.module!r}; `dx modules` lists them", file=sys.stderr)
            return EXIT_USAGE
        _out(f"{args.module} {'paused' if paused else 'resumed'}")
        return EXIT_OK
    return run


def _progress(run: dict[str, Any], done: int, tty: bool, last: list[str]) -> None:
    n = run["n_chunks"]
    if n:
        width = 30
        filled = int(width * done / n)
        line = f"run {run['id']} [{'#' * filled}{'.' * (width - filled)}] {done}/{n} chunks  {run['status']}"
    else:
        line = f"run {run['id']} {run['status']}" + (" (planning)" if run["status"] == "running" else "")
    if tty:
        sys.stderr.write("\r" + line.ljust(78))
        sys.stderr.flush()
    elif line != last[0]:
        print(line, file=sys.stderr, flush=True)
    last[0] = line


def wait_for(run_id: int, timeout_s: float | None = None) -> dict[str, Any]:
    """Poll the run until it ends, drawing a progress bar on stderr."""
    tty, last = sys.stderr.isatty(), [""]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with db.connect(autocommit=True) as conn:
        while True:
            run = get_run(conn, run_id)
            assert run is not None
            _progress(run, chunks_done(conn, run_id), tty, last)
            if RunStatus(run["status"]).terminal:
                if tty:
                    sys.stderr.write("\n")
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise DxError(f"run {run_id} did not end within {timeout_s} s; it goes on: dx show {run_id}")
            time.sleep(POLL_S)


def _exit_for(run: dict[str, Any]) -> int:
    return EXIT_OK if run["status"] in (RunStatus.COMPLETED.value, RunStatus.SKIPPED.value) else EXIT_FAILED


def run_module(module: str, *, wait: bool, requested_by: str | None, timeout_s: float | None = None) -> int:
    """Request a run; with the embedded broker the work happens in this process."""
    from dx.scheduler.requests import request_run
    from dx.workers.broker import start_worker

    settings = get_settings()
    worker = start_worker(2) if settings.embedded_broker else None
    try:
        run_id = request_run(module, Trigger.MANUAL, requested_by)
        if not wait and worker is None:
            _out(f"run {run_id} queued; follow it with: dx show {run_id}")
            return EXIT_OK
        run = wait_for(run_id, timeout_s)
    finally:
        if worker is not None:
            worker.stop()
    _print_run(run, brief=True)
    return _exit_for(run)


def cmd_run(args: argparse.Namespace) -> int:
    return run_module(args.module, wait=args.wait, requested_by=args.requested_by, timeout_s=args.timeout)


def cmd_runs(args: argparse.Namespace) -> int:
    where, params = ("WHERE module = %s", [args.module]) if args.module else ("", [])
    with db.connect() as conn:
        rows = conn.execute(f"SELECT * FROM dx.runs {where} ORDER BY id DESC LIMIT %s",  # noqa: S608
                            [*params, args.limit]).fetchall()
    _out(f"{'run':>6} {'module':<28} {'status':<22} {'read':>10} {'failed':>8} {'started':<20}")
    for r in rows:
        failed = r["not_inserted"] + r["not_updated"] + r["not_deleted"]
        started = r["started_at"].strftime("%Y-%m-%d %H:%M:%S") if r["started_at"] else "-"
        _out(f"{r['id']:>6} {r['module']:<28} {r['status']:<22} {r['rows_read']:>10,} {failed:>8,} {started:<20}")
    return EXIT_OK


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _print_run(run: dict[str, Any], brief: bool = False) -> None:
    with db.connect() as conn:
        errors = error_counts(conn, run["id"])
    duration = ""
    if run["started_at"] and run["finished_at"]:
        duration = f" in {(run['finished_at'] - run['started_at']).total_seconds():.2f} s"
    _out(f"run {run['id']} of {run['module']} (tenant {run['tenant']}): {run['status']}{duration}")
    if run["error_code"] or run["error_message"]:
        _out(f"  {run['error_code'] or 'note'}: {run['error_message']}")
    if not brief:
        _out(f"  trigger {run['trigger']}" + (f" by {run['requested_by']}" if run["requested_by"] else "")
             + f", source {run['source_path'] or '-'}, chunks {run['n_chunks'] if run['n_chunks'] is not None else '-'}")
    _out("  " + "  ".join(f"{c}={run[c]:,}" for c in COUNTERS if run[c] or c == "rows_read"))
    for e in errors:
        _out(f"  {e['error_code']:<24} {e['n']:>10,}")
    if errors:
        _out(f"  failed operations: dx report {run['id']} -o failures.csv")


def cmd_show(args: argparse.Namespace) -> int:
    with db.connect() as conn:
        run = get_run(conn, args.run)
        if run is None:
            print(f"dx: no run {args.run}; `dx runs` lists them", file=sys.stderr)
            return EXIT_USAGE
        if args.json:
            doc = {k: _jsonable(v) for k, v in run.items()}
            doc["errors"] = {e["error_code"]: e["n"] for e in error_counts(conn, args.run)}
            doc["chunks_done"] = chunks_done(conn, args.run)
            _out(json.dumps(doc, indent=2))
            return EXIT_OK
    _print_run(run)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from dx.shared.report import write_report

    with db.connect() as conn:
        if get_run(conn, args.run) is None:
            print(f"dx: no run {args.run}; `dx runs` lists them", file=sys.stderr)
            return EXIT_USAGE
        if args.output and args.output != "-":
            with open(args.output, "w", encoding="utf-8", newline="") as fh:
                n = write_report(conn, args.run, fh)
            print(f"{n} failed operations written to {args.output}", file=sys.stderr)
        else:
            write_report(conn, args.run, sys.stdout)
    return EXIT_OK


def _stop_on_signals() -> threading.Event:
    """An event that SIGTERM (Kubernetes stopping the pod) or SIGINT sets."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_worker(args: argparse.Namespace) -> int:
    from dx.workers.broker import start_worker

    settings = get_settings()
    if settings.embedded_broker:
        print("dx worker: DX_BROKER_URL is unset; with the embedded broker the worker runs inside "
              "`dx run` and `dx demo`. Set DX_BROKER_URL=amqp://... to run a separate worker.", file=sys.stderr)
        return EXIT_USAGE
    db.migrate()
    stop = _stop_on_signals()
    worker = start_worker(args.threads or settings.worker_threads)
    print(json.dumps({"event": "worker.started", "threads": worker.worker_threads}), file=sys.stderr, flush=True)
    stop.wait()
    worker.stop()  # finishes the messages in hand, returns the prefetched ones
    return EXIT_OK


def cmd_scheduler(args: argparse.Namespace) -> int:
    from dx.scheduler.amqp import RequestConsumer
    from dx.scheduler.loop import Scheduler
    from dx.workers.broker import start_worker

    settings = get_settings()
    db.migrate()
    stop = _stop_on_signals()
    worker = consumer = None
    if settings.broker_url is None:  # embedded: the runs it fires are worked on in this process
        worker = start_worker(2)
        print(json.dumps({"event": "scheduler.embedded", "note": "DX_BROKER_URL is unset: no dx.requests "
                          "consumer; fired runs are worked on in this process"}), file=sys.stderr, flush=True)
    else:
        consumer = RequestConsumer(settings.broker_url, stop)
        consumer.start()
    Scheduler(settings).run(stop)
    if consumer is not None:
        consumer.join(10)
    if worker is not None:
        worker.stop()
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from dx.scheduler.http import serve

    return serve(args.host, args.port)


def cmd_token(args: argparse.Namespace) -> int:
    from dx.scheduler import tokens

    db.migrate()
    with db.transaction() as conn:
        if args.action == "create":
            if conn.execute("SELECT 1 FROM dx.tenants WHERE id = %s", (args.tenant,)).fetchone() is None:
                print(f"dx: no tenant {args.tenant!r}; apply a configuration first", file=sys.stderr)
                return EXIT_USAGE
            token_id, token = tokens.create_token(conn, args.tenant, args.name)
            print(f"token {token_id} for tenant {args.tenant}; it is shown once, keep it now:", file=sys.stderr)
            _out(token)
        elif args.action == "list":
            _out(f"{'id':>5} {'tenant':<12} {'name':<20} {'created':<20} {'last used':<20} revoked")
            for t in tokens.list_tokens(conn, args.tenant):
                _out(f"{t['id']:>5} {t['tenant']:<12} {t['name']:<20} " + " ".join(
                    f"{t[k]:%Y-%m-%d %H:%M:%S} " if t[k] else f"{'-':<20}" for k in
                    ("created_at", "last_used_at", "revoked_at")).rstrip())
        elif not tokens.revoke_token(conn, args.id):
            print(f"dx: no live token {args.id}; `dx token list` shows them", file=sys.stderr)
            return EXIT_USAGE
        else:
            _out(f"token {args.id} revoked")
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
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

    db.migrate()
    with db.transaction() as conn:
        row = conn.execute("SELECT primary_key FROM dx.databases WHERE tenant = %s AND id = %s",
                           (args.tenant, args.database)).fetchone()
        if row is None:
            print(f"dx: no database {args.database!r} for tenant {args.tenant!r}; apply a configuration first",
                  file=sys.stderr)
            return EXIT_USAGE
        keys = events.contact_keys(conn, args.tenant, args.database, row["primary_key"], args.contacts)
        first = events.next_delivery_id(conn, args.tenant, args.database)
        stream = events.generate_events(args.deliveries, keys, seed=args.seed, first_delivery=first)
        n = events.insert_events(conn, args.tenant, args.database, stream)
    print(f"{n:,} events of deliveries {first}..{first + args.deliveries - 1} to {len(keys):,} contacts "
          f"written for {args.tenant}/{args.database}", file=sys.stderr)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from dx.devkit.demo import run_demo

    return run_demo(args.rows)


def cmd_docs(args: argparse.Namespace) -> int:
    text = render_error_codes_markdown()
    if args.check:
        if not DOCS_PATH.exists() or DOCS_PATH.read_text(encoding="utf-8") != text:
            print(f"{DOCS_PATH} is out of date: run `dx docs`", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    DOCS_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {DOCS_PATH}", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dx", description="DataExchange: contact data in and out of the platform.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    add("migrate", cmd_migrate, "create or upgrade the control schema")
    p = add("apply", cmd_apply, "apply a YAML configuration (tenants, connections, databases, modules)")
    p.add_argument("-f", "--file", required=True)
    p.add_argument("--dry-run", action="store_true", help="validate only; change nothing")
    add("modules", cmd_modules, "list the modules")
    p = add("pause", _set_paused(True), "pause a module's schedule")
    p.add_argument("module")
    p = add("resume", _set_paused(False), "resume a module's schedule")
    p.add_argument("module")
    p = add("run", cmd_run, "run a module now")
    p.add_argument("module")
    p.add_argument("--wait", action="store_true", help="wait for the end, with a progress bar")
    p.add_argument("--requested-by", default=None)
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up waiting after N seconds")
    p = add("runs", cmd_runs, "list runs, newest first")
    p.add_argument("--module")
    p.add_argument("--limit", type=int, default=20)
    p = add("show", cmd_show, "show one run")
    p.add_argument("run", type=int)
    p.add_argument("--json", action="store_true")
    p = add("report", cmd_report, "the failed operations of a run, as CSV")
    p.add_argument("run", type=int)
    p.add_argument("-o", "--output", default="-")
    p = add("schedule", cmd_schedule, "print a module's next fire times, in its time zone")
    p.add_argument("module")
    p.add_argument("--next", type=int, default=5, metavar="N")
    p.add_argument("--from", dest="from_time", default=None, metavar="ISO-TIME",
                   help="count from this time (default: now; no offset: the module's time zone)")
    add("scheduler", cmd_scheduler, "fire schedules and consume dx.requests until SIGTERM (run 1+ replicas)")
    p = add("serve", cmd_serve, "serve the HTTP API, the web console and /metrics until SIGTERM")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8080)
    p = add("token", cmd_token, "create, list and revoke the HTTP API's bearer tokens")
    tok = p.add_subparsers(dest="action", required=True)
    t = tok.add_parser("create", help="make a token for a tenant and print it (once)")
    t.add_argument("--tenant", required=True)
    t.add_argument("--name", default="default", help="what the token is for, e.g. crm")
    t = tok.add_parser("list", help="tokens (never their value)")
    t.add_argument("--tenant")
    t = tok.add_parser("revoke", help="revoke a token by id: it stops working at once")
    t.add_argument("id", type=int)
    p = add("worker", cmd_worker, "consume jobs from RabbitMQ until SIGTERM")
    p.add_argument("--threads", type=int, default=None)
    p = add("generate", cmd_generate, "generate demo and benchmark data")
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
        g.add_argument("-o", "--output", required=True)
    g = gen.add_parser("events", help="a feedback event stream, into the platform's events table")
    g.add_argument("--tenant", required=True)
    g.add_argument("--database", required=True)
    g.add_argument("--deliveries", type=int, default=3)
    g.add_argument("--contacts", type=int, default=1000, help="contacts per delivery (the database's first keys)")
    g.add_argument("--seed", type=int, default=7)
    p = add("demo", cmd_demo, "import a generated file end to end on embedded defaults")
    p.add_argument("--rows", type=int, default=100_000)
    p = add("docs", cmd_docs, "regenerate docs/error-codes.md from the code")
    p.add_argument("--check", action="store_true", help="fail if the file is out of date")
    return parser


def _require_schema() -> None:
    """A clear error, instead of a missing column later, when `dx migrate` is due."""
    with db.connect() as conn:
        missing = db.missing_migrations(conn)
    if missing:
        raise ConfigError([f"the control schema lacks {', '.join(missing)}: run `dx migrate` "
                           "(dx worker, dx scheduler and dx serve migrate when they start)"])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
        interactive = args.command not in ("worker", "scheduler", "serve")
        configure("WARNING" if interactive and settings.log_level == "INFO" else settings.log_level,
                  json=not interactive)
        if args.command in SCHEMA_USERS:
            _require_schema()
        return int(args.func(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"dx: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except DxError as exc:
        print(f"dx: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        print(f"dx: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
