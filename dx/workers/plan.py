"""Actor ``plan`` (queue ``dx.plan``): fetch, parse and partition a run's source.

Consumes ``plan(run_id)``. Picks the source file (pattern, ledger, settle
check), downloads it to staging, reads it in bounded batches and writes each
record to the chunk its key hashes to (so that every occurrence of a key,
in source order, lands in one chunk). Then sends a group of ``chunk``
messages whose completion callback is ``reduce``.

Retries: 3, for transient failures; a RunError fails the run at once.
Idempotent: a redelivered plan of a planned run re-sends the chunk group
(chunks and reduce are idempotent); a terminal run is left alone.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import dramatiq
import polars as pl
import structlog
from psycopg import sql

from dx.shared import db
from dx.shared.catalog import ModuleDef, load_module, table_ident
from dx.shared.config import SourceCfg
from dx.shared.connections import FileInfo, Remote, open_remote
from dx.shared.connections.download import Download, downloading
from dx.shared.errors import ErrorCode, RunError
from dx.shared.formats import open_source, read_ahead
from dx.shared.runs import RunStatus, active_run
from dx.shared.settings import get_settings
from dx.shared.validate import key_expr, map_columns, missing_required
from dx.workers import staging
from dx.workers.failures import fail_run, on_failure_options
from dx.workers.importer import shadow_table
from dx.workers.source_query import stage_query

log = structlog.get_logger(__name__)
#: Upper bound on chunks per run (messages and chunk files stay manageable).
MAX_CHUNKS = 256


def _pick_file(remote: Remote, src: SourceCfg, connection: str) -> FileInfo | None:
    """The file this run imports: the first matching one not yet in the ledger."""
    if not any(ch in src.path for ch in "*?["):
        info = remote.stat(src.path)
        if info is None:
            raise RunError(ErrorCode.SOURCE_NOT_FOUND, f"{src.path!r} does not exist on connection {connection}")
        return info
    files = remote.list(src.path)
    if not files:
        raise RunError(ErrorCode.SOURCE_NOT_FOUND, f"no file matches {src.path!r} on connection {connection}")
    with db.connect() as conn:
        seen = {(r["path"], r["size_bytes"], r["mtime"]) for r in conn.execute(
            "SELECT path, size_bytes, mtime FROM dx.file_ledger WHERE connection = %s", (connection,))}
    fresh = [f for f in files if (f.path, f.size_bytes, f.mtime) not in seen]
    return fresh[0] if fresh else None


def _settled(remote: Remote, info: FileInfo, settle_s: float) -> FileInfo:
    """Wait until a recently written file has not changed for ``settle_s``."""
    age_s = time.time() - info.mtime
    if age_s >= settle_s:
        return info
    time.sleep(settle_s - age_s)
    again = remote.stat(info.path)
    if again is None or (again.size_bytes, again.mtime) != (info.size_bytes, info.mtime):
        raise RunError(ErrorCode.SOURCE_NOT_READY, f"{info.path!r} is still being written; the next run takes it")
    return again


def _partition(run_id: int, mdef: ModuleDef, source: Path | Download, n_chunks: int) -> tuple[list[str], list[dict]]:
    """Split the source into chunk files (a CSV download is read while it arrives);
    returns (columns, malformed failures)."""
    staging.remove_chunks(run_id)  # a retried plan starts from no chunk files
    src = mdef.module.source
    assert src is not None
    opener = None
    if isinstance(source, Download) and src.format == "csv":
        path, opener = source.growing, source.opener
    else:
        path = source.wait() if isinstance(source, Download) else source
    columns, source_batches = open_source(path, mdef, opener)
    batches = read_ahead(source_batches)
    module = mdef.module
    missing = missing_required(columns, mdef.database) if module.kind == "importer" else missing_required(
        columns, mdef.database, all_required=module.update_missing == "insert", operation_field=module.operation_field)
    if missing:
        raise RunError(ErrorCode.MISSING_REQUIRED_COLUMN,
                       f"{path.name} has no column for {', '.join(missing)} (columns found: {', '.join(columns)})")
    key_col = map_columns(columns, mdef.database)[mdef.database.primary_key]
    key = key_expr(key_col, mdef.database.fields[mdef.database.primary_key])
    part = (key.hash(seed=0) % n_chunks).fill_null(0).cast(pl.Int64)
    failures: list[dict] = []
    with staging.ChunkFiles(run_id) as files:
        for table, bad in batches:
            failures += [{"row_number": m.row_number, "error_code": ErrorCode.MALFORMED_RECORD.value,
                          "error_message": m.message} for m in bad]
            if table.num_rows == 0:
                continue
            chunk_nos = pl.DataFrame(table.select([key_col])).select(part).to_series().to_numpy()
            for chunk_no, piece in staging.split(table, chunk_nos, n_chunks):
                files.write(chunk_no, piece)
    return columns, failures


def begin_planning(run_id: int, actor: str, dispatch: Callable[[int, int], None]) -> ModuleDef | None:
    """Mark the run running and load its module; None when there is nothing to plan.

    A run that ended is left alone; a run planned already only gets its chunk
    group sent again (a redelivered plan message).
    """
    with db.connect() as conn:
        run = active_run(conn, run_id, actor)
        if run is None:
            return None
        if run["planned_at"] is not None:
            log.info(f"{actor}.resend", n_chunks=run["n_chunks"])
            dispatch(run_id, run["n_chunks"])
            return None
        conn.execute("UPDATE dx.runs SET status = 'running', started_at = coalesce(started_at, now())"
                     " WHERE id = %s", (run_id,))
        conn.commit()
        return load_module(conn, run["module"])


@dramatiq.actor(queue_name="dx.plan", max_retries=3, min_backoff=1000, max_backoff=30_000,
                time_limit=60 * 60 * 1000, throws=(RunError,))
def plan(run_id: int) -> None:
    """Plan a run: source → chunk files → chunk group with reduce callback."""
    mdef = begin_planning(run_id, "plan", _dispatch)
    if mdef is None:
        return
    try:
        _plan(run_id, mdef)
    except RunError as exc:
        log.warning("plan.failed", code=exc.code.value, error=exc.message)
        fail_run(run_id, exc.code, exc.message)
        staging.remove_run(run_id)


def _plan(run_id: int, mdef: ModuleDef) -> None:
    src, settings = mdef.module.source, get_settings()
    assert src is not None and mdef.connection is not None
    source_dir = staging.run_dir(run_id) / "source"
    source_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    chunk_bytes = mdef.module.chunk_bytes or settings.chunk_bytes
    columns: list[str] = []
    failures: list[dict] = []
    if src.is_query:
        info, local = stage_query(run_id, mdef, source_dir)
        log.info("plan.fetched", path=info.path, bytes=info.size_bytes, seconds=round(time.monotonic() - started, 3))
        n_chunks = _n_chunks(info.size_bytes, chunk_bytes)
        if n_chunks:
            columns, failures = _partition(run_id, mdef, local, n_chunks)
    else:
        with open_remote(mdef.connection) as remote:
            picked = _pick_file(remote, src, mdef.connection.id)
            if picked is None:
                fail_run(run_id, None, "every file matching the pattern was imported already",
                         status=RunStatus.SKIPPED)
                return
            info = _settled(remote, picked, src.settle_s)
            n_chunks = _n_chunks(info.size_bytes, chunk_bytes)
            if n_chunks:
                with downloading(remote, info.path, source_dir) as download:
                    columns, failures = _partition(run_id, mdef, download, n_chunks)
                log.info("plan.fetched", path=info.path, bytes=info.size_bytes, seconds=round(download.seconds, 3))
    shutil.rmtree(source_dir, ignore_errors=True)
    with db.transaction() as conn:
        if mdef.module.mode == "overwrite":
            table = table_ident(mdef.database.tenant, mdef.database.id)
            shadow = table_ident(mdef.database.tenant, shadow_table(mdef.database.id, run_id))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(shadow))
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(shadow, table))
        conn.execute("DELETE FROM dx.failed_operations WHERE run_id = %s AND chunk_no = -1", (run_id,))
        operation = "I" if mdef.module.kind == "importer" else None  # an updater's malformed line has none
        with conn.cursor().copy("COPY dx.failed_operations (run_id, chunk_no, row_number, operation, error_code,"
                                " error_message) FROM STDIN") as copy:
            for f in failures:
                copy.write_row((run_id, -1, f["row_number"], operation, f["error_code"], f["error_message"]))
        conn.execute(
            "UPDATE dx.runs SET n_chunks = %s, source_path = %s, source_bytes = %s, source_mtime = %s,"
            " source_columns = %s, plan_failed = %s, planned_at = now(), status = 'running' WHERE id = %s",
            (n_chunks, info.path, info.size_bytes, info.mtime, columns, len(failures), run_id))
    log.info("plan.done", n_chunks=n_chunks, malformed=len(failures), seconds=round(time.monotonic() - started, 3))
    _dispatch(run_id, n_chunks)


def _n_chunks(size_bytes: int, chunk_bytes: int) -> int:
    return 0 if size_bytes == 0 else min(MAX_CHUNKS, max(1, math.ceil(size_bytes / chunk_bytes)))


def _dispatch(run_id: int, n_chunks: int) -> None:
    """Send the chunk group, or straight to reduce when there is nothing to chunk."""
    from dx.workers.chunk import chunk
    from dx.workers.reduce import reduce

    if n_chunks == 0:
        reduce.send_with_options(kwargs={"run_id": run_id}, **on_failure_options())
        return
    messages = [chunk.message_with_options(kwargs={"run_id": run_id, "chunk_no": i}, **on_failure_options())
                for i in range(n_chunks)]
    group = dramatiq.group(messages)
    group.add_completion_callback(reduce.message_with_options(kwargs={"run_id": run_id}, **on_failure_options()))
    group.run()

