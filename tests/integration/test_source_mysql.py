"""The client's MySQL or MariaDB as a source: values of every type, queries, the Updater, incremental
reads by watermark, read-only, timeouts, logins, and 1,000,000 rows in bounded memory.

"The client's" server is the MariaDB that runs on this machine (scripts/services.sh starts it): the
session makes a database and a user of its own (with a random password, through the ${DX_SECRET_NAME}
secret path) and drops them at the end. The user may write, so that read-only is shown by the server's
refusal. The server offers no TLS and listens on loopback, which the test harness trusts
(DX_TRUSTED_HOSTS), so the connections set ``sslmode: disable`` explicitly.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysql
import pytest
import yaml

from dx.devkit.generate import contacts
from dx.shared import db
from tests.integration.conftest import free_port
from tests.integration.helpers import apply, failures, run

pytestmark = pytest.mark.timeout(120)
T0 = datetime(2026, 11, 1, 8, 0)  # noqa: DTZ001 - a DATETIME column has no time zone
#: The fields of the test's contact databases: one per column of the client's table.
FIELDS = {"email": {"type": "email", "required": True}, "first_name": "text", "points": "int",
          "birth_date": "date", "score": "decimal", "active": "bool", "photo": "text", "note": "text",
          "seen_at": "timestamp", "changed_at": "timestamp", "seq": "int"}
COLUMNS = tuple(FIELDS)
INSERT = f"INSERT INTO contacts ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"  # noqa: S608
#: 2**60: a BIGINT that a double cannot tell from its neighbours.
BIG = 1 << 60


@dataclass
class ClientMy:
    """The client's database and user (its password in the environment variable ``password_env``)."""

    dbname: str
    user: str
    password_env: str


def _admin(database: str | None = None, **options: Any) -> Any:
    """A connection as MariaDB's root (no password on loopback), autocommit."""
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=database,
                           autocommit=True, **options)


@pytest.fixture(scope="session")
def client_mysql() -> Iterator[ClientMy]:
    """Database and user ``dx_crm_<pid>`` (password in $DX_SECRET_TEST_MY_PASSWORD) with table ``contacts``
    and a function that writes."""
    try:
        conn = _admin()
    except pymysql.err.OperationalError as exc:
        pytest.fail(f"MariaDB is not reachable on 127.0.0.1:3306 ({exc}): run scripts/services.sh")
    name, password = f"dx_crm_{os.getpid()}", secrets.token_urlsafe(12)
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        cur.execute("DROP USER IF EXISTS %s@'127.0.0.1'", (name,))
        cur.execute("CREATE USER %s@'127.0.0.1' IDENTIFIED BY %s", (name, password))
        cur.execute(f"GRANT ALL ON `{name}`.* TO %s@'127.0.0.1'", (name,))
        cur.execute(f"CREATE TABLE `{name}`.contacts (email VARCHAR(100) PRIMARY KEY, first_name VARCHAR(50),"
                    " points INT, birth_date DATE, score DECIMAL(10,2), active TINYINT(1), photo VARBINARY(8),"
                    " note TEXT CHARACTER SET latin1, seen_at TIMESTAMP(3) NULL, changed_at DATETIME(6),"
                    " seq BIGINT UNSIGNED)")
        cur.execute(f"CREATE FUNCTION `{name}`.touch() RETURNS INT MODIFIES SQL DATA BEGIN"  # noqa: S608
                    " INSERT INTO contacts (email) VALUES ('written@x.it'); RETURN 1; END")
    os.environ["DX_SECRET_TEST_MY_PASSWORD"] = password
    try:
        yield ClientMy(name, name, "DX_SECRET_TEST_MY_PASSWORD")
    finally:
        os.environ.pop("DX_SECRET_TEST_MY_PASSWORD", None)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute("DROP USER IF EXISTS %s@'127.0.0.1'", (name,))
        conn.close()


