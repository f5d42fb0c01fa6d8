"""The per-tenant chunk limit (DX_TENANT_MAX_CHUNKS): one tenant's big run does not starve another
tenant's small run, and its deferred chunks still apply exactly once."""

from __future__ import annotations

import os
import time
from datetime import date, datetime
from typing import Any

import pytest
import redis

from dx.cli import wait_for
from dx.devkit.cluster import REDIS_URL
from dx.devkit.generate import contacts
from dx.scheduler.requests import request_run
from dx.shared import db
from dx.shared.runs import Trigger, chunks_done
from dx.shared.settings import get_settings
from dx.workers.tenants import Leases, leases
from tests.integration.helpers import apply, config, table

pytestmark = pytest.mark.timeout(240)


def _planned(run_id: int, timeout_s: float = 60) -> int:
    """Wait until the run's plan has sent its chunk messages; its number of chunks."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db.connect() as conn:
            row = conn.execute("SELECT planned_at, n_chunks FROM dx.runs WHERE id = %s", (run_id,)).fetchone()
        if row["planned_at"] is not None:
            return int(row["n_chunks"])
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} was not planned within {timeout_s} s")


def _chunks_done(run_id: int) -> int:
    with db.connect() as conn:
        return chunks_done(conn, run_id)


def _chunks_done_before(run_id: int, moment: Any) -> int:
    with db.connect() as conn:
        return int(conn.execute("SELECT count(*) AS n FROM dx.chunk_results WHERE run_id = %s AND finished_at < %s",
                                (run_id, moment)).fetchone()["n"])


def test_a_small_run_is_not_starved_by_another_tenants_big_run(cluster_env, sshd, smtp, workers, tmp_path):
    # Given: tenant fairbig's upsert of 120,000 records cut into 40 chunks (split by key: one group of
    # 40 chunk messages), tenant fairsmall's upsert of 50 records (one chunk), and two workers of one
    # thread each, a tenant holding at most one chunk at a time
    big = contacts(120_000, seed=21).select("email", "first_name", "points", "birth_date")
    big_csv = big.write_csv().encode()
    small = contacts(50, seed=22, start=500_000).select("email", "first_name", "points", "birth_date")
    apply(config("fairbig", sshd, [{"id": "fairbig-upsert", "mode": "upsert", "chunk_bytes": len(big_csv) // 40 + 1,
                                    "source": {"path": "fairbig/in.csv"}}]), tmp_path)
    apply(config("fairsmall", sshd, [{"id": "fairsmall-upsert", "mode": "upsert",
                                      "source": {"path": "fairsmall/in.csv"}}]), tmp_path)
    sshd.put("fairbig/in.csv", big_csv)
    sshd.put("fairsmall/in.csv", small.write_csv().encode())
    workers.env["DX_TENANT_MAX_CHUNKS"] = "1"
    workers.start(2)

    # When: the big run is requested, and the small one once every chunk of the big one waits in the queue
    big_id = request_run("fairbig-upsert", Trigger.MANUAL, "pytest")
    n_chunks = _planned(big_id)
    small_id = request_run("fairsmall-upsert", Trigger.MANUAL, "pytest")
    small_run = wait_for(small_id, 120)
    big_run = wait_for(big_id, 180)

    # Then: the small run ended before half the big run's chunks had applied, and both runs are exact
    assert n_chunks == 40
    assert small_run["status"] == big_run["status"] == "completed", (small_run["error_message"],
                                                                    big_run["error_message"])
    done_before = _chunks_done_before(big_id, small_run["finished_at"])
    assert done_before < n_chunks // 2, f"{done_before} of {n_chunks} chunks of the big run applied first"
    assert (big_run["rows_read"], big_run["inserted"]) == (120_000, 120_000)
    assert (small_run["rows_read"], small_run["inserted"]) == (50, 50)
    assert len(table("fairbig")) == 120_000 and len(table("fairsmall")) == 50


def _leases(limit: int, lease_s: float) -> Leases:
    return Leases(redis.Redis.from_url(REDIS_URL), f"pytest-{os.getpid()}-{time.monotonic_ns()}", limit, lease_s)


def test_a_tenant_holds_at_most_its_slots_and_a_lease_not_renewed_expires():
    # Given: two slots per tenant, leases of one second
    leases = _leases(2, 1.0)

    # When: three chunks of one tenant ask for a slot, and one of another tenant
    first, second, third = (leases.acquire("t1") for _ in range(3))
    other = leases.acquire("t2")
    # Then: the third waits; the other tenant's has slots of its own
    assert first and second and third is None and other

    # When: one is released
    leases.release("t1", first)
    # Then: its slot is free again, and only it
    fourth = leases.acquire("t1")
    assert fourth and leases.acquire("t1") is None

    # When: one lease is renewed past its second, the other is not (its worker died)
    time.sleep(0.6)
    assert leases.renew("t1", [fourth, first]) == {first}  # the one released is gone
    time.sleep(0.6)
    # Then: the lease not renewed expired and its slot is taken again; the renewed one still holds its own
    assert leases.acquire("t1") is not None
    assert leases.acquire("t1") is None
    leases.client.delete(leases.key("t1"), leases.key("t2"))


def test_workers_killed_holding_slots_leave_them_to_expire_and_every_chunk_applies_once(
        cluster_env, sshd, smtp, workers, tmp_path):
    # Given: an overwrite of 120,000 records streamed in about 40 chunks, one slot per tenant with leases
    # of 3 s, and two workers of one thread each
    tenant = "slotkill"
    data = contacts(120_000, seed=31).select("email", "first_name", "points", "birth_date")
    csv = data.write_csv().encode()
    apply(config(tenant, sshd, [{"id": f"{tenant}-overwrite", "mode": "overwrite", "chunk_bytes": len(csv) // 40,
                                 "source": {"path": f"{tenant}/in.csv"}}]), tmp_path)
    sshd.put(f"{tenant}/in.csv", csv)
    workers.env.update({"DX_TENANT_MAX_CHUNKS": "1", "DX_TENANT_LEASE_S": "3"})
    workers.start(2)
    slots = leases(get_settings()).key(tenant)

    # When: both workers are killed (SIGKILL) while a chunk of the run holds the tenant's slot, a few
    # chunks in; then two new workers start
    run_id = request_run(f"{tenant}-overwrite", Trigger.MANUAL, "pytest")
    deadline = time.monotonic() + 60
    while not (_chunks_done(run_id) >= 3 and leases_held(slots)):
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.01)
    for proc in workers.procs:
        proc.kill()
    for proc in workers.procs:
        proc.wait()
    left = leases_held(slots)
    with db.connect() as conn:
        killed_at = conn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]
    workers.start(2)
    run = wait_for(run_id, 180)

    # Then: the dead workers' lease was there, and expired; the run completed with every record once
    assert left == 1
    assert run["status"] == "completed", run["error_message"]
    assert run["n_chunks"] >= 20
    assert _chunks_done(run_id) == run["n_chunks"]
    assert (run["rows_read"], run["inserted"]) == (120_000, 120_000)
    assert table(tenant) == {r["email"]: (r["first_name"], int(r["points"]), _date(r["birth_date"]))
                             for r in data.iter_rows(named=True)}
    with db.connect() as conn:  # no chunk took the slot before the dead workers' lease expired
        assert conn.execute("SELECT count(*) AS n FROM dx.chunk_results WHERE run_id = %s AND finished_at"
                            " BETWEEN %s AND %s + interval '2.5 seconds'", (run_id, killed_at, killed_at)
                            ).fetchone()["n"] == 0


def leases_held(key: str) -> int:
    """The leases of a tenant's slots not expired yet."""
    client = redis.Redis.from_url(REDIS_URL)
    seconds, micros = client.time()
    return int(client.zcount(key, f"({seconds * 1000 + micros // 1000}", "+inf"))


def _date(text: str) -> date:
    return datetime.strptime(text, "%d/%m/%Y").date()  # noqa: DTZ007
