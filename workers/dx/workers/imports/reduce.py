"""Actor ``reduce`` (queue ``dx.reduce``): merge chunk results, end the run.

Consumes ``reduce(run_id)``, the completion callback of the plan's chunk
group (or sent directly for an empty source; for a streaming plan, by the
plan at its end and by the last chunk to commit). Checks that every chunk's
result exists (it can be called early or twice: then it waits for the next
call), sums the counters, ends the load as the run's kind says
(``dx.workers.imports.kinds``: a streamed run's keys that several chunks
held are settled, ``dx.workers.imports.duplicates``; an overwrite's guards
and swap apply: a run they fail reports nothing inserted, updated or deleted,
its rejected records still counted), records the file in the ledger and the run's end in ONE
transaction; then disposes of the source file (a completed run's: archived or
deleted; a failed run's, if its code blames the file: rejected, and with
``files: all`` the next file's run made: ``dx.workers.imports.files``), sends the e-mail, lets the
kind tidy up (an overwrite drops the table it replaced: its files' unlinking
is not waited for by the report, nor by readers of the contact table) and
clears the staging folder.

Retries: 5 with backoff; then ``run_crashed`` fails the run.
Idempotent: a terminal run only gets its leftovers finished (file
disposal, e-mail once, staging), never a second swap or count.
"""

from __future__ import annotations

import posixpath

import structlog

from dx.shared import db
from dx.shared.catalog import ModuleDef
from dx.shared.connections import open_remote
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode
from dx.shared.runs import (
    APPLIED,
    Run,
    RunStatus,
    add_warning,
    chunk_counters,
    chunks_done,
    definition,
    finish,
    get_run,
)
from dx.workers import staging
from dx.workers.failures import notify
from dx.workers.imports.files import after_end
from dx.workers.imports.kinds import ImportKind, import_kind
from dx.workers.imports.source_query import adopt_watermark

log = structlog.get_logger(__name__)


def reduce(run_id: int) -> None:
    """Finish run ``run_id`` once every chunk has committed."""
    with db.transaction() as conn:
        run = get_run(conn, run_id, for_update=True)
        if run is None:
            return
        structlog.contextvars.bind_contextvars(tenant=run["tenant"], module=run["module"])
        mdef = definition(conn, run)
        kind = import_kind(mdef)
        if not RunStatus(run["status"]).terminal:
            done, n_chunks = chunks_done(conn, run_id), run["n_chunks"]
            if run["planned_at"] is None or n_chunks is None or done < n_chunks:
                log.info("reduce.waiting", chunks_done=done, n_chunks=n_chunks)
                return
            _finish(conn, run, kind)
    _dispose_source(run_id, mdef)
    after_end(run_id, mdef)  # a failed run's file rejected, or the next file's run made
    notify(run_id)
    kind.tidy(run_id)
    staging.remove_run(run_id)


def _finish(conn: Conn, run: Run, kind: ImportKind) -> None:
    """Sum, end the load (the kind's ``finish_load``: settle, guard, swap), ledger and status, in the
    caller's transaction."""
    run_id, mdef = run["id"], kind.mdef
    counters = chunk_counters(conn, run, kind.malformed_counter)
    code, message = kind.finish_load(conn, run, counters)
    failed = sum(counters[c] for c in ("not_inserted", "not_updated", "not_deleted"))
    if code is not None:
        status = RunStatus.FAILED
        counters.update(dict.fromkeys(APPLIED, 0))  # a failing load applied nothing (see ``Verdict``)
    else:
        status = RunStatus.COMPLETED_WITH_ERRORS if failed else RunStatus.COMPLETED
        if mdef.module.source is not None and mdef.module.source.is_query:
            adopt_watermark(conn, run_id, mdef)
        else:
            _record_in_ledger(conn, run, mdef)
    finish(conn, run_id, status, error_code=code.value if code else None, error_message=message, counters=counters)
    log.info("run.finished", status=status.value, **counters)


def _record_in_ledger(conn: Conn, run: Run, mdef: ModuleDef) -> None:
    """Keep the imported file from being imported again (on the connection the run read it from)."""
    assert mdef.module.source is not None
    conn.execute(
        "INSERT INTO dx.file_ledger (connection, path, size_bytes, mtime, run_id)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (mdef.module.source.connection, run["source_path"], run["source_bytes"], run["source_mtime"], run["id"]))


def _dispose_source(run_id: int, mdef: ModuleDef) -> None:
    """Archive or delete the imported file, if it is still the one imported; a file left where it is
    is a warning of the run (SOURCE_NOT_ARCHIVED), which its e-mail, ``dx show`` and the API carry."""
    src = mdef.module.source
    if src is None or mdef.connection is None or src.after == "keep":
        return
    with db.connect() as conn:
        entry = conn.execute("SELECT path, size_bytes FROM dx.file_ledger WHERE run_id = %s", (run_id,)).fetchone()
    if entry is None:
        return
    verb = "deleted" if src.after == "delete" else "archived"
    try:
        with open_remote(mdef.connection) as remote:
            info = remote.stat(entry["path"])
            if info is None:  # gone already (a reducer called twice archived it), or the client took it
                return
            if info.size_bytes != entry["size_bytes"]:
                _not_disposed(run_id, entry["path"], f"it was not {verb}: it changed after it was imported "
                              f"({entry['size_bytes']} bytes then, {info.size_bytes} now)")
                return
            if src.after == "delete":
                remote.remove(entry["path"])
            else:
                folder, name = posixpath.split(entry["path"])
                remote.move(entry["path"], posixpath.join(folder, src.archive_dir, f"{name}.run{run_id}"))
        log.info("source.disposed", path=entry["path"], after=src.after)
    except Exception as exc:  # the ledger already keeps the file from a second import
        _not_disposed(run_id, entry["path"], f"it could not be {verb}: {exc}")


def _not_disposed(run_id: int, path: str, why: str) -> None:
    """Say on the run that its file stays where it is (the ledger keeps it from a second import)."""
    log.warning("source.dispose_failed", path=path, reason=why)
    with db.transaction() as conn:
        add_warning(conn, run_id, ErrorCode.SOURCE_NOT_ARCHIVED,
                    f"{path} stays where it is, {why}; it will not be imported again (the ledger has it)")
