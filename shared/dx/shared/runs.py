"""Runs: their statuses and counters, and the queries every part shares."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypedDict, cast

import structlog
from prometheus_client import Counter
from psycopg import sql
from psycopg.types.json import Jsonb

from dx.shared.db import Conn
from dx.shared.errors import ErrorCode

if TYPE_CHECKING:
    from dx.shared.catalog import ModuleDef

log = structlog.get_logger(__name__)
#: Runs this process ended, and their records by counter (``rows_read``, ``inserted``, ...,
#: ``rows_exported``): Prometheus sums them over the processes.
RUNS_ENDED = Counter("dx_runs_ended", "Runs ended by this process, by outcome", ["tenant", "module", "status"])
ROWS = Counter("dx_rows", "Records of the runs this process ended, by counter", ["tenant", "module", "outcome"])

#: The channel on which a run announces its end and then its e-mail (its id as payload), for those waiting.
ENDED_CHANNEL = "dx_run_ended"
#: The table of a run's failed operations (chunks COPY theirs into it).
FAILED_TABLE = sql.Identifier("dx", "failed_operations")
#: Counters of a run, in the order reports show them.
COUNTERS = ("rows_read", "inserted", "updated", "deleted", "not_inserted", "not_updated",
            "not_deleted", "rows_exported")
#: The counters of what a run applied: 0 when it applied nothing (it failed and its work was discarded).
APPLIED = ("inserted", "updated", "deleted")


class RunStatus(StrEnum):
    """Where a run stands; the last five are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    SKIPPED = "skipped"
    ABORTED = "aborted"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


#: The statuses a run may move to from each status; the terminal ones move nowhere.
TRANSITIONS: dict[RunStatus, tuple[RunStatus, ...]] = {
    RunStatus.QUEUED: tuple(s for s in RunStatus if s is not RunStatus.QUEUED),
    RunStatus.RUNNING: tuple(s for s in RunStatus if s.terminal),
    **{s: () for s in RunStatus if s.terminal},
}


class Run(TypedDict):
    """A row of ``dx.runs``: one execution of a module."""

    id: int
    tenant: str
    module: str
    trigger: str
    requested_by: str | None
    request_id: str | None
    status: str
    due_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    planned_at: datetime | None
    finished_at: datetime | None
    email_sent_at: datetime | None
    #: the module's definition when the run was created (``definition()`` reads it)
    definition: dict[str, Any] | None
    source_path: str | None
    source_bytes: int | None
    source_mtime: int | None
    source_columns: list[str] | None
    source_watermark: str | None
    n_chunks: int | None
    #: 0 for a plan that splits by key; from 1, the attempt of a streaming plan
    plan_attempt: int
    chunk_bytes: int | None
    plan_failed: int
    rows_read: int
    inserted: int
    updated: int
    deleted: int
    not_inserted: int
    not_updated: int
    not_deleted: int
    rows_exported: int
    error_code: str | None
    error_message: str | None
    #: what the run did not do as the client may have meant while it went on: [{code, message}]
    warnings: list[dict[str, str]]
    #: where the run moved its file, which failed it (under the source's rejected_dir)
    rejected_path: str | None
    #: the run of a ``files: all`` module whose end made this one, for the next pending file
    follows_run: int | None
    #: how often the scheduler sent the run's missing stage again (``dx.scheduler.watchdog``)
    redrives: int
    #: when the scheduler last re-drove the run, or sent the message that times it out
    redriven_at: datetime | None


class Trigger(StrEnum):
    """What asked for a run."""

    MANUAL = "manual"
    SCHEDULE = "schedule"
    AMQP = "amqp"
    HTTP = "http"


def create_run(conn: Conn, tenant: str, module: str, trigger: Trigger, requested_by: str | None,
               due_at: datetime | None = None, request_id: str | None = None) -> int:
    """Insert a queued run with a snapshot of its module's definition (``due_at``: the fire time of a
    scheduled one; ``request_id``: the client's id of the request, unique per tenant); returns its id."""
    insert = f"""INSERT INTO dx.runs (tenant, module, trigger, requested_by, due_at, request_id, definition)
        SELECT %s, %s, %s, %s, %s, %s, ({SNAPSHOT}) FROM dx.modules m WHERE m.id = %s RETURNING id"""  # noqa: S608
    row = conn.execute(insert, (tenant, module, trigger.value, requested_by, due_at, request_id, module)).fetchone()
    assert row is not None
    return int(row["id"])


