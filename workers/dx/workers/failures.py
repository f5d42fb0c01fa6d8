"""Ending a run that cannot go on, and the e-mail every ended run sends.

Actor ``run_crashed`` (queue ``dx.reduce``) consumes the retry-exhausted callback
of plan, chunk and reduce messages whose retries are exhausted: it marks the
run failed with INTERNAL_ERROR. Retries: 3. Idempotent: a terminal run stays
as it is; the e-mail is sent once (``email_sent_at``).
"""

from __future__ import annotations

from typing import Any

import structlog
from psycopg import sql

from dx.shared import db, mail
from dx.shared.catalog import table_ident
from dx.shared.errors import ErrorCode
from dx.shared.runs import RunStatus, definition, error_counts, finish, get_run, streamed
from dx.shared.settings import get_settings
from dx.workers import staging
from dx.workers.imports.duplicates import undo_append
from dx.workers.imports.importer import shadow_table

log = structlog.get_logger(__name__)


def drop_shadow(conn: Any, tenant: str, database: str, run_id: int) -> None:
    """Drop an overwrite run's shadow table if it exists."""
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table_ident(tenant, shadow_table(database, run_id))))


def fail_run(run_id: int, code: ErrorCode | None, message: str, *,
             status: RunStatus = RunStatus.FAILED, discard_chunks: bool = False) -> None:
    """End a run that has not ended yet, clean its leftovers and send the e-mail. ``discard_chunks``:
    the chunks' results and failed operations go too (a failed plan's: chunks that an overwrite's
    plan sent before it failed loaded only its shadow table, an append's are undone, as a split by
    key sends none)."""
    with db.transaction() as conn:
        run = get_run(conn, run_id, for_update=True)  # waits for chunks in their transaction; later ones skip
        if run is None:
            return
        if not RunStatus(run["status"]).terminal:
            module = conn.execute("SELECT database FROM dx.modules WHERE id = %s", (run["module"],)).fetchone()
            if module:
                drop_shadow(conn, run["tenant"], module["database"], run_id)
            if discard_chunks:
                if streamed(run) and (mdef := definition(conn, run)).module.mode == "append":
                    log.info("run.undone", rows_deleted=undo_append(conn, run, mdef))
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


def run_crashed(message_data: dict[str, Any], retry_data: dict[str, Any]) -> None:
    """A plan, chunk or reduce message failed for good: the run fails."""
    run_id = int(message_data["kwargs"]["run_id"])
    trace = (message_data.get("options", {}).get("traceback") or "").strip().splitlines()
    what = (f"{message_data['actor_name']} failed after {retry_data.get('retries')} retries: "
            f"{trace[-1] if trace else 'see the worker log'}")
    log.error("run.crashed", run=run_id, error=what)
    fail_run(run_id, ErrorCode.INTERNAL_ERROR, what)

