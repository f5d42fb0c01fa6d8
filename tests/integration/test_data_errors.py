"""Deterministic data errors are failed records (or a run failed at once), never retried crashes:
a NUL byte in a cell or a header, a BOM inside a key, a record the client's table constraints refuse,
and records up to the documented size limit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from dx.shared import db
from tests.integration.helpers import apply, config, failures, run, seed, table

pytestmark = pytest.mark.timeout(300)

#: A run that retried a stage would take longer than this (the chunk's 5 retries back off 0.5 s, 1 s, 2 s...).
FAST_S = 12.0
BEFORE = [("keep@x.it", "Keep", 1)]


def _no_retry(workers: Any) -> None:
    """No stage message of the test's workers was retried."""
    for log in Path(workers.logdir).glob("worker-*.log"):
        text = log.read_text()
        assert "Retrying message" not in text, text[-3000:]
        assert "Retries exceeded" not in text, text[-3000:]


def _timed_run(module: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    result = run(module)
    return result, time.monotonic() - started


def _module(tenant: str, mode: str, path: str, **source: Any) -> dict[str, Any]:
    if mode == "updater":
        return {"id": f"{tenant}-m", "kind": "updater", "operation_field": "op", "max_error_ratio": 1.0,
                "source": {"path": path, **source}}
    return {"id": f"{tenant}-m", "mode": mode, "max_error_ratio": 1.0, "source": {"path": path, **source}}


def _records(mode: str, rows: list[str]) -> bytes:
    """A CSV of ``email,first_name,points`` rows (an Updater's get the operation I first)."""
    if mode == "updater":
        return ("op,email,first_name,points\n" + "".join(f"I,{r}\n" for r in rows)).encode()
    return ("email,first_name,points\n" + "".join(f"{r}\n" for r in rows)).encode()


def _failed_rows(run_id: int) -> list[dict[str, Any]]:
    with db.connect() as conn:
        return conn.execute("SELECT row_number, key, error_code, error_message, record FROM dx.failed_operations"
                            " WHERE run_id = %s ORDER BY row_number", (run_id,)).fetchall()


@pytest.mark.parametrize("mode", ["overwrite", "append", "upsert", "updater"])
def test_a_nul_byte_in_a_cell_fails_that_record_and_the_rest_imports(mode, cluster_env, sshd, smtp, workers,
                                                                      tmp_path):
    # Given: a file whose second record holds a NUL byte in a name, third in its key
    tenant = f"nul-{mode}"
    path = f"{tenant}/in.csv"
    apply(config(tenant, sshd, [_module(tenant, mode, path)]), tmp_path)
    seed(tenant, BEFORE)
    sshd.put(path, _records(mode, ["a@x.it,Ann,1", "b@x.it,B\x00b,2", "c\x00@x.it,Cy,3", "d@x.it,Dan,4"]))
    workers.start(1)

    # When: it runs
    result, took_s = _timed_run(f"{tenant}-m")

    # Then: those two records failed with INVALID_VALUE, the others are in, at once and without a retry
    assert result["status"] == "completed_with_errors", result["error_message"]
    assert failures(result["id"]) == [(2, "INVALID_VALUE"), (3, "INVALID_VALUE")]
    expected = {"a@x.it": ("Ann", 1, None), "d@x.it": ("Dan", 4, None)}
    assert table(tenant) == (expected if mode == "overwrite" else {**expected, "keep@x.it": ("Keep", 1, None)})
    assert took_s < FAST_S
    _no_retry(workers)
    # and the report keeps each record as received, the NUL shown as U+FFFD, its message naming the field
    rows = _failed_rows(result["id"])
    assert rows[0]["record"]["first_name"] == "B\ufffdb"
    assert "first_name" in rows[0]["error_message"] and "NUL" in rows[0]["error_message"]
    assert rows[1]["key"] == "c\ufffd@x.it"


def test_a_nul_byte_in_the_header_fails_the_run_at_once(cluster_env, sshd, smtp, workers, tmp_path):
    # Given: a header whose second name holds a NUL byte
    tenant = "nul-header"
    path = f"{tenant}/in.csv"
    apply(config(tenant, sshd, [_module(tenant, "append", path)]), tmp_path)
    seed(tenant, BEFORE)
    sshd.put(path, b"email,first\x00name,points\na@x.it,Ann,1\n")
    workers.start(1)

    # When: it runs
    result, took_s = _timed_run(f"{tenant}-m")

    # Then: the run failed with MALFORMED_HEADER, at once, and nothing changed
    assert result["status"] == "failed"
    assert result["error_code"] == "MALFORMED_HEADER", result["error_message"]
    assert "NUL" in result["error_message"]
    assert table(tenant) == {"keep@x.it": ("Keep", 1, None)}
    assert took_s < FAST_S
    _no_retry(workers)


@pytest.mark.parametrize("reference", ["&#0;", "&#x0;", "&#1;"])
def test_an_xml_character_reference_to_nul_fails_the_run_with_a_clean_code(reference, cluster_env, sshd, smtp,
                                                                            workers, tmp_path):
    # Given: an XML document whose second record references a character XML forbids
    tenant = f"xnul-{len(reference)}-{reference[-2]}"
    path = f"{tenant}/in.xml"
    apply(config(tenant, sshd, [_module(tenant, "append", path, format="xml")]), tmp_path)
    seed(tenant, BEFORE)
    sshd.put(path, (f"<dataroot><RECORD><EMAIL>a@x.it</EMAIL></RECORD>"
                    f"<RECORD><EMAIL>b@x.it</EMAIL><FIRST_NAME>B{reference}b</FIRST_NAME></RECORD></dataroot>"
                    ).encode())
    workers.start(1)

    # When: it runs
    result, took_s = _timed_run(f"{tenant}-m")

    # Then: the document is not well-formed: SOURCE_UNREADABLE with its line and column, at once
    assert result["status"] == "failed"
    assert result["error_code"] == "SOURCE_UNREADABLE", result["error_message"]
    assert "line 1" in result["error_message"]
    assert table(tenant) == {"keep@x.it": ("Keep", 1, None)}
    assert took_s < FAST_S
    _no_retry(workers)


@pytest.mark.parametrize("header", [True, False])
def test_a_bom_inside_a_key_fails_its_record_and_the_files_own_bom_is_stripped(header, cluster_env, sshd, smtp,
                                                                               workers, tmp_path):
    # Given: a UTF-8 file that begins with a BOM, and a later key that holds one (two files glued together)
    tenant = f"bom-{'h' if header else 'n'}"
    path = f"{tenant}/in.csv"
    source = {"header": header} if header else {"header": False, "columns": ["email", "first_name", "points"]}
    apply(config(tenant, sshd, [_module(tenant, "append", path, **source)]), tmp_path)
    seed(tenant, BEFORE)
    lines = ["a@x.it,Ann,1", "\ufeffb@x.it,Bob,2", "c\ufeff@x.it,Cy,3", "d@x.it,Dan,4"]
    sshd.put(path, ("\ufeff" + ("email,first_name,points\n" if header else "") + "\n".join(lines) + "\n").encode())
    workers.start(1)

    # When: it runs
    result, took_s = _timed_run(f"{tenant}-m")

    # Then: the keys holding a BOM failed with INVALID_VALUE; the file's own BOM did not reach the first key
    assert result["status"] == "completed_with_errors", result["error_message"]
    assert failures(result["id"]) == [(2, "INVALID_VALUE"), (3, "INVALID_VALUE")]
    assert table(tenant) == {"keep@x.it": ("Keep", 1, None), "a@x.it": ("Ann", 1, None), "d@x.it": ("Dan", 4, None)}
    assert took_s < FAST_S


CONSTRAINTS = ("ALTER TABLE {t} ADD CONSTRAINT points_positive CHECK (points >= 0);"
               " ALTER TABLE {t} ALTER COLUMN first_name SET NOT NULL;"
               " ALTER TABLE {t} ALTER COLUMN first_name TYPE varchar(12)")


@pytest.mark.parametrize("mode", ["append", "upsert", "updater", "overwrite"])
def test_a_record_the_clients_constraints_refuse_fails_alone(mode, cluster_env, sshd, smtp, workers, tmp_path):
    # Given: a contact table the client gave a CHECK, a NOT NULL and a varchar(12), and a file of
    # records of which three break one each (NOT NULL and CHECK only reach the chunks' writes outside
    # an overwrite, which checks them at its swap), the others spread around them
    tenant = f"rule-{mode}"
    path = f"{tenant}/in.csv"
    apply(config(tenant, sshd, [{**_module(tenant, mode, path), "chunk_bytes": 4096}]), tmp_path)
    seed(tenant, BEFORE)
    with db.transaction() as conn:
        conn.execute(CONSTRAINTS.format(t=f'"tenant_{tenant}".contacts'))
    good = [f"k{i}@x.it,Name{i},{i}" for i in range(300)]
    bad = ["neg@x.it,Neg,-5", "noname@x.it,,5", "long@x.it,A name far too long,5"]
    if mode == "overwrite":
        bad = bad[2:]
    rows = good[:100] + bad[:1] + good[100:200] + bad[1:] + good[200:]
    sshd.put(path, _records(mode, rows))
    workers.start(1)

    # When: it runs
    result, took_s = _timed_run(f"{tenant}-m")

    # Then: each refused record failed with RECORD_REFUSED naming the database's reason, the rest applied
    assert result["status"] == "completed_with_errors", result["error_message"]
    refused_rows = [rows.index(b) + 1 for b in bad]
    assert failures(result["id"]) == [(r, "RECORD_REFUSED") for r in refused_rows]
    messages = " ".join(r["error_message"] for r in _failed_rows(result["id"]))
    if mode != "overwrite":
        assert "points_positive" in messages and "first_name" in messages
    assert "character varying(12)" in messages
    expected = {f"k{i}@x.it": (f"Name{i}", i, None) for i in range(300)}
    if mode != "overwrite":
        expected["keep@x.it"] = ("Keep", 1, None)
    assert table(tenant) == expected
    assert result["inserted"] == 300
    assert result["not_inserted"] == len(bad)
    assert took_s < FAST_S * 2
    _no_retry(workers)


def test_an_updater_key_whose_end_state_the_constraints_refuse_applies_its_records_one_by_one(
        cluster_env, sshd, smtp, workers, tmp_path):
    # Given: an Updater over a table with a CHECK, and keys with several operations: z and y end in a
    # state the CHECK takes (a key's records are written as its end state: their way there is not checked),
    # w ends in one it refuses (I 1, then U -1), keep's single U breaks it
    tenant = "rule-upd-seq"
    path = f"{tenant}/in.csv"
    apply(config(tenant, sshd, [_module(tenant, "updater", path)]), tmp_path)
    seed(tenant, BEFORE)
    with db.transaction() as conn:
        conn.execute(f'ALTER TABLE "tenant_{tenant}".contacts ADD CONSTRAINT points_positive CHECK (points >= 0)')
    sshd.put(path, b"op,email,first_name,points\nI,z@x.it,Z,1\nU,z@x.it,Z,-1\nU,z@x.it,Zed,2\nU,keep@x.it,K,-3\n"
                   b"I,y@x.it,Y,-1\nU,y@x.it,Y,5\nI,w@x.it,W,1\nU,w@x.it,W,-1\nD,v@x.it,,\n")
    workers.start(1)

    # When: it runs
    result, took_s = _timed_run(f"{tenant}-m")

    # Then: keep's U and w's U failed with RECORD_REFUSED (w's I applied, alone); the others applied in order
    assert result["status"] == "completed_with_errors", result["error_message"]
    assert failures(result["id"]) == [(4, "RECORD_REFUSED"), (8, "RECORD_REFUSED"), (9, "KEY_NOT_FOUND")]
    assert table(tenant) == {"keep@x.it": ("Keep", 1, None), "z@x.it": ("Zed", 2, None), "y@x.it": ("Y", 5, None),
                             "w@x.it": ("W", 1, None)}
    assert [result[c] for c in ("inserted", "updated", "deleted", "not_inserted", "not_updated", "not_deleted")] \
        == [3, 3, 0, 0, 2, 1]
    assert "points_positive" in _failed_rows(result["id"])[1]["error_message"]
    assert took_s < FAST_S
    _no_retry(workers)


def test_a_rule_every_record_breaks_fails_the_run_at_once(cluster_env, sshd, smtp, workers, tmp_path):
    # Given: an append over a table whose CHECK all 150 records of the file break
    tenant = "rule-all"
    path = f"{tenant}/in.csv"
    apply(config(tenant, sshd, [_module(tenant, "append", path)]), tmp_path)
    seed(tenant, BEFORE)
    with db.transaction() as conn:
        conn.execute(f'ALTER TABLE "tenant_{tenant}".contacts ADD CONSTRAINT points_positive CHECK (points >= 0)')
    sshd.put(path, _records("append", [f"k{i}@x.it,K,-{i + 1}" for i in range(150)]))
    workers.start(1)

    # When: it runs
    result, took_s = _timed_run(f"{tenant}-m")

    # Then: the run failed with DATA_REFUSED naming the rule, at once, and nothing was added
    assert result["status"] == "failed"
    assert result["error_code"] == "DATA_REFUSED", result["error_message"]
    assert "points_positive" in result["error_message"]
    assert table(tenant) == {"keep@x.it": ("Keep", 1, None)}
    assert took_s < FAST_S
    _no_retry(workers)


#: The documented limit of one record.
RECORD_LIMIT = 16 * 1024 * 1024


@pytest.mark.parametrize("mode", ["append", "overwrite"])
def test_a_record_of_16_mib_imports_and_a_larger_one_fails_alone(mode, cluster_env, sshd, smtp, workers, tmp_path):
    # Given: a CSV whose second record is just under the limit (a quoted value with line breaks) and
    # fourth just over it, among small ones
    tenant = f"big-{mode}"
    path = f"{tenant}/in.csv"
    apply(config(tenant, sshd, [_module(tenant, mode, path)]), tmp_path)
    seed(tenant, BEFORE)
    big = ("x" * 1023 + "\n") * (RECORD_LIMIT // 1024 - 1)
    huge = "y" * (RECORD_LIMIT + 1024 * 1024)
    data = f'email,first_name,points\na@x.it,Ann,1\nbig@x.it,"{big}",2\nc@x.it,Cy,3\nhuge@x.it,{huge},4\nd@x.it,D,5\n'
    sshd.put(path, data.encode())
    workers.start(1)

    # When: it runs
    result, took_s = _timed_run(f"{tenant}-m")

    # Then: the 16 MiB record is in whole, the larger one failed with RECORD_TOO_LARGE, the rest is in
    assert result["status"] == "completed_with_errors", result["error_message"]
    assert failures(result["id"]) == [(4, "RECORD_TOO_LARGE")]
    with db.connect() as conn:
        got = conn.execute(f'SELECT email, length(first_name) AS n, first_name = %s AS same'  # noqa: S608
                           f' FROM "tenant_{tenant}".contacts ORDER BY email', (big,)).fetchall()
    keys = {r["email"]: r["n"] for r in got}
    assert keys["big@x.it"] == len(big) and next(r["same"] for r in got if r["email"] == "big@x.it")
    assert set(keys) == {"a@x.it", "big@x.it", "c@x.it", "d@x.it"} | ({"keep@x.it"} if mode == "append" else set())
    message = _failed_rows(result["id"])[0]["error_message"]
    assert "16 MiB" in message
    _no_retry(workers)
    assert took_s < 120


def test_an_xml_record_of_several_mib_imports_and_a_longer_value_fails_the_run_clearly(cluster_env, sshd, smtp,
                                                                                       workers, tmp_path):
    # Given: an XML document with a record of two 6 MiB values (libxml2 takes up to 10 MB per value)
    tenant = "big-xml"
    path = f"{tenant}/in.xml"
    apply(config(tenant, sshd, [_module(tenant, "append", path, format="xml")]), tmp_path)
    seed(tenant, BEFORE)
    big = "x" * (6 * 1024 * 1024)
    sshd.put(path, (f"<dataroot><RECORD><EMAIL>a@x.it</EMAIL></RECORD><RECORD><EMAIL>big@x.it</EMAIL>"
                    f"<FIRST_NAME>{big}</FIRST_NAME><NOTE>{big}</NOTE><POINTS>2</POINTS></RECORD></dataroot>").encode())
    workers.start(1)

    # When: it runs
    result = run(f"{tenant}-m")

    # Then: the record is in, whole
    assert result["status"] == "completed", result["error_message"]
    with db.connect() as conn:
        n = conn.execute(f'SELECT length(first_name) AS n FROM "tenant_{tenant}".contacts'  # noqa: S608
                         " WHERE email = 'big@x.it'").fetchone()
    assert n is not None and n["n"] == len(big)
    assert set(table(tenant)) == {"keep@x.it", "a@x.it", "big@x.it"}

    # Given: then a value longer than 10 MB
    sshd.put(path, (f"<dataroot><RECORD><EMAIL>c@x.it</EMAIL><FIRST_NAME>{'y' * 10_000_001}</FIRST_NAME>"
                    "</RECORD></dataroot>").encode())
    # When: it runs, Then: the run fails at once, saying the value is longer than the limit
    result, took_s = _timed_run(f"{tenant}-m")
    assert result["status"] == "failed"
    assert result["error_code"] == "SOURCE_UNREADABLE"
    assert "longer than 10,000,000 bytes" in result["error_message"]
    assert took_s < FAST_S
    _no_retry(workers)


def test_the_failed_records_report_carries_a_nul_records_fields(cluster_env, sshd, smtp, workers, tmp_path):
    # Given: a failed record holding a NUL, in a column no field maps to (it still is in the report)
    tenant = "nul-report"
    path = f"{tenant}/in.csv"
    apply(config(tenant, sshd, [{**_module(tenant, "append", path), "unknown_columns": "ignore"}]), tmp_path)
    seed(tenant, BEFORE)
    sshd.put(path, b"email,first_name,points,note\na@x.it,Ann,x,n\x00te\nb@x.it,Bob,2,fine\n")
    workers.start(1)

    # When: it runs
    result, took_s = _timed_run(f"{tenant}-m")

    # Then: the record failed for its points; its note is in the report, the NUL shown as U+FFFD
    assert failures(result["id"]) == [(1, "INVALID_VALUE")]
    record = _failed_rows(result["id"])[0]["record"]
    assert json.dumps(record) and record["note"] == "n\ufffdte"
    assert set(table(tenant)) == {"keep@x.it", "b@x.it"}
    assert took_s < FAST_S
    _no_retry(workers)