#: The definition of module ``m`` as a run keeps it, made in the database from what `dx apply` stored:
#: the module, its database with the fields in the table's column order (the configured order; jsonb
#: keeps its own), the connection it names, and the recipients (the tenant's, then the module's).
SNAPSHOT = """SELECT json_build_object(
  'module', m.config,
  'database', json_build_object('id', d.id, 'tenant', d.tenant, 'primary_key', d.primary_key,
    'fields', (SELECT json_object_agg(f.key, f.value ORDER BY a.attnum NULLS LAST, f.key)
               FROM jsonb_each(d.fields) f LEFT JOIN pg_attribute a ON a.attname = f.key
                 AND a.attrelid = to_regclass(format('%%I.%%I', 'tenant_' || d.tenant, d.id))
                 AND a.attnum > 0 AND NOT a.attisdropped)),
  'connection', c.config,
  'notify', (SELECT coalesce(json_agg(r.address ORDER BY r.first), '[]') FROM (
               SELECT address, min(n) AS first FROM unnest(t.notify || ARRAY(
                 SELECT jsonb_array_elements_text(coalesce(m.config->'notify', '[]')))) WITH ORDINALITY AS u(address, n)
               GROUP BY address) r))
FROM dx.databases d JOIN dx.tenants t ON t.id = d.tenant
LEFT JOIN dx.connections c ON c.tenant = m.tenant
  AND c.id = coalesce(m.config->'source'->>'connection', m.config->'target'->>'connection')
WHERE d.tenant = m.tenant AND d.id = m.database"""


def definition(conn: Conn, run: Run) -> ModuleDef:
    """The module's definition as the run was created with it (a run made by a version without
    snapshots reads the module as it is now)."""
    from dx.shared.catalog import ModuleDef, load_module  # pydantic: not on the path that creates a run

    if run["definition"] is None:
        return load_module(conn, run["module"])
    return ModuleDef.from_snapshot(run["definition"])


def get_run(conn: Conn, run_id: int, *, for_update: bool = False) -> Run | None:
    """One run row, optionally locked for the rest of the transaction."""
    lock = " FOR UPDATE" if for_update else ""
    return cast(Run | None, conn.execute(f"SELECT * FROM dx.runs WHERE id = %s{lock}", (run_id,)).fetchone())  # noqa: S608


def start(conn: Conn, run_id: int) -> bool:
    """Mark a queued (or already running) run running; False if it ended meanwhile."""
    return conn.execute(
        "UPDATE dx.runs SET status = %s, started_at = coalesce(started_at, now())"
        " WHERE id = %s AND status = ANY(%s) RETURNING id",
        (RunStatus.RUNNING.value, run_id, [RunStatus.QUEUED.value, RunStatus.RUNNING.value])).fetchone() is not None


def active_run(conn: Conn, run_id: int, actor: str) -> Run | None:
    """The run if it has not ended, with its tenant and module bound to the log context; else None."""
    run = get_run(conn, run_id)
    if run is None or RunStatus(run["status"]).terminal:
        log.info(f"{actor}.skip", reason="run missing or finished")
        return None
    structlog.contextvars.bind_contextvars(tenant=run["tenant"], module=run["module"])
    return run


def add_warning(conn: Conn, run_id: int, code: ErrorCode, message: str) -> None:
    """Add a warning to the run (in the caller's transaction); the same code and message are kept once."""
    conn.execute("UPDATE dx.runs SET warnings = warnings || %s WHERE id = %s AND NOT warnings @> %s",
                 (Jsonb([{"code": code.value, "message": message}]), run_id,
                  Jsonb([{"code": code.value, "message": message}])))


def chunks_done(conn: Conn, run_id: int) -> int:
    """How many chunks of the run have committed their result."""
    row = conn.execute("SELECT count(*) AS n FROM dx.chunk_results WHERE run_id = %s", (run_id,)).fetchone()
    return int(row["n"]) if row else 0


def reduce_due(conn: Conn, run_id: int) -> bool:
    """Whether the run waits for its reduce: it has not ended, its plan is done, and every chunk's
    result is in."""
    run = conn.execute("SELECT status, planned_at, n_chunks FROM dx.runs WHERE id = %s", (run_id,)).fetchone()
    return (run is not None and not RunStatus(run["status"]).terminal and run["planned_at"] is not None
            and chunks_done(conn, run_id) >= run["n_chunks"])


def pending_chunk(conn: Conn, run_id: int, chunk_no: int, actor: str) -> Run | None:
    """The run while its chunk ``chunk_no`` is still to be done (the run has not ended and the
    chunk's result is not in: a redelivered chunk message then does nothing); else None."""
    run = active_run(conn, run_id, actor)
    if run is None:
        return None
    if conn.execute("SELECT 1 FROM dx.chunk_results WHERE run_id = %s AND chunk_no = %s",
                    (run_id, chunk_no)).fetchone() is not None:
        log.info(f"{actor}.skip", reason="chunk already done")
        return None
    return run


def streamed(run: Run) -> bool:
    """Whether the run's chunks were cut and sent by a streaming plan, an overwrite's or an append's
    (it counts its attempts from 1): a key's records may then be in several chunks, which the reduce
    settles."""
    return bool(run["plan_attempt"])


