"""Run-now over AMQP: a plain pika publish to ``dx.requests`` becomes a run like ``dx run``."""

from __future__ import annotations

import json
import time

import pika
import pytest

from dx.cli import wait_for
from dx.shared import db
from tests.integration.helpers import apply, config, table
from tests.integration.scheduling import forget_tenant, start_scheduler, stop

TENANT = "amqp"
SOURCE = b"email,first_name,points\na@x.it,Ann,1\nb@x.it,Bob,2\n"


def amqp_run(requested_by: str, timeout_s: float = 30) -> int:
    """The id of the AMQP-triggered run requested by ``requested_by``, once it exists."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db.connect() as conn:
            row = conn.execute("SELECT id FROM dx.runs WHERE trigger = 'amqp' AND requested_by = %s",
                               (requested_by,)).fetchone()
        if row:
            return int(row["id"])
        time.sleep(0.2)
    raise AssertionError(f"no run requested by {requested_by!r} within {timeout_s} s")


@pytest.mark.timeout(120)
def test_a_published_request_runs_like_dx_run_and_bad_ones_are_dead_lettered(
        cluster_env, sshd, workers, tmp_path):
    # Given a module with a file to import, two workers and a scheduler consuming dx.requests
    apply(config(TENANT, sshd, [{"id": "amqp-import", "mode": "upsert", "source": {"path": "in/amqp.csv"}}]),
          tmp_path)
    sshd.put("in/amqp.csv", SOURCE)
    workers.start(2)
    scheduler = start_scheduler({"DX_SCHEDULER_TICK_S": "0.5"}, tmp_path / "scheduler.log")
    connection = pika.BlockingConnection(pika.URLParameters(cluster_env["DX_BROKER_URL"]))
    try:
        channel = connection.channel()
        channel.queue_declare("dx.requests", durable=True)
        channel.queue_declare("dx.requests.dead", durable=True)
        channel.confirm_delivery()

        def publish(body: bytes, message_id: str | None = None) -> None:
            channel.basic_publish("", "dx.requests", body, pika.BasicProperties(
                content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                message_id=message_id))

        # When three bad requests and then a good one are published
        publish(b"{not json")
        publish(json.dumps({"tenant": TENANT, "module": "no-such-module", "requested_by": "crm"}).encode())
        publish(json.dumps({"tenant": "someone-else", "module": "amqp-import"}).encode())
        good = json.dumps({"tenant": TENANT, "module": "amqp-import", "requested_by": "crm"}).encode()
        publish(good, message_id="crm-001")
        publish(good, message_id="crm-001")  # sent twice: the client retried

        # Then the good one became a run that completes like `dx run`'s
        run = wait_for(amqp_run("crm"), timeout_s=60)
        assert (run["status"], run["trigger"], run["requested_by"]) == ("completed", "amqp", "crm")
        assert (run["rows_read"], run["inserted"]) == (2, 2)
        assert set(table(TENANT)) == {"a@x.it", "b@x.it"}
        # and each bad one is in the dead-letter queue with its code and reason, in order
        dead = []
        deadline = time.monotonic() + 10
        while len(dead) < 3 and time.monotonic() < deadline:
            method, props, body = channel.basic_get("dx.requests.dead", auto_ack=True)
            if method is None:
                time.sleep(0.2)
                continue
            dead.append((body, props.headers["x-dx-error-code"], props.headers["x-dx-reason"]))
        assert [d[1] for d in dead] == ["REQUEST_MALFORMED", "UNKNOWN_MODULE", "UNKNOWN_MODULE"]
        assert dead[0][0] == b"{not json" and "not UTF-8 JSON" in dead[0][2]
        assert "no-such-module" in dead[1][2] and "someone-else" in dead[2][2]
        # no other run was made (the re-sent request found its run), and the consumer is still alive
        with db.connect() as conn:
            assert conn.execute("SELECT count(*) AS n FROM dx.runs WHERE trigger = 'amqp'").fetchone()["n"] == 1
        assert scheduler.poll() is None
    finally:
        connection.close()
        code = stop(scheduler)
        forget_tenant(TENANT, cluster_env["DX_BROKER_URL"])
    # and SIGTERM stopped it cleanly
    assert code == 0


def test_a_message_id_reused_for_another_module_is_dead_lettered_not_taken_for_the_first_run(
        cluster_env, sshd, tmp_path):
    # Given two modules of a tenant, and a request for the first with message_id m-1 that made a run
    from dx.scheduler.amqp import Rejected, handle

    tenant = "amqpreuse"
    apply(config(tenant, sshd, [{"id": f"{tenant}-{n}", "mode": "upsert", "source": {"path": f"{tenant}/{n}.csv"}}
                                for n in ("a", "b")]), tmp_path)
    try:
        first = handle(json.dumps({"tenant": tenant, "module": f"{tenant}-a"}).encode(), "m-1")
        # When the same message_id comes with a request for the other module
        with pytest.raises(Rejected) as refused:
            handle(json.dumps({"tenant": tenant, "module": f"{tenant}-b"}).encode(), "m-1")
        # Then it is refused with REQUEST_ID_REUSED naming the first run, and no run of the second module exists
        assert refused.value.code.value == "REQUEST_ID_REUSED" and f"run {first}" in refused.value.reason
        with db.connect() as conn:
            assert conn.execute("SELECT count(*) AS n FROM dx.runs WHERE module = %s",
                                (f"{tenant}-b",)).fetchone()["n"] == 0
        # and the same request again still finds its run
        assert handle(json.dumps({"tenant": tenant, "module": f"{tenant}-a"}).encode(), "m-1") == first
    finally:
        forget_tenant(tenant, cluster_env["DX_BROKER_URL"])
