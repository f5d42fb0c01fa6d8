"""Two ``dx scheduler`` processes on one accelerated clock: each due time fires exactly once.

The clock runs SPEED times faster than real time (DX_CLOCK_ORIGIN, DX_CLOCK_SPEED),
so that MODULES every-minute schedules give more than 500 due times in about
half a minute; half-way through, the leader is killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from dx.shared import db
from tests.integration.scheduling import forget_tenant, scheduled, start_scheduler, stop

TENANT = "replicas"
MODULES = 50
SPEED = 20  # a due time per module every 3 real seconds; the lease (1 s) fails over well within it
TARGET = 520
ORIGIN = datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC)


def total_claims() -> int:
    with db.connect() as conn:
        return int(conn.execute("SELECT count(*) AS n FROM dx.fire_claims c JOIN dx.modules m ON m.id = c.module"
                                " WHERE m.tenant = %s", (TENANT,)).fetchone()["n"])


def wait_claims(n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while total_claims() < n:
        assert time.monotonic() < deadline, f"only {total_claims()} of {n} due times fired within {timeout_s} s"
        time.sleep(0.2)


@pytest.mark.timeout(150)
def test_two_replicas_fire_every_due_time_exactly_once_even_when_the_leader_is_killed(
        cluster_env, sshd, tmp_path):
    # Given 50 every-minute modules (every tenth allows overlaps, the others forbid them)
    schedules = {f"rep-{i:02d}": {"cron": ["* * * * *"], "misfire_grace_s": 600,
                                  "overlap": "allow" if i % 10 == 0 else "forbid"} for i in range(MODULES)}
    scheduled(TENANT, sshd, tmp_path, schedules)
    env = {"DX_CLOCK_ORIGIN": f"{ORIGIN.isoformat()}@{time.time()}", "DX_CLOCK_SPEED": str(SPEED),
           "DX_SCHEDULER_TICK_S": "0.1", "DX_SCHEDULER_LEASE_S": "1"}
    procs = [start_scheduler(env, tmp_path / f"scheduler-{i}.log") for i in range(2)]
    try:
        # When both run until half the due times fired, then the leader dies by SIGKILL
        wait_claims(TARGET // 2, 60)
        with db.connect() as conn:
            holder = conn.execute("SELECT holder FROM dx.scheduler_lease").fetchone()["holder"]
        leader_pid = int(holder.split(":")[1])
        assert leader_pid in [p.pid for p in procs]
        os.kill(leader_pid, signal.SIGKILL)
        killed_at = total_claims()
        survivor = next(p for p in procs if p.pid != leader_pid)
        wait_claims(TARGET, 60)
        # Then the survivor stops cleanly on SIGTERM
        assert stop(survivor) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    try:
        with db.connect() as conn:
            rows = conn.execute(
                "SELECT c.module, c.due_at, c.outcome, c.claimed_by, r.id AS run, r.due_at AS run_due, r.status"
                " FROM dx.fire_claims c JOIN dx.modules m ON m.id = c.module"
                " LEFT JOIN dx.runs r ON r.id = c.run_id WHERE m.tenant = %s ORDER BY c.module, c.due_at",
                (TENANT,)).fetchall()
            scheduled_runs = Counter(r["module"] for r in conn.execute(
                "SELECT r.module FROM dx.runs r JOIN dx.modules m ON m.id = r.module"
                " WHERE m.tenant = %s AND r.trigger = 'schedule'", (TENANT,)))
        assert len(rows) >= 500 and killed_at < len(rows)
        by_module: dict[str, list[datetime]] = {}
        for r in rows:
            by_module.setdefault(r["module"], []).append(r["due_at"])
        for module, dues in by_module.items():
            # every minute from the first to the last fired: none lost, none coalesced ...
            assert dues == [dues[0] + timedelta(minutes=i) for i in range(len(dues))], module
            # ... and exactly one run per due time: none doubled
            assert scheduled_runs[module] == len(dues), module
        assert all(r["outcome"] in ("fired", "skipped") and r["run_due"] == r["due_at"] for r in rows)
        assert {r["status"] for r in rows if r["outcome"] == "skipped"} == {"skipped"}
        # both replicas led in turn: the killed one first, the survivor after
        assert len({r["claimed_by"] for r in rows}) == 2
    finally:
        forget_tenant(TENANT, cluster_env["DX_BROKER_URL"])
