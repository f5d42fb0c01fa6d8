"""Actor ``export_plan`` (queue ``dx.plan``): plan a Displacer or Exporter run.

Consumes ``export_plan(run_id)`` (sent by ``request_run`` for the kinds
``displacer`` and ``exporter``). Builds the run's export query, counts its
rows (estimates them from a sample of a large table's rows), cuts the key
range into chunks of about ``CHUNK_ROWS`` rows and records
the plan in ``dx.exports`` (key bounds, target path rendered in the module's
time zone, and the kind's snapshot window: an Exporter's from its
watermark, see ``dx.workers.exports.kinds``). Then
sends a group of ``export_chunk`` messages whose completion callback is
``export_reduce`` (or ``export_reduce`` alone when there is no row).

Retries: 3, for transient failures; a RunError fails the run at once.
Idempotent: a redelivered plan of a planned run re-sends the same group
(chunks and reduce are idempotent); a terminal run is left alone. Two runs
of one Exporter never overlap: the second is skipped while the first is in
flight, so that a watermark is never read by two exports at once.

Also holds the file's temporary name, which the run's chunks and reduce
share (where each part goes in it: ``dx.workers.exports.placement``).
"""

from __future__ import annotations

import posixpath
from datetime import datetime
from zoneinfo import ZoneInfo

import psycopg
import structlog

from dx.shared import db, messages
from dx.shared.catalog import ModuleDef
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode, RunError
from dx.shared.runs import RunStatus
from dx.workers import staging
from dx.workers.exports.kinds import export_kind
from dx.workers.exports.query import Busy, count_and_bounds, render_path, xml_unsafe
from dx.workers.failures import fail_run
from dx.workers.planning import begin_planning
from dx.workers.retries import retry_if_transient

log = structlog.get_logger(__name__)
#: Rows per export chunk: 1,000,000 rows make 4 chunks written in parallel.
CHUNK_ROWS = 250_000
#: Upper bound on chunks per run.
MAX_CHUNKS = 256


def temp_name(path: str, run_id: int) -> str:
    """The hidden name a file is uploaded under; sources never match it (leading dot)."""
    folder, name = posixpath.split(path)
    return posixpath.join(folder, f".{name}.part-{run_id}")


def export_plan(run_id: int) -> None:
    """Plan an export run: count, split by key, send the chunk group."""
    mdef = begin_planning(run_id, "export_plan", messages.EXPORT_CHUNK, messages.EXPORT_REDUCE)
    if mdef is None:
        return
    try:
        with db.transaction() as conn:
            n_chunks = _plan(conn, run_id, mdef)
    except RunError as exc:
        retry_if_transient(exc)
        log.warning("export_plan.failed", code=exc.code.value, error=exc.message)
        fail_run(run_id, exc.code, exc.message)
        return
    except psycopg.errors.DataError as exc:  # a filter value that is not of its field's type
        fail_run(run_id, ErrorCode.CONFIG_INVALID, f"the module's filter does not fit its database: {exc}")
        return
    except Busy as exc:
        fail_run(run_id, None, str(exc), status=RunStatus.SKIPPED)
        return
    messages.send_chunks(messages.EXPORT_CHUNK, messages.EXPORT_REDUCE, run_id, n_chunks)


def _plan(conn: Conn, run_id: int, mdef: ModuleDef) -> int:
    """Record the plan in the caller's transaction; returns the number of chunks."""
    module, target, kind = mdef.module, mdef.module.target, export_kind(mdef)
    assert target is not None
    snapshot_from, snapshot_to = kind.window(conn, run_id)
    export = {"snapshot_from": snapshot_from, "snapshot_to": snapshot_to}
    try:
        query = kind.query(export)
    except ValueError as exc:  # a field format that cannot be exported
        raise RunError(ErrorCode.CONFIG_INVALID, str(exc)) from None
    conn.execute("SET LOCAL TIME ZONE 'UTC'")  # key bounds of timestamps are written and read in UTC
    if target.format == "xml" and (unsafe := xml_unsafe(conn, query)) is not None:
        raise RunError(ErrorCode.TARGET_UNENCODABLE,
                       f"{unsafe[0]} of the record with key {unsafe[1]!r} holds a control character that XML 1.0 "
                       "cannot carry; clean the value, or export CSV")
    n_rows, bounds = count_and_bounds(conn, query, CHUNK_ROWS, MAX_CHUNKS)
    path = render_path(target.path, datetime.now(ZoneInfo(module.timezone)), run_id, module.id)
    conn.execute(
        "INSERT INTO dx.exports (run_id, module, snapshot_from, snapshot_to, bounds, target_path)"
        " VALUES (%s, %s, %s::pg_snapshot, %s::pg_snapshot, %s, %s)", (run_id, module.id, snapshot_from,
                                                                      snapshot_to, bounds, path))
    n_chunks = len(bounds) + 1 if n_rows else 0
    conn.execute("UPDATE dx.runs SET n_chunks = %s, planned_at = clock_timestamp() WHERE id = %s", (n_chunks, run_id))
    staging.remove_export(run_id)  # a retried plan starts afresh
    log.info("export_plan.done", rows=n_rows, n_chunks=n_chunks, path=path)
    return n_chunks

