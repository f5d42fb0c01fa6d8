"""An overwrite's streaming plan: chunks of consecutive records, sent while the source is read.

Its duplicate keys are judged as when one chunk holds every occurrence of a key
(the hash-partitioned plan of the other modes), and a retried plan's earlier
attempt applies nothing.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pika
import pytest

from dx.cli import wait_for
from dx.scheduler.requests import request_run
from dx.shared import db
from dx.shared.runs import Trigger
from tests.integration.helpers import FIELDS, apply, config, run, seed, table, tables_left
from tests.integration.test_importer_exactly_once import _queues_drained


def _source(seed_: int, rows: int, key_type: str) -> bytes:
    """Records over a few keys, each repeated, written in other forms (case for an e-mail, spaces
    around a text key), some with a bad value or no key."""
    rng = random.Random(seed_)
    lines = ["email,first_name,points,birth_date"]
    for i in range(rows):
        key = f"user{rng.randrange(40)}@x.it"
        if key_type == "email" and rng.random() < 0.3:
            key = key.upper()
        if rng.random() < 0.3:
            key = f"  {key} "
        if rng.random() < 0.03:
            key = ""
        points = "bad" if rng.random() < 0.1 else str(rng.randrange(1000))
        birth = "31/02/1990" if rng.random() < 0.05 else f"{rng.randrange(1, 28):02d}/03/1980"
        lines.append(f'"{key}",name{i},{points},{birth}')
    return ("\n".join(lines) + "\n").encode()


def _report(run_id: int) -> list[dict[str, Any]]:
    with db.connect() as conn:
        return conn.execute("SELECT row_number, key, operation, error_code, error_message, record"
                            " FROM dx.failed_operations WHERE run_id = %s ORDER BY row_number", (run_id,)).fetchall()


COUNTERS = ("rows_read", "inserted", "not_inserted")


def _purge_plans(broker_url: str) -> None:
    """Drop the plan messages waiting in RabbitMQ (a test plans the run itself)."""
    with pika.BlockingConnection(pika.URLParameters(broker_url)) as conn:
        conn.channel().queue_purge("dx.plan")


@pytest.mark.parametrize("key_type", ["email", "text"])
def test_streamed_overwrite_judges_duplicates_as_one_chunk_holding_them_would(
        key_type, cluster_env, sshd, smtp, workers, tmp_path):
    # Given: an overwrite (streamed) and an append into an empty table (split by a hash of the key),
    # the same file of 600 records over 40 keys, and chunks of about 2 KB
    tenant = f"stream{key_type}"
    fields = {**FIELDS, "email": {"type": key_type, "required": True}}
    apply(config(tenant, sshd, [{"id": f"{tenant}-{mode}", "mode": mode, "max_error_ratio": 1.0,
                                 "chunk_bytes": 2000, "source": {"path": f"{tenant}/{mode}.csv"}}
                                for mode in ("overwrite", "append")], fields=fields), tmp_path)
    data = _source(5, 600, key_type)
    sshd.put(f"{tenant}/overwrite.csv", data)
    sshd.put(f"{tenant}/append.csv", data)
    workers.start(2)

    # When: both run
    seed(tenant, [("old@x.it", "Old", 1)])
    streamed = run(f"{tenant}-overwrite")
    kept_by_overwrite = table(tenant)
    seed(tenant, [])
    by_key = run(f"{tenant}-append")

    # Then: the overwrite's chunks held repeated keys, and both runs kept and refused the same records
    # for the same reasons, each repeat naming its first valid occurrence
    assert streamed["status"] == by_key["status"] == "completed_with_errors"
    assert streamed["n_chunks"] >= 10 and by_key["n_chunks"] >= 2
    assert kept_by_overwrite == table(tenant)
    assert len(kept_by_overwrite) == 40
    assert [streamed[c] for c in COUNTERS] == [by_key[c] for c in COUNTERS]
    report = _report(streamed["id"])
    assert report == _report(by_key["id"])
    assert sum(r["error_code"] == "DUPLICATE_KEY" for r in report) > 100
    assert streamed["inserted"] + streamed["not_inserted"] == streamed["rows_read"] == 600


def test_a_retried_plan_applies_only_its_own_chunks(cluster_env, sshd, smtp, workers, tmp_path):
    # Given: an overwrite planned once with chunks of about 2 KB (its chunk messages wait in RabbitMQ),
    # then planned again, as after a crash before its end, with chunks of about 5 KB
    from dx.workers.chunk import chunk  # noqa: F401  (imported now: bound to the broker of the test's vhost)
    from dx.workers.plan import plan
    from dx.workers.reduce import reduce  # noqa: F401

    tenant = "replan"

    def module(chunk_bytes: int) -> str:
        return config(tenant, sshd, [{"id": "replan-overwrite", "mode": "overwrite", "max_error_ratio": 1.0,
                                      "chunk_bytes": chunk_bytes, "source": {"path": "replan/in.csv"}}])

    apply(module(2000), tmp_path)
    seed(tenant, [("old@x.it", "Old", 1)])
    sshd.put("replan/in.csv", _source(9, 600, "email"))
    run_id = request_run("replan-overwrite", Trigger.MANUAL, "pytest")
    plan.fn(run_id)
    with db.transaction() as conn:
        first = conn.execute("SELECT n_chunks FROM dx.runs WHERE id = %s", (run_id,)).fetchone()["n_chunks"]
        conn.execute("UPDATE dx.runs SET planned_at = NULL WHERE id = %s", (run_id,))
    apply(module(5000), tmp_path)
    plan.fn(run_id)

    # When: workers consume every message, the first attempt's too
    workers.start(2)
    result = wait_for(run_id, 120)
    _queues_drained(cluster_env["DX_BROKER_URL"])

    # Then: the run holds the second attempt's chunks only, and its counters add up
    with db.connect() as conn:
        done = conn.execute("SELECT count(*) AS n, sum(rows_read) AS rows FROM dx.chunk_results WHERE run_id = %s",
                            (run_id,)).fetchone()
    assert result["status"] == "completed_with_errors", result["error_message"]
    assert result["plan_attempt"] == 2 and first > result["n_chunks"]
    assert (done["n"], done["rows"]) == (result["n_chunks"], 600 - result["plan_failed"])
    assert result["inserted"] + result["not_inserted"] == result["rows_read"] == 600
    assert len(table(tenant)) == result["inserted"] == 40
    logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    assert "sent by an earlier attempt of the plan" in logs


def test_a_text_key_repeated_only_with_other_spaces_is_settled_after_its_key_was_built(
        cluster_env, sshd, smtp, workers, tmp_path):
    # Given a text key whose repeats differ from its first occurrence by spaces only (PostgreSQL's key
    # build accepts them as different; dx counts them as one key), one record per chunk
    tenant = "streamspaces"
    fields = {**FIELDS, "email": {"type": "text", "required": True}}
    apply(config(tenant, sshd, [{"id": "spaces", "mode": "overwrite", "max_error_ratio": 1.0, "chunk_bytes": 1,
                                 "source": {"path": "spaces/in.csv"}}], fields=fields), tmp_path)
    sshd.put("spaces/in.csv", b'email,first_name,points,birth_date\nk1,A,1,\n" k1",B,2,\nk2,C,3,\n"k1 ",D,4,\n')
    workers.start(2)

    # When it is imported
    result = run("spaces")

    # Then the first occurrence stays, the others are DUPLICATE_KEY failures naming its row
    assert result["n_chunks"] == 4
    assert table(tenant) == {"k1": ("A", 1, None), "k2": ("C", 3, None)}
    assert [(r["row_number"], r["key"], r["error_code"], r["error_message"]) for r in _report(result["id"])] == [
        (2, "k1", "DUPLICATE_KEY", "the key appears earlier in the source (row 1); the first occurrence was applied"),
        (4, "k1", "DUPLICATE_KEY", "the key appears earlier in the source (row 1); the first occurrence was applied")]
    assert (result["inserted"], result["not_inserted"]) == (2, 2)


def test_a_plan_failing_after_its_chunks_committed_fails_the_run_with_nothing_of_them_kept(
        cluster_env, sshd, smtp, workers, tmp_path, monkeypatch):
    # Given: an overwrite of 400,000 records in chunks of about 2 MB, some of the first ones bad, then
    # bytes that are not UTF-8; planned here, its reading held after the first batch until a worker
    # has committed a chunk of it
    from dx.workers import plan as planning
    from dx.workers.chunk import chunk  # noqa: F401  (imported now: bound to the broker of the test's vhost)
    from dx.workers.reduce import reduce  # noqa: F401

    tenant = "streamlate"
    apply(config(tenant, sshd, [{"id": "late", "mode": "overwrite", "max_error_ratio": 1.0,
                                 "chunk_bytes": 2_000_000, "source": {"path": "late/in.csv"}}]), tmp_path)
    seed(tenant, [("old@x.it", "Old", 1)])
    good = "".join(f"user{i}@x.it,name{i},{'bad' if i % 1000 == 0 else i}\n" for i in range(400_000))
    sshd.put("late/in.csv", b"email,first_name,points\n" + good.encode() + b"late@x.it,\xff\xfe broken,1\n")
    run_id = request_run("late", Trigger.MANUAL, "pytest")
    _purge_plans(cluster_env["DX_BROKER_URL"])  # planned here only, not by a worker too
    read_ahead = planning.read_ahead

    def held(items):
        for n, item in enumerate(read_ahead(items)):
            yield item
            if n == 0:
                with db.connect() as conn:
                    while not conn.execute("SELECT 1 FROM dx.chunk_results WHERE run_id = %s", (run_id,)).fetchone():
                        time.sleep(0.05)
    monkeypatch.setattr(planning, "read_ahead", held)
    workers.start(2)

    # When: it is planned
    planning.plan.fn(run_id)
    result = wait_for(run_id, 60)

    # Then: the run failed for the bytes, and none of its chunks' work is kept: the table as before,
    # no shadow table, no chunk result, no failed operation
    assert (result["status"], result["error_code"]) == ("failed", "SOURCE_UNDECODABLE"), result["error_message"]
    with db.connect() as conn:
        kept = conn.execute("SELECT (SELECT count(*) FROM dx.chunk_results WHERE run_id = %(r)s) AS results,"
                            " (SELECT count(*) FROM dx.failed_operations WHERE run_id = %(r)s) AS failed",
                            {"r": run_id}).fetchone()
    assert (kept["results"], kept["failed"]) == (0, 0)
    assert table(tenant) == {"old@x.it": ("Old", 1, None)}
    assert tables_left(tenant) == ["contacts"]


def test_a_plan_attempt_beginning_after_its_run_ended_makes_nothing(cluster_env, sshd, smtp, workers, tmp_path):
    # Given: an overwrite's run that ended (failed) while a twin delivery of its plan was about to begin
    from dx.shared.catalog import load_module
    from dx.workers import plan as planning
    from dx.workers.failures import fail_run

    tenant = "streamended"
    apply(config(tenant, sshd, [{"id": "ended", "mode": "overwrite", "source": {"path": "ended/in.csv"}}]), tmp_path)
    run_id = request_run("ended", Trigger.MANUAL, "pytest")
    _purge_plans(cluster_env["DX_BROKER_URL"])
    with db.transaction() as conn:
        conn.execute("UPDATE dx.runs SET status = 'running' WHERE id = %s", (run_id,))
        mdef = load_module(conn, "ended")
    fail_run(run_id, None, "ended by a test")

    # When: the twin begins its attempt / Then it stops, and makes no shadow table again
    with pytest.raises(planning.RunEnded):
        planning._new_attempt(run_id, mdef, ["email"])
    assert tables_left(tenant) == ["contacts"]
    assert wait_for(run_id, 10)["plan_attempt"] == 0


def test_a_plan_overtaken_by_a_later_attempt_leaves_the_run_to_it(cluster_env, sshd, smtp, workers, tmp_path,
                                                                   monkeypatch):
    # Given: an overwrite planned here, and a twin delivery of its plan beginning its own attempt
    # just before this one ends
    from dx.workers import plan as planning
    from dx.workers.chunk import chunk  # noqa: F401  (imported now: bound to the broker of the test's vhost)

    tenant = "streamtwin"
    apply(config(tenant, sshd, [{"id": "twin", "mode": "overwrite", "source": {"path": "twin/in.csv"}}]), tmp_path)
    sshd.put("twin/in.csv", _source(3, 50, "email"))
    run_id = request_run("twin", Trigger.MANUAL, "pytest")
    _purge_plans(cluster_env["DX_BROKER_URL"])
    stream = planning._stream

    def overtaken(*args: Any) -> int:
        sent = stream(*args)
        with db.transaction() as conn:
            conn.execute("UPDATE dx.runs SET plan_attempt = plan_attempt + 1 WHERE id = %s", (run_id,))
        return sent
    monkeypatch.setattr(planning, "_stream", overtaken)

    # When: this plan ends / Then it leaves the run to the later attempt: not planned by it, still running
    planning.plan.fn(run_id)
    with db.connect() as conn:
        row = conn.execute("SELECT status, planned_at, plan_attempt FROM dx.runs WHERE id = %s", (run_id,)).fetchone()
    assert (row["status"], row["planned_at"], row["plan_attempt"]) == ("running", None, 2)
