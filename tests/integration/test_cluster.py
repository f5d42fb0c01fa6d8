"""The cluster as an ops team runs it, on this machine: every role a separate OS process.

Two ``dx scheduler`` replicas, ``dx serve`` and three ``dx worker`` processes on the real PostgreSQL,
RabbitMQ and Redis, with staging on an S3-compatible server (each worker's own folder apart from the
others'). Two tenants at once: a 1,000,000-row overwrite import, and a Displacer export of 1,000,000
rows, both asked for over the API. Mid-run, one worker gets SIGTERM while it processes a message (it
finishes it and leaves) and another SIGKILL inside a chunk transaction; both runs complete, exact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from dx.cli import wait_for
from dx.devkit.generate import contacts
from dx.devkit.sshd import free_port
from dx.scheduler.tokens import create_token
from dx.shared import db
from dx.shared.catalog import table_ident
from dx.shared.pgcopy import copy_frame
from tests.integration.helpers import FIELDS, apply, config, export_config, table
from tests.integration.procs import answers, start, stop, until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROWS = 1_000_000


def _busy(port: int) -> bool:
    """The worker's probe says a thread processes a message."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return False
    return "dx_worker_threads_busy 1.0" in text


def _in_chunk_transaction(pid: int, schema: str) -> bool:
    with db.connect(autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND backend_xid IS NOT NULL"
                            " AND query ILIKE %s", (f"dx pid {pid}", f'%"{schema}"%')).fetchone() is not None


def test_two_tenants_runs_complete_exactly_through_a_sigterm_and_a_sigkill(cluster_env, sshd, s3, api, tmp_path):
    # Given: tenant ca imports 1,000,000 contacts in overwrite mode; tenant cb displaces a 1,000,000-row table
    apply(config("ca", sshd, [{"id": "ca-import", "mode": "overwrite", "chunk_bytes": 4_000_000,
                               "source": {"path": "ca/contacts.csv", "after": "keep"}}]), tmp_path)
    apply(export_config("cb", sshd, {"contacts": FIELDS}, [
        {"id": "cb-export", "kind": "displacer", "database": "contacts", "target": {"path": "cb/contacts.csv"}}]),
        tmp_path)
    frame = contacts(ROWS, seed=21).select("email", "first_name", "points", "birth_date")
    sshd.put("ca/contacts.csv", frame.write_csv().encode())
    exported = contacts(ROWS, seed=22).select("email", "first_name", "points")
    with db.transaction() as conn:
        copy_frame(conn, table_ident("cb", "contacts"), exported.with_columns(pl.col("points").cast(pl.Int64)))
        tokens = {t: create_token(conn, t, "cluster")[1] for t in ("ca", "cb")}

    # and the roles as processes: two schedulers, three workers staging on S3 with probes
    env = {**cluster_env, **s3.env, "DX_SCHEDULER_TICK_S": "0.5", "DX_SCHEDULER_LEASE_S": "3"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.log" for name in ("scheduler-0", "scheduler-1", "worker-0", "worker-1",
                                                         "worker-2")}
    ports = {name: free_port() for name in logs}
    for name in logs:
        role_env = {**env, "DX_PROBE_PORT": str(ports[name]), "DX_STAGING_DIR": str(tmp_path / name)}
        procs[name] = start([name.split("-")[0], *(["--threads", "1"] if name.startswith("worker") else [])],
                            role_env, logs[name])
    workers = [n for n in procs if n.startswith("worker")]
    try:
        until(lambda: all(answers(f"http://127.0.0.1:{ports[n]}/readyz") for n in procs), "every role is ready")

        # When: both runs are asked for over the API at once
        runs = {}
        for tenant, module in (("ca", "ca-import"), ("cb", "cb-export")):
            answer = httpx.post(f"{api.url}/api/v1/modules/{module}/runs", timeout=30,
                                headers={"Authorization": f"Bearer {tokens[tenant]}"})
            assert answer.status_code == 202, answer.text
            runs[tenant] = answer.json()["id"]

        # and a worker busy with a message gets SIGTERM, another inside a chunk transaction SIGKILL
        termed = killed = None
        deadline = time.monotonic() + 300
        while (termed is None or killed is None) and time.monotonic() < deadline:
            for name in workers:
                proc = procs[name]
                if proc.poll() is not None or name == termed:  # the SIGTERM'd one is let finish its message
                    continue
                if killed is None and _in_chunk_transaction(proc.pid, "tenant_ca"):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = name
                elif termed is None and killed != name and _busy(ports[name]):
                    proc.send_signal(signal.SIGTERM)
                    termed = name
            time.sleep(0.01)
        assert termed and killed, (termed, killed)
        with db.connect() as conn:
            done = conn.execute("SELECT count(*) AS n FROM dx.chunk_results WHERE run_id = %s",
                                (runs["ca"],)).fetchone()["n"]
            n_chunks = conn.execute("SELECT n_chunks FROM dx.runs WHERE id = %s", (runs["ca"],)).fetchone()["n_chunks"]
        assert n_chunks is None or done < n_chunks, "the kill came after the import's every chunk"
        ended = {tenant: wait_for(run_id, 600) for tenant, run_id in runs.items()}
        assert procs[termed].wait(120) == 0, "SIGTERM: the worker finished its message and left"
        assert procs[killed].wait(10) == -signal.SIGKILL
    finally:
        outs = {name: stop(proc, logs[name]) if proc.poll() is None else logs[name].read_text()
                for name, proc in procs.items()}

    # Then: both runs completed, exact
    assert ended["ca"]["status"] == "completed", (ended["ca"]["error_message"], outs[killed][-1500:])
    assert ended["cb"]["status"] == "completed", ended["cb"]["error_message"]
    assert ended["ca"]["inserted"] == ROWS and ended["cb"]["rows_exported"] == ROWS
    imported = table("ca")
    assert len(imported) == ROWS
    assert {k: (v[0], v[1]) for k, v in imported.items()} == {
        r["email"]: (r["first_name"], int(r["points"])) for r in frame.iter_rows(named=True)}
    file = pl.read_csv(Path(sshd.root) / "cb/contacts.csv", schema_overrides={"points": pl.Int64})
    expected = exported.with_columns(pl.col("points").cast(pl.Int64)).sort("email")
    assert file.select(expected.columns).sort("email").equals(expected)
