"""What scripts read from ``dx``: ``--json`` on every listing, output into a pipe that closes early
(``dx report N | head -1``), and exit code 3 when RabbitMQ does not answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

from dx.cli import main
from dx.devkit.sshd import free_port
from dx.scheduler.tokens import create_token
from dx.scheduler.users import create_user
from dx.shared import db
from tests.integration.helpers import apply, config, run

pytestmark = pytest.mark.timeout(240)

#: rows with a bad points value each, so many that the report is longer than a pipe holds (64 KiB)
BAD_ROWS = 3000


@pytest.fixture(scope="module")
def finished(cluster_env, sshd, tmp_path_factory) -> dict[str, Any]:
    """Tenant ``clijson``: a scheduled upsert module, a run of it with BAD_ROWS failed records, a token
    and a console user."""
    from dx.devkit.cluster import Workers

    tenant, tmp = "clijson", tmp_path_factory.mktemp("clijson")
    module = {"id": f"{tenant}-import", "mode": "upsert", "source": {"path": f"{tenant}/in.csv"},
              "schedule": {"cron": ["0 2 * * *"], "timezone": "Europe/Rome"}}
    apply(config(tenant, sshd, [module]), tmp)
    lines = ["email,first_name,points"] + [f"ok{i}@x.it,Ok,{i}" for i in range(100)] + [
        f"bad{i}@x.it,Bad,not-a-number-{i}" for i in range(BAD_ROWS)]
    sshd.put(f"{tenant}/in.csv", ("\n".join(lines) + "\n").encode())
    workers = Workers(cluster_env, tmp)
    try:
        workers.start(1)
        result = run(module["id"])
    finally:
        workers.stop_all()
    assert result["status"] == "completed_with_errors", result["error_message"]
    with db.transaction() as conn:
        token_id, _ = create_token(conn, tenant, "crm")
        create_user(conn, tenant, "ann@clijson.example", "viewer", "a long enough password 1")
    return {"tenant": tenant, "module": module["id"], "run": result, "token_id": token_id}


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_every_listing_prints_json(finished, capsys):
    tenant, module, run_id = finished["tenant"], finished["module"], finished["run"]["id"]

    # dx modules --json: one object per module, its state, next fire and last run
    mine = [m for m in _json(capsys, "modules", "--json") if m["tenant"] == tenant]
    assert len(mine) == 1
    assert mine[0] | {"next_fire": None} == {
        "id": module, "tenant": tenant, "kind": "importer", "database": "contacts", "mode": "upsert",
        "state": "active", "next_fire": None, "last_run": run_id, "last_status": "completed_with_errors"}
    assert datetime.fromisoformat(mine[0]["next_fire"]) > datetime.now(UTC)

    # dx runs --json: the run with its counters, times in ISO 8601
    runs = _json(capsys, "runs", "--module", module, "--json")
    assert [r["id"] for r in runs] == [run_id]
    assert runs[0]["status"] == "completed_with_errors" and runs[0]["rows_read"] == 100 + BAD_ROWS
    assert runs[0]["inserted"] == 100
    datetime.fromisoformat(runs[0]["started_at"])

    # dx token list --json: the token, never its value
    tokens = _json(capsys, "token", "list", "--tenant", tenant, "--json")
    assert [(t["id"], t["name"], t["revoked_at"]) for t in tokens] == [(finished["token_id"], "crm", None)]
    datetime.fromisoformat(tokens[0]["created_at"])

    # dx user list --json: the user, never the password's hash
    users = _json(capsys, "user", "list", "--tenant", tenant, "--json")
    assert [(u["username"], u["role"]) for u in users] == [("ann@clijson.example", "viewer")]
    assert not any("hash" in k for k in users[0])

    # dx schedule --json: the next fire times, in the module's time zone
    fires = _json(capsys, "schedule", module, "--next", "3", "--from", "2026-01-15T12:00:00+01:00", "--json")
    assert fires == ["2026-01-16T02:00:00+01:00", "2026-01-17T02:00:00+01:00", "2026-01-18T02:00:00+01:00"]

    # dx show --json as before
    assert _json(capsys, "show", str(run_id), "--json")["errors"] == {"INVALID_VALUE": BAD_ROWS}


def test_a_report_piped_into_head_ends_quietly(finished, cluster_env, tmp_path):
    # When: the report, longer than a pipe holds, goes into `head -1`
    result = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m dx report {finished["run"]["id"]} | head -1; '
                       'exit "${PIPESTATUS[0]}"'],
        env=os.environ | cluster_env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # Then: head's line, dx's exit 141 (128 + SIGPIPE) and not a word on stderr
    assert result.stdout.startswith("row_number,key,operation,error_code,error_message")
    assert result.returncode == 141
    assert result.stderr == ""


def test_runs_into_a_closed_pipe_ends_quietly(finished, cluster_env, tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before dx writes
    try:
        result = subprocess.run([sys.executable, "-m", "dx", "runs"], env=os.environ | cluster_env, cwd=tmp_path,
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert result.stderr == ""


def test_an_unreachable_rabbitmq_exits_3(finished, cluster_env, tmp_path):
    # Given: the database is there, DX_BROKER_URL points at a port where nothing listens
    broker = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    # When: a run is requested
    result = subprocess.run([sys.executable, "-m", "dx", "run", finished["module"]],
                            env=os.environ | cluster_env | {"DX_BROKER_URL": broker}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    # Then: 3, said in one line (not pika's log of each attempt), without a traceback
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("dx: RabbitMQ is not reachable (DX_BROKER_URL): ")
    assert result.stderr.count("\n") == 1
