"""Actor ``plan`` (queue ``dx.plan``): fetch, parse and partition a run's source.

Consumes ``plan(run_id)``. Picks the source file (pattern, ledger, settle
check), downloads it to staging, reads it in bounded batches and writes each
record to the chunk its key hashes to (so that every occurrence of a key,
in source order, lands in one chunk). Then sends a group of ``chunk``
messages whose completion callback is ``reduce``. A plan whose kind
``streams`` (``dx.workers.imports.kinds``: an overwrite's, an append's)
instead cuts ranges of consecutive records and sends each chunk as soon as
its file is written, then ``reduce`` (their last chunk sends it too); the
reduce settles keys that several chunks held.

Retries: 3, for transient failures; a RunError fails the run at once (its
file rejected if the code blames the file: ``dx.workers.imports.files``),
except SOURCE_NOT_READY (a file still being written), which skips it.
Idempotent: a redelivered plan of a planned run re-sends the chunk group
(chunks and reduce are idempotent); a terminal run is left alone, but for
what follows its end and its e-mail if they were not done. A retried
streaming plan starts a new attempt: one whose kind ``restarts`` (an
overwrite's) starts from nothing (the earlier attempt's ``chunk(run_id,
chunk_no, attempt)`` messages apply nothing); an append's cuts the same chunks
again (the run keeps its bytes per chunk), so each is applied once, by
whichever delivery claims it first.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import polars as pl
import pyarrow as pa
import structlog

from dx.shared import db, messages
from dx.shared.catalog import ModuleDef
from dx.shared.config import SourceCfg
from dx.shared.connections import FileInfo, Remote, open_remote
from dx.shared.connections.download import Download, downloading
from dx.shared.errors import ErrorCode, RunError
from dx.shared.formats import open_source, read_ahead
from dx.shared.formats.csv import Malformed
from dx.shared.runs import RunStatus, add_warning
from dx.shared.settings import get_settings
from dx.shared.validate import ambiguous_columns, key_expr, map_columns
from dx.workers import staging
from dx.workers.failures import fail_run, notify
from dx.workers.imports.files import after_end, finish_ended, is_pattern, record_source, unseen
from dx.workers.imports.kinds import ImportKind, import_kind
from dx.workers.imports.source_query import stage_query
from dx.workers.planning import begin_planning
from dx.workers.retries import retry_if_transient

log = structlog.get_logger(__name__)
#: How coarse a file's modification time can be: SFTP (version 3) gives whole seconds.
MTIME_RESOLUTION_S = 1.0
#: Upper bound on the chunks of a split by key (messages and chunk files stay manageable; an
#: overwrite cuts one chunk per chunk_bytes of records, however many).
MAX_CHUNKS = 256


def _pick_file(remote: Remote, src: SourceCfg, connection: str) -> FileInfo | None:
    """The file this run imports: the first matching one not yet in the ledger."""
    if not is_pattern(src.path):
        info = remote.stat(src.path)
        if info is None:
            raise RunError(ErrorCode.SOURCE_NOT_FOUND, f"{src.path!r} does not exist on connection {connection}")
        return info
    files = remote.list(src.path)
    if not files:
        raise RunError(ErrorCode.SOURCE_NOT_FOUND, f"no file matches {src.path!r} on connection {connection}")
    fresh = unseen(files, connection)
    return fresh[0] if fresh else None


def _settled(remote: Remote, info: FileInfo, settle_s: float) -> FileInfo:
    """Wait until a recently written file has not changed for ``settle_s``."""
    age_s = time.time() - info.mtime - MTIME_RESOLUTION_S  # the last write may come late in mtime's second
    if settle_s == 0 or age_s >= settle_s:
        return info
    time.sleep(settle_s - age_s)
    again = remote.stat(info.path)
    if again is None or (again.size_bytes, again.mtime) != (info.size_bytes, info.mtime):
        raise RunError(ErrorCode.SOURCE_NOT_READY, f"{info.path!r} is still being written; the next run takes it")
    return again


class RunEnded(Exception):
    """The run ended, or another attempt of its plan began, while this plan worked: it stops, quietly."""


class Partitioned(NamedTuple):
    """What a plan wrote: the source's columns, its malformed records, the chunks written (``n_chunks``
    by a hash of the key, or as many as a streaming plan's ``_stream`` cut, then with its ``attempt``)."""

    columns: list[str]
    failures: list[dict]
    n_chunks: int
    attempt: int | None = None


