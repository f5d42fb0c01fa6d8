"""Actor ``check`` (queue ``dx.reduce``): a console's "Test connection" or "Preview", answered in
``dx.checks``.

Consumes ``check(check_id)``, sent by the API, which waits for the row's ``result``. Writes nothing
else: no run, no ledger entry, no file moved, nothing in the client's table.

- ``connection``: reach the module's server or database; for a file source, list the files its
  pattern matches (size, time, and whether a run took it already); for a database source, the
  columns its table or query gives; for a target, the files already in its folder.
- ``preview``: the first ``PREVIEW_RECORDS`` records of the file the next run would take, parsed
  with the module's mapping and validated as a chunk is, each with the code it would fail with.
  The file is downloaded to a temporary folder; one over ``PREVIEW_MAX_BYTES`` is not.

Not retried: the API answers the user, who can ask again. Never raises: an error is the result.
"""

from __future__ import annotations

import posixpath
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import structlog
from psycopg.types.json import Jsonb

from dx.shared import db
from dx.shared.catalog import ModuleDef, load_module
from dx.shared.connections import open_remote
from dx.shared.errors import ErrorCode, RunError
from dx.shared.formats import open_source
from dx.shared.formats.csv import ROW
from dx.workers.imports.files import unseen
from dx.workers.imports.kinds import import_kind

log = structlog.get_logger(__name__)
#: Records a preview shows.
PREVIEW_RECORDS = 50
#: The largest file a preview downloads.
PREVIEW_MAX_BYTES = 256 * 1024 * 1024
#: Files a connection test lists.
LISTED_FILES = 100


def check(check_id: int) -> None:
    """Answer check ``check_id`` in its row."""
    with db.connect() as conn:
        row = conn.execute("SELECT module, kind FROM dx.checks WHERE id = %s AND finished_at IS NULL",
                           (check_id,)).fetchone()
        if row is None:  # answered by an earlier delivery, or never committed by the API
            log.warning("check.skipped", check_id=check_id, reason="no unanswered check of this id")
            return
        structlog.contextvars.bind_contextvars(module=row["module"])
        try:
            mdef = load_module(conn, row["module"])
            result = _connection(mdef) if row["kind"] == "connection" else _preview(mdef)
        except RunError as exc:
            result = {"ok": False, "code": exc.code.value, "message": exc.message}
        except Exception as exc:  # an answer the user reads rather than a message that hangs the API's wait
            log.exception("check.failed")
            result = {"ok": False, "code": ErrorCode.INTERNAL_ERROR.value, "message": type(exc).__name__}
        conn.execute("UPDATE dx.checks SET result = %s, finished_at = now() WHERE id = %s", (Jsonb(result), check_id))
        conn.commit()
    log.info("check.done", kind=row["kind"], ok=result["ok"])


def _connection(mdef: ModuleDef) -> dict[str, Any]:
    module, cfg = mdef.module, mdef.connection
    if cfg is None:
        raise RunError(ErrorCode.CONFIG_INVALID, "the module names no connection")
    if cfg.is_database:
        if cfg.type == "postgres":
            from dx.shared.connections import postgres as client
        else:
            from dx.shared.connections import mysql as client  # type: ignore[no-redef]
        client.connect(cfg).close()
        return {"ok": True, "message": f"the {cfg.type} database at {cfg.host} answered", "files": [], "columns": []}
    with open_remote(cfg) as remote:
        if module.source is not None:
            pattern = module.source.path
            found = remote.list(pattern) if any(c in pattern for c in "*?[") else [
                f for f in [remote.stat(pattern)] if f is not None]
            fresh = {f.path for f in unseen(found, cfg.id)}
        else:
            assert module.target is not None
            pattern = posixpath.join(posixpath.dirname(module.target.path) or ".", "*")
            found, fresh = remote.list(pattern), set()
    files = [{"path": f.path, "size_bytes": f.size_bytes, "mtime": f.mtime,
              "imported": module.source is not None and f.path not in fresh} for f in found[:LISTED_FILES]]
    return {"ok": True, "message": f"{cfg.host or cfg.type} answered: {len(found)} files match {pattern}",
            "files": files, "columns": []}


def _preview(mdef: ModuleDef) -> dict[str, Any]:
    src, cfg = mdef.module.source, mdef.connection
    if src is None or src.is_query or cfg is None:
        raise RunError(ErrorCode.CONFIG_INVALID, "a preview reads a source file: this module has none")
    with open_remote(cfg) as remote, tempfile.TemporaryDirectory(prefix="dx-preview-") as folder:
        found = remote.list(src.path) if any(c in src.path for c in "*?[") else [
            f for f in [remote.stat(src.path)] if f is not None]
        fresh = unseen(found, cfg.id)
        if not fresh:
            raise RunError(ErrorCode.SOURCE_NOT_FOUND, f"no file matching {src.path!r} waits to be imported")
        info = fresh[0]
        if info.size_bytes > PREVIEW_MAX_BYTES:
            raise RunError(ErrorCode.SOURCE_UNREADABLE, f"{info.path} is {info.size_bytes:,} bytes: a preview "
                           f"downloads files up to {PREVIEW_MAX_BYTES:,}; the run itself reads it whole")
        local = remote.fetch(info.path, Path(folder))
        columns, batches = open_source(local, mdef, Path(folder))
        kind = import_kind(mdef)
        frame, malformed = _first_records(batches, columns)
        validated = kind.validate(frame, columns)
    failed = {r["row_number"]: r for r in validated.failed.iter_rows(named=True)}
    failed |= {r["row_number"]: r for r in malformed}
    records = []
    for record in frame.iter_rows(named=True):
        why = failed.get(record[ROW])
        records.append({"row": record[ROW], "values": {c: record[c] for c in columns},
                        "code": why and why["error_code"], "message": why and why["error_message"]})
    records += [{"row": r["row_number"], "values": {}, "code": r["error_code"], "message": r["error_message"]}
                for r in malformed if r["row_number"] not in set(frame[ROW].to_list())]
    records.sort(key=lambda r: r["row"])
    return {"ok": True, "file": {"path": info.path, "size_bytes": info.size_bytes, "mtime": info.mtime},
            "columns": columns, "records": records[:PREVIEW_RECORDS],
            "message": f"the first {min(len(records), PREVIEW_RECORDS)} records of {info.path}"}


def _first_records(batches: Any, columns: list[str]) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """The first PREVIEW_RECORDS records (ROW and the columns as text), and the malformed ones among them."""
    frames, malformed, rows = [], [], 0
    for table, bad in batches:
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        frames.append(frame.head(PREVIEW_RECORDS - rows))
        last = frames[-1][ROW].max() if frames[-1].height else None
        malformed += [{"row_number": m.row_number, "error_code": m.code.value, "error_message": m.message}
                      for m in bad or [] if last is None or m.row_number <= last]
        rows += frames[-1].height
        if rows >= PREVIEW_RECORDS:
            break
    schema = {ROW: pl.Int64(), **{c: pl.String() for c in columns}}
    frame = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
    return frame.select(list(schema)).cast(schema), malformed  # type: ignore[arg-type]
