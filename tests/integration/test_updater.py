"""The Updater on the real cluster: the sequential oracle, 1,000,000 mixed records, a killed worker;
records that leave fields unset (XML elements left out, empty cells with empty_on_update: keep), for
the Updater and the upsert importer, against the oracle that sets each record's set fields only."""

from __future__ import annotations

import csv
import io
import itertools
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dx.devkit.generate import contacts, updates
from dx.shared import db
from tests.integration.helpers import apply, config, failures, run, table
from tests.updater_reference import COLUMNS, FIELDS, Row, apply_sequentially, random_records

TENANT = "upd"
COUNTERS = ("inserted", "updated", "deleted", "not_inserted", "not_updated", "not_deleted")
BIRTH = date(2000, 1, 1)
FILE_NO = itertools.count()


def _configure(sshd: Any, tmp_path: Any, *, chunk_bytes: int, upsert: bool, module_id: str = "upd-ops",
               source: dict[str, Any] | None = None, **options: Any) -> None:
    module = {"id": module_id, "kind": "updater", "chunk_bytes": chunk_bytes,
              "update_missing": "insert" if upsert else "fail", "source": source or {"path": "upd/ops_*.csv"},
              **options}
    apply(config(TENANT, sshd, [module], fields=FIELDS), tmp_path)


def _seed(initial: dict[str, Row]) -> None:
    with db.transaction() as conn:
        conn.execute(f'TRUNCATE "tenant_{TENANT}".contacts')
        with conn.cursor().copy(f'COPY "tenant_{TENANT}".contacts (email, first_name, points, birth_date)'
                                " FROM STDIN") as copy:
            for key, r in initial.items():
                copy.write_row((key, r["first_name"], r["points"], r["birth_date"]))


def _as_table(rows: dict[str, Row]) -> dict[str, tuple[Any, ...]]:
    return {k: (r["first_name"], r["points"], r["birth_date"]) for k, r in rows.items()}


