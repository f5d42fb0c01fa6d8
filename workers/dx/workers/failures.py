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
from dx.shared.runs import Run, RunStatus, definition, error_counts, finish, get_run
from dx.shared.settings import get_settings
from dx.workers import staging

log = structlog.get_logger(__name__)


class Discards(Protocol):
    """What a run's kind throws away when the run fails."""

    def discard(self, conn: Conn, run: Run, *, chunks: bool) -> None:
        """In the failing transaction: drop what the run made for itself alone (an overwrite's shadow
        table); with ``chunks``, undo too what its committed chunks wrote where it stays (a streamed
        append's rows)."""


def fail_run(run_id: int, code: ErrorCode | None, message: str, *, status: RunStatus = RunStatus.FAILED,
             kind: Discards | None = None, discard_chunks: bool = False) -> None:
    """End a run that has not ended yet, clean its leftovers and send the e-mail. ``kind``: what the
    run's kind discards (see ``Discards``). ``discard_chunks``: the chunks' results and failed
    operations go too (a failed plan's: the run keeps none of its chunks' work)."""
    with db.transaction() as conn:
        run = get_run(conn, run_id, for_update=True)  # waits for chunks in their transaction; later ones skip
        if run is None:
            return
        if not RunStatus(run["status"]).terminal:
            if kind is not None:
                kind.discard(conn, run, chunks=discard_chunks)
            if discard_chunks:
                conn.execute("DELETE FROM dx.failed_operations WHERE run_id = %s AND chunk_no >= 0", (run_id,))
                conn.execute("DELETE FROM dx.chunk_results WHERE run_id = %s", (run_id,))
            finish(conn, run_id, status, error_code=code.value if code else None, error_message=message)
    staging.remove_run(run_id)
    notify(run_id)


def notify(run_id: int) -> None:
    """Send the report e-mail of an ended run, once."""
    settings = get_settings()
    with db.connect() as conn:
        run = get_run(conn, run_id)
        if run is None or run["email_sent_at"] is not None or not RunStatus(run["status"]).terminal:
            return
        recipients = list(definition(conn, run).notify)
        if recipients:
            mail.send(settings, mail.compose(settings, run, error_counts(conn, run_id), recipients))
        conn.execute("UPDATE dx.runs SET email_sent_at = now() WHERE id = %s", (run_id,))
        conn.commit()
    log.info("run.notified", recipients=len(recipients))
