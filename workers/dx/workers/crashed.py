"""Actor ``run_crashed`` (queue ``dx.reduce``): a stage's message failed for good, so its run fails.

Consumes the retry-exhausted callback of every plan, chunk and reduce message,
an import's or an export's (``dx.shared.messages``); sends nothing. Marks the
run failed with INTERNAL_ERROR, discarding what its kind leaves behind (an
overwrite's shadow table: ``dx.workers.imports.kinds``), and sends the e-mail.
The message knows only the run: the kind is picked by the run's definition,
so this module imports a wing's ``kinds``, and no module of a wing imports it.

Retries: 3. Idempotent: a terminal run stays as it is; the e-mail is sent once
(``email_sent_at``).
"""

from __future__ import annotations

from typing import Any

import structlog

from dx.shared import db
from dx.shared.config import EXPORT_KINDS
from dx.shared.errors import ErrorCode
from dx.shared.runs import definition, get_run
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
    fail_run(run_id, ErrorCode.INTERNAL_ERROR, what, kind=_kind(run_id))


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