def _csv(records: list[list[str | None]], columns: list[str] = COLUMNS) -> bytes:
    """The records as CSV (a field left out, None, is an empty cell)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(records)
    return buf.getvalue().encode()


def _xml(records: list[list[str | None]], rng: random.Random, *, operation: bool = True) -> bytes:
    """The records in the clients' layout: the operation as an attribute, a field left out where None,
    an empty value as <X/> or <X></X>."""
    parts = ["<?xml version='1.0' encoding='UTF-8'?>\n<dataroot>\n"]
    for op, *values in records:
        fields = "".join("" if v is None else f"<{c.upper()}/>" if v == "" and rng.random() < 0.5
                         else f"<{c.upper()}>{escape(v)}</{c.upper()}>"
                         for c, v in zip(COLUMNS[1:], values, strict=True))
        parts.append(f"<RECORD OPERATION={quoteattr(op or '')}>{fields}</RECORD>\n" if operation
                     else f"<RECORD>{fields}</RECORD>\n")
    parts.append("</dataroot>\n")
    return "".join(parts).encode()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), n_records=st.integers(200, 4000), n_keys=st.integers(20, 3000),
       chunks=st.integers(1, 8), upsert=st.booleans())
def test_updater_matches_the_sequential_oracle(cluster_env, sshd, workers, tmp_path, seed, n_records, n_keys,
                                               chunks, upsert):
    # Given: random I/U/D records over a few thousand keys (repeats, bad operations, bad values),
    # a table already holding some of the keys, and a chunk size giving about `chunks` chunks
    rng = random.Random(seed)
    records = random_records(rng, n_records, n_keys, bad_ratio=0.05)
    initial = {f"k{k}@x.it": {"first_name": "Init", "points": k, "birth_date": BIRTH}
               for k in rng.sample(range(n_keys), n_keys // 2)}
    data = _csv(records)
    _configure(sshd, tmp_path, chunk_bytes=max(1, len(data) // chunks), upsert=upsert)
    _seed(initial)
    sshd.put(f"upd/ops_{next(FILE_NO)}.csv", data)  # a new name each time: hypothesis replays examples
    if not workers.procs:  # one pair of worker processes serves every example
        workers.start(2)

    # When: the Updater applies them on two worker processes
    result = run("upd-ops")

    # Then: the same table, failed operations and counters as applying them one by one in order
    expected = apply_sequentially(initial, records, upsert=upsert)
    assert result["status"] in ("completed", "completed_with_errors"), result["error_message"]
    assert result["n_chunks"] >= chunks
    assert table(TENANT) == _as_table(expected.table)
    assert failures(result["id"]) == sorted(expected.failures)
    assert {c: result[c] for c in COUNTERS} == expected.counters
    assert result["rows_read"] == n_records


def _initial(rng: random.Random, n_keys: int) -> dict[str, Row]:
    """Half the keys, each with all three fields."""
    return {f"k{k}@x.it": {"first_name": "Init", "points": k, "birth_date": BIRTH}
            for k in rng.sample(range(n_keys), n_keys // 2)}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), n_records=st.integers(200, 1500), n_keys=st.integers(20, 1000),
       chunks=st.integers(2, 6), upsert=st.booleans())
def test_an_xml_updater_sets_only_the_fields_each_record_carries(cluster_env, sshd, workers, tmp_path, seed,
                                                                 n_records, n_keys, chunks, upsert):
    # Given: random I/U/D records as XML, about 15% of their FIRST_NAME and POINTS elements left out
    # and as many empty (<X/> or <X></X>), over a table holding half the keys, in several chunks
    rng = random.Random(seed)
    records = random_records(rng, n_records, n_keys, bad_ratio=0.05, left_out=0.15)
    initial = _initial(rng, n_keys)
    data = _xml(records, rng)
    _configure(sshd, tmp_path, chunk_bytes=max(1, len(data) // chunks), upsert=upsert, module_id="upd-xml",
               source={"path": "upd/xml_*.xml", "format": "xml"})
    _seed(initial)
    sshd.put(f"upd/xml_{next(FILE_NO)}.xml", data)
    if not workers.procs:
        workers.start(2)

    # When: the Updater applies them
    result = run("upd-xml")

    # Then: the table, failures and counters of applying them one by one, each setting the fields it
    # carries only (an element left out is untouched by a U, empty after an I; an empty one is NULL)
    expected = apply_sequentially(initial, records, upsert=upsert, unset="absent")
    assert result["status"] in ("completed", "completed_with_errors"), result["error_message"]
    assert result["n_chunks"] >= chunks
    assert table(TENANT) == _as_table(expected.table)
    assert failures(result["id"]) == sorted(expected.failures)
    assert {c: result[c] for c in COUNTERS} == expected.counters


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), n_records=st.integers(200, 1500), n_keys=st.integers(20, 1000),
       chunks=st.integers(2, 6), upsert=st.booleans(), keep=st.booleans())
def test_a_csv_updater_keeps_or_empties_a_field_on_an_empty_cell(cluster_env, sshd, workers, tmp_path, seed,
                                                                n_records, n_keys, chunks, upsert, keep):
    # Given: random I/U/D records as CSV, about 30% of their first_name and points cells empty,
    # over a table holding half the keys, and empty_on_update keep or null
    rng = random.Random(seed)
    records = random_records(rng, n_records, n_keys, bad_ratio=0.05, left_out=0.15)
    initial = _initial(rng, n_keys)
    data = _csv(records)
    _configure(sshd, tmp_path, chunk_bytes=max(1, len(data) // chunks), upsert=upsert, module_id="upd-keep",
               source={"path": "upd/keep_*.csv"}, empty_on_update="keep" if keep else "null")
    _seed(initial)
    sshd.put(f"upd/keep_{next(FILE_NO)}.csv", data)
    if not workers.procs:
        workers.start(2)

    # When: the Updater applies them
    result = run("upd-keep")

    # Then: the oracle's table, failures and counters: with keep a U leaves a field with an empty cell
    # as it is (an I leaves it empty); with null the cell sets NULL
    expected = apply_sequentially(initial, records, upsert=upsert, unset="empty" if keep else None)
    assert result["status"] in ("completed", "completed_with_errors"), result["error_message"]
    assert result["n_chunks"] >= chunks
    assert table(TENANT) == _as_table(expected.table)
    assert failures(result["id"]) == sorted(expected.failures)
    assert {c: result[c] for c in COUNTERS} == expected.counters


@pytest.mark.parametrize("source", ["csv", "xml"])
def test_an_upsert_importer_sets_only_the_fields_each_record_carries(cluster_env, sshd, workers, tmp_path,
                                                                     source):
    # Given: 800 records over 300 keys (repeats), about 15% of first names and points left out and as
    # many empty, as CSV (empty_on_update: keep) or XML; a table holding half the keys; ~5 chunks
    rng = random.Random(21 if source == "csv" else 22)
    records = [["U", *r[1:]] for r in random_records(rng, 800, 300, bad_ratio=0.05, left_out=0.15)]
    initial = _initial(rng, 300)
    data = _csv([r[1:] for r in records], COLUMNS[1:]) if source == "csv" else _xml(records, rng, operation=False)
    module = {"id": f"upd-upsert-{source}", "mode": "upsert", "chunk_bytes": len(data) // 5,
              "source": {"path": f"upd/upsert_*.{source}", "format": source},
              **({"empty_on_update": "keep"} if source == "csv" else {})}
    apply(config(TENANT, sshd, [module], fields=FIELDS), tmp_path)
    _seed(initial)
    sshd.put(f"upd/upsert_{next(FILE_NO)}.{source}", data)
    workers.start(2)

    # When: the importer upserts them
    result = run(module["id"])

    # Then: the table of applying each record in order as a U that inserts a missing key and sets the
    # fields it carries only; the same failed rows; each record counted once
    expected = apply_sequentially(initial, records, upsert=True, unset="empty" if source == "csv" else "absent")
    assert result["status"] == "completed_with_errors", result["error_message"]
    assert result["n_chunks"] >= 5
    assert table(TENANT) == _as_table(expected.table)
    assert failures(result["id"]) == sorted(expected.failures)
    assert (result["inserted"], result["updated"]) == (expected.counters["inserted"], expected.counters["updated"])
    assert result["not_inserted"] + result["not_updated"] == expected.counters["not_updated"]
    assert "REQUIRED_FIELD_MISSING" in {code for _, code in expected.failures}


def test_a_field_left_out_needs_no_value_where_the_client_made_it_not_null(cluster_env, sshd, workers,
                                                                           tmp_path):
    # Given: a and b with points, a column the client made NOT NULL; an XML file updating a's first
    # name only (POINTS left out) and both of b's fields, b twice (the single statement and the replay)
    tenant = "updnn"
    module = {"id": "updnn-xml", "kind": "updater", "source": {"path": "updnn/in.xml", "format": "xml"}}
    apply(config(tenant, sshd, [module], fields=FIELDS), tmp_path)
    with db.transaction() as conn:
        conn.execute(f'INSERT INTO "tenant_{tenant}".contacts (email, first_name, points)'  # noqa: S608
                     " VALUES ('a@x.it', 'A', 1), ('b@x.it', 'B', 2)")
        conn.execute(f'ALTER TABLE "tenant_{tenant}".contacts ALTER COLUMN points SET NOT NULL')
    sshd.put("updnn/in.xml", b'<dataroot><RECORD OPERATION="U"><EMAIL>a@x.it</EMAIL><FIRST_NAME>A2</FIRST_NAME>'
                             b'</RECORD><RECORD OPERATION="U"><EMAIL>b@x.it</EMAIL><POINTS>5</POINTS></RECORD>'
                             b'<RECORD OPERATION="U"><EMAIL>b@x.it</EMAIL><FIRST_NAME>B2</FIRST_NAME></RECORD>'
                             b'</dataroot>')
    workers.start(1)
    # When: it runs
    result = run("updnn-xml")
    # Then: each record updated what it carries; the points left out kept their value
    assert result["status"] == "completed", result["error_message"]
    assert table(tenant) == {"a@x.it": ("A2", 1, None), "b@x.it": ("B2", 5, None)}
    assert result["updated"] == 3


def test_a_worker_killed_mid_chunk_leaves_the_table_exact(cluster_env, sshd, workers, tmp_path):
    # Given: 60,000 records in about 12 chunks, and two worker processes
    rng = random.Random(42)
    records = random_records(rng, 60_000, 20_000, bad_ratio=0.02)
    initial = {f"k{k}@x.it": {"first_name": "Init", "points": k, "birth_date": BIRTH} for k in range(0, 20_000, 2)}
    data = _csv(records)
    _configure(sshd, tmp_path, chunk_bytes=len(data) // 12, upsert=False)
    _seed(initial)
    sshd.put("upd/ops_kill.csv", data)
    procs = workers.start(2)

    # When: one worker is killed with SIGKILL while its chunk transaction is open
    from dx.cli import wait_for
    from dx.scheduler.requests import request_run
    from dx.shared.runs import Trigger

    run_id = request_run("upd-ops", Trigger.MANUAL, "pytest")
    victim = _kill_mid_chunk(procs, run_id)
    result = wait_for(run_id, 180)

    # Then: the run completes anyway, with the table, failures and counters of the sequential oracle
    expected = apply_sequentially(initial, records, upsert=False)
    assert victim.returncode == -signal.SIGKILL
    assert result["status"] == "completed_with_errors", result["error_message"]
    assert table(TENANT) == _as_table(expected.table)
    assert failures(run_id) == sorted(expected.failures)
    assert {c: result[c] for c in COUNTERS} == expected.counters


def _kill_mid_chunk(procs: list[Any], run_id: int, timeout_s: float = 60) -> Any:
    """SIGKILL the worker whose database session is inside a chunk transaction of the run."""
    by_name = {f"dx pid {p.pid}": p for p in procs}
    deadline = time.monotonic() + timeout_s
    with db.connect(autocommit=True) as conn:
        while time.monotonic() < deadline:
            busy = conn.execute(
                "SELECT a.application_name FROM pg_stat_activity a WHERE a.application_name = ANY(%s)"
                " AND a.backend_xid IS NOT NULL AND a.query ILIKE %s",
                (list(by_name), f'%"tenant_{TENANT}"%')).fetchone()
            if busy:
                victim = by_name[busy["application_name"]]
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait(10)
                run = conn.execute("SELECT n_chunks, (SELECT count(*) FROM dx.chunk_results c WHERE c.run_id = r.id)"
                                   " AS done FROM dx.runs r WHERE id = %s", (run_id,)).fetchone()
                assert run["done"] < run["n_chunks"], "the kill came after every chunk had committed"
                return victim
            time.sleep(0.005)
    raise AssertionError("no worker was seen inside a chunk transaction")


@pytest.mark.slow
def test_a_million_mixed_records_add_up(cluster_env, sshd, workers, tmp_path):
    # Given: 600,000 contacts, and 1,000,000 records of ~60% U, 25% I, 15% D, 1% bad over them
    base_rows = 600_000
    _configure(sshd, tmp_path, chunk_bytes=32 * 1024 * 1024, upsert=False)
    base = contacts(base_rows, seed=5).select("email", "first_name", "points", "birth_date")
    with db.transaction() as conn:
        conn.execute(f'TRUNCATE "tenant_{TENANT}".contacts')
        with conn.cursor().copy(f'COPY "tenant_{TENANT}".contacts (email, first_name, points, birth_date)'
                                " FROM STDIN (FORMAT csv, HEADER)") as copy:
            copy.write(base.with_columns(base["birth_date"].str.to_date("%d/%m/%Y")).write_csv())
    ops = updates(base["email"], 1_000_000, seed=5).select("operation", "email", "first_name", "points")
    sshd.put("upd/ops_million.csv", ops.write_csv().encode())
    workers.start(2)

    # When: the Updater applies them
    result = run("upd-ops", timeout_s=600)

    # Then: every record is counted once, and the table grew by the inserts less the deletes
    assert result["status"] == "completed_with_errors", result["error_message"]
    assert result["rows_read"] == 1_000_000 and result["n_chunks"] >= 2
    assert sum(result[c] for c in COUNTERS) == 1_000_000
    assert result["inserted"] > 200_000 and result["updated"] > 500_000 and result["deleted"] > 100_000
    with db.connect() as conn:
        n = conn.execute(f'SELECT count(*) AS n FROM "tenant_{TENANT}".contacts').fetchone()["n"]  # noqa: S608
        n_failed = conn.execute("SELECT count(*) AS n FROM dx.failed_operations WHERE run_id = %s",
                                (result["id"],)).fetchone()["n"]
    assert n == base_rows + result["inserted"] - result["deleted"]
    assert n_failed == sum(result[c] for c in COUNTERS if c.startswith("not_"))


def test_a_concurrent_writer_makes_a_replayed_chunk_retry_not_miscount(cluster_env, sshd, tmp_path):
    # Given: a planned run (no workers) updating a key once and another twice (replayed, one MERGE)
    from dx.shared.errors import RetriableError
    from dx.workers.imports.chunk import chunk

    run_id = _planned_race(sshd, tmp_path, [["U", "a@x.it", "A", "2"], ["U", "b@x.it", "B", "3"],
                                            ["U", "b@x.it", "C", "4"]])

    # When: another transaction deletes b@x.it, committing while the chunk waits on that row
    # (the connection closes before the pool waits: a failed wait below releases the row, not hangs)
    with ThreadPoolExecutor(1) as pool, db.connect() as other:
        other.execute(f'DELETE FROM "tenant_{TENANT}".contacts WHERE email = %s', ("b@x.it",))  # noqa: S608
        applied = pool.submit(chunk, run_id, 0)
        _wait_for_lock_wait("MERGE")
        other.commit()
        # Then: the chunk notices that it touched fewer rows than it planned, and rolls back
        with pytest.raises(RetriableError, match="another writer changed 1"):
            applied.result(30)
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) AS n FROM dx.chunk_results WHERE run_id = %s",
                            (run_id,)).fetchone()["n"] == 0
    # When: it is delivered again / Then: the updates of the vanished key are failed operations
    chunk(run_id, 0)
    assert table(TENANT) == {"a@x.it": ("A", 2, BIRTH)}
    with db.connect() as conn:
        assert conn.execute("SELECT row_number, error_code FROM dx.failed_operations WHERE run_id = %s"
                            " ORDER BY row_number", (run_id,)).fetchall() == [
            {"row_number": 2, "error_code": "KEY_NOT_FOUND"}, {"row_number": 3, "error_code": "KEY_NOT_FOUND"}]


def test_a_concurrent_delete_makes_a_single_update_key_not_found_at_once(cluster_env, sshd, tmp_path):
    # Given: a planned run (no workers) updating two keys that exist, once each
    from dx.workers.imports.chunk import chunk

    run_id = _planned_race(sshd, tmp_path, [["U", "a@x.it", "A", "2"], ["U", "b@x.it", "B", "3"]])

    # When: another transaction deletes b@x.it, committing while the chunk's statement waits on that row
    # (the connection closes before the pool waits: a failed wait below releases the row, not hangs)
    with ThreadPoolExecutor(1) as pool, db.connect() as other:
        other.execute(f'DELETE FROM "tenant_{TENANT}".contacts WHERE email = %s', ("b@x.it",))  # noqa: S608
        applied = pool.submit(chunk, run_id, 0)
        _wait_for_lock_wait("WITH d AS")
        other.commit()
        applied.result(30)
    # Then: the update found no row (the delete came first) and says so, counted once
    assert table(TENANT) == {"a@x.it": ("A", 2, BIRTH)}
    with db.connect() as conn:
        assert conn.execute("SELECT row_number, error_code FROM dx.failed_operations WHERE run_id = %s",
                            (run_id,)).fetchall() == [{"row_number": 2, "error_code": "KEY_NOT_FOUND"}]
        assert conn.execute("SELECT updated, not_updated FROM dx.chunk_results WHERE run_id = %s",
                            (run_id,)).fetchone() == {"updated": 1, "not_updated": 1}


def _planned_race(sshd: Any, tmp_path: Any, operations: list[list[str]]) -> int:
    """A run of ``operations`` against a@x.it and b@x.it (both existing), planned, no worker: its id."""
    from dx.scheduler.requests import request_run
    from dx.shared.runs import Trigger
    from dx.workers.imports.plan import plan

    _configure(sshd, tmp_path, chunk_bytes=1 << 20, upsert=False)
    _seed({k: {"first_name": "Init", "points": 1, "birth_date": BIRTH} for k in ("a@x.it", "b@x.it")})
    sshd.put("upd/ops_race.csv", _csv(operations))
    run_id = request_run("upd-ops", Trigger.MANUAL, "pytest")
    plan(run_id)
    return run_id


def _wait_for_lock_wait(statement: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    with db.connect(autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND query LIKE %s", (statement + "%",)).fetchone():
                return
            time.sleep(0.02)
    raise AssertionError("the chunk never waited on the locked row")


def test_a_file_of_keys_only_updates_and_deletes(cluster_env, sshd, workers, tmp_path):
    # Given: a, b and e exist; a file naming keys only (no field to set): e twice (the replay and MERGE),
    # the others once (the single statement)
    _configure(sshd, tmp_path, chunk_bytes=1 << 20, upsert=False)
    _seed({k: {"first_name": "Init", "points": 1, "birth_date": BIRTH} for k in ("a@x.it", "b@x.it", "e@x.it")})
    sshd.put(f"upd/ops_{next(FILE_NO)}.csv",
             b"operation,email\nU,a@x.it\nU,c@x.it\nU,e@x.it\nU,e@x.it\nD,b@x.it\nI,d@x.it\n")
    workers.start(1)
    # When: it runs
    result = run("upd-ops")
    # Then: a and e count as updated and keep their values, b is gone; c is not found, d lacks its fields
    assert result["status"] == "completed_with_errors", result["error_message"]
    assert table(TENANT) == {"a@x.it": ("Init", 1, BIRTH), "e@x.it": ("Init", 1, BIRTH)}
    assert {c: result[c] for c in COUNTERS} == {"inserted": 0, "updated": 3, "deleted": 1, "not_inserted": 1,
                                                 "not_updated": 1, "not_deleted": 0}
    assert failures(result["id"]) == [(2, "KEY_NOT_FOUND"), (6, "REQUIRED_FIELD_MISSING")]