def _configure(tmp_path: Path, client: ClientMy, tenant: str, modules: dict[str, dict[str, Any]], *,
               password: str = "${DX_SECRET_TEST_MY_PASSWORD}", port: int = 3306, sslmode: str | None = "disable",
               fields: dict[str, Any] | None = None) -> None:
    """Tenant, its mysql connection (``sslmode`` None: left out), database ``contacts``, and modules {id:
    module options with a ``source`` whose connection is filled in; an importer in upsert mode unless they say}."""
    conn = {"id": f"{tenant}-crm", "tenant": tenant, "type": "mysql", "host": "127.0.0.1", "port": port,
            "dbname": client.dbname, "username": client.user, "password": password, "timeout_s": 3,
            **({"sslmode": sslmode} if sslmode else {})}
    mods = [{"id": mid, "tenant": tenant, "database": "contacts", "kind": "importer",
             **({"mode": "upsert"} if m.get("kind", "importer") == "importer" else {}), **m,
             "source": {"connection": f"{tenant}-crm", **m["source"]}} for mid, m in modules.items()]
    apply(yaml.safe_dump({"tenants": [{"id": tenant}], "connections": [conn],
                          "databases": [{"id": "contacts", "tenant": tenant, "primary_key": "email",
                                         "fields": fields or FIELDS}],
                          "modules": mods}), tmp_path)


def _client(client: ClientMy, statement: str, rows: Sequence[Sequence[Any]] = (), *,
            time_zone: str = "+00:00") -> None:
    """Run a statement on the client's database as root (once per row, when rows are given)."""
    conn = _admin(client.dbname, init_command=f"SET time_zone = '{time_zone}'")
    try:
        with conn.cursor() as cur:
            if rows:
                cur.executemany(statement, rows)
            else:
                cur.execute(statement)
    finally:
        conn.close()


def _contacts(tenant: str) -> dict[str, dict[str, Any]]:
    """The tenant's contact table as {email: row}."""
    with db.connect() as conn:
        rows = conn.execute(f'SELECT * FROM "tenant_{tenant}".contacts').fetchall()  # noqa: S608
    return {r["email"]: {k: v for k, v in r.items() if k in FIELDS} for r in rows}


def _watermark(module: str) -> str | None:
    with db.connect() as conn:
        row = conn.execute("SELECT value FROM dx.source_watermarks WHERE module = %s", (module,)).fetchone()
    return row["value"] if row else None


def _row(email: str, first_name: str | None, points: int | None, changed_at: datetime,
         seq: int | None = None) -> tuple[Any, ...]:
    """A row of the client's table with the columns the watermark tests look at."""
    return (email, first_name, points, None, None, None, None, None, None, changed_at, seq)


def test_every_type_arrives_as_its_value_and_null_as_null(cluster_env, client_mysql, workers, tmp_path):
    # Given: a row with a value of every kind (text with a quote, comma and line break, a negative number,
    # exact decimal, tinyint(1), binary, latin1 text, a TIMESTAMP written at +02:00, microseconds, a
    # BIGINT past 2**53) and a row of NULLs and an empty string, read as a table
    _client(client_mysql, "DELETE FROM contacts")
    _client(client_mysql, INSERT, [
        ("zoe@x.it", 'Zoë "Z", the\nfirst', -7, "1980-02-29", "12.50", 1, b"\x00\xff\x10", "àè",
         "2026-06-01 12:00:00.5", "2026-11-01 08:00:00.000250", BIG + 1),
        ("null@x.it", "", None, None, None, 0, None, None, None, None, None),
    ], time_zone="+02:00")
    _configure(tmp_path, client_mysql, "myall", {"myall-pull": {"source": {"table": "contacts"}}})
    workers.start(1)

    # When: it is imported
    result = run("myall-pull")

    # Then: both rows are in, each value as the client's table holds it
    assert result["status"] == "completed", result["error_message"]
    assert (result["rows_read"], result["inserted"], result["source_path"]) == (2, 2, "table contacts")
    assert _contacts("myall") == {
        "zoe@x.it": {"email": "zoe@x.it", "first_name": 'Zoë "Z", the\nfirst', "points": -7,
                     "birth_date": date(1980, 2, 29), "score": Decimal("12.50"), "active": True,
                     "photo": "00FF10", "note": "àè", "seen_at": datetime(2026, 6, 1, 10, 0, 0, 500000, tzinfo=UTC),
                     "changed_at": datetime(2026, 11, 1, 8, 0, 0, 250, tzinfo=UTC), "seq": BIG + 1},
        "null@x.it": {"email": "null@x.it", "first_name": None, "points": None, "birth_date": None, "score": None,
                      "active": False, "photo": None, "note": None, "seen_at": None, "changed_at": None,
                      "seq": None},
    }
    assert failures(result["id"]) == []


