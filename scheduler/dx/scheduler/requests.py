"""Run requests: every trigger (CLI, cron, HTTP, AMQP) becomes a run here.

A run is created with an outbox row in ONE transaction (``dx.shared.outbox``,
where the workers create the runs of a ``files: all`` module's next files too);
``dispatch`` then sends its plan. A disabled tenant's modules are refused
(TenantDisabled, TENANT_DISABLED) whatever the trigger.
"""

from __future__ import annotations

import psycopg

from dx.shared import db
from dx.shared.db import Conn
from dx.shared.errors import DxError, ErrorCode
from dx.shared.outbox import ACTIVE, active_run, create_queued_run, dispatch, tenant_enabled
from dx.shared.runs import RunStatus, Trigger, finish

__all__ = ["ACTIVE", "active_run", "TenantDisabled", "UnknownModule", "create_queued_run", "dispatch", "module_tenant",
           "request_run"]


class UnknownModule(DxError):
    """The module named in a request does not exist (for that tenant)."""


def module_tenant(conn: Conn, module_id: str, tenant: str | None = None) -> str:
    """The module's tenant; UnknownModule if it does not exist or is another tenant's."""
    row = conn.execute("SELECT tenant FROM dx.modules WHERE id = %s", (module_id,)).fetchone()
    if row is None or (tenant is not None and row["tenant"] != tenant):
        raise UnknownModule(f"no module {module_id!r}" + (f" for tenant {tenant!r}" if tenant else "")
                            + "; `dx modules` lists them")
    return str(row["tenant"])


class TenantDisabled(DxError):
    """The module's tenant does not have DataExchange enabled: its modules do not run."""

    code = ErrorCode.TENANT_DISABLED

    def __init__(self, tenant: str, module_id: str) -> None:
        self.message = (f"tenant {tenant!r} does not have DataExchange enabled (tenants[].enabled: false), "
                        f"so module {module_id!r} does not run")
        super().__init__(f"{self.code.value}: {self.message}")


class RequestIdReused(DxError):
    """A request's id was used before by the tenant, for another module: no run is made or returned."""

    code = ErrorCode.REQUEST_ID_REUSED

    def __init__(self, request_id: str, run_id: int, module_id: str) -> None:
        self.message = f"request_id {request_id!r} made run {run_id} of module {module_id!r}"
        super().__init__(f"{self.code.value}: {self.message}")


def _requested(conn: Conn, tenant: str, module_id: str, request_id: str | None) -> int | None:
    """The run an earlier request with this id made, if any; RequestIdReused if it was another module's."""
    if request_id is None:
        return None
    row = conn.execute("SELECT id, module FROM dx.runs WHERE tenant = %s AND request_id = %s",
                       (tenant, request_id)).fetchone()
    if row is not None and row["module"] != module_id:
        raise RequestIdReused(request_id, int(row["id"]), row["module"])
    return None if row is None else int(row["id"])


def request_run(module_id: str, trigger: Trigger, requested_by: str | None = None,
                tenant: str | None = None, request_id: str | None = None) -> int:
    """Create a run of the module and enqueue its plan; returns the run id.

    With a ``request_id`` (the client's id of its request) a repeated request
    returns the run the first one made, and creates nothing (RequestIdReused if
    that was another module's). UnknownModule, or TenantDisabled for a module of
    a disabled tenant."""
    try:
        with db.transaction() as conn:
            owner = module_tenant(conn, module_id, tenant)
            earlier = _requested(conn, owner, module_id, request_id)
            if earlier is not None:  # made while the tenant was enabled: the same answer as then
                return earlier
            if not tenant_enabled(conn, owner):
                raise TenantDisabled(owner, module_id)
            run_id = create_queued_run(conn, owner, module_id, trigger, requested_by, request_id=request_id)
    except psycopg.errors.UniqueViolation:  # the same request, made at the same moment by another replica
        with db.connect() as conn:
            earlier = _requested(conn, module_tenant(conn, module_id, tenant), module_id, request_id)
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
