"""Actor ``chunk`` (queue ``dx.chunk``): validate and apply one chunk.

The run's kind (``dx.workers.imports.kinds``) validates and applies it: an
Importer's with ``importer``, by its mode, an Updater's with
``updater.apply_updates``.

Consumes ``chunk(run_id, chunk_no)`` from the plan's group (the group's
completion callback sends ``reduce``), or from a streaming plan (an
overwrite's, ``chunk(run_id, chunk_no, attempt)``; an append's): there is no
group then, and the last chunk to commit sends ``reduce``. A delivery that
finds its chunk done sends ``reduce`` when every chunk is done and the run has
not ended: a broker that restarted may have lost the reduce (or the message
that would have sent it) while the chunks' messages come again. Reads the chunk's file, validates it
column-wise, and applies it in ONE transaction together with its
``dx.chunk_results`` row and its failed operations (a streamed chunk also
writes the keys it applied, for the reduce).

A record the database refuses (a rule the client added to the contact
table) is a RECORD_REFUSED failed operation, the others are applied
(``refusals``); a data error no record explains, or one that too many
records share, fails the run at once (DATA_REFUSED): the same data would
fail the same way again.

Retries: 5 with backoff, for transient failures only; then ``run_crashed`` fails the run.
Idempotent: the result row is claimed first in the transaction, so a
redelivered message (or one racing a twin) finds it and changes nothing; a
worker killed mid-chunk leaves no trace and the chunk is applied again, whole.
"""

from __future__ import annotations

import time

import polars as pl
import psycopg
import structlog

from dx.shared import db, messages
from dx.shared.catalog import ModuleDef
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode, RunError, is_data_error
from dx.shared.formats.csv import ROW
from dx.shared.pgcopy import copy_frame
from dx.shared.runs import FAILED_TABLE, Run, claim_chunk, definition, pending_chunk, reduce_due, streamed
from dx.workers import staging
from dx.workers.failures import fail_run
from dx.workers.imports import refusals
from dx.workers.imports.kinds import import_kind

log = structlog.get_logger(__name__)


def chunk(run_id: int, chunk_no: int, attempt: int | None = None) -> None:
    """Validate and apply chunk ``chunk_no`` of run ``run_id``, once; ``attempt``: the streaming
    plan's attempt that sent it (an earlier attempt's chunk applies nothing)."""
    started = time.monotonic()
    with db.connect() as conn:  # one session for the whole chunk: each new one costs PostgreSQL a process
        run = pending_chunk(conn, run_id, chunk_no, "chunk")
        if run is None:
            _reduce_if_last(conn, run_id)  # its reduce may have been lost with the acknowledgement
            return
        mdef = definition(conn, run)
        conn.commit()  # no snapshot held while the chunk is validated
        try:
            applied = _apply(conn, run, mdef, chunk_no, attempt, started)
        except psycopg.Error as exc:
            if not is_data_error(exc):
                raise
            conn.rollback()
            _fail_at_once(run_id, mdef, RunError(ErrorCode.DATA_REFUSED, (
                f"the database refused chunk {chunk_no}: {str(exc).splitlines()[0]}; "
                "retrying would not help")))
            return
        except RunError as exc:
            conn.rollback()
            _fail_at_once(run_id, mdef, exc)
            return
        if applied and streamed(run):
            _reduce_if_last(conn, run_id)  # a streamed run's chunks have no group barrier


def _fail_at_once(run_id: int, mdef: ModuleDef, exc: RunError) -> None:
    """Fail the run for a deterministic error of its data, without retrying the chunk."""
    log.warning("chunk.failed", code=exc.code.value, error=exc.message)
    fail_run(run_id, exc.code, exc.message, kind=import_kind(mdef))


def _apply(conn: Conn, run: Run, mdef: ModuleDef, chunk_no: int, attempt: int | None, started: float) -> bool:
    """Validate the chunk and apply it in one transaction; False if it was not this delivery's to apply."""
    run_id = run["id"]
    assert run["source_columns"] is not None  # recorded by the plan before it sent the chunk
    columns = list(run["source_columns"])
    frame = staging.read_chunk(run_id, chunk_no, {ROW: pl.Int64(), **{c: pl.String() for c in columns}})
    kind = import_kind(mdef)
    validated = kind.validate(frame, columns)
    with conn.transaction():
        if not claim_chunk(conn, run_id, chunk_no, frame.height, "chunk", attempt=attempt):
            return False
        outcome, applied = refusals.apply_refusing(conn, run, kind, validated)
        if streamed(run):  # the reduce settles keys across chunks
            staging.write_keys(run_id, chunk_no, kind.keys_applied(applied))
        failed = outcome.failed.with_columns(pl.lit(run_id).alias("run_id"), pl.lit(chunk_no).alias("chunk_no"))
        copy_frame(conn, FAILED_TABLE, failed)
        counters = {k: int(v) for k, v in outcome.counters.items()}
        duration_ms = int((time.monotonic() - started) * 1000)
        sets = ", ".join(f"{k} = %s" for k in counters)
        conn.execute(f"UPDATE dx.chunk_results SET {sets}, duration_ms = %s"  # noqa: S608
                     " WHERE run_id = %s AND chunk_no = %s", [*counters.values(), duration_ms, run_id, chunk_no])
    log.info("chunk.done", rows=frame.height, failed=failed.height, ms=duration_ms, **counters)
    return True


def _reduce_if_last(conn: Conn, run_id: int) -> None:
    """Send reduce if every chunk is done and the run has not ended: by a streamed run's last chunk
    (there is no group barrier: the plan sent each chunk alone, and sends reduce too when it ends, in
    case every chunk ended before it), and by any delivery of a chunk done already. The reduce may
    then come twice: it is idempotent."""
    due = reduce_due(conn, run_id)
    conn.commit()
    if due:
        log.info("chunk.reduce_sent")
        messages.send(messages.REDUCE, run_id=run_id)