def test_a_query_feeds_an_upsert_and_an_updater(cluster_env, client_mysql, workers, tmp_path):
    # Given: four rows; an upsert reading a query that filters (with a % in its text) and computes,
    # and an updater whose query gives each row it reads an operation
    _client(client_mysql, "DELETE FROM contacts")
    _client(client_mysql, INSERT, [_row("a@x.it", "Ada", 2, T0), _row("b@x.it", "Bob", 3, T0),
                                   _row("c@x.it", "Cy", 1, T0), _row("d@y.it", "Di", 5, T0)])
    query = ("SELECT email, UPPER(first_name) AS first_name, points * 10 AS points FROM contacts"
             " WHERE email LIKE '%@x.it' AND points > 1")
    operations = ("SELECT IF(points > 2, 'D', 'U') AS operation, email, CONCAT(first_name, '!') AS first_name"
                  " FROM contacts WHERE points BETWEEN 2 AND 3")
    _configure(tmp_path, client_mysql, "myq", {"myq-pull": {"source": {"query": query}},
                                               "myq-ops": {"kind": "updater", "source": {"query": operations}}})
    workers.start(1)

    # When: the upsert runs
    pulled = run("myq-pull")
    # Then: the query's two rows are in, as it computed them
    assert pulled["status"] == "completed", pulled["error_message"]
    assert pulled["source_path"].startswith("query SELECT email, UPPER(first_name)")
    assert {k: (v["first_name"], v["points"]) for k, v in _contacts("myq").items()} == {
        "a@x.it": ("ADA", 20), "b@x.it": ("BOB", 30)}

    # When: the updater runs
    applied = run("myq-ops")
    # Then: a@x.it is updated (its points kept: the query has no such column) and b@x.it deleted
    assert applied["status"] == "completed", applied["error_message"]
    assert (applied["rows_read"], applied["updated"], applied["deleted"]) == (2, 1, 1)
    assert {k: (v["first_name"], v["points"]) for k, v in _contacts("myq").items()} == {"a@x.it": ("Ada!", 20)}


def test_a_watermark_reads_only_rows_changed_since(cluster_env, client_mysql, workers, tmp_path):
    # Given: 5 rows, and an upsert module on the DATETIME(6) watermark changed_at
    _client(client_mysql, "DELETE FROM contacts")
    _client(client_mysql, INSERT, [_row(f"c{i}@x.it", f"N{i}", i, T0 + timedelta(minutes=i)) for i in range(5)])
    _configure(tmp_path, client_mysql, "myw", {"myw-pull": {"source": {"table": "contacts",
                                                                       "watermark": "changed_at"}}})
    workers.start(1)

    # When: the first run reads the table
    first = run("myw-pull")
    # Then: every row is in, and the module's watermark is the newest row's time
    assert first["status"] == "completed", first["error_message"]
    assert (first["rows_read"], first["inserted"]) == (5, 5)
    assert _watermark("myw-pull") == "2026-11-01 08:04:00.000000"

    # When: a row 250 µs past the watermark and another are added, one row is changed, then a run reads
    _client(client_mysql, INSERT, [_row("c5@x.it", "N5", 5, T0 + timedelta(minutes=4, microseconds=250)),
                                   _row("c6@x.it", "N6", 6, T0 + timedelta(hours=1))])
    _client(client_mysql, "UPDATE contacts SET points = 100, changed_at = '2026-11-01 09:30:00' WHERE email = 'c0@x.it'")
    second = run("myw-pull")

    # Then: only those three rows are read, and the watermark is the newest of them
    assert second["status"] == "completed", second["error_message"]
    assert (second["rows_read"], second["inserted"], second["updated"]) == (3, 2, 1)
    assert _contacts("myw")["c0@x.it"]["points"] == 100
    assert _watermark("myw-pull") == "2026-11-01 09:30:00.000000"

    # When: a run finds nothing new
    idle = run("myw-pull")
    # Then: it completes with 0 rows, and the watermark stays
    assert (idle["status"], idle["rows_read"]) == ("completed", 0)
    assert _watermark("myw-pull") == "2026-11-01 09:30:00.000000"