def _partition(run_id: int, kind: ImportKind, source: Path | Download, n_chunks: int, scratch: Path) -> Partitioned:
    """Split the source into chunk files (a download is read while it arrives; an XML document's
    batches are spooled under ``scratch``, the plan's own folder)."""
    mdef = kind.mdef
    opener = None
    if isinstance(source, Download):
        path, opener = source.growing, source.opener
    else:
        path = source
    columns, source_batches = open_source(path, mdef, scratch, opener)
    batches = read_ahead(source_batches)
    if twins := ambiguous_columns(columns, mdef.database):
        raise RunError(ErrorCode.MALFORMED_HEADER, "; ".join(
            f"columns {', '.join(cols)} all map to field {name} (names match without case): keep one"
            for name, cols in twins.items()))
    missing = kind.missing_columns(columns)
    if missing:
        raise RunError(ErrorCode.MISSING_REQUIRED_COLUMN,
                       f"{path.name} has no column for {', '.join(missing)} (columns found: {', '.join(columns)})")
    _unknown_columns(run_id, kind, columns)
    failures: list[dict] = []
    if kind.streams:
        attempt, chunk_bytes = _new_attempt(run_id, mdef, columns)
        return Partitioned(columns, failures, _stream(run_id, kind, attempt, chunk_bytes, batches, failures), attempt)
    staging.remove_chunks(run_id)  # a retried plan starts from no chunk files
    key_col = map_columns(columns, mdef.database)[mdef.database.primary_key]
    key = key_expr(key_col, mdef.database.fields[mdef.database.primary_key])
    part = (key.hash(seed=0) % n_chunks).fill_null(0).cast(pl.Int64)
    with staging.ChunkFiles(run_id) as files:
        for table, bad in batches:
            failures += _malformed(bad)
            if table.num_rows == 0:
                continue
            chunk_nos = pl.DataFrame(table.select([key_col])).select(part).to_series().to_numpy()
            for chunk_no, piece in staging.split(table, chunk_nos, n_chunks):
                files.write(chunk_no, piece)
    return Partitioned(columns, failures, n_chunks)


def _unknown_columns(run_id: int, kind: ImportKind, columns: list[str]) -> None:
    """Source columns that map to no field, as the module's ``unknown_columns`` says: left alone
    (``ignore``), a warning UNKNOWN_COLUMN added before any chunk is sent (``warn``), or a RunError
    before anything is written (``fail``)."""
    mdef = kind.mdef
    policy = mdef.module.unknown_columns
    unknown = [] if policy == "ignore" else kind.unknown_columns(columns)
    if not unknown:
        return
    one = len(unknown) == 1
    named = f"{'column' if one else 'columns'} {', '.join(unknown)} {'maps' if one else 'map'} to no field of " \
            f"database {mdef.database.id}"
    if policy == "fail":
        raise RunError(ErrorCode.UNKNOWN_COLUMN,
                       f"{named} (fields: {', '.join(mdef.database.fields)}), so nothing was imported: fix the "
                       f"column {'name' if one else 'names'} in the source, add the {'field' if one else 'fields'} "
                       f"to the database, or set unknown_columns: ignore to import without {'it' if one else 'them'}")
    log.warning("plan.unknown_columns", columns=unknown)
    with db.transaction() as conn:
        add_warning(conn, run_id, ErrorCode.UNKNOWN_COLUMN,
                    f"{named}; {'it was' if one else 'they were'} not imported")


