"""Run requests: every trigger (CLI, cron, HTTP, AMQP) becomes a run here.

A run is created with an outbox row in ONE transaction; ``dispatch`` then
sends the plan of the module's kind to ``dx.plan`` (``plan`` for imports,
``export_plan`` for the Displacer and Exporter) and deletes the row in the
transaction that holds the row's lock. A process dying in between leaves the
row, and the scheduler leader's sweeper (``dispatch()`` with no ids) sends
it: no run is left queued forever, none is sent twice (SKIP LOCKED).
"""

from __future__ import annotations

from datetime import datetime

import psycopg

from dx.shared import db, messages
from dx.shared.db import Conn
from dx.shared.errors import DxError, ErrorCode
from dx.shared.runs import RunStatus, Trigger, create_run, finish

#: Statuses of a run that still goes on (an overlap, or a run to wait for).
ACTIVE = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


class UnknownModule(DxError):
    """The module named in a request does not exist (for that tenant)."""


def module_tenant(conn: Conn, module_id: str, tenant: str | None = None) -> str:
    """The module's tenant; UnknownModule if it does not exist or is another tenant's."""
    row = conn.execute("SELECT tenant FROM dx.modules WHERE id = %s", (module_id,)).fetchone()
    if row is None or (tenant is not None and row["tenant"] != tenant):
        raise UnknownModule(f"no module {module_id!r}" + (f" for tenant {tenant!r}" if tenant else "")
                            + "; `dx modules` lists them")
    return str(row["tenant"])


def create_queued_run(conn: Conn, tenant: str, module_id: str, trigger: Trigger, requested_by: str | None,
                      *, due_at: datetime | None = None, after_run: int | None = None,
                      request_id: str | None = None) -> int:
    """Insert a queued run and its outbox row (caller's transaction); returns the run id."""
    run_id = create_run(conn, tenant, module_id, trigger, requested_by, due_at, request_id)
    conn.execute("INSERT INTO dx.run_outbox (run_id, after_run) VALUES (%s, %s)", (run_id, after_run))
    return run_id


def dispatch(run_ids: list[int] | None = None) -> list[int]:
    """Send the plan of each ready outbox row (the given runs, or all); returns the runs sent."""
    sent: list[int] = []
    with db.connect() as conn:
        while True:
            with conn.transaction():
                row = conn.execute(
                    "SELECT o.run_id, m.kind FROM dx.run_outbox o"
                    " JOIN dx.runs r ON r.id = o.run_id JOIN dx.modules m ON m.id = r.module"
                    " WHERE (%(ids)s::bigint[] IS NULL OR o.run_id = ANY(%(ids)s))"
                    "   AND NOT EXISTS (SELECT 1 FROM dx.runs a WHERE a.id = o.after_run AND a.status = ANY(%(active)s))"
                    " ORDER BY o.run_id LIMIT 1 FOR UPDATE OF o SKIP LOCKED",
                    {"ids": run_ids, "active": list(ACTIVE)}).fetchone()
                if row is None:
                    return sent
                messages.send(messages.PLAN_OF[row["kind"]], run_id=row["run_id"])
                conn.execute("DELETE FROM dx.run_outbox WHERE run_id = %s", (row["run_id"],))
            sent.append(int(row["run_id"]))


def _requested(conn: Conn, tenant: str, request_id: str | None) -> int | None:
    """The run an earlier request with this id made, if any."""
    if request_id is None:
        return None
    row = conn.execute("SELECT id FROM dx.runs WHERE tenant = %s AND request_id = %s", (tenant, request_id)).fetchone()
    return None if row is None else int(row["id"])


def request_run(module_id: str, trigger: Trigger, requested_by: str | None = None,
                tenant: str | None = None, request_id: str | None = None) -> int:
    """Create a run of the module and enqueue its plan; returns the run id.

    With a ``request_id`` (the client's id of its request) a repeated request
    returns the run the first one made, and creates nothing."""
    try:
        with db.transaction() as conn:
            owner = module_tenant(conn, module_id, tenant)
            earlier = _requested(conn, owner, request_id)
            if earlier is not None:
                return earlier
            run_id = create_queued_run(conn, owner, module_id, trigger, requested_by, request_id=request_id)
    except psycopg.errors.UniqueViolation:  # the same request, made at the same moment by another replica
        with db.connect() as conn:
            earlier = _requested(conn, module_tenant(conn, module_id, tenant), request_id)
        assert earlier is not None
        return earlier
    try:
        dispatch([run_id])
    except Exception as exc:  # refused outright: say so now rather than leave it to the sweeper
        with db.transaction() as conn:
            conn.execute("DELETE FROM dx.run_outbox WHERE run_id = %s", (run_id,))
            finish(conn, run_id, RunStatus.FAILED, error_code=ErrorCode.INTERNAL_ERROR.value,
                   error_message=f"the broker refused the plan message: {exc}")
        raise
    return run_id
