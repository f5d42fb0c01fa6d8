"""XML sources over SFTP: the same table and the same failures as the equivalent CSV,
for the Importer (upsert) and the Updater (the ACTION attribute); bombs and broken files refused."""

from __future__ import annotations

import csv
import io
import random
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest

from tests.integration.helpers import apply, config, failures, run, seed, table

pytestmark = pytest.mark.timeout(180)

SEEDED = [(f"k{i}@x.it", "Seed", i) for i in range(0, 40, 2)]


def _records(rng: random.Random, n: int, *, with_operation: bool) -> list[dict[str, str]]:
    """Records over 40 keys: repeats, bad e-mails and numbers, empty cells, (operations I/U/D/bad)."""
    out = []
    for _ in range(n):
        rec = {"email": rng.choice([f"k{rng.randrange(40)}@x.it", f"K{rng.randrange(40)}@X.IT", "not-an-email", ""]),
               "first_name": rng.choice(["Zoë", "Ann & Bob", "<b>", "", "  "]),
               "points": rng.choice([str(rng.randrange(100)), "x", ""]),
               "birth_date": rng.choice(["01/02/1990", "1990-02-01", ""])}
        if with_operation:
            rec = {"action": rng.choice(["I", "U", "D", "u", " d ", "X"]), **rec}
        out.append(rec)
    return out