def test_an_integer_watermark_is_compared_exactly(cluster_env, client_mysql, workers, tmp_path):
    # Given: rows whose BIGINT watermark is past 2**53 (a double holds none of them exactly: the value
    # must go from the column to the stored watermark and back as text or a number, never a float)
    _client(client_mysql, "DELETE FROM contacts")
    _client(client_mysql, INSERT, [_row(f"s{i}@x.it", f"S{i}", i, T0, BIG + i) for i in range(3)])
    _configure(tmp_path, client_mysql, "myseq", {"myseq-pull": {"source": {"table": "contacts",
                                                                           "watermark": "seq"}}})
    workers.start(1)
    first = run("myseq-pull")
    assert (first["status"], first["rows_read"], _watermark("myseq-pull")) == ("completed", 3, str(BIG + 2))

    # When: a row one past the watermark is added
    _client(client_mysql, INSERT, [_row("s3@x.it", "S3", 3, T0, BIG + 3)])
    second = run("myseq-pull")

    # Then: it is read, and only it
    assert (second["status"], second["rows_read"], second["inserted"]) == ("completed", 1, 1)
    assert _watermark("myseq-pull") == str(BIG + 3)


@pytest.mark.parametrize("query, says", [
    # a write hidden in a function is refused by the read-only transaction
    ("SELECT email, touch() AS t FROM contacts", "a write refused by the read-only transaction (MySQL error 1792)"),
    # a query that closes the subquery it runs in and adds a statement: one statement, which does not parse
    ("SELECT email FROM contacts) AS x; COMMIT; DELETE FROM contacts; SELECT * FROM (SELECT 'a' AS email",
     "the query does not parse as one SELECT statement (MySQL error 1064 ER_PARSE_ERROR)"),
], ids=["writing-function", "two-statements"])
def test_a_query_that_writes_is_refused(cluster_env, client_mysql, workers, tmp_path, query, says):
    # Given: a query that would insert or delete rows, through a user that may write
    _client(client_mysql, "DELETE FROM contacts")
    _client(client_mysql, INSERT, [_row("keep@x.it", "Keep", 1, T0)])
    _configure(tmp_path, client_mysql, "myro", {"myro-pull": {"source": {"query": query}}})
    workers.start(1)

    # When: it runs
    result = run("myro-pull")

    # Then: the run fails with SOURCE_QUERY_FAILED saying why, and nothing changed
    assert (result["status"], result["error_code"]) == ("failed", "SOURCE_QUERY_FAILED")
    assert says in result["error_message"]
    conn = _admin(client_mysql.dbname)
    with conn.cursor() as cur:
        cur.execute("SELECT email FROM contacts")
        assert cur.fetchall() == (("keep@x.it",),)
    conn.close()


@pytest.mark.parametrize("source, says", [
    ({"query": "SELECT email FROM no_such_table"},
     "a table or view it names does not exist (MySQL error 1146 ER_NO_SUCH_TABLE)"),
    ({"query": "SELECT email, SLEEP(3) AS z FROM contacts", "timeout_s": 0.5},
     "the source query ran longer than its timeout_s (0.5 s)"),
    ({"table": "contacts", "watermark": "first_name"},
     "the watermark column 'first_name' is of type VAR_STRING: it must be an integer, decimal, date"),
    ({"table": "contacts", "watermark": "nope"}, "the source has no column 'nope' (its watermark)"),
], ids=["missing-table", "timeout", "text-watermark", "no-watermark-column"])
def test_a_source_that_cannot_be_read_fails_the_run_saying_why(cluster_env, client_mysql, workers, tmp_path,
                                                                source, says):
    # Given: a source with bad SQL, one slower than its timeout_s, or a watermark that cannot be one
    _client(client_mysql, "DELETE FROM contacts")
    _client(client_mysql, INSERT, [_row("slow@x.it", "S", 1, T0)])
    _configure(tmp_path, client_mysql, "mybad", {"mybad-pull": {"source": source}})
    workers.start(1)

    # When: it runs
    result = run("mybad-pull")

    # Then: SOURCE_QUERY_FAILED, with the reason on one short line
    assert (result["status"], result["error_code"]) == ("failed", "SOURCE_QUERY_FAILED")
    assert says in result["error_message"]
    assert "\n" not in result["error_message"] and len(result["error_message"]) < 400


