"""An overwrite keeps the contact table as the client built it, and a run that applied nothing says so.

The client's index, constraints (CHECK, UNIQUE, NOT NULL, another table's
foreign key), grants to a reporting role (table and column), comments,
trigger, row-security policy and a view (with its grant and comment) survive
overwrites and work on the new content; a refused overwrite leaves them and the
content untouched, and reports nothing inserted, as does a run that failed in
its plan or crashed after its chunks loaded.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pika
import psycopg
import pytest

from dx.cli import main, wait_for
from dx.scheduler.requests import request_run
from dx.shared import db
from dx.shared.runs import Trigger
from tests.integration.helpers import apply, config, run, seed, table, tables_left, text_of

ROLE = f"dx_reporting_{os.getpid()}"
BEFORE = [("a@x.it", "Ann", 1), ("b@x.it", "Bob", 150), ("z@x.it", "Zoe", 3)]
FIRST = b"email,first_name,points\na@x.it,Alma,5\nb@x.it,Bruno,250\nc@x.it,Carla,7\n"
SECOND = b"email,first_name,points\na@x.it,Ada,9\nd@x.it,Dino,11\ne@x.it,Eva,120\nf@x.it,Fede,0\n"
REFUSED = b"email,first_name,points\na@x.it,Anna,4\nbad,X,1\ng@x.it,G,notanint\n"  # 2 of 3 rejected


@pytest.fixture(scope="module")
def reporting_role(cluster_env: dict[str, str]) -> Iterator[str]:
    """A role of the client's reporting, made for these tests and dropped after them."""
    with db.connect(autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {ROLE}")
        conn.execute(f"CREATE ROLE {ROLE} NOLOGIN")
    yield ROLE
    with db.connect(autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {ROLE}")  # its grants and policies in the test database
        conn.execute(f"DROP ROLE {ROLE}")


def _tenant(name: str, sshd: Any, tmp_path: Any) -> str:
    """A tenant with an overwrite module (max_error_ratio 0.5) reading ``<name>/in_*.csv``."""
    apply(config(name, sshd, [{"id": f"{name}-overwrite", "mode": "overwrite", "max_error_ratio": 0.5,
                               "source": {"path": f"{name}/in_*.csv"}}]), tmp_path)
    return name


def _build_client_objects(tenant: str, role: str) -> None:
    """What a client's DBA adds to the contact table: every kind of object an overwrite must keep."""
    s = f'"tenant_{tenant}"'
    with db.transaction() as conn:
        for statement in (
                f"GRANT USAGE ON SCHEMA {s} TO {role}",
                f"CREATE INDEX contacts_by_points ON {s}.contacts (points)",
                f"ALTER TABLE {s}.contacts ADD CONSTRAINT points_not_negative CHECK (points >= 0),"
                " ADD CONSTRAINT one_first_name UNIQUE (first_name), ALTER COLUMN first_name SET NOT NULL",
                f'CREATE TABLE {s}.orders (id int PRIMARY KEY, email text COLLATE "C"'
                f" CONSTRAINT orders_contact REFERENCES {s}.contacts (email))",
                f"INSERT INTO {s}.orders VALUES (1, 'a@x.it')",  # noqa: S608 (a@x.it: in every source)
                f"GRANT SELECT ON {s}.contacts TO {role}",
                f"GRANT UPDATE (points) ON {s}.contacts TO {role}",
                f"COMMENT ON TABLE {s}.contacts IS 'Newsletter contacts'",
                f"COMMENT ON COLUMN {s}.contacts.points IS 'Loyalty points'",
                f"COMMENT ON INDEX {s}.contacts_by_points IS 'for the points report'",
                f"CREATE FUNCTION {s}.shout() RETURNS trigger LANGUAGE plpgsql"
                " AS $$BEGIN NEW.first_name := upper(NEW.first_name); RETURN NEW; END$$",
                f"CREATE TRIGGER shout BEFORE UPDATE ON {s}.contacts FOR EACH ROW EXECUTE FUNCTION {s}.shout()",
                f"ALTER TABLE {s}.contacts ENABLE ROW LEVEL SECURITY",
                f"CREATE POLICY small_points ON {s}.contacts FOR SELECT TO {role} USING (points < 100)",
                f"CREATE VIEW {s}.report WITH (security_barrier) AS"  # noqa: S608
                f" SELECT email, first_name, points FROM {s}.contacts WHERE points > 0",
                f"GRANT SELECT ON {s}.report TO {role}",
                f"COMMENT ON VIEW {s}.report IS 'Contacts with points'"):
            conn.execute(statement)


def _objects(tenant: str) -> dict[str, Any]:
    """The contact table's objects and those depending on it, as definitions (named, not by oid)."""
    with db.connect() as conn:
        return conn.execute("""
            SELECT
              (SELECT array_agg(d ORDER BY d) FROM (SELECT pg_get_indexdef(indexrelid) || ' valid ' || indisvalid
                 FROM pg_index WHERE indrelid = t) AS x(d)) AS indexes,
              (SELECT array_agg(d ORDER BY d) FROM (SELECT conname || ' ' || pg_get_constraintdef(oid) || ' '
                 || convalidated FROM pg_constraint WHERE conrelid = t) AS x(d)) AS constraints,
              (SELECT array_agg(d ORDER BY d) FROM (SELECT conrelid::regclass || ' ' || conname || ' '
                 || pg_get_constraintdef(oid) FROM pg_constraint WHERE confrelid = t AND conrelid <> t) AS x(d))
                 AS referencing,
              (SELECT array_agg(a::text ORDER BY a::text) FROM pg_class, unnest(relacl) a WHERE oid = t) AS acl,
              (SELECT array_agg(attname || ' ' || attnotnull || ' ' || coalesce(attacl::text, '-') || ' '
                                || coalesce(col_description(t, attnum), '-') ORDER BY attnum)
                 FROM pg_attribute WHERE attrelid = t AND attnum > 0 AND NOT attisdropped) AS columns,
              obj_description(t, 'pg_class') AS comment,
              (SELECT array_agg(d ORDER BY d) FROM (SELECT x.relname || ' ' || obj_description(x.oid, 'pg_class')
                 FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid WHERE i.indrelid = t
                 AND obj_description(x.oid, 'pg_class') IS NOT NULL) AS c(d)) AS index_comments,
              (SELECT array_agg(d ORDER BY d) FROM (SELECT pg_get_triggerdef(oid) || ' ' || tgenabled::text
                 FROM pg_trigger WHERE tgrelid = t AND NOT tgisinternal) AS x(d)) AS triggers,
              (SELECT relrowsecurity FROM pg_class WHERE oid = t) AS row_security,
              (SELECT array_agg(d ORDER BY d) FROM (SELECT polname || ' ' || polcmd::text || ' '
                 || polroles::regrole[]::text || ' ' || pg_get_expr(polqual, polrelid)
                 FROM pg_policy WHERE polrelid = t) AS x(d)) AS policies,
              pg_get_viewdef(v) AS view,
              (SELECT array_agg(a::text ORDER BY a::text) FROM pg_class, unnest(relacl) a WHERE oid = v) AS view_acl,
              (SELECT reloptions FROM pg_class WHERE oid = v) AS view_options,
              obj_description(v, 'pg_class') AS view_comment
            FROM (SELECT %s::regclass::oid AS t, %s::regclass::oid AS v) AS o""",
            (f'"tenant_{tenant}".contacts', f'"tenant_{tenant}".report')).fetchone()  # type: ignore[return-value]


def _table_oid(tenant: str) -> int:
    with db.connect() as conn:
        return conn.execute("SELECT %s::regclass::oid AS t", (f'"tenant_{tenant}".contacts',)).fetchone()["t"]  # type: ignore[index]


def _assert_objects_work(tenant: str, role: str, content: dict[str, int]) -> None:
    """The client's objects act on the content ({email: points}) of the contact table now in place."""
    s = f'"tenant_{tenant}"'
    with db.connect() as conn:
        # the index is valid, on this table, and used
        index = conn.execute("SELECT i.indisvalid, i.indrelid = %s::regclass AS on_table FROM pg_index i"
                             " WHERE i.indexrelid = %s::regclass",
                             (f"{s}.contacts", f"{s}.contacts_by_points")).fetchone()
        assert index == {"indisvalid": True, "on_table": True}
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r["QUERY PLAN"] for r in conn.execute(
            f"EXPLAIN SELECT email FROM {s}.contacts WHERE points = 5"))  # noqa: S608
        assert "contacts_by_points" in plan, plan
        conn.execute("RESET enable_seqscan")
        # the constraints hold: CHECK, NOT NULL, UNIQUE, and the orders' foreign key
        for statement, error in (
                (f"INSERT INTO {s}.contacts (email, first_name, points) VALUES ('n@x.it', 'Neg', -1)",  # noqa: S608
                 psycopg.errors.CheckViolation),
                (f"INSERT INTO {s}.contacts (email, points) VALUES ('n@x.it', 1)",  # noqa: S608
                 psycopg.errors.NotNullViolation),
                (f"INSERT INTO {s}.contacts (email, first_name, points) SELECT 'n@x.it', first_name, 1"  # noqa: S608
                 f" FROM {s}.contacts LIMIT 1", psycopg.errors.UniqueViolation),
                (f"DELETE FROM {s}.contacts WHERE email = 'a@x.it'",  # noqa: S608
                 psycopg.errors.ForeignKeyViolation)):
            with pytest.raises(error), conn.transaction():
                conn.execute(statement)
        # the trigger fires
        with conn.transaction(force_rollback=True):
            row = conn.execute(f"UPDATE {s}.contacts SET first_name = 'quiet' WHERE email = 'a@x.it'"  # noqa: S608
                               " RETURNING first_name").fetchone()
        assert row == {"first_name": "QUIET"}
        # the reporting role reads through the view (every row with points) and, under its policy, the
        # table's rows with fewer than 100 points; it may update the points only
        conn.execute(f"SET ROLE {role}")
        through_view = {r["email"] for r in conn.execute(f"SELECT email FROM {s}.report")}  # noqa: S608
        direct = {r["email"] for r in conn.execute(f"SELECT email FROM {s}.contacts")}  # noqa: S608
        may = conn.execute(
            "SELECT has_column_privilege(%(t)s, 'points', 'UPDATE') AS points,"
            " has_column_privilege(%(t)s, 'first_name', 'UPDATE') AS first_name,"
            " has_table_privilege(%(t)s, 'INSERT') AS insert", {"t": f"{s}.contacts"}).fetchone()
        conn.execute("RESET ROLE")
        conn.rollback()
    assert through_view == {k for k, p in content.items() if p > 0}
    assert direct == {k for k, p in content.items() if p < 100}
    assert may == {"points": True, "first_name": False, "insert": False}


def _tables_once_settled(tenant: str, timeout_s: float = 10) -> list[str]:
    """The tenant's tables once the one an overwrite replaced is dropped (or the time is out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        names = tables_left(tenant)
        if not any("__old_" in n for n in names) or time.monotonic() > deadline:
            return names
        time.sleep(0.05)


def _shown(run_id: int, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``dx show RUN --json``."""
    capsys.readouterr()
    assert main(["show", str(run_id), "--json"]) == 0
    shown: dict[str, Any] = json.loads(capsys.readouterr().out)
    return shown


def _mailed_counters(smtp: Any, run_id: int) -> dict[str, int]:
    """The counters in the run's e-mail."""
    mail = smtp.wait_for(lambda m: f"(run {run_id})" in m["Subject"])
    body = text_of(mail).replace("\r\n", "\n")
    return {m[1]: int(m[2].replace(",", "")) for m in re.finditer(r"^  (\w+) +([\d,]+)$", body, re.M)}


def test_overwrites_keep_the_clients_objects_and_a_refused_one_touches_nothing(
        cluster_env, sshd, smtp, workers, reporting_role, tmp_path, capsys):
    # Given: a contact table to which the client added an index, constraints, another table's foreign
    # key, grants to a reporting role, comments, a trigger, a row-security policy and a view with a grant
    tenant = _tenant("keeps", sshd, tmp_path)
    seed(tenant, BEFORE)
    _build_client_objects(tenant, reporting_role)
    objects = _objects(tenant)
    assert objects["indexes"] and objects["referencing"] and objects["policies"] and objects["view_acl"]
    workers.start(2)

    for n, (source, content) in enumerate(((FIRST, {"a@x.it": 5, "b@x.it": 250, "c@x.it": 7}),
                                           (SECOND, {"a@x.it": 9, "d@x.it": 11, "e@x.it": 120, "f@x.it": 0}))):
        # When: an overwrite runs (twice)
        old_oid = _table_oid(tenant)
        sshd.put(f"{tenant}/in_{n}.csv", source)
        result = run(f"{tenant}-overwrite")

        # Then: the new content is in a new table, with every object as it was, working on it
        assert result["status"] == "completed", result["error_message"]
        assert {k: v[1] for k, v in table(tenant).items()} == content
        assert _table_oid(tenant) != old_oid
        assert _objects(tenant) == objects
        _assert_objects_work(tenant, reporting_role, content)
        # and the replaced table is dropped: nothing depends on it any more
        assert _tables_once_settled(tenant) == ["contacts", "orders", "report"]

    # When: an overwrite is refused by max_error_ratio
    kept, oid = table(tenant), _table_oid(tenant)
    sshd.put(f"{tenant}/in_9.csv", REFUSED)
    refused = run(f"{tenant}-overwrite")

    # Then: the table, its content and every object are untouched
    assert (refused["status"], refused["error_code"]) == ("failed", "ERROR_RATIO_EXCEEDED"), refused["error_message"]
    assert table(tenant) == kept and _table_oid(tenant) == oid
    assert _objects(tenant) == objects
    assert tables_left(tenant) == ["contacts", "orders", "report"]
    # and dx show and the e-mail say nothing was inserted; the rejected records stay counted
    expected = {"rows_read": 3, "inserted": 0, "updated": 0, "deleted": 0, "not_inserted": 2}
    shown = _shown(refused["id"], capsys)
    assert {k: shown[k] for k in expected} == expected
    assert shown["errors"] == {"INVALID_VALUE": 2}
    mailed = _mailed_counters(smtp, refused["id"])
    assert {k: mailed[k] for k in expected} == expected


def test_an_overwrite_breaking_a_constraint_fails_with_everything_kept(cluster_env, sshd, smtp, workers,
                                                                     reporting_role, tmp_path):
    # Given: the contact table with the client's objects, and a source that the client's CHECK refuses
    # (negative points) though each record is valid to dx
    tenant = _tenant("keepscheck", sshd, tmp_path)
    seed(tenant, BEFORE)
    _build_client_objects(tenant, reporting_role)
    objects, kept, oid = _objects(tenant), table(tenant), _table_oid(tenant)
    sshd.put(f"{tenant}/in_1.csv", b"email,first_name,points\na@x.it,Ann,1\nn@x.it,Neg,-5\n")
    workers.start(1)

    # When: it runs
    result = run(f"{tenant}-overwrite")

    # Then: the run fails with CONSTRAINT_VIOLATED naming the constraint; the table, its content and its
    # objects are as they were, the shadow table gone, and nothing counted as inserted
    assert (result["status"], result["error_code"]) == ("failed", "CONSTRAINT_VIOLATED"), result["error_message"]
    assert "points_not_negative" in result["error_message"]
    assert table(tenant) == kept and _table_oid(tenant) == oid
    assert _objects(tenant) == objects
    assert tables_left(tenant) == ["contacts", "orders", "report"]
    assert (result["rows_read"], result["inserted"], result["not_inserted"]) == (2, 0, 0)


def test_an_overwrite_refuses_a_dependent_object_it_cannot_keep(cluster_env, sshd, smtp, workers, tmp_path):
    # Given: a materialized view over the contact table
    tenant = _tenant("keepsmatview", sshd, tmp_path)
    seed(tenant, BEFORE)
    with db.transaction() as conn:
        conn.execute(f'CREATE MATERIALIZED VIEW "tenant_{tenant}".points AS'  # noqa: S608
                     f' SELECT email, points FROM "tenant_{tenant}".contacts')
    kept = table(tenant)
    sshd.put(f"{tenant}/in_1.csv", FIRST)
    workers.start(1)

    # When: an overwrite runs
    result = run(f"{tenant}-overwrite")

    # Then: it fails with TABLE_OBJECT_NOT_KEPT naming the view, and keeps the table and the view
    assert (result["status"], result["error_code"]) == ("failed", "TABLE_OBJECT_NOT_KEPT"), result["error_message"]
    assert f"materialized view tenant_{tenant}.points" in result["error_message"]
    assert table(tenant) == kept
    assert tables_left(tenant) == ["contacts"]
    with db.connect() as conn:
        assert conn.execute(f'SELECT count(*) AS n FROM "tenant_{tenant}".points').fetchone() == {"n": 3}  # noqa: S608


def _purge(broker_url: str, *queues: str) -> None:
    """Drop the messages waiting in these RabbitMQ queues (a test works the run itself)."""
    with pika.BlockingConnection(pika.URLParameters(broker_url)) as conn:
        for queue in queues:
            conn.channel().queue_purge(queue)


def test_an_overwrite_crashed_after_its_chunks_reports_its_rejects_and_nothing_inserted(
        cluster_env, sshd, smtp, tmp_path, capsys):
    # Given: an overwrite planned and its chunk loaded (here, with no worker), 3 valid records and 1 bad
    from dx.workers.crashed import run_crashed
    from dx.workers.imports.chunk import chunk
    from dx.workers.imports.plan import plan

    tenant = _tenant("keepscrash", sshd, tmp_path)
    seed(tenant, BEFORE)
    kept = table(tenant)
    sshd.put(f"{tenant}/in_1.csv", b"email,first_name,points\na@x.it,A,1\nb@x.it,B,x\nc@x.it,C,3\nd@x.it,D,4\n")
    run_id = request_run(f"{tenant}-overwrite", Trigger.MANUAL, "pytest")
    _purge(cluster_env["DX_BROKER_URL"], "dx.plan")
    plan(run_id)
    with db.connect() as conn:
        planned = conn.execute("SELECT n_chunks, plan_attempt FROM dx.runs WHERE id = %s", (run_id,)).fetchone()
    assert planned is not None
    for chunk_no in range(planned["n_chunks"]):
        chunk(run_id, chunk_no, planned["plan_attempt"])
    _purge(cluster_env["DX_BROKER_URL"], "dx.chunk", "dx.reduce")

    # When: its reduce fails for good (the retry-exhausted callback)
    run_crashed({"kwargs": {"run_id": run_id}, "actor_name": "reduce", "options": {}}, {"retries": 5})

    # Then: the run failed, the table is as it was, and dx show and the e-mail count the records read and
    # the one rejected (it is in the report), and nothing inserted
    result = wait_for(run_id, 10)
    assert (result["status"], result["error_code"]) == ("failed", "INTERNAL_ERROR")
    assert table(tenant) == kept and tables_left(tenant) == ["contacts"]
    expected = {"rows_read": 4, "inserted": 0, "updated": 0, "deleted": 0, "not_inserted": 1}
    shown = _shown(run_id, capsys)
    assert {k: shown[k] for k in expected} == expected
    assert shown["errors"] == {"INVALID_VALUE": 1}
    mailed = _mailed_counters(smtp, run_id)
    assert {k: mailed[k] for k in expected} == expected


def test_a_failed_plan_reports_nothing_applied(cluster_env, sshd, smtp, workers, tmp_path, capsys):
    # Given: an overwrite whose source is not UTF-8 after its first records
    tenant = _tenant("keepsplan", sshd, tmp_path)
    seed(tenant, BEFORE)
    kept = table(tenant)
    sshd.put(f"{tenant}/in_1.csv", b"email,first_name,points\na@x.it,A,1\nb@x.it,\xff\xfe broken,2\n")
    workers.start(1)

    # When: it runs
    result = run(f"{tenant}-overwrite")

    # Then: its plan failed; the table is as it was; dx show and the e-mail count nothing applied
    assert (result["status"], result["error_code"]) == ("failed", "SOURCE_UNDECODABLE"), result["error_message"]
    assert table(tenant) == kept
    expected = {"rows_read": 0, "inserted": 0, "updated": 0, "deleted": 0, "not_inserted": 0}
    shown = _shown(result["id"], capsys)
    assert {k: shown[k] for k in expected} == expected
    mailed = _mailed_counters(smtp, result["id"])
    assert {k: mailed[k] for k in expected} == expected
