"""An overwrite's and an append's streaming plan: chunks of consecutive records, sent while the
source is read.

Their duplicate keys are judged as when one chunk holds every occurrence of a key;
a retried overwrite plan's earlier attempt applies nothing, a retried append plan
cuts the same chunks again.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pika
import pytest
from psycopg.types.json import Json

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


def _planned_again_and_worked(run_id: int, chunk_bytes: int, workers: Any, broker_url: str) -> dict[str, Any]:
    """Plan ``run_id`` again, as after a crash before its plan's end, seeing ``chunk_bytes`` (as a worker
    whose DX_CHUNK_BYTES differs would: the run's definition is pinned, the workers' settings are not);
    then workers consume every message, the first attempt's too. The ended run."""
    from dx.workers.imports.plan import plan

    with db.transaction() as conn:
        snapshot = conn.execute("SELECT definition FROM dx.runs WHERE id = %s", (run_id,)).fetchone()["definition"]
        snapshot["module"]["chunk_bytes"] = chunk_bytes
        conn.execute("UPDATE dx.runs SET planned_at = NULL, definition = %s WHERE id = %s", (Json(snapshot), run_id))
    plan(run_id)
    workers.start(2)
    result = wait_for(run_id, 120)
    _queues_drained(broker_url)
    return result


def test_a_retried_plan_applies_only_its_own_chunks(cluster_env, sshd, smtp, workers, tmp_path):
    # Given: an overwrite planned once with chunks of about 2 KB (its chunk messages wait in RabbitMQ)
    from dx.workers.imports.plan import plan

    tenant = "replan"

    def module(chunk_bytes: int) -> str:
        return config(tenant, sshd, [{"id": "replan-overwrite", "mode": "overwrite", "max_error_ratio": 1.0,
                                      "chunk_bytes": chunk_bytes, "source": {"path": "replan/in.csv"}}])

    apply(module(2000), tmp_path)
    seed(tenant, [("old@x.it", "Old", 1)])
    sshd.put("replan/in.csv", _source(9, 600, "email"))
    run_id = request_run("replan-overwrite", Trigger.MANUAL, "pytest")
    plan(run_id)
    with db.connect() as conn:
        first = conn.execute("SELECT n_chunks FROM dx.runs WHERE id = %s", (run_id,)).fetchone()["n_chunks"]

    # When: it is planned again with chunks of about 5 KB, and workers consume every message
    result = _planned_again_and_worked(run_id, 5000, workers, cluster_env["DX_BROKER_URL"])

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


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_a_plan_failing_after_its_chunks_committed_fails_the_run_with_nothing_of_them_kept(
        mode, cluster_env, sshd, smtp, workers, tmp_path, monkeypatch):
    # Given: a run of 400,000 records in chunks of about 2 MB, some of the first ones bad, one of them
    # held already (an append refuses it), then bytes that are not UTF-8; planned here, its reading
    # held after the first batch until a worker has committed a chunk of it
    from dx.workers.imports import plan as planning

    tenant = f"streamlate{mode}"
    apply(config(tenant, sshd, [{"id": f"late{mode}", "mode": mode, "max_error_ratio": 1.0,
                                 "chunk_bytes": 2_000_000, "source": {"path": "late/in.csv"}}]), tmp_path)
    before = {"old@x.it": ("Old", 1, None), "user7@x.it": ("Seven", 7, None)}
    seed(tenant, [(key, name, points) for key, (name, points, _) in before.items()])
    good = "".join(f"user{i}@x.it,name{i},{'bad' if i % 1000 == 0 else i}\n" for i in range(400_000))
    sshd.put("late/in.csv", b"email,first_name,points\n" + good.encode() + b"late@x.it,\xff\xfe broken,1\n")
    run_id = request_run(f"late{mode}", Trigger.MANUAL, "pytest")
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
    planning.plan(run_id)
    result = wait_for(run_id, 60)

    # Then: the run failed for the bytes, and none of its chunks' work is kept: the table as before,
    # no shadow table, no chunk result, no failed operation
    assert (result["status"], result["error_code"]) == ("failed", "SOURCE_UNDECODABLE"), result["error_message"]
    with db.connect() as conn:
        kept = conn.execute("SELECT (SELECT count(*) FROM dx.chunk_results WHERE run_id = %(r)s) AS results,"
                            " (SELECT count(*) FROM dx.failed_operations WHERE run_id = %(r)s) AS failed",
                            {"r": run_id}).fetchone()
    assert (kept["results"], kept["failed"]) == (0, 0)
    assert table(tenant) == before
    assert tables_left(tenant) == ["contacts"]



def test_a_plan_attempt_beginning_after_its_run_ended_makes_nothing(cluster_env, sshd, smtp, workers, tmp_path):
    # Given: an overwrite's run that ended (failed) while a twin delivery of its plan was about to begin
    from dx.shared.catalog import load_module
    from dx.workers.failures import fail_run
    from dx.workers.imports import plan as planning

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
    from dx.workers.imports import plan as planning

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
    planning.plan(run_id)
    with db.connect() as conn:
        row = conn.execute("SELECT status, planned_at, plan_attempt FROM dx.runs WHERE id = %s", (run_id,)).fetchone()
    assert (row["status"], row["planned_at"], row["plan_attempt"]) == ("running", None, 2)


