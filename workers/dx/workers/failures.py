"""Ending a run that cannot go on, and the e-mail every ended run sends.

Not an actor module (the retry-exhausted callback, ``run_crashed``, is in
``dx.workers.crashed``). It imports neither wing: what a failing run's kind
throws away comes from the caller, as an object with the ``Discards`` hook
(``dx.workers.imports.kinds``).
"""

from __future__ import annotations

from typing import Protocol

import structlog

from dx.shared import db, mail
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode
from dx.shared.report import report_text
from dx.shared.runs import (
    APPLIED,
    ENDED_CHANNEL,
    Run,
    RunStatus,
    chunk_counters,
    definition,
    error_counts,
    finish,
    get_run,
)
from dx.shared.settings import get_settings
from dx.workers import staging

log = structlog.get_logger(__name__)


class Discards(Protocol):
    """What a run's kind throws away when the run fails."""

    #: The counter of the lines its plan could not read.
    malformed_counter: str

    def discard(self, conn: Conn, run: Run, *, chunks: bool) -> bool:
        """In the failing transaction: drop what the run made for itself alone (an overwrite's shadow
        table); with ``chunks``, undo too what its committed chunks wrote where it stays (a streamed
        append's rows). Whether nothing its chunks applied stays (an overwrite's: always)."""


def fail_run(run_id: int, code: ErrorCode | None, message: str, *, status: RunStatus = RunStatus.FAILED,
             kind: Discards | None = None, discard_chunks: bool = False, mail: bool = True) -> None:
    """End a run that has not ended yet, clean its leftovers and send the e-mail. ``kind``: what the
    run's kind discards (see ``Discards``). ``discard_chunks``: the chunks' results and failed
    operations go too (a failed plan's: the run keeps none of its chunks' work). An import's run
    (``kind`` given) reports the counters of the chunks' results that stay, nothing inserted, updated
    or deleted if their work was discarded. ``mail`` False: the caller sends the e-mail (``notify``), once
    it has done what follows the end (an import's rejected file)."""
    with db.transaction() as conn:
        run = get_run(conn, run_id, for_update=True)  # waits for chunks in their transaction; later ones skip
        if run is None:
            return
        if not RunStatus(run["status"]).terminal:
            discarded = kind.discard(conn, run, chunks=discard_chunks) if kind is not None else False
            if discard_chunks:
                conn.execute("DELETE FROM dx.failed_operations WHERE run_id = %s AND chunk_no >= 0", (run_id,))
                conn.execute("DELETE FROM dx.chunk_results WHERE run_id = %s", (run_id,))
            counters = None
            if kind is not None:  # the rejected records stay in the report: they stay counted
                counters = chunk_counters(conn, run, kind.malformed_counter)
                if discarded:
                    counters.update(dict.fromkeys(APPLIED, 0))
            finish(conn, run_id, status, error_code=code.value if code else None, error_message=message,
                   counters=counters)
    staging.remove_run(run_id)
    if mail:
        notify(run_id)


def _report(conn: Conn, run: Run, attach_bytes: int) -> mail.Report:
    """The e-mail's errors by code, the failures CSV if it fits ``attach_bytes``, an export's file."""
    errors = error_counts(conn, run["id"])
    csv: bytes | None = None
    if errors:
        pieces, size = [], 0
        for text in report_text(conn, run["id"]):
            pieces.append(text.encode("utf-8"))
            size += len(pieces[-1])
            if size > attach_bytes:
                break
        csv = b"".join(pieces) if size <= attach_bytes else None
    export = conn.execute("SELECT target_path, bytes FROM dx.exports WHERE run_id = %s", (run["id"],)).fetchone()
    return mail.Report(errors, csv, export)


def notify(run_id: int) -> None:
    """Send the report e-mail of an ended run, once: a twin delivery of the stage (a broker that restarted
    hands the message out again while the first is still at work) waits on the run's row, then finds it
    sent."""
    settings = get_settings()
    with db.connect() as conn:
        run = get_run(conn, run_id, for_update=True)
        if run is None or run["email_sent_at"] is not None or not RunStatus(run["status"]).terminal:
            return
        mdef = definition(conn, run)
        recipients = list(mdef.notify) if mail.due(mdef.module.notify_on, run["status"]) else []
        if recipients:
            mail.send(settings, mail.compose(settings, run, _report(conn, run, settings.mail_attach_bytes), recipients))
        conn.execute("UPDATE dx.runs SET email_sent_at = now() WHERE id = %s", (run_id,))
        conn.execute("SELECT pg_notify(%s, %s)", (ENDED_CHANNEL, str(run_id)))  # its last step: wake the waiters
        conn.commit()
    log.info("run.notified", recipients=len(recipients))
