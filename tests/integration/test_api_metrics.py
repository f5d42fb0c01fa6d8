"""``/metrics`` of ``dx serve``: queue depth from RabbitMQ, runs by status, unauthenticated."""

from __future__ import annotations

import time

import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dx.scheduler.amqp import REQUESTS_QUEUE
from dx.scheduler.tokens import create_token
from dx.shared import db
from tests.integration.helpers import apply, config
from tests.integration.scheduling import queue_purge

pytestmark = pytest.mark.timeout(120)


def scrape(api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, labels): value}."""
    with api.client() as c:
        response = c.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def depth(samples: dict, queue: str) -> float:
    return samples.get(("dx_queue_messages", (("queue", queue),)), 0.0)


def runs(samples: dict, status: str) -> float:
    return samples[("dx_runs", (("status", status),))]


def test_queue_depth_rises_while_work_waits_and_falls_once_workers_take_it(api, cluster_env, sshd, workers,
                                                                           tmp_path):
    # Given: a module with a file to import, no worker running, and a token
    apply(config("apim", sshd, [{"id": "apim-import", "mode": "append", "source": {"path": "in/apim_*.csv"}}]),
          tmp_path)
    sshd.put("in/apim_0001.csv", b"email,first_name\nm@x.it,M\n")
    with db.transaction() as conn:
        token = create_token(conn, "apim", "metrics")[1]
    before = scrape(api)

    # When: a run is requested over HTTP and a request waits in dx.requests with no consumer
    with api.client(token) as c:
        run_id = c.post("/api/v1/modules/apim-import/runs").json()["id"]  # no body, as curl -X POST
    connection = pika.BlockingConnection(pika.URLParameters(cluster_env["DX_BROKER_URL"]))
    channel = connection.channel()
    channel.queue_declare(REQUESTS_QUEUE, durable=True)
    channel.basic_publish("", REQUESTS_QUEUE, b'{"tenant": "apim", "module": "apim-import"}')
    connection.close()
    waiting = scrape(api)

    # Then: the plan and the request wait in their queues, the run is counted as queued
    assert depth(waiting, "dx.plan") == depth(before, "dx.plan") + 1
    assert depth(waiting, REQUESTS_QUEUE) == depth(before, REQUESTS_QUEUE) + 1
    assert runs(waiting, "queued") == runs(before, "queued") + 1
    assert waiting[("dx_broker_up", ())] == 1 and waiting[("dx_database_up", ())] == 1
    assert ("dx_queue_messages", (("queue", "dx.plan.XQ"),)) in waiting  # dead letters are watched too
    queue_purge(cluster_env["DX_BROKER_URL"], REQUESTS_QUEUE)  # no later scheduler test should take it

    # When: workers start and the run ends
    workers.start(1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = scrape(api)
        if runs(done, "completed") == runs(before, "completed") + 1 and depth(done, "dx.plan") == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"run {run_id} did not complete within 60 s")
    # Then: the queue is empty again, the workers show as its consumers, and the run moved from queued
    assert depth(done, "dx.plan") == 0
    assert done[("dx_queue_consumers", (("queue", "dx.plan"),))] >= 1
    assert runs(done, "queued") == runs(before, "queued")
