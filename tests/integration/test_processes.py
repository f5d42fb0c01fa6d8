"""The control plane's processes load none of the data plane's libraries.

``dx scheduler``, ``dx serve`` and ``dx run`` run as OS processes with ``-X importtime``
(PYTHONPROFILEIMPORTTIME), which writes every module a process imports to its stderr, while each
does its work: the scheduler sends a queued run's plan, the API takes a run-now request, ``dx run
--wait`` requests a run and follows it to its end. A ``dx worker`` started the same way must show
polars, so the check can see what it looks for.
"""

from __future__ import annotations

import os
import subprocess

import httpx

from dx.cli import wait_for
from dx.devkit.sshd import free_port
from dx.scheduler.requests import create_queued_run
from dx.scheduler.tokens import create_token
from dx.shared import db
from dx.shared.runs import Trigger
from tests.integration.helpers import apply, config
from tests.integration.procs import DX, answers, start, stop, until

#: Libraries of the data plane that the control plane must never load.
DATA_PLANE = {"polars", "pyarrow", "paramiko"}
TENANT = "procs"


def _imported(stderr: str) -> set[str]:
    """Top-level packages a process imported, read from its ``-X importtime`` lines."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0]
            for line in stderr.splitlines() if line.startswith("import time:") and "|" in line}


def _env(cluster_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **cluster_env, "PYTHONPROFILEIMPORTTIME": "1"}


def _status(run_id: int) -> str:
    with db.connect() as conn:
        row = conn.execute("SELECT status FROM dx.runs WHERE id = %s", (run_id,)).fetchone()
    assert row is not None
    return str(row["status"])


def test_scheduler_serve_and_run_load_no_data_plane_library(cluster_env, sshd, workers, tmp_path):
    # Given: an importer with a file to import, a worker process to run it, and a token of the tenant
    apply(config(TENANT, sshd, [{"id": "procs-import", "mode": "upsert", "source": {"path": "procs/in_*.csv",
                                                                                      "after": "keep"}}]), tmp_path)
    sshd.put("procs/in_1.csv", b"email,first_name,points\na@procs.example,A,1\nb@procs.example,B,2\n")
    workers.start(1)
    with db.transaction() as conn:
        token = create_token(conn, TENANT, "pytest")[1]
        queued = create_queued_run(conn, TENANT, "procs-import", Trigger.MANUAL, "pytest")
    env = _env(cluster_env)

    # When: the scheduler sends the queued run's plan, the API takes a run-now, dx run --wait runs one
    scheduler_log = tmp_path / "scheduler.log"
    scheduler = start(["scheduler"], env, scheduler_log)
    try:
        until(lambda: _status(queued) not in ("queued",), "the scheduler sent the queued run's plan")
    finally:
        scheduler_out = stop(scheduler, scheduler_log)
    port = free_port()
    serve_log = tmp_path / "serve.log"
    serve = start(["serve", "--host", "127.0.0.1", "--port", str(port)], env, serve_log)
    try:
        until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), "dx serve answered /healthz")
        answer = httpx.post(f"http://127.0.0.1:{port}/api/v1/modules/procs-import/runs",
                            headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 202, answer.text
        wait_for(answer.json()["id"], 120)
    finally:
        serve_out = stop(serve, serve_log)
    run = subprocess.run([DX, "run", "procs-import", "--wait"], env=env, capture_output=True, text=True,
                         timeout=180)

    # Then: each did its work, and none imported polars, pyarrow or paramiko
    assert run.returncode == 0, run.stderr[-3000:]
    assert _status(queued) in ("running", "completed")
    for name, out in (("dx scheduler", scheduler_out), ("dx serve", serve_out), ("dx run", run.stderr)):
        loaded = _imported(out)
        assert "dx" in loaded, f"{name}: no -X importtime output to judge from"
        assert not loaded & DATA_PLANE, f"{name} imported {sorted(loaded & DATA_PLANE)}"


def test_a_worker_process_does_load_the_data_plane(cluster_env, tmp_path):
    # Given: a dx worker with -X importtime
    log = tmp_path / "worker.log"
    worker = start(["worker", "--threads", "1"], _env(cluster_env), log)
    try:
        # When: it has started
        until(lambda: "worker.started" in log.read_text(errors="replace"), "the worker started")
    finally:
        out = stop(worker, log)
    # Then: the same check finds polars, pyarrow and paramiko in it
    assert DATA_PLANE <= _imported(out)