def _stream(run_id: int, kind: ImportKind, attempt: int, chunk_bytes: int,
            batches: Iterator[tuple[pa.Table, list[Malformed]]], failures: list[dict]) -> int:
    """A streaming plan's chunks: consecutive records, about ``chunk_bytes`` of them parsed each
    (``staging.cut``: the same source and ``chunk_bytes`` make the same chunks), each sent as soon
    as its file is written. The other workers validate and load while this one still downloads and
    parses, where a split by key must read the whole source first; the occurrences of a key may then
    be in several chunks, which the reduce settles (``dx.workers.imports.duplicates``). Returns the
    number of chunks sent."""

    if kind.restarts:  # no chunk of an earlier attempt applies any more
        staging.remove_chunks(run_id)
    # Otherwise (an append) the files are written again as they were, each replacing its twin whole: a
    # chunk of an earlier attempt reads either, and a chunk applied already keeps its keys file for the
    # reduce. So such a chunk applies whichever attempt sent it; a restarting plan's, only in its attempt.
    sent_by = attempt if kind.restarts else None
    sent = 0
    with staging.ChunkFiles(run_id) as files:

        def tables() -> Iterator[pa.Table]:
            for table, bad in batches:
                failures.extend(_malformed(bad))
                yield table

        for chunk_no, records, ends in staging.cut(tables(), chunk_bytes):
            files.write(chunk_no, records)
            if ends:
                files.close(chunk_no)
                messages.send(messages.CHUNK, run_id=run_id, chunk_no=chunk_no, attempt=sent_by)
                sent += 1
    return sent


def _new_attempt(run_id: int, mdef: ModuleDef, columns: list[str]) -> tuple[int, int]:
    """Start a streaming plan's attempt, recording the source's columns for the chunks; returns it and
    its bytes per chunk. One whose kind ``restarts`` (an overwrite's) starts from nothing: no chunk
    result, no failed operation, the module's ``chunk_bytes``, and the kind's ``prepare_load`` (an
    empty shadow table). Its UPDATE waits for the chunks of an earlier attempt still in their
    transaction (they hold the run FOR SHARE); those queued still find another attempt and apply
    nothing. An append's keeps what its chunks applied, and the bytes per chunk of the run's first
    attempt (a config applied meanwhile does not change them): it cuts the same chunks. RunEnded if
    the run ended meanwhile (an overwrite's shadow table, dropped then, is not made again)."""
    kind = import_kind(mdef)
    chunk_bytes = mdef.module.chunk_bytes or get_settings().chunk_bytes
    with db.transaction() as conn:
        row = conn.execute(
            "UPDATE dx.runs SET plan_attempt = plan_attempt + 1, source_columns = %s,"
            " chunk_bytes = CASE WHEN %s THEN %s ELSE coalesce(chunk_bytes, %s) END"
            " WHERE id = %s AND status = 'running' RETURNING plan_attempt, chunk_bytes",
            (columns, kind.restarts, chunk_bytes, chunk_bytes, run_id)).fetchone()
        if row is None:
            raise RunEnded
        if kind.restarts:
            conn.execute("DELETE FROM dx.chunk_results WHERE run_id = %s", (run_id,))
            conn.execute("DELETE FROM dx.failed_operations WHERE run_id = %s", (run_id,))
        kind.prepare_load(conn, run_id)
    return int(row["plan_attempt"]), int(row["chunk_bytes"])


def _malformed(bad: list[Malformed]) -> list[dict]:
    return [{"row_number": m.row_number, "error_code": m.code.value, "error_message": m.message} for m in bad]



def plan(run_id: int) -> None:
    """Plan a run: source → chunk files → chunk group with reduce callback."""
    mdef = begin_planning(run_id, "plan", messages.CHUNK, messages.REDUCE)
    if mdef is None:
        finish_ended(run_id)  # a redelivery after the run failed here: its leftovers, then its e-mail
        return
    kind = import_kind(mdef)
    try:
        _plan(run_id, kind)
    except RunEnded:
        log.info("plan.skip", reason="the run ended, or another attempt of its plan began, meanwhile")
    except RunError as exc:
        retry_if_transient(exc)
        log.warning("plan.failed", code=exc.code.value, error=exc.message)
        # a file still being written is no failure: the next run takes it
        status = RunStatus.SKIPPED if exc.code is ErrorCode.SOURCE_NOT_READY else RunStatus.FAILED
        fail_run(run_id, exc.code, exc.message, status=status, kind=kind, discard_chunks=True, mail=False)
        staging.remove_run(run_id)
        after_end(run_id, mdef)
        notify(run_id)


