"""Redelivered chunks and repeated reduces change nothing; 1,000,000 rows import exactly."""

from __future__ import annotations

import io
import time

import pika
import polars as pl
import pytest

from dx.cli import wait_for
from dx.devkit.generate import contacts
from dx.scheduler.requests import request_run
from dx.shared import db
from dx.shared.messages import QUEUES
from dx.shared.runs import Trigger
from tests.integration.helpers import apply, config, failures, seed, table


def _snapshot(run_id: int, tenant: str) -> tuple:
    with db.connect() as conn:
        results = conn.execute("SELECT chunk_no, rows_read, inserted, updated, not_inserted FROM dx.chunk_results"
                               " WHERE run_id = %s ORDER BY chunk_no", (run_id,)).fetchall()
        failed = conn.execute("SELECT count(*) AS n FROM dx.failed_operations WHERE run_id = %s",
                              (run_id,)).fetchone()["n"]
        run = conn.execute("SELECT status, rows_read, inserted, updated, not_inserted FROM dx.runs WHERE id = %s",
                           (run_id,)).fetchone()
    return table(tenant), results, failed, run


def _queues_drained(vhost_url: str, timeout_s: float = 60) -> None:
    params = pika.URLParameters(vhost_url)
    deadline = time.monotonic() + timeout_s
    with pika.BlockingConnection(params) as conn:

        def depth(queue: str) -> int:
            channel = conn.channel()
            try:
                return int(channel.queue_declare(queue, passive=True).method.message_count)
            except pika.exceptions.ChannelClosedByBroker:  # not declared (yet): nothing waits there
                return 0
            finally:
                if channel.is_open:
                    channel.close()

        while time.monotonic() < deadline:
            if sum(depth(q) for q in QUEUES + tuple(f"{q}.DQ" for q in QUEUES)) == 0:
                time.sleep(1.0)  # let the last message in hand finish
                return
            time.sleep(0.2)
    raise AssertionError("the queues did not drain")


def test_twice_delivered_chunks_and_reduce_change_nothing(cluster_env, sshd, smtp, workers, tmp_path):
    # Given: an upsert over 2 contacts, a file of 300 records (some bad), and no worker running yet
    from dx.workers.imports.chunk import chunk
    from dx.workers.imports.plan import plan
    from dx.workers.imports.reduce import reduce

    tenant = "twice"
    apply(config(tenant, sshd, [{"id": "twice-upsert", "mode": "upsert",
                                 "source": {"path": "twice/in_*.csv"}}]), tmp_path)
    seed(tenant, [("user1@example.com", "Old", 1), ("user2@example.com", "Old", 2)])
    frame = contacts(300, seed=3, bad_ratio=0.05).select("email", "first_name", "points")
    sshd.put("twice/in_1.csv", frame.write_csv().encode())
    run_id = request_run("twice-upsert", Trigger.MANUAL, "pytest")
    plan(run_id)  # planned in this process; its chunk messages wait in RabbitMQ
    with db.connect() as conn:
        n_chunks = conn.execute("SELECT n_chunks FROM dx.runs WHERE id = %s", (run_id,)).fetchone()["n_chunks"]

    # When: every chunk is delivered twice
    for i in range(n_chunks):
        chunk(run_id, i)
    once = _snapshot(run_id, tenant)
    for i in range(n_chunks):
        chunk(run_id, i)
    # Then: the second delivery changed nothing
    assert _snapshot(run_id, tenant) == once

    # When: the reducer is called twice
    reduce(run_id)
    done = _snapshot(run_id, tenant)
    reduce(run_id)
    # Then: the run ended once, with exact counters
    assert _snapshot(run_id, tenant) == done
    run = done[3]
    assert run["status"] == "completed_with_errors"
    assert run["rows_read"] == 300
    assert run["inserted"] + run["updated"] + run["not_inserted"] == 300

    # When: a worker now consumes the original messages too (plan, chunks, reduce: all duplicates)
    workers.start(1)
    _queues_drained(cluster_env["DX_BROKER_URL"])
    # Then: still nothing changed, and exactly one e-mail was sent for the run
    assert _snapshot(run_id, tenant) == done
    assert sum(f"(run {run_id})" in m["Subject"] for m in smtp.messages) == 1


@pytest.mark.slow
def test_million_rows_overwrite_on_two_workers(cluster_env, sshd, workers, tmp_path):
    # Given: 1,000,000 contacts on the SFTP server, then 1,000 of them again with another name
    # (in later read batches than their first occurrence), and a database holding other contacts
    tenant = "million"
    apply(config(tenant, sshd, [{"id": "million-import", "mode": "overwrite",
                                 "source": {"path": "million/contacts.csv"}}]), tmp_path)
    seed(tenant, [("old@x.it", "Old", 1)])
    frame = contacts(1_000_000, seed=11).select("email", "first_name", "points", "birth_date")
    again = frame.gather_every(1000).with_columns(pl.lit("Again").alias("first_name"))
    sshd.put("million/contacts.csv", pl.concat([frame, again]).write_csv().encode())
    workers.start(2)

    # When: it is imported in overwrite mode
    run_id = request_run("million-import", Trigger.MANUAL, "pytest")
    run = wait_for(run_id, 600)

    # Then: through several chunks, the table is exactly the first occurrences (chunks keep source
    # order across batches), and every repeat is a DUPLICATE_KEY naming its first row
    assert run["status"] == "completed_with_errors", run["error_message"]
    assert run["n_chunks"] >= 2 and (run["inserted"], run["not_inserted"]) == (1_000_000, 1_000)
    assert failures(run_id) == [(1_000_000 + i, "DUPLICATE_KEY") for i in range(1, 1_001)]
    with db.connect() as conn:
        chunks = conn.execute("SELECT count(*) AS n FROM dx.chunk_results WHERE run_id = %s",
                              (run_id,)).fetchone()["n"]
        buf = io.BytesIO()
        with conn.cursor().copy('COPY (SELECT email, first_name, points, to_char(birth_date, \'DD/MM/YYYY\')'
                                ' AS birth_date FROM "tenant_million".contacts ORDER BY email) TO STDOUT'
                                ' (FORMAT csv, HEADER)') as copy:
            for block in copy:
                buf.write(block)
    assert chunks == run["n_chunks"]
    loaded = pl.read_csv(buf.getvalue(), schema_overrides={"points": pl.String})
    expected = frame.sort("email")
    assert loaded.equals(expected)
