"""Actor ``export_chunk`` (queue ``dx.chunk``): write one chunk of an export file.

Consumes ``export_chunk(run_id, chunk_no)`` from the export plan's group
(the group's completion callback sends ``export_reduce``). A delivery that
finds its chunk done sends ``export_reduce`` when every chunk is done and the
run has not ended: a broker that restarted may have lost the callback while
the chunks' messages come again (the reduce is idempotent).
Runs the COPY of its key range (formatted, quoted and transcoded by
PostgreSQL; written to the file by psql where it is installed, see
``dx.shared.psql``, else read by psycopg), gzips it if the target wants it
(a gzip member per chunk: the members joined in order are one valid gzip
file), writes it to the staging folder under a temporary name and renames
it. Then it writes the part into the target's temporary file at its offset
(head plus the parts before it, see ``part_offset``), in parallel with the
other chunks, and notes that it did. When a part before it is not whole yet
it does not wait: the chunk that makes the parts before it whole writes this
part after its own (``placeable``); a part no chunk placed, or whose write
failed, is written by the reduce instead. Then it records its row count in
``dx.chunk_results``.

Retries: 5 with backoff; then ``run_crashed`` fails the run. A value the
target's encoding cannot hold fails the run at once (TARGET_UNENCODABLE).
Idempotent: a chunk whose result row exists is skipped; otherwise the part
file is written again, whole, replacing any earlier one. A chunk that finds
an earlier attempt's part voids every chunk's note (``placements_void``): the
chunks after it may have placed theirs by its old size, so the reduce writes
every part.
"""

from __future__ import annotations

import gzip
import shutil
import time
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import IO

import psycopg
import structlog

from dx.shared import db, messages, psql
from dx.shared.connections import open_remote
from dx.shared.errors import ErrorCode, RunError
from dx.shared.formats.export import head_and_tail
from dx.shared.runs import claim_chunk, definition, pending_chunk, reduce_due
from dx.workers import staging
from dx.workers.exports.kinds import export_kind
from dx.workers.exports.placement import note_placed, part_offset, placeable
from dx.workers.exports.plan import temp_name
from dx.workers.exports.query import copy_statement
from dx.workers.failures import fail_run

log = structlog.get_logger(__name__)
#: gzip level of export files: close to the best ratio at a fraction of level 9's time.
GZIP_LEVEL = 6
#: Bytes compressed at a time.
COMPRESS_BLOCK_BYTES = 1024 * 1024
#: The session of every chunk's COPY: timestamps exported in UTC, the default date and timestamp forms in ISO.
SESSION = ["SET TIME ZONE 'UTC'", "SET DateStyle = 'ISO'"]
#: The SQLSTATE of a value the target's encoding cannot hold.
UNENCODABLE = psycopg.errors.UntranslatableCharacter.sqlstate


def open_part(path: Path, compression: str) -> AbstractContextManager[IO[bytes]]:
    """A part file for writing, gzip-compressed or not."""
    if compression == "gzip":
        return gzip.open(path, "wb", compresslevel=GZIP_LEVEL)  # type: ignore[return-value]
    return open(path, "wb")


def export_chunk(run_id: int, chunk_no: int) -> None:
    """Write chunk ``chunk_no`` of export run ``run_id`` to the staging folder, once."""
    started = time.monotonic()
    with db.connect() as conn:
        run = pending_chunk(conn, run_id, chunk_no, "export_chunk")
        if run is None:
            due = reduce_due(conn, run_id)  # its reduce may have been lost with the acknowledgement
            conn.commit()
            if due:
                log.info("export_chunk.reduce_sent")
                messages.send(messages.EXPORT_REDUCE, run_id=run_id)
            return
        mdef = definition(conn, run)
        export = conn.execute("SELECT snapshot_from::text, snapshot_to::text, bounds, target_path FROM dx.exports"
                              " WHERE run_id = %s", (run_id,)).fetchone()
        assert export is not None and mdef.module.target is not None
        target = mdef.module.target
        query = export_kind(mdef).query(export)
        statement = psycopg.ClientCursor(conn).mogrify(*copy_statement(query, target, export["bounds"], chunk_no))
    part = staging.export_part(run_id, chunk_no)
    tmp = staging.being_written(part)
    if part.exists():  # an earlier attempt wrote it, perhaps of another size
        staging.placements_void(run_id).touch()
    staging.placed_marker(part).unlink(missing_ok=True)
    tmp.touch()  # from now on, the chunks after this one find its part not whole
    try:
        with staging.written_locally(tmp) as local:
            rows = _copy(statement, local, target.compression)
        tmp.replace(part)
    except psql.CopyFailed as exc:
        if exc.sqlstate != UNENCODABLE:
            raise
        message = f"{exc.message}; the target's encoding is {target.encoding}"
        log.warning("export_chunk.failed", code=ErrorCode.TARGET_UNENCODABLE.value, error=message)
        fail_run(run_id, ErrorCode.TARGET_UNENCODABLE, message)
        return
    finally:
        tmp.unlink(missing_ok=True)
    head, _ = head_and_tail(target, query.columns)
    offset = part_offset(run_id, chunk_no, len(head))
    placed: list[tuple[int, staging.Staged]] = []  # the parts it wrote: its own first
    if offset is not None:
        assert mdef.connection is not None
        parts = placeable(run_id, chunk_no, offset)  # its own, and those after it left to it
        try:
            with open_remote(mdef.connection) as remote, ExitStack() as files:
                remote.place(temp_name(export["target_path"], run_id),
                             [(at, files.enter_context(whole.open("rb"))) for at, whole in parts])
            for at, whole in parts:
                note_placed(whole, at)
            placed = parts
        except RunError as exc:  # the reduce writes the parts, or fails the run if the target refuses them
            log.warning("export_chunk.not_placed", code=exc.code.value, error=exc.message)
    duration_ms = int((time.monotonic() - started) * 1000)
    with db.transaction() as conn:
        if not claim_chunk(conn, run_id, chunk_no, rows, "export_chunk", duration_ms):
            return
    log.info("export_chunk.done", rows=rows, bytes=part.stat().st_size, placed=bool(placed),
             placed_after=len(placed[1:]), ms=duration_ms)


def _copy(statement: str, path: Path, compression: str) -> int:
    """Run the chunk's COPY into its part file, through psql where it is usable (``dx.shared.psql``), else
    through psycopg; the number of rows. CopyFailed if PostgreSQL refuses it."""
    url = db.database_url()
    if not psql.usable(url):
        return _copy_with_psycopg(statement, path, compression)
    if compression != "gzip":
        return psql.copy_to_file(url, SESSION, statement, path)
    plain = path.with_name(f"{path.name}.plain")  # psql writes the rows, then they are compressed
    try:
        rows = psql.copy_to_file(url, SESSION, statement, plain)
        with open(plain, "rb") as src, open_part(path, compression) as out:
            shutil.copyfileobj(src, out, COMPRESS_BLOCK_BYTES)
    finally:
        plain.unlink(missing_ok=True)
    return rows


def _copy_with_psycopg(statement: str, path: Path, compression: str) -> int:
    try:
        with db.connect() as conn, open_part(path, compression) as out:
            for command in SESSION:
                conn.execute(command)
            cur = conn.cursor()
            with cur.copy(statement) as copy:
                for block in copy:
                    out.write(block)
            return cur.rowcount
    except psycopg.errors.UntranslatableCharacter as exc:
        raise psql.CopyFailed(UNENCODABLE, exc.diag.message_primary or str(exc)) from None
