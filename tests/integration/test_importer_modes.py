"""The Importer in each mode, from the OpenSSH SFTP server, by separate worker processes."""

from __future__ import annotations

import csv
import io
import time
from datetime import date

import pytest

from dx.cli import main
from dx.shared import db
from tests.integration.helpers import apply, config, failures, run, seed, table, text_of

# Given: a Latin-1, semicolon-separated file with good and bad records.
SOURCE = (
    "email;first_name;points;birth_date\n"
    "c@x.it;Célia;3;01/02/1990\n"        # 1 new key
    "A@x.it;New A;10;02/02/1990\n"       # 2 existing key a@x.it (upper case in the file)
    "bad-email;X;1;01/01/1990\n"         # 3 invalid e-mail
    "d@x.it;D;notanint;01/01/1990\n"     # 4 invalid int
    ";NoKey;5;01/01/1990\n"              # 5 key missing
    "c@x.it;Célia again;4;01/02/1990\n"  # 6 key repeated
    "e@x.it;E;5;31/02/1990\n"            # 7 impossible date
    'f@x.it;"multi\nline";6;\n'          # 8 new key, newline in a value, no date
).encode("latin-1")
BEFORE = [("a@x.it", "Old A", 1), ("b@x.it", "Old B", 2)]
D90 = date(1990, 2, 1)

EXPECTED = {
    "overwrite": dict(
        table={"c@x.it": ("Célia", 3, D90), "a@x.it": ("New A", 10, date(1990, 2, 2)),
               "f@x.it": ("multi\nline", 6, None)},
        failures=[(3, "INVALID_VALUE"), (4, "INVALID_VALUE"), (5, "KEY_MISSING"), (6, "DUPLICATE_KEY"),
                  (7, "INVALID_VALUE")],
        counters=dict(rows_read=8, inserted=3, updated=0, not_inserted=5, not_updated=0)),
    "append": dict(
        table={"a@x.it": ("Old A", 1, None), "b@x.it": ("Old B", 2, None), "c@x.it": ("Célia", 3, D90),
               "f@x.it": ("multi\nline", 6, None)},
        failures=[(2, "KEY_EXISTS"), (3, "INVALID_VALUE"), (4, "INVALID_VALUE"), (5, "KEY_MISSING"),
                  (6, "DUPLICATE_KEY"), (7, "INVALID_VALUE")],
        counters=dict(rows_read=8, inserted=2, updated=0, not_inserted=6, not_updated=0)),
    "upsert": dict(
        table={"a@x.it": ("New A", 10, date(1990, 2, 2)), "b@x.it": ("Old B", 2, None),
               "c@x.it": ("Célia again", 4, D90), "f@x.it": ("multi\nline", 6, None)},
        failures=[(3, "INVALID_VALUE"), (4, "INVALID_VALUE"), (5, "KEY_MISSING"), (7, "INVALID_VALUE")],
        counters=dict(rows_read=8, inserted=2, updated=2, not_inserted=4, not_updated=0)),
}


