"""``dx worker --queues``: one worker per stage queue (as the Kubernetes Deployments run them) consumes
only its queue, the three together run an import to its end, and each waits on SIGTERM as long as
the longest time limit of its own queues."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pika
import pika.exceptions
import pytest

from dx.cli import build_parser
from dx.shared.messages import CHUNK_QUEUE, PLAN_QUEUE, QUEUES, REDUCE_QUEUE
from dx.workers.broker import stop_timeout_ms
from tests.integration.helpers import apply, config, run
from tests.integration.procs import start, stop, until

TENANT = "queues"


#: Each stage queue and its delay queue, which a worker of that stage consumes too.
ALL = tuple(q for name in QUEUES for q in (name, f"{name}.DQ"))


def _consumers(broker_url: str) -> dict[str, int]:
    """Consumers of each queue of ALL, as RabbitMQ counts them (-1: not declared yet)."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    counts = {}
    try:
        for q in ALL:
            try:  # a passive declare of a missing queue closes its channel: one channel each
                counts[q] = connection.channel().queue_declare(q, passive=True).method.consumer_count
            except pika.exceptions.ChannelClosedByBroker:
                counts[q] = -1
    finally:
        connection.close()
    return counts


def _events(log: str, event: str) -> list[dict[str, object]]:
    return [o for o in (json.loads(line) for line in log.splitlines() if line.startswith("{")) if o["event"] == event]


def test_one_worker_per_queue_consumes_only_its_queue_and_runs_an_import(cluster_env, sshd, tmp_path):
    # Given an importer with a file, and three workers, each told to consume one stage queue
    apply(config(TENANT, sshd, [{"id": "queues-import", "mode": "upsert",
                                 "source": {"path": "queues/in_*.csv", "after": "keep"}}]), tmp_path)
    sshd.put("queues/in_1.csv", b"email,first_name,points\na@queues.example,A,1\nb@queues.example,B,2\n")
    logs = {q: tmp_path / f"{q}.log" for q in QUEUES}
    procs = {q: start(["worker", "--threads", "1", "--queues", q], cluster_env, logs[q]) for q in QUEUES}
    outs: dict[str, str] = {}
    try:
        for q in QUEUES:
            until(lambda q=q: "worker.started" in logs[q].read_text(errors="replace"), f"the {q} worker started")
        # When RabbitMQ is asked / Then each queue and its delay queue have one consumer, not three
        one_each = dict.fromkeys(ALL, 1)
        until(lambda: _consumers(cluster_env["DX_BROKER_URL"]) == one_each, "one consumer per queue", 30)
        time.sleep(1)  # a worker of every queue would be adding its other consumers by now
        assert _consumers(cluster_env["DX_BROKER_URL"]) == one_each
        # When a run is requested / Then the three, each on its own stage, take it to its end
        finished = run("queues-import")
        assert finished["status"] == "completed", finished.get("error_message")
        assert finished["inserted"] == 2
    finally:
        outs = {q: stop(p, logs[q]) for q, p in procs.items()}
    # and each said which queue it took, and waited on SIGTERM for its own queue's longest message
    for q in QUEUES:
        [started] = _events(outs[q], "worker.started")
        [stopping] = _events(outs[q], "worker.stopping")
        assert started["queues"] == [q]
        assert stopping["wait_s"] == stop_timeout_ms((q,)) // 1000
    assert [p.returncode for p in procs.values()] == [0, 0, 0]


def test_stop_waits_cover_each_queues_longest_time_limit():
    # Given the actors' time limits (a plan 60 min, an export's reduce 30 min, a chunk 10 min)
    # When a worker of each queue stops / Then it waits that long plus the margin
    assert stop_timeout_ms((PLAN_QUEUE,)) == 60 * 60_000 + 30_000
    assert stop_timeout_ms((REDUCE_QUEUE,)) == 30 * 60_000 + 30_000
    assert stop_timeout_ms((CHUNK_QUEUE,)) == 10 * 60_000 + 30_000
    assert stop_timeout_ms() == stop_timeout_ms(QUEUES) == stop_timeout_ms((PLAN_QUEUE,))


@pytest.mark.parametrize("value", ["dx.nope", "dx.plan,dx.later", ","])
def test_an_unknown_queue_is_bad_usage(value):
    # Given a queue name dx does not have / When parsed / Then exit 2 naming the queues there are
    done = subprocess.run([sys.executable, "-m", "dx", "worker", "--queues", value], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "expected one or more of dx.plan, dx.chunk, dx.reduce" in done.stderr


def test_queues_are_comma_separated_and_kept_once():
    # Given a list with a repeat and spaces / When parsed / Then each queue once, in order
    args = build_parser().parse_args(["worker", "--queues", "dx.reduce, dx.plan,dx.reduce"])
    assert args.queues == ("dx.reduce", "dx.plan")
