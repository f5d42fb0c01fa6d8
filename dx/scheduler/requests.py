"""Run requests: every trigger (CLI, cron, HTTP, AMQP) becomes a run here.

``request_run`` inserts the queued Run row, then sends the plan of the
module's kind to ``dx.plan`` (``plan`` for imports, ``export_plan`` for the
Displacer and Exporter). Should the broker refuse the message, the run is marked failed
rather than left queued forever.
"""

from __future__ import annotations

from dx.shared import db
from dx.shared.errors import DxError, ErrorCode
from dx.shared.runs import RunStatus, Trigger, create_run, finish


class UnknownModule(DxError):
    """The module named in a request does not exist (for that tenant)."""


def request_run(module_id: str, trigger: Trigger, requested_by: str | None = None,
                tenant: str | None = None) -> int:
    """Create a run of the module and enqueue its plan; returns the run id."""
    from dx.workers.broker import setup

    setup()
    from dx.shared.config import EXPORT_KINDS
    from dx.workers.export import export_plan
    from dx.workers.failures import on_failure_options
    from dx.workers.plan import plan

    with db.transaction() as conn:
        row = conn.execute("SELECT tenant, kind FROM dx.modules WHERE id = %s", (module_id,)).fetchone()
        if row is None or (tenant is not None and row["tenant"] != tenant):
            raise UnknownModule(f"no module {module_id!r}" + (f" for tenant {tenant!r}" if tenant else "")
                                + "; `dx modules` lists them")
        run_id = create_run(conn, row["tenant"], module_id, trigger, requested_by)
    try:
        planner = export_plan if row["kind"] in EXPORT_KINDS else plan
        planner.send_with_options(kwargs={"run_id": run_id}, **on_failure_options())
    except Exception as exc:
        with db.transaction() as conn:
            finish(conn, run_id, RunStatus.FAILED, error_code=ErrorCode.INTERNAL_ERROR.value,
                   error_message=f"the broker refused the plan message: {exc}")
        raise
    return run_id