def _plan(run_id: int, kind: ImportKind) -> None:
    mdef = kind.mdef
    src, settings = mdef.module.source, get_settings()
    assert src is not None and mdef.connection is not None
    source_dir = staging.source_dir(run_id)
    started = time.monotonic()
    chunk_bytes = mdef.module.chunk_bytes or settings.chunk_bytes
    parts = Partitioned([], [], 0)
    if src.is_query:
        info, local = stage_query(run_id, mdef, source_dir)
        log.info("plan.fetched", path=info.path, bytes=info.size_bytes, seconds=round(time.monotonic() - started, 3))
        if n_chunks := _n_chunks(info.size_bytes, chunk_bytes):
            parts = _partition(run_id, kind, local, n_chunks, source_dir)
    else:
        with open_remote(mdef.connection) as remote:
            picked = _pick_file(remote, src, mdef.connection.id)
            if picked is None:
                fail_run(run_id, None, "every file matching the pattern was imported already",
                         status=RunStatus.SKIPPED, kind=kind)
                return
            record_source(run_id, picked)
            info = _settled(remote, picked, src.settle_s)
            if info.size_bytes == 0 and (src.header or src.format == "xml"):
                raise RunError(ErrorCode.EMPTY_SOURCE, f"{info.path!r} is empty (0 bytes): not even a header line, "
                               "so it is likely an upload cut short; nothing was imported")
            if n_chunks := _n_chunks(info.size_bytes, chunk_bytes):
                with downloading(remote, info.path, source_dir) as download:
                    parts = _partition(run_id, kind, download, n_chunks, source_dir)
                log.info("plan.fetched", path=info.path, bytes=info.size_bytes, seconds=round(download.seconds, 3))
    shutil.rmtree(source_dir, ignore_errors=True)
    with db.transaction() as conn:
        # planned only if the run still runs, and by this plan's attempt (a twin delivery's may have begun)
        if conn.execute(
                "UPDATE dx.runs SET n_chunks = %s, source_path = %s, source_bytes = %s, source_mtime = %s,"
                " source_columns = %s, plan_failed = %s, planned_at = now() WHERE id = %s AND status = 'running'"
                " AND (%s::integer IS NULL OR plan_attempt = %s) RETURNING id",
                (parts.n_chunks, info.path, info.size_bytes, info.mtime, parts.columns, len(parts.failures), run_id,
                 parts.attempt, parts.attempt)).fetchone() is None:
            raise RunEnded
        if parts.attempt is None:  # a streaming plan's attempt made it first
            kind.prepare_load(conn, run_id)
        conn.execute("DELETE FROM dx.failed_operations WHERE run_id = %s AND chunk_no = -1", (run_id,))
        operation = kind.malformed_operation
        with conn.cursor().copy("COPY dx.failed_operations (run_id, chunk_no, row_number, operation, error_code,"
                                " error_message) FROM STDIN") as copy:
            for f in parts.failures:
                copy.write_row((run_id, -1, f["row_number"], operation, f["error_code"], f["error_message"]))
    log.info("plan.done", n_chunks=parts.n_chunks, malformed=len(parts.failures),
             seconds=round(time.monotonic() - started, 3))
    # a streaming plan's chunks are out: whichever of them ends last sends reduce too
    messages.send_chunks(messages.CHUNK, messages.REDUCE, run_id,
                         0 if parts.attempt is not None else parts.n_chunks)


def _n_chunks(size_bytes: int, chunk_bytes: int) -> int:
    return 0 if size_bytes == 0 else min(MAX_CHUNKS, max(1, math.ceil(size_bytes / chunk_bytes)))


