"""The client's PostgreSQL as a source: incremental reads by watermark, read-only, one statement,
timeouts, logins, TLS, internal hosts, and a hostile server's messages.

"The client's" server is a private PostgreSQL started for the session (its own
data folder and port, scram-sha-256 logins, no TLS): the connection's password
goes through the ${DX_SECRET_NAME} secret path and a wrong one is really
refused. It listens on loopback, which the test harness trusts
(DX_TRUSTED_HOSTS), so the connections set ``sslmode: disable`` explicitly.
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

from dx.cli import main
from dx.devkit.cluster import Workers
from dx.scheduler.tokens import create_token
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
    """A private PostgreSQL with database `crm`, role `crm` (password in $DX_SECRET_TEST_CRM_PASSWORD)
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
    os.environ["DX_SECRET_TEST_CRM_PASSWORD"] = crm_pw
    crm = f"postgresql://crm:{crm_pw}@127.0.0.1:{port}/crm"
    with psycopg.connect(crm, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA crm")
        conn.execute("CREATE TABLE crm.contacts (email text, first_name text, points int, changed_at timestamptz)")
        conn.execute("CREATE FUNCTION crm.touch() RETURNS int LANGUAGE sql AS"
                     " $$ INSERT INTO crm.contacts (email) VALUES ('written@x.it') RETURNING 1 $$")
    try:
        yield ClientPg(port, crm, "DX_SECRET_TEST_CRM_PASSWORD")
    finally:
        os.environ.pop("DX_SECRET_TEST_CRM_PASSWORD", None)
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D", str(work / "data"),
                        "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def _configure(tmp_path: Path, client: ClientPg, tenant: str, source: dict[str, Any], *, mode: str = "upsert",
               password: str = "${DX_SECRET_TEST_CRM_PASSWORD}", port: int | None = None,
               sslmode: str | None = "disable", notify: Sequence[str] = ()) -> str:
    """Tenant, its postgres connection (``sslmode`` None: left out), database ``contacts`` and module
    ``TENANT-pull`` reading ``source``; returns the module's id."""
    conn = {"id": f"{tenant}-crm", "tenant": tenant, "type": "postgres", "host": "127.0.0.1",
            "port": port or client.port, "dbname": "crm", "username": "crm", "password": password,
            "timeout_s": 3, **({"sslmode": sslmode} if sslmode else {})}
    module = {"id": f"{tenant}-pull", "tenant": tenant, "kind": "importer", "database": "contacts", "mode": mode,
              "source": {"connection": f"{tenant}-crm", **source}}
    apply(yaml.safe_dump({"tenants": [{"id": tenant, "notify": list(notify)}], "connections": [conn],
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
    ("WITH gone AS (DELETE FROM crm.contacts RETURNING *) SELECT * FROM gone",
     "something the server does not do there (a write inside the query?) (SQLSTATE 0A000 feature_not_supported)"),
    # a write hidden in a function is refused by the read-only transaction
    ("SELECT *, crm.touch() AS t FROM crm.contacts",
     "a write refused by the read-only transaction (SQLSTATE 25006 read_only_sql_transaction)"),
    # a query that closes the subquery it runs in, ends the read-only transaction and writes: one statement only
    ("SELECT * FROM crm.contacts) AS a; COMMIT; DELETE FROM crm.contacts; CREATE TABLE crm.evil (x int);"
     " SELECT * FROM (SELECT * FROM crm.contacts",
     "the query does not parse as one SELECT statement (SQLSTATE 42601 syntax_error)"),
], ids=["delete-in-cte", "writing-function", "stacked-statements"])
def test_a_query_that_writes_is_refused(cluster_env, client_pg, workers, tmp_path, query, says):
    # Given: a query that would delete or insert rows, through a role that may write
    _client(client_pg, "TRUNCATE crm.contacts")
    _client(client_pg, INSERT, [("keep@x.it", "Keep", 1, T0)])
    module = _configure(tmp_path, client_pg, "pgro", {"query": query})
    workers.start(1)

    # When: it runs
    result = run(module)

    # Then: the run fails with SOURCE_QUERY_FAILED, nothing changed, and the message says why
    assert (result["status"], result["error_code"]) == ("failed", "SOURCE_QUERY_FAILED")
    with psycopg.connect(client_pg.admin_dsn) as conn:
        assert conn.execute("SELECT email FROM crm.contacts").fetchall() == [("keep@x.it",)]
        assert conn.execute("SELECT to_regclass('crm.evil')").fetchone() == (None,)
    assert result["error_message"] == f"the source could not be read: {says}"


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
    monkeypatch.setenv("DX_SECRET_TEST_CRM_WRONG", "not-the-password")
    wrong = _configure(tmp_path, client_pg, "pgauth", {"table": "crm.contacts"}, password="${DX_SECRET_TEST_CRM_WRONG}")
    closed = _configure(tmp_path, client_pg, "pgdown", {"table": "crm.contacts"}, port=free_port())
    workers.start(1)

    # When: both run
    refused, unreachable = run(wrong), run(closed)

    # Then: AUTHENTICATION_FAILED and CONNECTION_FAILED, and the password is in no message
    assert (refused["status"], refused["error_code"]) == ("failed", "AUTHENTICATION_FAILED")
    assert (unreachable["status"], unreachable["error_code"]) == ("failed", "CONNECTION_FAILED")
    for result in (refused, unreachable):
        assert "not-the-password" not in result["error_message"]
        assert os.environ["DX_SECRET_TEST_CRM_PASSWORD"] not in result["error_message"]


@pytest.mark.parametrize("sslmode", [None, "require", "verify-ca"])
def test_a_server_without_tls_is_refused_by_default_before_the_password_is_sent(cluster_env, client_pg, workers,
                                                                                tmp_path, sslmode):
    # Given: the client's server offers no TLS, and a connection that leaves sslmode out (verify-full) or asks
    # for TLS without checking the certificate, or checking only its CA
    module = _configure(tmp_path, client_pg, "pgtls", {"table": "crm.contacts"}, sslmode=sslmode)
    workers.start(1)

    # When: it runs
    result = run(module)

    # Then: TLS_REQUIRED, saying nothing was sent
    assert (result["status"], result["error_code"]) == ("failed", "TLS_REQUIRED")
    assert result["error_message"] == (f"127.0.0.1:{client_pg.port}/crm: the server does not offer TLS, and sslmode "
                                       f"{sslmode or 'verify-full'} requires it: nothing was sent")


def test_an_internal_host_is_refused_unless_the_platform_trusts_it(cluster_env, client_pg, tmp_path, capsys):
    # Given: a connection to the client's server on loopback, applied where the platform trusts loopback
    module = _configure(tmp_path, client_pg, "pgtrust", {"table": "crm.contacts"})
    # When: it runs on workers of a platform that trusts no internal host
    untrusting = Workers({**cluster_env, "DX_TRUSTED_HOSTS": ""}, tmp_path)
    untrusting.start(1)
    try:
        result = run(module)
    finally:
        untrusting.stop_all()
    # Then: HOST_NOT_ALLOWED, saying the platform must trust it
    assert (result["status"], result["error_code"]) == ("failed", "HOST_NOT_ALLOWED")
    assert result["error_message"] == ("127.0.0.1 is a loopback address: nothing was sent to it; tenant connections "
                                       "reach public addresses only; if it really is the client's server, the "
                                       "platform's operator must list it in DX_TRUSTED_HOSTS")

    # When: `dx apply` is given connections to the cloud metadata service and to a private address
    metadata = yaml.safe_dump({"connections": [
        {"id": "pgtrust-meta", "tenant": "pgtrust", "type": "postgres", "host": "169.254.169.254", "dbname": "x",
         "username": "x", "password": "${DX_SECRET_X}"},
        {"id": "pgtrust-lan", "tenant": "pgtrust", "type": "sftp", "host": "10.1.2.3", "username": "x",
         "password": "${DX_SECRET_X}", "host_key": "ssh-ed25519 AAAA", "root": "/x"}]})
    (tmp_path / "meta.yaml").write_text(metadata)
    capsys.readouterr()
    # Then: it refuses both, naming each host's field (exit code 2), and stores neither
    assert main(["apply", "-f", str(tmp_path / "meta.yaml")]) == 2
    err = capsys.readouterr().err
    assert "dx: connections[0].host: 169.254.169.254 is a link-local address: " in err
    assert "dx: connections[1].host: 10.1.2.3 is a private address: " in err
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) AS n FROM dx.connections WHERE id LIKE 'pgtrust-%%'").fetchone()["n"] == 1


