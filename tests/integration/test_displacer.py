"""The Displacer on the real cluster: XML and CSV files on SFTP, and a 1,000,000-row round trip."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from zoneinfo import ZoneInfo

import polars as pl
import pytest
import yaml

from dx.devkit.generate import contacts
from dx.shared import db
from dx.shared.catalog import table_ident
from dx.shared.pgcopy import copy_frame
from tests.integration.helpers import apply, export_config, run

PEOPLE = {"email": {"type": "email", "required": True}, "name": "text", "notes": "text", "points": "int",
          "vip": "bool", "born": {"type": "date", "format": "%d/%m/%Y"}}


def _seed_people(tenant: str) -> None:
    with db.transaction() as conn:
        for row in [("a@x.io", "Zoë & <Co>", "line1\nline2", 5, True, "1990-01-31"),
                    ("b@x.io", "", None, None, False, None),
                    ("c@x.io", "=HYPERLINK(\"http://evil\")", "tab\there \\ back", 50, True, "2001-12-01"),
                    ("d@x.io", "filtered out", "x", 1, True, "2001-12-01")]:
            conn.execute(f'INSERT INTO "tenant_{tenant}".people (email, name, notes, points, vip, born)'  # noqa: S608
                         " VALUES (%s, %s, %s, %s, %s, %s)", row)


@pytest.mark.timeout(120)
def test_xml_export_of_chosen_fields_filtered_for_spreadsheets_with_manifest(cluster_env, sshd, workers, tmp_path):
    # Given four contacts (escapes, newline, tab, backslash, NULL vs empty, a formula) and a Displacer
    # of four fields, without d@x.io, as Latin-1 XML for spreadsheets, with a manifest
    tenant = "xmlout"
    apply(export_config(tenant, sshd, {"people": PEOPLE}, [{
        "id": "xmlout-people", "kind": "displacer", "database": "people", "timezone": "Europe/Rome",
        "fields": ["email", "name", "notes", "points", "born"],
        "filter": [{"field": "email", "op": "ne", "value": "d@x.io"}],
        "target": {"path": "out/people_{date:%Y}_{run}.xml", "format": "xml", "encoding": "latin-1",
                   "spreadsheet": True, "manifest": True, "record_element": "CONTACT"}}]), tmp_path)
    _seed_people(tenant)
    workers.start(1)

    # When it runs
    result = run("xmlout-people")

    # Then the file sits under its final name (year in the module's zone), and only there
    assert result["status"] == "completed", result["error_message"]
    assert result["rows_exported"] == 3
    name = f"people_{datetime.now(ZoneInfo('Europe/Rome')):%Y}_{result['id']}.xml"
    folder = sshd.root / "out"
    assert sorted(p.name for p in folder.iterdir()) == [name, f"{name}.manifest.json"]
    data = (folder / name).read_bytes()
    assert data.startswith(b'<?xml version="1.0" encoding="ISO-8859-1"?>')
    assert "Zoë".encode("latin-1") in data
    records = ET.fromstring(data)
    assert records.tag == "dataroot"
    got = [{child.tag: child.text or "" for child in rec} for rec in records]
    assert [r.tag for r in records] == ["CONTACT"] * 3
    # And values are escaped, NULL fields left out, empty ones empty, formulas neutralised, dates formatted
    assert got == [
        {"email": "a@x.io", "name": "Zoë & <Co>", "notes": "line1\nline2", "points": "5", "born": "31/01/1990"},
        {"email": "b@x.io", "name": ""},
        {"email": "c@x.io", "name": "'=HYPERLINK(\"http://evil\")", "notes": "tab\there \\ back", "points": "50",
         "born": "01/12/2001"},
    ]
    # And the manifest describes the file exactly
    manifest = json.loads((folder / f"{name}.manifest.json").read_text())
    assert (manifest["file"], manifest["rows"], manifest["bytes"]) == (name, 3, len(data))
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    with db.connect() as conn:  # recorded with the delivery, when the manifest needs it
        row = conn.execute("SELECT bytes, sha256 FROM dx.exports WHERE run_id = %s", (result["id"],)).fetchone()
    assert (row["bytes"], row["sha256"]) == (len(data), manifest["sha256"])


@pytest.mark.timeout(120)
def test_a_value_the_target_encoding_cannot_hold_fails_the_run_and_leaves_no_file(cluster_env, sshd, workers,
                                                                                   tmp_path):
    # Given a contact named with a check mark, and a Latin-1 CSV Displacer
    tenant = "latin"
    apply(export_config(tenant, sshd, {"people": PEOPLE}, [{
        "id": "latin-people", "kind": "displacer", "database": "people",
        "target": {"path": "latin/people.csv", "encoding": "latin-1", "delimiter": ";"}}]), tmp_path)
    with db.transaction() as conn:
        conn.execute('INSERT INTO "tenant_latin".people (email, name) VALUES (%s, %s)', ("a@x.io", "ok ✓"))
    workers.start(1)
    # When it runs
    result = run("latin-people")
    # Then the run fails with TARGET_UNENCODABLE and no file was written
    assert (result["status"], result["error_code"]) == ("failed", "TARGET_UNENCODABLE")
    assert not (sshd.root / "latin").exists() or list((sshd.root / "latin").iterdir()) == []


@pytest.mark.timeout(120)
def test_a_value_xml_cannot_carry_fails_an_xml_export_and_leaves_no_file(cluster_env, sshd, workers, tmp_path):
    # Given a contact whose notes hold a control character, an XML and a CSV Displacer of the same table
    tenant = "ctlchar"
    apply(export_config(tenant, sshd, {"people": PEOPLE}, [
        {"id": "ctlchar-xml", "kind": "displacer", "database": "people",
         "target": {"path": "ctlchar/people.xml", "format": "xml"}},
        {"id": "ctlchar-csv", "kind": "displacer", "database": "people", "target": {"path": "ctlchar/people.csv"}}]),
        tmp_path)
    with db.transaction() as conn:
        conn.execute('INSERT INTO "tenant_ctlchar".people (email, name, notes) VALUES (%s, %s, %s), (%s, %s, %s)',
                     ("a@x.io", "Ann", "fine", "b@x.io", "Bob", "bell\x07 here"))
    workers.start(1)
    # When the XML export runs
    result = run("ctlchar-xml")
    # Then it fails with TARGET_UNENCODABLE naming the field and the key, and no file was written
    assert (result["status"], result["error_code"]) == ("failed", "TARGET_UNENCODABLE")
    assert "notes" in result["error_message"] and "b@x.io" in result["error_message"]
    assert not (sshd.root / "ctlchar" / "people.xml").exists()
    # When the CSV export runs / Then it carries the value as it is
    assert run("ctlchar-csv")["status"] == "completed"
    assert b"bell\x07 here" in (sshd.root / "ctlchar" / "people.csv").read_bytes()


ROUND_TRIP = {"email": {"type": "email", "required": True}, "first_name": "text", "notes": "text", "points": "int",
              "balance": "decimal", "vip": "bool", "birth_date": {"type": "date", "format": "%d/%m/%Y"},
              "signup_at": "timestamp"}
#: Values that a CSV round trip easily gets wrong.
TRICKY = ["", "   ", None, "line one\nline two", 'say "hi", then; go', "crlf\r\nline", "Zoë ünïcödé ✓ 😀",
          "=1+1", " padded ", "back\\slash", "'quoted'", "<tag>&amp;"]


def _recorded_digests(run_ids: list[int], timeout_s: float = 20) -> dict[int, tuple[int, str]]:
    """{run: (bytes, sha256)} as dx.exports records them, once every run's digest is there."""
    deadline = time.monotonic() + timeout_s
    while True:
        with db.connect() as conn:
            rows = conn.execute("SELECT run_id, bytes, sha256 FROM dx.exports WHERE run_id = ANY(%s)",
                                (run_ids,)).fetchall()
        if len(rows) == len(run_ids) and all(r["sha256"] for r in rows):
            return {r["run_id"]: (r["bytes"], r["sha256"]) for r in rows}
        assert time.monotonic() < deadline, f"digests not recorded within {timeout_s} s: {rows}"
        time.sleep(0.05)


