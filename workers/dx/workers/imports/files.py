"""A file source's queue: the pending files, the file a failed run rejects, the run of the next file.

Not an actor module: ``plan`` and ``reduce`` call it.

- Pending: the files matching the source's pattern that are not in the ledger
  (``dx.file_ledger``: imported by a run that completed), in name order.
- Rejected: a run that fails on its file's content (a code of ``REJECTS``)
  moves the file into the source's ``rejected_dir`` beside it, with
  ``NAME.reason.txt`` saying why, so that the next run takes the next file. The
  new path is chosen and recorded on the run (``rejected_path``) before the
  move, so that a redelivery finishes the same move; a name already taken
  there gets the run's id (``STEM.runN.EXT``). The run's error message (and so
  its e-mail) says where the file went. Other failures (the server, the
  credentials, the contact table, a crash) leave the file for the next run.
- ``files: all``: the end of a run that took its file (imported it, or
  rejected it) makes the run of the next settled pending file, once
  (``follows_run`` is unique), unless another run of the module is queued or
  running (it takes that file) or the tenant is disabled.

``after_end`` does both once the run has ended and before its e-mail; each
step is idempotent (a reduce called again and a redelivered plan repeat it).
"""

from __future__ import annotations

import io
import posixpath
import time

import structlog

from dx.shared import db
from dx.shared.catalog import ModuleDef
from dx.shared.config import ConnectionCfg, SourceCfg
from dx.shared.connections import FileInfo, Remote, open_remote
from dx.shared.errors import ErrorCode
from dx.shared.outbox import active_run, create_queued_run, dispatch, tenant_enabled
from dx.shared.runs import Run, RunStatus, Trigger, definition, get_run, next_run
from dx.workers.failures import notify

log = structlog.get_logger(__name__)
#: The run-level codes that blame the file's content: a run failing with one moves its file to rejected_dir.
REJECTS = frozenset({ErrorCode.SOURCE_UNREADABLE, ErrorCode.SOURCE_UNDECODABLE, ErrorCode.SOURCE_UNSAFE,
                     ErrorCode.MALFORMED_HEADER, ErrorCode.MISSING_REQUIRED_COLUMN, ErrorCode.UNKNOWN_COLUMN,
                     ErrorCode.EMPTY_SOURCE, ErrorCode.ERROR_RATIO_EXCEEDED, ErrorCode.CONSTRAINT_VIOLATED})
#: What the reason file's name adds to the rejected file's.
REASON_SUFFIX = ".reason.txt"
#: The statuses of a run that imported its file (the ledger has it).
IMPORTED = (RunStatus.COMPLETED.value, RunStatus.COMPLETED_WITH_ERRORS.value)


def is_pattern(path: str) -> bool:
    """Whether a source path names files by a pattern (a run then takes one of several)."""
    return any(ch in path for ch in "*?[")


def unseen(files: list[FileInfo], connection: str) -> list[FileInfo]:
    """The files not in the ledger of ``connection`` (the same path, size and time), in the given order."""
    with db.connect() as conn:
        seen = {(r["path"], r["size_bytes"], r["mtime"]) for r in conn.execute(
            "SELECT path, size_bytes, mtime FROM dx.file_ledger WHERE connection = %s", (connection,))}
    return [f for f in files if (f.path, f.size_bytes, f.mtime) not in seen]


def record_source(run_id: int, info: FileInfo) -> None:
    """Record the file a running run took, before it is read (a failed run's e-mail names it, and its
    rejection moves it)."""
    with db.transaction() as conn:
        conn.execute("UPDATE dx.runs SET source_path = %s, source_bytes = %s, source_mtime = %s"
                     " WHERE id = %s AND status = %s",
                     (info.path, info.size_bytes, info.mtime, run_id, RunStatus.RUNNING.value))


def after_end(run_id: int, mdef: ModuleDef) -> None:
    """What follows the end of a run of a file source, before its e-mail: its file rejected if its
    failure blames the file, and with ``files: all`` the run of the next pending file."""
    src = mdef.module.source
    if src is None or src.is_query or mdef.connection is None:
        return
    with db.connect() as conn:
        run = get_run(conn, run_id)
    if run is None or not RunStatus(run["status"]).terminal:
        return
    rejected = _reject(run, src, mdef.connection)
    if src.files == "all" and (run["status"] in IMPORTED or rejected):
        _next_file(run, src, mdef.connection)


def finish_ended(run_id: int) -> None:
    """For a run that ended without its e-mail (the process ending it died first): what follows its
    end, then the e-mail; nothing for another run."""
    with db.connect() as conn:
        run = get_run(conn, run_id)
        if run is None or not RunStatus(run["status"]).terminal or run["email_sent_at"] is not None:
            return
        mdef = definition(conn, run)
    after_end(run_id, mdef)
    notify(run_id)