def test_a_hostile_server_s_message_echoing_the_password_reaches_no_one(cluster_env, client_pg, workers, api, smtp,
                                                                       tmp_path, capsys):
    # Given: the client's server raises, from a function the query calls, an error whose message, detail,
    # hint and fields all hold the connection's password
    password = os.environ[client_pg.password_env]
    _client(client_pg, "TRUNCATE crm.contacts")
    _client(client_pg, INSERT, [("leak@x.it", "L", 1, T0)])
    said = f"'password {password}'"
    _client(client_pg, "CREATE OR REPLACE FUNCTION crm.leak() RETURNS int LANGUAGE plpgsql AS $$ BEGIN"
                       f" RAISE EXCEPTION USING MESSAGE = {said}, DETAIL = {said}, HINT = {said}, COLUMN = {said},"
                       f" TABLE = {said}, SCHEMA = {said}, CONSTRAINT = {said}; END $$")
    module = _configure(tmp_path, client_pg, "pgleak", {"query": "SELECT email, crm.leak() AS points FROM crm.contacts"},
                        notify=["ops@pgleak.example"])
    workers.start(1)

    # When: it runs
    result = run(module)

    # Then: the run fails with SOURCE_QUERY_FAILED told by the SQLSTATE
    assert (result["status"], result["error_code"]) == ("failed", "SOURCE_QUERY_FAILED")
    assert result["error_message"] == ("the source could not be read: an exception raised by a function it calls "
                                       "(SQLSTATE P0001 raise_exception)")
    # and the password is in none of the run's record, `dx show`, the API's run, the e-mail, the logs
    with db.connect() as conn:
        row = conn.execute("SELECT * FROM dx.runs WHERE id = %s", (result["id"],)).fetchone()
    seen = {"run row": str(row)}
    capsys.readouterr()
    assert main(["show", str(result["id"])]) == 0
    assert main(["show", str(result["id"]), "--json"]) == 0
    seen["dx show"] = capsys.readouterr().out
    with db.transaction() as conn:
        token = create_token(conn, "pgleak", "pytest")[1]
    with api.client(token) as client:
        seen["api"] = client.get(f"/api/v1/runs/{result['id']}").text
    assert "P0001" in seen["api"] and "P0001" in seen["dx show"]
    mail = smtp.wait_for(lambda m: f"(run {result['id']})" in m["Subject"])
    seen["e-mail"] = mail["Subject"] + "".join(part.get_payload(decode=True).decode() for part in mail.walk()
                                               if not part.is_multipart())
    assert "SQLSTATE P0001" in seen["e-mail"]
    seen |= {log.name: log.read_text() for log in [*tmp_path.glob("worker-*.log"), api.log]}
    assert len(seen) >= 6
    assert [where for where, text in seen.items() if password in text] == []
