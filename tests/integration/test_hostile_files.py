"""Files that would pass in silence or harm: a column given twice under two cases (CSV, XML), a file of 0 bytes,
a column named like a spreadsheet formula."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from dx.cli import main
from tests.integration.helpers import apply, config, failures, run, seed, table


def _appears(path: Path, timeout_s: float = 20) -> bool:
    """Whether the file appears within the time (a failed run's file is set aside after its end)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return path.exists()


def test_two_columns_that_differ_only_by_case_fail_the_run_instead_of_one_being_dropped(
        cluster_env, sshd, workers, tmp_path):
    # Given: a contact already there, and a file giving the key as email and again as EMAIL
    tenant = "twincase"
    apply(config(tenant, sshd, [{"id": f"{tenant}-import", "mode": "upsert",
                                 "source": {"path": f"{tenant}/in_*.csv"}}]), tmp_path)
    seed(tenant, [("old@x.it", "Old", 1)])
    sshd.put(f"{tenant}/in_1.csv", b"email,EMAIL,first_name\na@x.it,b@x.it,Ann\n")
    workers.start(1)
    # When: it runs
    result = run(f"{tenant}-import")
    # Then: the run fails with MALFORMED_HEADER naming both columns; nothing was written; the file is set aside
    assert (result["status"], result["error_code"]) == ("failed", "MALFORMED_HEADER")
    assert "email, EMAIL all map to field email" in result["error_message"]
    assert table(tenant) == {"old@x.it": ("Old", 1, None)} and failures(result["id"]) == []
    assert _appears(sshd.root / tenant / "rejected" / "in_1.csv")


def test_a_file_of_zero_bytes_is_not_a_success(cluster_env, sshd, workers, tmp_path):
    # Given: an append module whose only file is empty (an upload cut short)
    tenant = "zerobytes"
    apply(config(tenant, sshd, [{"id": f"{tenant}-import", "mode": "append",
                                 "source": {"path": f"{tenant}/in_*.csv"}}]), tmp_path)
    seed(tenant, [])
    sshd.put(f"{tenant}/in_1.csv", b"")
    workers.start(1)
    # When: it runs
    result = run(f"{tenant}-import")
    # Then: it fails with EMPTY_SOURCE saying the file is empty, and the file is set aside with its reason
    assert (result["status"], result["error_code"]) == ("failed", "EMPTY_SOURCE")
    assert "is empty (0 bytes)" in result["error_message"]
    reason = sshd.root / tenant / "rejected" / "in_1.csv.reason.txt"
    assert _appears(reason) and "EMPTY_SOURCE" in reason.read_text()


def test_two_xml_elements_that_differ_only_by_case_fail_the_run(cluster_env, sshd, workers, tmp_path):
    # Given: an XML file giving the key as <EMAIL> and again as <email>
    tenant = "twincasexml"
    apply(config(tenant, sshd, [{"id": f"{tenant}-import", "mode": "upsert",
                                 "source": {"path": f"{tenant}/in_*.xml", "format": "xml"}}]), tmp_path)
    seed(tenant, [("old@x.it", "Old", 1)])
    sshd.put(f"{tenant}/in_1.xml", b"<?xml version='1.0'?>\n<dataroot><RECORD><EMAIL>a@x.it</EMAIL>"
                                   b"<email>b@x.it</email><FIRST_NAME>Ann</FIRST_NAME></RECORD></dataroot>\n")
    workers.start(1)
    # When: it runs
    result = run(f"{tenant}-import")
    # Then: MALFORMED_HEADER naming both; nothing written
    assert (result["status"], result["error_code"]) == ("failed", "MALFORMED_HEADER"), result["error_message"]
    assert "map to field email" in result["error_message"]
    assert table(tenant) == {"old@x.it": ("Old", 1, None)} and failures(result["id"]) == []


def test_a_source_column_named_like_a_formula_is_defused_in_the_report_header(cluster_env, sshd, workers,
                                                                              tmp_path):
    # Given: a file with an extra column whose name a spreadsheet would run, and a record that fails
    tenant = "formulahead"
    apply(config(tenant, sshd, [{"id": f"{tenant}-import", "mode": "upsert",
                                 "source": {"path": f"{tenant}/in_*.csv"}}]), tmp_path)
    seed(tenant, [])
    sshd.put(f"{tenant}/in_1.csv", b"email,first_name,\"=cmd|' /C calc'!A0\"\na@x.it,Ann,1\nnot-an-email,Bob,2\n")
    workers.start(1)
    # When: it runs and its report is written
    result = run(f"{tenant}-import")
    out = tmp_path / "report.csv"
    assert main(["report", str(result["id"]), "-o", str(out)]) == 0
    # Then: the header cell starts with a quote, the record's cell too
    header, row = list(csv.reader(io.StringIO(out.read_text(), newline="")))
    assert "'=cmd|' /C calc'!A0" in header and "=cmd|' /C calc'!A0" not in header
    assert row[header.index("'=cmd|' /C calc'!A0")] == "2"