@pytest.fixture(scope="module")
def modes_tenant(cluster_env, sshd, tmp_path_factory):
    tenant = "modes"
    modules = [{"id": f"modes-{mode}", "mode": mode, "max_error_ratio": 1.0,
                "source": {"path": f"in/{mode}_*.csv", "delimiter": ";", "encoding": "latin-1"}}
               for mode in EXPECTED]
    apply(config(tenant, sshd, modules), tmp_path_factory.mktemp("cfg"))
    return tenant


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_mode_applies_exactly_and_reports_every_bad_record(mode, modes_tenant, sshd, smtp, workers,
                                                           tmp_path, monkeypatch):
    # Given: the database holds two contacts, the file is on the SFTP server, 2 workers, 4 chunks a run
    seed(modes_tenant, BEFORE)
    sshd.put(f"in/{mode}_0001.csv", SOURCE)
    workers.env["DX_CHUNK_BYTES"] = "80"
    workers.start(2)
    expected = EXPECTED[mode]

    # When: the module runs
    result = run(f"modes-{mode}")

    # Then: the table holds exactly what the mode says
    assert result["status"] == "completed_with_errors", result["error_message"]
    assert result["n_chunks"] > 1
    assert table(modes_tenant) == expected["table"]
    for name, value in expected["counters"].items():
        assert result[name] == value, name
    # and every bad record is in the report, with its code and the record as received
    assert failures(result["id"]) == expected["failures"]
    out = tmp_path / "report.csv"
    assert main(["report", str(result["id"]), "-o", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [int(r["row_number"]) for r in rows] == [n for n, _ in expected["failures"]]
    assert rows[0].keys() >= {"row_number", "key", "operation", "error_code", "error_message", "email", "points"}
    assert any(r["points"] == "notanint" and r["error_code"] == "INVALID_VALUE" for r in rows)
    # and the e-mail arrives with the counters
    mail = smtp.wait_for(lambda m: f"(run {result['id']})" in m["Subject"])
    body = text_of(mail)
    assert f"inserted     {expected['counters']['inserted']:>13,}" in body
    assert "INVALID_VALUE" in body and f"attached: run-{result['id']}-failures.csv" in body
    [attached] = [p for p in mail.iter_attachments() if p.get_filename() == f"run-{result['id']}-failures.csv"]
    assert attached.get_payload(decode=True) == out.read_bytes()  # the failures file, as `dx report` wrote it
    # and the text key is still compared byte-wise, under its primary key (an overwrite swapped the table)
    with db.connect() as conn:
        key = conn.execute("SELECT a.attnotnull AS not_null, c.collname, i.indisprimary FROM pg_attribute a"
                           " JOIN pg_collation c ON c.oid = a.attcollation JOIN pg_index i ON i.indrelid = a.attrelid"
                           " AND i.indkey[0] = a.attnum WHERE a.attrelid = %s::regclass AND a.attname = 'email'",
                           (f'"tenant_{modes_tenant}".contacts',)).fetchone()
    assert key == {"not_null": True, "collname": "C", "indisprimary": True}
    # and the file was archived, so that the next run does not import it again
    assert not (sshd.root / f"in/{mode}_0001.csv").exists()
    assert (sshd.root / "in/archive" / f"{mode}_0001.csv.run{result['id']}").exists()
    # and the contact table is the schema's only table (an overwrite drops the one it replaced after the report)
    assert _tables_once_settled(modes_tenant) == ["contacts"]


def _tables_once_settled(tenant: str, timeout_s: float = 10) -> list[str]:
    """The tables of the tenant's schema, once no replaced table is left (or the time is out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with db.connect() as conn:
            names = [r["tablename"] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (f"tenant_{tenant}",))]
        if not any("__old_" in n for n in names) or time.monotonic() > deadline:
            return names
        time.sleep(0.05)


def test_a_reduce_delivered_again_drops_the_table_its_overwrite_replaced(modes_tenant, sshd, workers):
    # Given an overwrite that ended, and the table it replaced still there (its worker stopped after the
    # swap's commit, before the drop)
    seed(modes_tenant, BEFORE)
    sshd.put("in/overwrite_0002.csv", SOURCE)
    workers.start(1)
    result = run("modes-overwrite")
    assert result["status"] == "completed_with_errors", result["error_message"]
    assert _tables_once_settled(modes_tenant) == ["contacts"]
    with db.transaction() as conn:
        conn.execute(f'CREATE TABLE "tenant_{modes_tenant}"."contacts__old_{result["id"]}" (email text)')
    before = table(modes_tenant)

    # When its reduce message is delivered again
    from dx.workers.imports.reduce import reduce
    reduce(result["id"])

    # Then the leftover is dropped, and nothing else changes: the contact table, the run's counters
    assert _tables_once_settled(modes_tenant, timeout_s=0) == ["contacts"]
    assert table(modes_tenant) == before == EXPECTED["overwrite"]["table"]
    with db.connect() as conn:
        again = conn.execute("SELECT status, inserted, not_inserted FROM dx.runs WHERE id = %s",
                             (result["id"],)).fetchone()
    assert again == {"status": "completed_with_errors", "inserted": 3, "not_inserted": 5}


def test_password_authentication_and_ledger(cluster_env, sshd, workers, tmp_path):
    # Given: a connection that logs in with a password (the others use a private key),
    # a file kept in place after import
    apply(config("keyauth", sshd, [{"id": "keyauth-upsert", "mode": "upsert",
                                    "source": {"path": "key/in_*.csv", "after": "keep"}}], auth="password"),
          tmp_path)
    sshd.put("key/in_1.csv", b"email,points\nk1@x.it,1\nk2@x.it,2\n")
    workers.start(1)

    # When: it runs twice
    first, second = run("keyauth-upsert"), run("keyauth-upsert")

    # Then: the first imports, the second finds the file already in the ledger and is skipped
    assert first["status"] == "completed" and first["inserted"] == 2
    assert second["status"] == "skipped"
    assert set(table("keyauth")) == {"k1@x.it", "k2@x.it"}