def _csv(records: list[dict[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue().encode()


def _xml(records: list[dict[str, str]], rng: random.Random, *, encoding: str = "UTF-8") -> bytes:
    """The clients' layout: upper-case element names, the operation as an ACTION attribute, and
    an empty value written as <X/> or <X></X> (both NULL, as an empty CSV cell; an element left
    out would leave the field as it is: see test_updater's tests of unset fields)."""
    parts = [f'<?xml version="1.0" encoding="{encoding}"?>\n<dataroot>\n']
    for rec in records:
        action = f" ACTION={quoteattr(rec['action'])}" if "action" in rec else ""
        fields = "".join(f"<{k.upper()}/>" if v == "" and rng.random() < 0.5
                         else f"<{k.upper()}>{escape(v)}</{k.upper()}>" for k, v in rec.items() if k != "action")
        parts.append(f"  <RECORD{action}>{fields}</RECORD>\n")
    parts.append("</dataroot>\n")
    return "".join(parts).encode(encoding)


def _both(sshd: Any, tmp_path: Any, kind: dict[str, Any], csv_data: bytes, xml_data: bytes,
          xml_source: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the same module over the CSV (tenant xcsv) and the XML (tenant xxml); both results."""
    results = []
    for tenant, name, data, extra in (("xcsv", "in.csv", csv_data, {}),
                                      ("xxml", "in.xml", xml_data, {"format": "xml", **(xml_source or {})})):
        path = f"{tenant}/{kind['id']}/{name}"
        module = {**kind, "id": f"{tenant}-{kind['id']}", "source": {"path": path, "after": "keep", **extra}}
        apply(config(tenant, sshd, [module]), tmp_path)
        seed(tenant, SEEDED)
        sshd.put(path, data)
        results.append(run(module["id"]))
    return results[0], results[1]


COUNTERS = ("rows_read", "inserted", "updated", "deleted", "not_inserted", "not_updated", "not_deleted")


def test_an_xml_upsert_gives_the_table_and_failures_of_the_same_csv(cluster_env, sshd, workers, tmp_path):
    # Given: 600 records with repeats and bad values, as CSV and as XML (Windows-1252, declared)
    rng = random.Random(7)
    records = _records(rng, 600, with_operation=False)
    workers.start(2)

    # When: an upsert imports each, in chunks of about 4 KB
    kind = {"id": "upsert", "mode": "upsert", "chunk_bytes": 4096}
    by_csv, by_xml = _both(sshd, tmp_path, kind, _csv(records), _xml(records, rng, encoding="windows-1252"))

    # Then: the same table, the same failed rows and codes, the same counters
    assert by_xml["status"] == by_csv["status"] == "completed_with_errors", by_xml["error_message"]
    assert by_xml["n_chunks"] > 1
    assert table("xxml") == table("xcsv")
    assert "Ann & Bob" in {v[0] for v in table("xxml").values()}
    assert failures(by_xml["id"]) == failures(by_csv["id"])
    assert {c: by_xml[c] for c in COUNTERS} == {c: by_csv[c] for c in COUNTERS}


def test_an_xml_updater_reads_the_action_attribute_like_the_csv_column(cluster_env, sshd, workers, tmp_path):
    # Given: 600 I/U/D records (some operations unknown), as CSV with an `action` column and as XML
    # with ACTION attributes, and an updater whose operation_field is `action`
    rng = random.Random(11)
    records = _records(rng, 600, with_operation=True)
    workers.start(2)

    # When: the updater applies each
    kind = {"id": "updater", "kind": "updater", "operation_field": "action", "chunk_bytes": 4096}
    by_csv, by_xml = _both(sshd, tmp_path, kind, _csv(records), _xml(records, rng))

    # Then: the same table, failures and counters (I, U and D all happened)
    assert by_xml["status"] == by_csv["status"] == "completed_with_errors", by_xml["error_message"]
    assert table("xxml") == table("xcsv")
    assert failures(by_xml["id"]) == failures(by_csv["id"])
    assert {c: by_xml[c] for c in COUNTERS} == {c: by_csv[c] for c in COUNTERS}
    assert min(by_xml["inserted"], by_xml["updated"], by_xml["deleted"]) > 0
    assert "BAD_OPERATION" in {code for _, code in failures(by_xml["id"])}


BOMB = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
        + "".join(f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi", strict=True))
        + ']><dataroot><RECORD><EMAIL>bomb@x.it</EMAIL><FIRST_NAME>&i;</FIRST_NAME></RECORD></dataroot>')
XXE = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       "<dataroot><RECORD><EMAIL>xxe@x.it</EMAIL><FIRST_NAME>&x;</FIRST_NAME></RECORD></dataroot>")
BROKEN = ("<dataroot>\n<RECORD><EMAIL>a@x.it</EMAIL></RECORD>\n"
          "<RECORD><EMAIL>b@x.it</EMAIL><POINTS>3</RECORD>\n</dataroot>\n")


@pytest.mark.parametrize("case, document, code, says", [
    ("bomb", BOMB, "SOURCE_UNSAFE", "refused"),
    ("xxe", XXE, "SOURCE_UNSAFE", "refused"),
    ("broken", BROKEN, "SOURCE_UNREADABLE", "line 3, column"),
])
def test_bombs_and_broken_documents_fail_the_run_and_change_nothing(cluster_env, sshd, workers, tmp_path,
                                                                    case, document, code, says):
    # Given: an upsert module over a seeded database, and a hostile or broken XML file
    tenant = f"xbad-{case}"
    path = f"{tenant}/in.xml"
    apply(config(tenant, sshd, [{"id": f"{tenant}-import", "mode": "upsert",
                                 "source": {"path": path, "format": "xml"}}]), tmp_path)
    seed(tenant, SEEDED)
    sshd.put(path, document.encode())
    workers.start(1)

    # When: it runs
    result = run(f"{tenant}-import")

    # Then: the run fails with the code, saying why (and where), and the table is untouched
    assert result["status"] == "failed"
    assert result["error_code"] == code, result["error_message"]
    assert says in result["error_message"]
    assert table(tenant) == {k: (n, p, None) for k, n, p in SEEDED}


def test_a_malformed_record_is_reported_with_its_ordinal_and_the_others_apply(cluster_env, sshd, workers,
                                                                              tmp_path):
    # Given: three records, the second giving EMAIL twice
    tenant = "xrec"
    path = f"{tenant}/in.xml"
    apply(config(tenant, sshd, [{"id": f"{tenant}-import", "mode": "append",
                                 "source": {"path": path, "format": "xml"}}]), tmp_path)
    seed(tenant, [])
    sshd.put(path, b"<dataroot><RECORD><EMAIL>a@x.it</EMAIL></RECORD>"
                   b"<RECORD><EMAIL>b@x.it</EMAIL><EMAIL>c@x.it</EMAIL></RECORD>"
                   b"<RECORD><EMAIL>d@x.it</EMAIL><POINTS>4</POINTS></RECORD></dataroot>")
    workers.start(1)

    # When: it runs
    result = run(f"{tenant}-import")

    # Then: records 1 and 3 are in, record 2 is a MALFORMED_RECORD failure
    assert result["status"] == "completed_with_errors", result["error_message"]
    assert table(tenant) == {"a@x.it": (None, None, None), "d@x.it": (None, 4, None)}
    assert failures(result["id"]) == [(2, "MALFORMED_RECORD")]
    assert (result["rows_read"], result["inserted"], result["not_inserted"]) == (3, 2, 1)