def _reject(run: Run, src: SourceCfg, connection: ConnectionCfg) -> bool:
    """Move the file that failed the run into the rejected folder, with its reason file; whether it is
    there now."""
    path = run["source_path"]
    if run["status"] != RunStatus.FAILED.value or run["error_code"] not in REJECTS or path is None:
        return False
    target, moved = run["rejected_path"], False
    try:
        with open_remote(connection) as remote:
            if target is None:
                target = _claim(run["id"], _free_name(remote, posixpath.split(path), src.rejected_dir, run["id"]))
            info = remote.stat(path)
            if info is not None and (info.size_bytes, info.mtime) == (run["source_bytes"], run["source_mtime"]):
                remote.move(path, target)
            moved = remote.stat(target) is not None  # moved now, or by an earlier delivery
            if moved:
                remote.upload(io.BytesIO(_reason(run, target).encode("utf-8")), target + REASON_SUFFIX)
    except Exception as exc:  # the run has ended already: say so in its message rather than fail again
        log.warning("source.reject_failed", path=path, to=target, error=str(exc))
        if not moved:
            _unclaim(run["id"], target)
            _note(run["id"], f" The file could not be moved to {target or src.rejected_dir}: {exc}; "
                             "the next run takes it again.")
            return False
    if not moved or target is None:  # the file went, or was replaced, before it could be moved
        _unclaim(run["id"], target)
        return False
    _note(run["id"], _moved_note(target))
    log.info("source.rejected", path=path, to=target, code=run["error_code"])
    return True


def _free_name(remote: Remote, folder_name: tuple[str, str], rejected_dir: str, run_id: int) -> str:
    """The rejected file's path: its own name in the rejected folder, or with the run's id if that is taken."""
    folder, name = folder_name
    rejected = posixpath.join(folder, rejected_dir)
    plain = posixpath.join(rejected, name)
    if remote.stat(plain) is None and remote.stat(plain + REASON_SUFFIX) is None:
        return plain
    stem, dot, rest = name.partition(".")
    return posixpath.join(rejected, f"{stem}.run{run_id}{dot}{rest}")


def _claim(run_id: int, target: str) -> str:
    """Record the rejected file's path on the run, unless a twin delivery recorded one first; returns it."""
    with db.transaction() as conn:
        conn.execute("UPDATE dx.runs SET rejected_path = %s WHERE id = %s AND rejected_path IS NULL",
                     (target, run_id))
        row = conn.execute("SELECT rejected_path FROM dx.runs WHERE id = %s", (run_id,)).fetchone()
    return str(row["rejected_path"]) if row and row["rejected_path"] else target


def _unclaim(run_id: int, target: str | None) -> None:
    if target is None:
        return
    with db.transaction() as conn:
        conn.execute("UPDATE dx.runs SET rejected_path = NULL WHERE id = %s AND rejected_path = %s",
                     (run_id, target))


def _moved_note(target: str) -> str:
    return f" The file was moved to {target}; {posixpath.basename(target)}{REASON_SUFFIX} beside it says why."


def _note(run_id: int, note: str) -> None:
    """Add ``note`` to the run's error message, once."""
    with db.transaction() as conn:
        conn.execute("UPDATE dx.runs SET error_message = concat(error_message, %s::text)"
                     " WHERE id = %s AND strpos(coalesce(error_message, ''), %s::text) = 0", (note, run_id, note))


def _reason(run: Run, target: str) -> str:
    """The reason file's text: the file, the run, when, the code and the message."""
    code = ErrorCode[str(run["error_code"])]  # the names are the codes
    message = (run["error_message"] or "").removesuffix(_moved_note(target))
    ended = run["finished_at"].isoformat(timespec="seconds") if run["finished_at"] else "-"
    folder = posixpath.dirname(run["source_path"] or "") or "."
    return "\n".join([
        "DataExchange did not import this file.",
        "",
        f"File:    {run['source_path']} ({run['source_bytes']} bytes)",
        f"Run:     {run['id']} of module {run['module']} (tenant {run['tenant']}), failed at {ended}",
        f"Code:    {code.value} ({code.meaning})",
        f"Message: {message}",
        "",
        f"Put a corrected file in {folder}/ and the next run takes it.",
        "",
    ])


def _next_file(run: Run, src: SourceCfg, connection: ConnectionCfg) -> None:
    """The run of the next settled pending file (``files: all``), made once and sent."""
    if not is_pattern(src.path):
        return
    try:
        with open_remote(connection) as remote:
            files = remote.list(src.path)
    except Exception as exc:  # the next scheduled or requested run takes the files
        log.warning("files.next_not_listed", error=str(exc))
        return
    now = time.time()
    pending = [f for f in unseen(files, connection.id) if now - f.mtime >= src.settle_s]
    if not pending:
        return
    with db.transaction() as conn:
        conn.execute("SELECT id FROM dx.runs WHERE id = %s FOR UPDATE", (run["id"],))  # a twin delivery waits
        made = next_run(conn, run["id"])
        if made is None:
            if not tenant_enabled(conn, run["tenant"]):
                log.info("files.next_skipped", reason="the tenant is disabled")
                return
            if active_run(conn, run["module"]) is not None:
                log.info("files.next_skipped", reason="another run of the module takes the next file")
                return
            made = create_queued_run(conn, run["tenant"], run["module"], Trigger(run["trigger"]),
                                     run["requested_by"])
            conn.execute("UPDATE dx.runs SET follows_run = %s WHERE id = %s", (run["id"], made))
    dispatch([made])  # a no-op if an earlier delivery sent it
    log.info("files.next_run", run=made, pending=len(pending), file=pending[0].path)