def test_a_row_longer_than_max_allowed_packet_fails_the_run_instead_of_vanishing(cluster_env, client_mysql,
                                                                                 workers, tmp_path):
    # Given: a short row, then one whose two texts together are longer than the server's max_allowed_packet
    # (the server gives NULL for a line that long)
    _client(client_mysql, "DROP TABLE IF EXISTS wide")
    _client(client_mysql, "CREATE TABLE wide (email VARCHAR(100), first_name LONGTEXT, note LONGTEXT)")
    _client(client_mysql, "INSERT INTO wide VALUES ('a@x.it', 'A', NULL), ('w@x.it',"
                          " REPEAT('a', @@max_allowed_packet DIV 2 + 1), REPEAT('b', @@max_allowed_packet DIV 2 + 1))")
    _configure(tmp_path, client_mysql, "mywide", {"mywide-pull": {"source": {"table": "wide"}}})
    workers.start(1)

    # When: it runs
    result = run("mywide-pull")

    # Then: the run fails saying why, and imports nothing
    assert (result["status"], result["error_code"]) == ("failed", "SOURCE_QUERY_FAILED")
    assert "a row is longer than the server's max_allowed_packet" in result["error_message"]
    assert _contacts("mywide") == {}
    _client(client_mysql, "DROP TABLE wide")


def test_a_wrong_password_an_unreachable_server_no_tls_and_no_secret_have_their_codes(
        cluster_env, client_mysql, workers, tmp_path, monkeypatch):
    # Given: a module whose secret holds a wrong password, one pointing at a closed port, one that
    # requires TLS of a server without it, one that leaves sslmode out (verify-full) and one whose
    # secret is not set
    monkeypatch.setenv("DX_SECRET_TEST_MY_WRONG", "not-the-password")
    monkeypatch.delenv("DX_SECRET_TEST_MY_UNSET", raising=False)
    pull = {"source": {"table": "contacts"}}
    _configure(tmp_path, client_mysql, "myauth", {"myauth-pull": pull}, password="${DX_SECRET_TEST_MY_WRONG}")
    _configure(tmp_path, client_mysql, "mydown", {"mydown-pull": pull}, port=free_port())
    _configure(tmp_path, client_mysql, "mytls", {"mytls-pull": pull}, sslmode="require")
    _configure(tmp_path, client_mysql, "mydefault", {"mydefault-pull": pull}, sslmode=None)
    _configure(tmp_path, client_mysql, "mynosecret", {"mynosecret-pull": pull}, password="${DX_SECRET_TEST_MY_UNSET}")
    workers.start(1)

    # When: each runs
    refused, unreachable, plain, default, unset = (run(m) for m in (
        "myauth-pull", "mydown-pull", "mytls-pull", "mydefault-pull", "mynosecret-pull"))

    # Then: each fails with its code, and neither password is in any message
    assert (refused["status"], refused["error_code"]) == ("failed", "AUTHENTICATION_FAILED")
    assert (unreachable["status"], unreachable["error_code"]) == ("failed", "CONNECTION_FAILED")
    for result, sslmode in ((plain, "require"), (default, "verify-full")):
        assert (result["status"], result["error_code"]) == ("failed", "TLS_REQUIRED")
        assert result["error_message"] == (f"127.0.0.1:3306/{client_mysql.dbname}: the server does not offer TLS, "
                                           f"and sslmode {sslmode} requires it: nothing was sent")
    assert (unset["status"], unset["error_code"]) == ("failed", "SECRET_MISSING")
    for result in (refused, unreachable, plain, default, unset):
        assert "not-the-password" not in result["error_message"]
        assert os.environ["DX_SECRET_TEST_MY_PASSWORD"] not in result["error_message"]


