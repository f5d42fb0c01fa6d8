"""Actors ``run_crashed`` and ``run_timed_out`` (queue ``dx.reduce``): a run that cannot go on ends.

``run_crashed`` consumes the retry-exhausted callback of every plan, chunk and
reduce message, an import's or an export's (``dx.shared.messages``): the run
fails with INTERNAL_ERROR. ``run_timed_out`` consumes what the scheduler's
watchdog sends for a run that did not end in time (``dx.scheduler.watchdog``):
the run ends ``timed_out`` with RUN_TIMED_OUT. Both send nothing; they discard
what the run's kind leaves behind (an overwrite's shadow table:
``dx.workers.imports.kinds``), keep what its chunks committed elsewhere, and
send the e-mail; the source file stays where it was. The message knows only
the run: the kind is picked by the run's definition, so this module imports a
wing's ``kinds``, and no module of a wing imports it.

Retries: 3. Idempotent: a terminal run stays as it is (a run that completed
meanwhile stays completed); the e-mail is sent once (``email_sent_at``).
"""

from __future__ import annotations

import os
from typing import Any

import structlog

from dx.shared import db
from dx.shared.config import EXPORT_KINDS
from dx.shared.errors import STAGING_FULL_ERRNOS, ErrorCode
from dx.shared.runs import RunStatus, definition, get_run
from dx.workers.failures import Discards, fail_run
from dx.workers.imports.kinds import import_kind

log = structlog.get_logger(__name__)


def run_crashed(message_data: dict[str, Any], retry_data: dict[str, Any]) -> None:
    """A plan, chunk or reduce message failed for good: the run fails."""
    run_id = int(message_data["kwargs"]["run_id"])
    trace = (message_data.get("options", {}).get("traceback") or "").strip().splitlines()
    what = (f"{message_data['actor_name']} failed after {retry_data.get('retries')} retries: "
            f"{trace[-1] if trace else 'see the worker log'}")
    log.error("run.crashed", run=run_id, error=what)
    fail_run(run_id, _code_of(trace[-1] if trace else ""), what, kind=_kind(run_id))


def _code_of(error: str) -> ErrorCode:
    """The code of a stage's last error (the traceback's last line): a full staging disk has its own."""
    if any(os.strerror(n) in error for n in STAGING_FULL_ERRNOS):  # in OSError's text and pyarrow's
        return ErrorCode.STAGING_FULL
    return ErrorCode.INTERNAL_ERROR


def run_timed_out(run_id: int, reason: str) -> None:
    """The scheduler gave up on the run: it ends timed_out, saying why."""
    log.error("run.timed_out", run=run_id, error=reason)
    fail_run(run_id, ErrorCode.RUN_TIMED_OUT, reason, status=RunStatus.TIMED_OUT, kind=_kind(run_id))


def _kind(run_id: int) -> Discards | None:
    """What the run's kind discards: an import's; None for an export (it leaves nothing to discard)
    or a run that is gone."""
    with db.connect() as conn:
        run = get_run(conn, run_id)
        if run is None:
            return None
        try:
            mdef = definition(conn, run)
        except KeyError:  # a run older than definitions whose module is gone: the run still fails
            return None
    return None if mdef.module.kind in EXPORT_KINDS else import_kind(mdef)