def claim_chunk(conn: Conn, run_id: int, chunk_no: int, rows_read: int, actor: str, duration_ms: int = 0,
                attempt: int | None = None) -> bool:
    """In the chunk's own transaction, before its work is written: lock the run against its end
    (and against a new plan attempt) and claim the chunk's result row. False (nothing to write) if
    the run ended meanwhile, if the message comes from an earlier ``attempt`` of a streaming plan,
    or if a twin delivery claimed the chunk first (then this one waited for it and finds its row)."""
    current = conn.execute("SELECT status, plan_attempt FROM dx.runs WHERE id = %s FOR SHARE",
                           (run_id,)).fetchone()
    if current is None or RunStatus(current["status"]).terminal:
        log.info(f"{actor}.skip", reason="run missing or finished")
        return False
    if attempt is not None and attempt != current["plan_attempt"]:
        log.info(f"{actor}.skip", reason="sent by an earlier attempt of the plan", attempt=attempt,
                 current=current["plan_attempt"])
        return False
    if conn.execute("INSERT INTO dx.chunk_results (run_id, chunk_no, rows_read, duration_ms) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING RETURNING chunk_no", (run_id, chunk_no, rows_read, duration_ms)
                    ).fetchone() is None:
        log.info(f"{actor}.skip", reason="done by a twin delivery")
        return False
    return True


def chunk_counters(conn: Conn, run: Run, malformed_counter: str) -> dict[str, int]:
    """An import run's counters, summed over its chunks' results, with the lines its plan could not read
    counted as read and in ``malformed_counter`` (their kind's: ``ImportKind.malformed_counter``)."""
    sums = conn.execute(sql.SQL("SELECT {} FROM dx.chunk_results WHERE run_id = %s").format(sql.SQL(", ").join(
        sql.SQL("coalesce(sum({c}), 0)::bigint AS {c}").format(c=sql.Identifier(c))
        for c in COUNTERS if c != "rows_exported")), (run["id"],)).fetchone()
    assert sums is not None
    counters = {k: int(v) for k, v in sums.items()}
    counters["rows_read"] += run["plan_failed"]
    counters[malformed_counter] += run["plan_failed"]
    return counters


def error_counts(conn: Conn, run_id: int) -> list[dict[str, Any]]:
    """(error_code, count) of the run's failed operations, most frequent first."""
    return conn.execute(
        "SELECT error_code, count(*) AS n FROM dx.failed_operations WHERE run_id = %s"
        " GROUP BY error_code ORDER BY n DESC, error_code", (run_id,)).fetchall()


def finish(conn: Conn, run_id: int, status: RunStatus, *, error_code: str | None = None,
           error_message: str | None = None, counters: dict[str, int] | None = None) -> bool:
    """Record the end of a run (in the caller's transaction); False, and nothing written, if the run
    has ended already (a terminal status never changes)."""
    assert status.terminal, status
    # the clock, not the transaction's start: a reduce ends its run after the swap, in the same transaction
    sets = ["status = %s", "finished_at = clock_timestamp()", "error_code = %s", "error_message = %s",
            "started_at = coalesce(started_at, clock_timestamp())"]
    params: list[Any] = [status.value, error_code, error_message]
    for name, value in (counters or {}).items():
        sets.append(f"{name} = %s")
        params.append(value)
    sources = [s.value for s, targets in TRANSITIONS.items() if status in targets]
    ended = conn.execute(f"UPDATE dx.runs SET {', '.join(sets)} WHERE id = %s AND status = ANY(%s)"  # noqa: S608
                         " RETURNING tenant, module", [*params, run_id, sources]).fetchone()
    if ended is None:
        return False
    conn.execute("SELECT pg_notify(%s, %s)", (ENDED_CHANNEL, str(run_id)))  # sent when the caller commits
    RUNS_ENDED.labels(ended["tenant"], ended["module"], status.value).inc()
    for name, value in (counters or {}).items():
        ROWS.labels(ended["tenant"], ended["module"], name).inc(value)
    return True


def file_source(run: Run) -> dict[str, Any] | None:
    """The file source of the run's module as its snapshot has it; None if it reads no file. What
    follows the end of such a run (its file rejected; with ``files: all`` the next file's run made:
    ``next_run``) is done before its e-mail (``email_sent_at``)."""
    source = ((run["definition"] or {}).get("module") or {}).get("source") or {}
    return source if source.get("path") else None


def next_run(conn: Conn, run_id: int) -> int | None:
    """The run that the end of run ``run_id`` made for its module's next pending file, if any."""
    row = conn.execute("SELECT id FROM dx.runs WHERE follows_run = %s", (run_id,)).fetchone()
    return None if row is None else int(row["id"])


def list_runs(conn: Conn, module: str | None, limit: int) -> list[Run]:
    """The last ``limit`` runs, of one module or of all (``module`` None), newest first."""
    if module is None:
        rows = conn.execute("SELECT * FROM dx.runs ORDER BY id DESC LIMIT %s", (limit,)).fetchall()
    else:
        rows = conn.execute("SELECT * FROM dx.runs WHERE module = %s ORDER BY id DESC LIMIT %s",
                            (module, limit)).fetchall()
    return cast(list[Run], rows)
