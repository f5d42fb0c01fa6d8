"""A tenant's own switch and time zone: a disabled tenant's modules run in no way (``dx run``, HTTP,
AMQP, schedule) until it is enabled again; a tenant's time zone is the default of its schedules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pika
import pytest
import yaml

from dx.cli import main
from dx.scheduler.amqp import RequestConsumer
from dx.scheduler.loop import Scheduler
from dx.scheduler.tokens import create_token
from dx.shared import db
from tests.integration.helpers import apply, config, table
from tests.integration.scheduling import FixedClock, claims, forget_tenant, runs_of

pytestmark = pytest.mark.timeout(180)
HOUR = timedelta(hours=1)


def _apply(tenant: str, sshd: Any, tmp_path: Any, modules: list[dict[str, Any]], **tenant_options: Any) -> None:
    """Apply the tenant (with ``tenant_options``: enabled, timezone), its SFTP connection and upsert modules."""
    doc = yaml.safe_load(config(tenant, sshd, [{"mode": "upsert", **m} for m in modules]))
    doc["tenants"][0].update(tenant_options)
    apply(yaml.safe_dump(doc), tmp_path)


def _dx(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `dx` command, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "dx", *args], env=dict(os.environ), capture_output=True, text=True,
                          timeout=120)


def _dead_letter(broker_url: str, body: bytes, message_id: str, timeout_s: float = 20) -> dict[str, Any]:
    """Publish a request to dx.requests while a consumer runs here; the headers of its dead letter."""
    stop = threading.Event()
    consumer = RequestConsumer(broker_url, stop)
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        for queue in ("dx.requests", "dx.requests.dead"):
            channel.queue_declare(queue, durable=True)
        consumer.start()
        channel.basic_publish("", "dx.requests", body, pika.BasicProperties(
            content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent, message_id=message_id))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            method, props, _ = channel.basic_get("dx.requests.dead", auto_ack=False)
            if method is None:
                time.sleep(0.2)
                continue
            if props.message_id == message_id:
                channel.basic_ack(method.delivery_tag)
                return dict(props.headers)
            channel.basic_nack(method.delivery_tag, requeue=True)  # another test's: left for it
        raise AssertionError(f"no dead letter for {message_id} within {timeout_s} s")
    finally:
        stop.set()
        consumer.join(10)
        connection.close()


def test_a_disabled_tenant_s_modules_run_neither_on_demand_nor_on_schedule(cluster_env, sshd, api, workers,
                                                                           tmp_path, capsys):
    # Given a disabled tenant with an hourly module, a file for it, a token and a scheduler's first look
    tenant, module = "tdis", "tdis-import"
    hourly = {"id": module, "source": {"path": f"{tenant}/in/add_*.csv"}, "schedule": {"cron": ["0 * * * *"]}}
    _apply(tenant, sshd, tmp_path, [hourly], enabled=False)
    sshd.put(f"{tenant}/in/add_000.csv", b"email,first_name,points\na@x.it,Ann,1\n")
    with db.transaction() as conn:
        token = create_token(conn, tenant, "pytest")[1]
    clock = FixedClock(datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC))
    scheduler = Scheduler(clock=clock, holder="pytest-tenants")
    try:
        scheduler.tick()
        # When `dx run` asks for a run / Then it exits 2 and says why
        refused = _dx("run", module, "--wait")
        assert refused.returncode == 2
        assert "TENANT_DISABLED" in refused.stderr and repr(tenant) in refused.stderr
        # When the HTTP API is asked / Then it answers 409 with the code
        with api.client(token) as client:
            answer = client.post(f"/api/v1/modules/{module}/runs", json={})
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "TENANT_DISABLED"
        # When an AMQP request comes / Then it is dead-lettered with the code
        headers = _dead_letter(cluster_env["DX_BROKER_URL"], json.dumps(
            {"tenant": tenant, "module": module, "requested_by": "crm"}).encode(), "tdis-1")
        assert headers["x-dx-error-code"] == "TENANT_DISABLED" and module in headers["x-dx-reason"]
        # When two hours pass with the scheduler ticking / Then nothing fires
        for _ in range(2):
            clock.advance(HOUR)
            scheduler.tick()
        assert claims(module) == []
        assert runs_of(module) == []
        # and `dx modules` shows it disabled
        assert main(["modules"]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(module))
        assert " disabled " in line

        # When the tenant is enabled again
        _apply(tenant, sshd, tmp_path, [hourly], enabled=True)
        workers.start(1)
        # Then `dx run` runs it
        done = _dx("run", module, "--wait")
        assert done.returncode == 0, done.stderr
        assert table(tenant) == {"a@x.it": ("Ann", 1, None)}
        # and the scheduler, which sees it now for the first time, fires it from then on
        scheduler.tick()
        clock.advance(HOUR)
        scheduler.tick()
        assert [(c[0], c[1]) for c in claims(module)] == [(datetime(2026, 6, 1, 3, 0, tzinfo=UTC), "fired")]
        assert [r["trigger"] for r in runs_of(module)] == ["manual", "schedule"]
    finally:
        scheduler.release()
        scheduler.close()
        forget_tenant(tenant, cluster_env["DX_BROKER_URL"])


def test_a_tenant_s_time_zone_is_its_schedules_default_and_an_explicit_one_wins(cluster_env, sshd, api, tmp_path,
                                                                                capsys):
    # Given a tenant in Europe/Rome with a module at 08:00 of no zone, and one at 08:00 UTC
    tenant = "ttz"
    modules = [{"id": "ttz-rome", "source": {"path": f"{tenant}/in/a_*.csv"}, "schedule": {"times": ["08:00"]}},
               {"id": "ttz-utc", "source": {"path": f"{tenant}/in/b_*.csv"},
                "schedule": {"times": ["08:00"], "timezone": "UTC"}}]
    _apply(tenant, sshd, tmp_path, modules, timezone="Europe/Rome")
    capsys.readouterr()
    with db.transaction() as conn:
        token = create_token(conn, tenant, "pytest")[1]
    clock = FixedClock(datetime(2026, 1, 15, 6, 30, tzinfo=UTC))
    scheduler = Scheduler(clock=clock, holder="pytest-tz")
    try:
        # When `dx schedule` prints the next fires in winter
        assert main(["schedule", "ttz-rome", "--next", "2", "--from", "2026-01-15T00:00:00+00:00"]) == 0
        assert main(["schedule", "ttz-utc", "--next", "1", "--from", "2026-01-15T00:00:00+00:00"]) == 0
        # Then the zone-less one is at 08:00 in Rome (+01:00), the other at 08:00 UTC
        assert capsys.readouterr().out.split() == ["2026-01-15T08:00:00+01:00", "2026-01-16T08:00:00+01:00",
                                                   "2026-01-15T08:00:00+00:00"]
        # and `dx modules` and the HTTP API say the same
        assert main(["modules"]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("ttz-rome"))
        assert "T08:00+01:00" in line or "T08:00+02:00" in line
        with api.client(token) as client:
            doc = client.get("/api/v1/modules/ttz-rome/schedule",
                             params={"next": 1, "from": "2026-01-15T00:00:00+00:00"}).json()
            listed = {m["id"]: m for m in client.get("/api/v1/modules").json()["modules"]}
        assert (doc["timezone"], doc["fires"]) == ("Europe/Rome", ["2026-01-15T08:00:00+01:00"])
        assert listed["ttz-rome"]["next_fire"].endswith(("T08:00:00+01:00", "T08:00:00+02:00"))

        # When the scheduler ticks at 07:00:30 and 08:00:30 UTC
        scheduler.tick()  # first sight
        clock.current = datetime(2026, 1, 15, 7, 0, 30, tzinfo=UTC)
        scheduler.tick()
        clock.current = datetime(2026, 1, 15, 8, 0, 30, tzinfo=UTC)
        scheduler.tick()
        # Then the Rome module fired at 07:00 UTC, the UTC one at 08:00 UTC
        assert [c[:2] for c in claims("ttz-rome")] == [(datetime(2026, 1, 15, 7, 0, tzinfo=UTC), "fired")]
        assert [c[:2] for c in claims("ttz-utc")] == [(datetime(2026, 1, 15, 8, 0, tzinfo=UTC), "fired")]

        # When the tenant moves to Asia/Tokyo
        _apply(tenant, sshd, tmp_path, modules, timezone="Asia/Tokyo")
        capsys.readouterr()
        # Then its zone-less module follows from then on, the other does not
        assert main(["schedule", "ttz-rome", "--next", "1", "--from", "2026-01-15T12:00:00+00:00"]) == 0
        assert main(["schedule", "ttz-utc", "--next", "1", "--from", "2026-01-15T12:00:00+00:00"]) == 0
        assert capsys.readouterr().out.split() == ["2026-01-16T08:00:00+09:00", "2026-01-16T08:00:00+00:00"]
        clock.current = datetime(2026, 1, 15, 23, 0, 30, tzinfo=UTC)
        scheduler.tick()
        rome = claims("ttz-rome")
        assert [c[:2] for c in rome] == [(datetime(2026, 1, 15, 7, 0, tzinfo=UTC), "fired"),
                                         (datetime(2026, 1, 15, 23, 0, tzinfo=UTC), "skipped")]
        # and the skipped fire (its first run is still queued) names its time in the tenant's zone
        skipped = next(r for r in runs_of("ttz-rome") if r["id"] == rome[1][2])
        assert "at the fire time 2026-01-16T08:00:00+09:00" in skipped["error_message"]
        assert len(claims("ttz-utc")) == 1
    finally:
        scheduler.release()
        scheduler.close()
        forget_tenant(tenant, cluster_env["DX_BROKER_URL"])
