"""The client's PostgreSQL as a source: incremental reads by watermark, read-only, timeouts, logins.

"The client's" server is a private PostgreSQL started for the session (its own
data folder and port, scram-sha-256 logins): the connection's password goes
through the ${ENV_VAR} secret path and a wrong one is really refused.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from dx.shared import db
from tests.integration.conftest import free_port
from tests.integration.helpers import FIELDS, apply, failures, run, table

pytestmark = pytest.mark.timeout(120)
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


@dataclass
class ClientPg:
    """The client's server: where it listens and the owner's DSN (for the test's own changes)."""

    port: int
    admin_dsn: str
    password_env: str


def _as_postgres(*args: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def client_pg() -> Iterator[ClientPg]:
    """A private PostgreSQL with database `crm`, role `crm` (password in $DX_TEST_CRM_PASSWORD)
    owning table crm.contacts and a function that writes."""
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        pytest.fail("PostgreSQL's server binaries are missing (/usr/lib/postgresql/*/bin): run scripts/services.sh")
    bindir = Path(initdbs[-1]).parent
    work = Path(tempfile.mkdtemp(prefix="dx-clientpg-"))
    shutil.chown(work, "postgres", "postgres")
    admin_pw, crm_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    (work / "pw").write_text(admin_pw)
    shutil.chown(work / "pw", "postgres", "postgres")
    port = free_port()
    _as_postgres(str(bindir / "initdb"), "-D", str(work / "data"), "-U", "postgres", "--auth=scram-sha-256",
                 f"--pwfile={work / 'pw'}", "-E", "UTF8", "--no-sync")
    _as_postgres(str(bindir / "pg_ctl"), "-D", str(work / "data"), "-l", str(work / "log"), "-w", "start", "-o",
                 f"-p {port} -k {work} -c listen_addresses=127.0.0.1 -c fsync=off")
    admin = f"postgresql://postgres:{admin_pw}@127.0.0.1:{port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE crm LOGIN PASSWORD '{crm_pw}'")
        conn.execute("CREATE DATABASE crm OWNER crm")
    os.environ["DX_TEST_CRM_PASSWORD"] = crm_pw
    crm = f"postgresql://crm:{crm_pw}@127.0.0.1:{port}/crm"
    with psycopg.connect(crm, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA crm")
        conn.execute("CREATE TABLE crm.contacts (email text, first_name text, points int, changed_at timestamptz)")
        conn.execute("CREATE FUNCTION crm.touch() RETURNS int LANGUAGE sql AS"
                     " $$ INSERT INTO crm.contacts (email) VALUES ('written@x.it') RETURNING 1 $$")
    try:
        yield ClientPg(port, crm, "DX_TEST_CRM_PASSWORD")
    finally:
        os.environ.pop("DX_TEST_CRM_PASSWORD", None)
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D", str(work / "data"),
                        "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def _configure(tmp_path: Path, client: ClientPg, tenant: str, source: dict[str, Any], *, mode: str = "upsert",
               password: str = "${DX_TEST_CRM_PASSWORD}", port: int | None = None) -> str:
    conn = {"id": f"{tenant}-crm", "tenant": tenant, "type": "postgres", "host": "127.0.0.1",
            "port": port or client.port, "dbname": "crm", "username": "crm", "password": password,
            "sslmode": "disable", "timeout_s": 3}
    module = {"id": f"{tenant}-pull", "tenant": tenant, "kind": "importer", "database": "contacts", "mode": mode,
              "source": {"connection": f"{tenant}-crm", **source}}
    apply(yaml.safe_dump({"tenants": [{"id": tenant}], "connections": [conn],
                          "databases": [{"id": "contacts", "tenant": tenant, "primary_key": "email", "fields": FIELDS}],
                          "modules": [module]}), tmp_path)
    return str(module["id"])


def _client(client: ClientPg, statement: str, rows: Sequence[tuple[Any, ...]] = ()) -> None:
    """Run a statement on the client's database as its owner (once per row, when rows are given)."""
    with psycopg.connect(client.admin_dsn, autocommit=True) as conn:
        if rows:
            conn.cursor().executemany(statement, rows)
        else:
            conn.execute(statement)


def _watermark(module: str) -> str | None:
    with db.connect() as conn:
        row = conn.execute("SELECT value FROM dx.source_watermarks WHERE module = %s", (module,)).fetchone()
    return row["value"] if row else None


INSERT = "INSERT INTO crm.contacts (email, first_name, points, changed_at) VALUES (%s, %s, %s, %s)"


def test_a_watermark_reads_only_new_rows_and_a_failed_run_does_not_move_it(cluster_env, client_pg, workers,
                                                                           tmp_path):
    # Given: the client's table with 5 rows (one with a bad number), and an upsert module on its watermark
    _client(client_pg, "TRUNCATE crm.contacts")
    _client(client_pg, INSERT, [(f"c{i}@x.it", f"N{i}", i if i != 3 else None, T0 + timedelta(minutes=i))
                                for i in range(5)])
    _client(client_pg, "UPDATE crm.contacts SET first_name = 'Zoë', points = NULL WHERE email = 'c4@x.it'")
    module = _configure(tmp_path, client_pg, "pgw", {"table": "crm.contacts", "watermark": "changed_at"})
    workers.start(1)

    # When: the first run reads the table
    first = run(module)

    # Then: every row is in, and the module's watermark is the newest row's time
    assert first["status"] == "completed", first["error_message"]
    assert (first["rows_read"], first["inserted"]) == (5, 5)
    assert table("pgw")["c4@x.it"] == ("Zoë", None, None)
    assert datetime.fromisoformat(_watermark(module) or "") == T0 + timedelta(minutes=4)

    # When: two rows are added and one is changed, then a second run reads
    _client(client_pg, INSERT, [("c5@x.it", "N5", 5, T0 + timedelta(hours=1)),
                                ("c6@x.it", "N6", 6, T0 + timedelta(hours=1, microseconds=250))])
    _client(client_pg, "UPDATE crm.contacts SET points = 100, changed_at = '2026-11-01 09:30+00' WHERE email = 'c0@x.it'")
    second = run(module)

    # Then: only those three rows are read (the watermark keeps microseconds)
    assert second["status"] == "completed", second["error_message"]
    assert (second["rows_read"], second["inserted"], second["updated"]) == (3, 2, 1)
    assert table("pgw")["c0@x.it"] == ("N0", 100, None)
    assert datetime.fromisoformat(_watermark(module) or "") == datetime(2026, 11, 1, 9, 30, tzinfo=UTC)

    # When: a run finds nothing new
    idle = run(module)
    # Then: it completes with 0 rows
    assert (idle["status"], idle["rows_read"]) == ("completed", 0)

    # When: a new row comes, but the run fails after reading it (the key column was renamed)
    _client(client_pg, INSERT, [("c7@x.it", "N7", 7, T0 + timedelta(hours=2))])
    _client(client_pg, "ALTER TABLE crm.contacts RENAME COLUMN email TO mail")
    failed = run(module)
    # Then: the run failed having read past the watermark, and the module's watermark did not move
    assert (failed["status"], failed["error_code"]) == ("failed", "MISSING_REQUIRED_COLUMN")
    assert failed["source_watermark"] is not None
    assert datetime.fromisoformat(_watermark(module) or "") == datetime(2026, 11, 1, 9, 30, tzinfo=UTC)

    # When: the column is back and the next run reads
    _client(client_pg, "ALTER TABLE crm.contacts RENAME COLUMN mail TO email")
    again = run(module)
    # Then: it gets the row the failed run did not deliver
    assert (again["status"], again["rows_read"], again["inserted"]) == ("completed", 1, 1)
    assert "c7@x.it" in table("pgw")
    assert failures(again["id"]) == []


@pytest.mark.parametrize("query, says", [
    # a write the query shows is refused as it is read (the query is only ever a subquery)
    ("WITH gone AS (DELETE FROM crm.contacts RETURNING *) SELECT * FROM gone", "data-modifying"),
    # a write hidden in a function is refused by the read-only transaction
    ("SELECT *, crm.touch() AS t FROM crm.contacts", "read-only transaction"),
], ids=["delete-in-cte", "writing-function"])
def test_a_query_that_writes_is_refused(cluster_env, client_pg, workers, tmp_path, query, says):
    # Given: a query that would delete or insert rows, through a role that may write
    _client(client_pg, "TRUNCATE crm.contacts")
    _client(client_pg, INSERT, [("keep@x.it", "Keep", 1, T0)])
    module = _configure(tmp_path, client_pg, "pgro", {"query": query})
    workers.start(1)

    # When: it runs
    result = run(module)

    # Then: the run fails with SOURCE_QUERY_FAILED saying why, and nothing changed
    assert (result["status"], result["error_code"]) == ("failed", "SOURCE_QUERY_FAILED")
    assert says in result["error_message"]
    with psycopg.connect(client_pg.admin_dsn) as conn:
        assert conn.execute("SELECT email FROM crm.contacts").fetchall() == [("keep@x.it",)]


def test_a_query_beyond_its_timeout_fails_the_run(cluster_env, client_pg, workers, tmp_path):
    # Given: a query that sleeps 3 s, with timeout_s 0.5
    module = _configure(tmp_path, client_pg, "pgslow",
                        {"query": "SELECT email, pg_sleep(3) AS z FROM crm.contacts", "timeout_s": 0.5})
    _client(client_pg, "TRUNCATE crm.contacts")
    _client(client_pg, INSERT, [("slow@x.it", "S", 1, T0)])
    workers.start(1)
    # When: it runs
    result = run(module)
    # Then: the statement timeout ended it
    assert (result["status"], result["error_code"]) == ("failed", "SOURCE_QUERY_FAILED")
    assert "timeout_s" in result["error_message"]


def test_a_query_column_that_maps_to_no_field_is_a_warning_but_the_watermark_column_is_not(
        cluster_env, client_pg, workers, tmp_path):
    # Given: a query whose first_name is aliased to a misspelled name, read by its watermark column
    # changed_at (no field of the database), with unknown_columns left at warn
    _client(client_pg, "TRUNCATE crm.contacts")
    _client(client_pg, INSERT, [("q@x.it", "Q", 1, T0)])
    module = _configure(tmp_path, client_pg, "pgunknown", {
        "query": "SELECT email, first_name AS frist_name, points, changed_at FROM crm.contacts",
        "watermark": "changed_at"})
    workers.start(1)

    # When: it runs
    result = run(module)

    # Then: it completed without first_name, and its one warning names the misspelled column only
    assert result["status"] == "completed", result["error_message"]
    assert table("pgunknown") == {"q@x.it": (None, 1, None)}
    assert result["warnings"] == [{"code": "UNKNOWN_COLUMN", "message": "column frist_name maps to no field of "
                                   "database contacts; it was not imported"}]


def test_a_wrong_password_and_an_unreachable_server_have_their_codes(cluster_env, client_pg, workers, tmp_path,
                                                                      monkeypatch):
    # Given: one module whose secret holds a wrong password, one pointing at a closed port
    monkeypatch.setenv("DX_TEST_CRM_WRONG", "not-the-password")
    wrong = _configure(tmp_path, client_pg, "pgauth", {"table": "crm.contacts"}, password="${DX_TEST_CRM_WRONG}")
    closed = _configure(tmp_path, client_pg, "pgdown", {"table": "crm.contacts"}, port=free_port())
    workers.start(1)

    # When: both run
    refused, unreachable = run(wrong), run(closed)

    # Then: AUTHENTICATION_FAILED and CONNECTION_FAILED, and the password is in no message
    assert (refused["status"], refused["error_code"]) == ("failed", "AUTHENTICATION_FAILED")
    assert (unreachable["status"], unreachable["error_code"]) == ("failed", "CONNECTION_FAILED")
    for result in (refused, unreachable):
        assert "not-the-password" not in result["error_message"]
        assert os.environ["DX_TEST_CRM_PASSWORD"] not in result["error_message"]