def _streamed_by_hand(module: str, broker_url: str, chunk_order: Any) -> tuple[int, int]:
    """Plan a run of ``module`` here and apply its chunks here, in ``chunk_order(n_chunks)``; (run, n_chunks).
    Their messages, and the reduce's, wait for the workers."""
    from dx.workers.imports.chunk import chunk
    from dx.workers.imports.plan import plan

    run_id = request_run(module, Trigger.MANUAL, "pytest")
    _purge_plans(broker_url)
    plan(run_id)
    with db.connect() as conn:
        n_chunks = conn.execute("SELECT n_chunks FROM dx.runs WHERE id = %s", (run_id,)).fetchone()["n_chunks"]
    for chunk_no in chunk_order(n_chunks):
        chunk(run_id, chunk_no)
    return run_id, n_chunks


@pytest.mark.parametrize("key_type", ["email", "text"])
def test_a_streamed_append_whose_later_chunks_commit_first_ends_as_one_chunk_would(
        key_type, cluster_env, sshd, smtp, workers, tmp_path):
    # Given: appends of the same 600 records over 40 keys into a table already holding two of them,
    # one in chunks of about 2 KB, one in a single chunk
    tenant = f"append{key_type}"
    fields = {**FIELDS, "email": {"type": key_type, "required": True}}
    apply(config(tenant, sshd, [{"id": f"{tenant}-{name}", "mode": "append", "max_error_ratio": 1.0,
                                 "chunk_bytes": size, "source": {"path": f"{tenant}/{name}.csv"}}
                                for name, size in (("streamed", 2000), ("whole", 10_000_000))], fields=fields),
          tmp_path)
    data = _source(11, 600, key_type)
    sshd.put(f"{tenant}/streamed.csv", data)
    sshd.put(f"{tenant}/whole.csv", data)
    existing = [("user3@x.it", "Old", 1), ("user17@x.it", "Old", 2)]

    # When: the chunks of the first apply from the last to the first, so that a key's later occurrences
    # are inserted before its first, and the second runs on the same table as it was
    seed(tenant, existing)
    run_id, n_chunks = _streamed_by_hand(f"{tenant}-streamed", cluster_env["DX_BROKER_URL"],
                                         lambda n: reversed(range(n)))
    workers.start(2)
    streamed = wait_for(run_id, 120)
    kept = table(tenant)
    seed(tenant, existing)
    whole = run(f"{tenant}-whole")

    # Then: the same rows, counters and report, each repeat naming the key's first valid occurrence
    assert n_chunks >= 10 and whole["n_chunks"] == 1
    assert streamed["status"] == whole["status"] == "completed_with_errors"
    assert kept == table(tenant)
    assert [streamed[c] for c in COUNTERS] == [whole[c] for c in COUNTERS]
    report = _report(run_id)
    assert report == _report(whole["id"])
    assert sum(r["error_code"] == "DUPLICATE_KEY" for r in report) > 100
    assert streamed["inserted"] + streamed["not_inserted"] == 600
    if key_type == "email":  # the two keys held already: their first occurrence is refused
        assert sum(r["error_code"] == "KEY_EXISTS" for r in report) == 2


def test_a_retried_append_plan_cuts_the_same_chunks_and_applies_each_once(cluster_env, sshd, smtp, workers,
                                                                           tmp_path):
    # Given: an append planned with chunks of about 2 KB, three of its chunks applied
    tenant = "appendreplan"

    def module(chunk_bytes: int) -> str:
        return config(tenant, sshd, [{"id": f"{tenant}-{name}", "mode": "append", "max_error_ratio": 1.0,
                                      "chunk_bytes": size or chunk_bytes, "source": {"path": f"{tenant}/{name}.csv"}}
                                     for name, size in (("streamed", 0), ("whole", 10_000_000))])

    apply(module(2000), tmp_path)
    data = _source(13, 600, "email")
    sshd.put(f"{tenant}/streamed.csv", data)
    sshd.put(f"{tenant}/whole.csv", data)
    seed(tenant, [("user5@x.it", "Old", 1)])
    run_id, first = _streamed_by_hand(f"{tenant}-streamed", cluster_env["DX_BROKER_URL"], lambda n: (0, 2, n - 1))

    # When: it is planned again with chunk_bytes changed, and workers consume every message
    result = _planned_again_and_worked(run_id, 5000, workers, cluster_env["DX_BROKER_URL"])
    kept = table(tenant)
    seed(tenant, [("user5@x.it", "Old", 1)])
    whole = run(f"{tenant}-whole")

    # Then: the second attempt cut the same chunks; each was applied once, and the run ends as one
    # chunk holding every record would
    with db.connect() as conn:
        done = conn.execute("SELECT count(*) AS n, sum(rows_read) AS rows FROM dx.chunk_results WHERE run_id = %s",
                            (run_id,)).fetchone()
    assert result["status"] == "completed_with_errors", result["error_message"]
    assert result["plan_attempt"] == 2 and result["n_chunks"] == first >= 10
    assert (done["n"], done["rows"]) == (first, 600 - result["plan_failed"])
    assert [result[c] for c in COUNTERS] == [whole[c] for c in COUNTERS]
    assert kept == table(tenant)
    assert _report(run_id) == _report(whole["id"])