def test_a_hostile_server_s_message_echoing_the_password_is_not_copied(cluster_env, client_mysql, workers,
                                                                      tmp_path):
    # Given: a query calling a function that signals an error whose message is the connection's password
    password = os.environ[client_mysql.password_env]
    _client(client_mysql, "DELETE FROM contacts")
    _client(client_mysql, INSERT, [_row("leak@x.it", "L", 1, T0)])
    _client(client_mysql, "DROP FUNCTION IF EXISTS leak")
    _client(client_mysql, "CREATE FUNCTION leak() RETURNS INT NO SQL BEGIN"
                          f" SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'password {password}'; RETURN 1; END")
    _configure(tmp_path, client_mysql, "myleak", {"myleak-pull": {"source": {
        "query": "SELECT email, leak() AS points FROM contacts"}}})
    workers.start(1)

    # When: it runs
    result = run("myleak-pull")

    # Then: it fails told by the error number, and the password is in neither its message nor the log
    assert (result["status"], result["error_code"]) == ("failed", "SOURCE_QUERY_FAILED")
    assert result["error_message"] == ("the source could not be read: an error signalled by a function it calls "
                                       "(MySQL error 1644)")
    logs = [log.read_text() for log in tmp_path.glob("worker-*.log")]
    assert logs and not any(password in text for text in logs)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_million_rows_import_in_bounded_memory_and_the_next_run_reads_only_changes(
        cluster_env, client_mysql, workers, tmp_path):
    # Given: a table of 1,000,000 contacts on the client's MariaDB, indexed on its watermark, an upsert
    # module on it, and two fresh workers
    fields = {"email": {"type": "email", "required": True}, "first_name": "text", "points": "int",
              "birth_date": "date", "changed_at": "timestamp"}
    rows = contacts(1_000_000, seed=13).select("email", "first_name", "points", "birth_date")
    rows.write_csv(tmp_path / "big.csv")
    _client(client_mysql, "DROP TABLE IF EXISTS big")
    _client(client_mysql, "CREATE TABLE big (email VARCHAR(100) PRIMARY KEY, first_name VARCHAR(50), points INT,"
                          " birth_date DATE, changed_at DATETIME(6), INDEX (changed_at))")
    conn = _admin(client_mysql.dbname, local_infile=True)
    with conn.cursor() as cur:  # the server parses the file: the fastest fill
        cur.execute(f"LOAD DATA LOCAL INFILE '{tmp_path / 'big.csv'}' INTO TABLE big CHARACTER SET utf8mb4"
                    " FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' IGNORE 1 LINES"
                    " (email, first_name, points, @born) SET birth_date = STR_TO_DATE(@born, '%d/%m/%Y'),"
                    " changed_at = '2026-11-01 08:00:00'")
        assert cur.rowcount == 1_000_000
    conn.close()
    _configure(tmp_path, client_mysql, "mybig", {"mybig-pull": {"source": {"table": "big",
                                                                           "watermark": "changed_at"}}},
               fields=fields)
    procs = workers.start(2)

    # When: the first run imports the table
    first = run("mybig-pull", timeout_s=600)

    # Then: every row is in, and no worker's resident memory ever reached 500 MB
    assert first["status"] == "completed", first["error_message"]
    assert (first["rows_read"], first["inserted"]) == (1_000_000, 1_000_000)
    peaks = [_peak_mb(p.pid) for p in procs]
    assert max(peaks) < 500, f"peak RSS of the workers: {peaks} MB"
    with db.connect() as pg:
        assert pg.execute('SELECT count(*) AS n FROM "tenant_mybig".contacts').fetchone()["n"] == 1_000_000

    # When: 1,000 rows change and 10 are added, then the next run reads
    _client(client_mysql, "UPDATE big SET first_name = 'Changed', changed_at = '2026-11-02 08:00:00'"
                          " ORDER BY email LIMIT 1000")
    _client(client_mysql, "INSERT INTO big (email, first_name, points, changed_at) VALUES (%s, %s, %s, %s)",
            [(f"new{i}@x.it", "New", i, "2026-11-02 09:00:00") for i in range(10)])
    second = run("mybig-pull", timeout_s=300)

    # Then: it reads those 1,010 rows only
    assert second["status"] == "completed", second["error_message"]
    assert (second["rows_read"], second["updated"], second["inserted"]) == (1_010, 1_000, 10)
    with db.connect() as pg:
        changed = pg.execute("SELECT count(*) AS n FROM \"tenant_mybig\".contacts WHERE first_name = 'Changed'"
                             ).fetchone()["n"]
    assert changed == 1_000
    _client(client_mysql, "DROP TABLE big")


def _peak_mb(pid: int) -> float:
    """The process's peak resident memory (the kernel's VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")
