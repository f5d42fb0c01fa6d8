"""Every line each role writes is one JSON object with a level and a timestamp.

``dx worker``, ``dx scheduler`` and ``dx serve`` run as OS processes while a run fails (its file's
header names one column twice), asked for by the scheduler and by the API. Each
process's whole output is read back: every line must parse as a JSON object with ``level`` and
``timestamp``, the libraries' lines (pika, dramatiq, uvicorn) included, and the worker's lines about
the failed run carry its run, tenant, module and stage.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from dx.devkit.sshd import free_port
from dx.scheduler.requests import create_queued_run
from dx.scheduler.tokens import create_token
from dx.shared import db
from dx.shared.runs import Trigger
from tests.integration.helpers import apply, config
from tests.integration.procs import answers, start, stop, until

TENANT = "logs"


def _lines(name: str, out: str) -> list[dict[str, Any]]:
    """The output's lines as JSON objects; fails naming the first line that is not one."""
    objects = []
    for line in out.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"{name} wrote a line that is not JSON: {line[:300]!r}") from None
        assert isinstance(obj, dict), f"{name}: {line[:300]!r}"
        assert {"level", "timestamp"} <= obj.keys(), f"{name}: a line without level or timestamp: {line[:300]!r}"
        objects.append(obj)
    return objects


def _ended(run_id: int) -> bool:
    with db.connect() as conn:
        row = conn.execute("SELECT finished_at FROM dx.runs WHERE id = %s", (run_id,)).fetchone()
    return row is not None and row["finished_at"] is not None


def test_every_role_writes_only_json_lines_and_a_failed_run_s_lines_say_whose(cluster_env, sshd, tmp_path):
    # Given: an importer whose file's header names a column twice, and a token of its tenant
    apply(config(TENANT, sshd, [{"id": "logs-import", "mode": "upsert",
                                 "source": {"path": "logs/in_*.csv", "after": "keep"}}]), tmp_path)
    sshd.put("logs/in_1.csv", b"email,email,points\na@logs.example,a@logs.example,1\n")
    with db.transaction() as conn:
        token = create_token(conn, TENANT, "pytest")[1]
        queued = create_queued_run(conn, TENANT, "logs-import", Trigger.MANUAL, "pytest")
    port = free_port()
    logs = {name: tmp_path / f"{name}.log" for name in ("worker", "scheduler", "serve")}

    # When: a worker, the scheduler and the API run, the scheduler sends the queued run, the API takes a
    # run-now
    procs = {"worker": start(["worker", "--threads", "2"], cluster_env, logs["worker"]),
             "scheduler": start(["scheduler"], cluster_env, logs["scheduler"]),
             "serve": start(["serve", "--host", "127.0.0.1", "--port", str(port)], cluster_env, logs["serve"])}
    outs: dict[str, str] = {}
    try:
        until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), "dx serve answered /healthz")
        answer = httpx.post(f"http://127.0.0.1:{port}/api/v1/modules/logs-import/runs",
                            headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 202, answer.text
        until(lambda: _ended(queued) and _ended(answer.json()["id"]), "both runs ended", 120)
    finally:
        for name, proc in procs.items():
            outs[name] = stop(proc, logs[name])

    # Then: every line of every process is a JSON object with a level and a timestamp
    parsed = {name: _lines(name, out) for name, out in outs.items()}
    assert parsed["worker"] and parsed["scheduler"] and parsed["serve"], {k: len(v) for k, v in parsed.items()}
    # and the worker's lines about the failed run say whose run and which stage
    about = [o for o in parsed["worker"] if o.get("run") == queued]
    assert about, "no worker line names the run"
    assert {o.get("stage") for o in about} >= {"plan"}
    assert any(o.get("tenant") == TENANT and o.get("module") == "logs-import" and o.get("code") == "MALFORMED_HEADER"
               for o in about), about
    # and no library chattered below WARNING
    chatter = [o for out in parsed.values() for o in out
               if o.get("logger", "").split(".")[0] in ("pika", "dramatiq", "uvicorn") and o["level"] in ("debug", "info")]
    assert not chatter, chatter[:3]
