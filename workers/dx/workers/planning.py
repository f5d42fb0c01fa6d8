"""The start of a plan, import or export: the run becomes running, or a redelivered plan re-sends."""

from __future__ import annotations

import structlog

from dx.shared import db, messages, runs
from dx.shared.catalog import ModuleDef
from dx.shared.runs import active_run, definition

log = structlog.get_logger(__name__)


def begin_planning(run_id: int, actor: str, chunk: messages.Actor, reduce: messages.Actor) -> ModuleDef | None:
    """Mark the run running and return its module's definition; None when there is nothing to plan.

    A run that ended is left alone; a run planned already only gets its chunk
    group sent again (a redelivered plan message).
    """
    with db.connect() as conn:
        run = active_run(conn, run_id, actor)
        if run is None:
            return None
        if run["planned_at"] is not None:
            assert run["n_chunks"] is not None  # recorded with planned_at
            log.info(f"{actor}.resend", n_chunks=run["n_chunks"])
            messages.send_chunks(chunk, reduce, run_id, run["n_chunks"])
            return None
        started = runs.start(conn, run_id)
        conn.commit()
        if not started:
            return None
        return definition(conn, run)