def _round_trip_rows(n: int) -> pl.DataFrame:
    """n contacts with NULLs in every optional field and the tricky values in notes."""
    row = pl.int_range(pl.len())
    return contacts(n, seed=5).select(
        "email",
        pl.when(row % 7 == 0).then(None).otherwise(pl.col("first_name")).alias("first_name"),
        pl.Series("notes", (TRICKY * (n // len(TRICKY) + 1))[:n], dtype=pl.String),
        pl.when(row % 5 == 0).then(None).otherwise(pl.col("points").cast(pl.Int64)).alias("points"),
        pl.when(row % 11 == 0).then(None).otherwise(pl.col("balance")).alias("balance"),
        pl.when(row % 13 == 0).then(None).otherwise(pl.col("vip").is_in(["true", "yes"])).alias("vip"),
        pl.when(row % 17 == 0).then(None).otherwise(pl.col("birth_date").str.to_date("%d/%m/%Y")).alias("birth_date"),
        pl.col("signup_at").str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="us").dt.replace_time_zone("UTC")
        + pl.duration(microseconds=row % 1000),
    )


def _differences(tenant: str, a: str, b: str) -> int:
    with db.connect() as conn:
        row = conn.execute(f'SELECT (SELECT count(*) FROM (TABLE "tenant_{tenant}".{a} EXCEPT ALL'  # noqa: S608
                           f' TABLE "tenant_{tenant}".{b}) x) + (SELECT count(*) FROM (TABLE "tenant_{tenant}".{b}'
                           f' EXCEPT ALL TABLE "tenant_{tenant}".{a}) y) AS n').fetchone()
    return int(row["n"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_million_rows_displaced_and_imported_again_give_the_same_table(cluster_env, sshd, workers, tmp_path):
    # Given 1,000,000 contacts with accents, quotes, newlines, NULLs, empty and blank strings, a Displacer
    # writing them gzipped to SFTP and an overwrite Importer of that file into a second database
    tenant = "roundtrip"
    apply(export_config(tenant, sshd, {"people": ROUND_TRIP, "copy": ROUND_TRIP}, [
        {"id": "rt-out", "kind": "displacer", "database": "people",
         "target": {"path": "rt/people_{date:%Y%m%d}.csv.gz", "compression": "gzip", "manifest": True}},
        {"id": "rt-in", "kind": "importer", "database": "copy", "mode": "overwrite",
         "source": {"path": "rt/people_*.csv.gz", "nulls": "unquoted", "settle_s": 0}},
    ]), tmp_path)
    frame = _round_trip_rows(1_000_000)
    with db.transaction() as conn:
        copy_frame(conn, table_ident(tenant, "people"), frame)
    workers.start(2)

    # When the Displacer runs, then the Importer
    out = run("rt-out", 600)
    assert out["status"] == "completed", out["error_message"]
    [gz] = (sshd.root / "rt").glob("people_*.csv.gz")  # read before the import archives it (after its run ends)
    displaced = gz.read_bytes()
    back = run("rt-in", 600)

    # Then the file came in 4 parallel chunks, is one valid gzip stream, and the copy equals the original
    assert out["rows_exported"] == 1_000_000 and out["n_chunks"] == 4
    assert gzip.decompress(displaced).count(b"\n") > 1_000_000  # header + records (+ quoted newlines)
    assert back["status"] == "completed", back["error_message"]
    assert back["inserted"] == 1_000_000
    assert _differences(tenant, "people", "copy") == 0
    with db.connect() as conn:
        kinds = conn.execute('SELECT count(*) FILTER (WHERE notes IS NULL) AS nulls,'
                             " count(*) FILTER (WHERE notes = '') AS empties,"
                             " count(*) FILTER (WHERE notes = '   ') AS blanks,"
                             " count(*) FILTER (WHERE notes LIKE '%%' || chr(13) || chr(10) || '%%') AS crlf"
                             ' FROM "tenant_roundtrip".copy').fetchone()
    expected = len(frame) // len(TRICKY)
    assert all(abs(kinds[k] - expected) <= 1 for k in ("nulls", "empties", "blanks", "crlf")), kinds


#: Fails the first claim of chunk 0 of a run of the module ``retried-out`` (a sequence is not rolled back
#: with the failed transaction, so the second claim goes through).
FAIL_FIRST_CLAIM = """
CREATE SEQUENCE dx_test_claims;
CREATE FUNCTION dx_test_fail_first_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.chunk_no = 0 AND (SELECT module FROM dx.runs WHERE id = NEW.run_id) = 'retried-out'
     AND nextval('dx_test_claims') = 1 THEN
    RAISE EXCEPTION 'dx test: the first claim of chunk 0 fails';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER dx_test_fail_first_claim BEFORE INSERT ON dx.chunk_results
  FOR EACH ROW EXECUTE FUNCTION dx_test_fail_first_claim();
"""


@pytest.mark.timeout(300)
def test_parts_placed_by_the_chunks_or_by_the_reduce_after_a_retry_make_the_same_file(cluster_env, sshd, workers,
                                                                                     tmp_path):
    # Given 300,000 contacts (2 chunks) in two tenants, and a database that fails the first claim of the
    # second tenant's chunk 0, after its part was written and placed: its retry writes it again
    rows = pl.DataFrame({"email": [f"p{i}@x.io" for i in range(300_000)], "name": [f"N{i % 97}" for i in range(300_000)],
                         "points": list(range(300_000))})
    configs = [yaml.safe_load(export_config(tenant, sshd, {"people": {
        "email": {"type": "email", "required": True}, "name": "text", "points": "int"}}, [
        {"id": f"{tenant}-out", "kind": "displacer", "database": "people", "target": {"path": f"{tenant}/people.csv"}}]))
        for tenant in ("placed", "retried")]
    apply(yaml.safe_dump({k: configs[0][k] + configs[1][k] for k in configs[0]}), tmp_path)
    with db.transaction() as conn:
        for tenant in ("placed", "retried"):
            copy_frame(conn, table_ident(tenant, "people"), rows)
        conn.execute(FAIL_FIRST_CLAIM)
    try:
        workers.start(2)

        # When both run
        results = [run(f"{tenant}-out") for tenant in ("placed", "retried")]
    finally:
        with db.transaction() as conn:
            conn.execute("DROP TRIGGER dx_test_fail_first_claim ON dx.chunk_results;"
                         " DROP FUNCTION dx_test_fail_first_claim; DROP SEQUENCE dx_test_claims")

    # Then both delivered the same bytes, whole, and left nothing else behind
    assert [(r["status"], r["n_chunks"], r["rows_exported"]) for r in results] == [("completed", 2, 300_000)] * 2
    files = [sorted((sshd.root / tenant).iterdir()) for tenant in ("placed", "retried")]
    assert [[p.name for p in f] for f in files] == [["people.csv"]] * 2
    placed, retried = (f[0].read_bytes() for f in files)
    assert placed == retried and placed.count(b"\n") == 300_001
    # (without a manifest, the digest is recorded after the report: the reduce reads the file meanwhile)
    assert set(_recorded_digests([r["id"] for r in results]).values()) == {(len(placed),
                                                                            hashlib.sha256(placed).hexdigest())}
    # And the first run's parts were placed by its chunks; the retried run's notes were void, so its reduce
    # wrote every part
    logs = [json.loads(line) for log in workers.logdir.glob("worker-*.log") for line in log.read_text().splitlines()
            if '"run.finished"' in line]
    finished = {f["tenant"]: (f["parts_placed_by_chunks"], f["parts_written_by_reduce"]) for f in logs}
    assert finished == {"placed": (2, 0), "retried": (0, 2)}


@pytest.mark.timeout(120)
def test_csv_values_are_written_in_the_forms_the_importer_reads(cluster_env, sshd, workers, tmp_path):
    # Given contacts with an integer, a decimal keeping its scale, dates and timestamps in their default
    # forms (whole seconds, fractions, a zone other than UTC), booleans and NULLs, exported without a
    # list of fields (all of them, in the order configured)
    tenant = "forms"
    fields = {"email": {"type": "email", "required": True}, "points": "int", "balance": "decimal", "vip": "bool",
              "born": "date", "seen": "timestamp"}
    apply(export_config(tenant, sshd, {"people": fields}, [
        {"id": "forms-out", "kind": "displacer", "database": "people", "target": {"path": "forms/people.csv"}}]),
        tmp_path)
    with db.transaction() as conn:
        for row in [("a@x.io", 5, "1.50", True, "1990-01-31", "2024-03-01 10:20:30+00"),
                    ("b@x.io", -7, "-0.001", False, "2001-12-01", "2024-03-01 10:20:30.123456+00"),
                    ("c@x.io", None, None, None, None, "2024-03-01 12:00:00.5+02")]:
            conn.execute(f'INSERT INTO "tenant_{tenant}".people (email, points, balance, vip, born, seen)'  # noqa: S608
                         " VALUES (%s, %s, %s, %s, %s, %s)", row)
    workers.start(1)

    # When it runs
    result = run("forms-out")

    # Then the columns are in the configured order, each value in the Importer's default form, timestamps
    # in UTC, NULL an unquoted empty cell
    assert result["status"] == "completed", result["error_message"]
    assert (sshd.root / "forms" / "people.csv").read_text().splitlines() == [
        "email,points,balance,vip,born,seen",
        '"a@x.io","5","1.50","true","1990-01-31","2024-03-01 10:20:30"',
        '"b@x.io","-7","-0.001","false","2001-12-01","2024-03-01 10:20:30.123456"',
        '"c@x.io",,,,,"2024-03-01 10:00:00.5"',
    ]


@pytest.mark.timeout(120)
def test_an_empty_database_is_displaced_as_a_file_with_its_header_only(cluster_env, sshd, workers, tmp_path):
    # Given a Displacer of a database holding no contact (its plan makes no chunk)
    apply(export_config("nobody", sshd, {"people": {"email": {"type": "email", "required": True}, "name": "text"}}, [
        {"id": "nobody-out", "kind": "displacer", "database": "people", "target": {"path": "nobody/people.csv"}}]),
        tmp_path)
    workers.start(1)

    # When it runs
    result = run("nobody-out")

    # Then the run completed with no row and delivered the header alone, nothing else beside it
    assert (result["status"], result["n_chunks"], result["rows_exported"]) == ("completed", 0, 0)
    assert [p.name for p in (sshd.root / "nobody").iterdir()] == ["people.csv"]
    assert (sshd.root / "nobody" / "people.csv").read_bytes() == b"email,name\n"
