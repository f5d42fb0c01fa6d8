"""Queued runs and their outbox: how every run is created and its plan sent.

A run is created with an outbox row in ONE transaction; ``dispatch`` then
sends the plan of the module's kind to ``dx.plan`` (``plan`` for imports,
``export_plan`` for the Displacer and Exporter) and deletes the row in the
transaction that holds the row's lock. A process dying in between leaves the
row, and the scheduler leader's sweeper (``dispatch()`` with no ids) sends
it: no run is left queued forever, none is sent twice (SKIP LOCKED).

Here, not in the control plane, because the workers create runs too: the end
of a run of a ``files: all`` module creates the run of its next file.
"""

from __future__ import annotations

from datetime import datetime

from dx.shared import db, messages
from dx.shared.db import Conn
from dx.shared.runs import RunStatus, Trigger, create_run

#: Statuses of a run that still goes on (an overlap, or a run to wait for).
ACTIVE = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


def active_run(conn: Conn, module_id: str) -> dict | None:
    """The module's newest run that still goes on, if any, read under a lock on the module's row (held
    to the caller's commit): a transaction that checks for one and then creates a run of the module
    waits for another doing the same, and then sees its run, so two never both find none (the
    scheduler's fire and the end of a ``files: all`` run would each start a run, both taking the
    same file)."""
    conn.execute("SELECT 1 FROM dx.modules WHERE id = %s FOR UPDATE", (module_id,))
    return conn.execute("SELECT id, status FROM dx.runs WHERE module = %s AND status = ANY(%s)"
                        " ORDER BY id DESC LIMIT 1", (module_id, list(ACTIVE))).fetchone()


def tenant_enabled(conn: Conn, tenant: str) -> bool:
    """Whether the tenant has DataExchange enabled (``tenants[].enabled``); False for no such tenant."""
    row = conn.execute("SELECT enabled FROM dx.tenants WHERE id = %s", (tenant,)).fetchone()
    return row is not None and bool(row["enabled"])


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
