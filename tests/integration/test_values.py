"""Values as clients write them: their own bool words, several date formats, a report without
repeated column names."""

from __future__ import annotations

import csv
import io
from datetime import date

from dx.cli import main
from dx.shared import db
from tests.integration.helpers import apply, config, failures, run

TENANT = "vals"
FIELDS = {"email": {"type": "email", "required": True}, "first_name": "text",
          "vip": {"type": "bool", "true_values": ["si", "S"], "false_values": ["no", "N"]},
          "birth_date": {"type": "date", "format": ["%d/%m/%Y", "%Y-%m-%d"]}}


def test_bool_words_date_formats_and_a_report_without_repeated_names(cluster_env, sshd, workers, tmp_path,
                                                                      capsys):
    # Given: an Updater whose file carries its operation column, Italian bool words and two date forms
    apply(config(TENANT, sshd, [{"id": "vals-ops", "kind": "updater", "source": {"path": "vals/ops_*.csv"}}],
                 fields=FIELDS), tmp_path)
    sshd.put("vals/ops_1.csv", b"operation,email,first_name,vip,birth_date\n"
                               b"I,a@vals.it,Ann,si,01/02/1990\n"
                               b"I,b@vals.it,Bob,NO,1985-12-31\n"
                               b"I,c@vals.it,Cy,yes,02/03/2000\n"
                               b"I,d@vals.it,Di, S ,31-12-1985\n")
    workers.start(1)

    # When: it runs
    result = run("vals-ops")

    # Then: the client's words and both date forms are read; other words and forms are refused
    with db.connect() as conn:
        rows = {r["email"]: (r["vip"], r["birth_date"]) for r in conn.execute(
            f'SELECT email, vip, birth_date FROM "tenant_{TENANT}".contacts')}  # noqa: S608
    assert rows == {"a@vals.it": (True, date(1990, 2, 1)), "b@vals.it": (False, date(1985, 12, 31))}
    assert (result["inserted"], result["not_inserted"]) == (2, 2)
    assert failures(result["id"]) == [(3, "INVALID_VALUE"), (4, "INVALID_VALUE")]
    # ... and the report names the file's own operation column source.operation, every name once
    capsys.readouterr()
    assert main(["report", str(result["id"])]) == 0
    report = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    header = report[0]
    assert header == ["row_number", "key", "operation", "error_code", "error_message",
                      "source.operation", "email", "first_name", "vip", "birth_date"]
    assert len(set(header)) == len(header)
    assert report[1][:4] == ["3", "c@vals.it", "I", "INVALID_VALUE"] and report[1][5] == "I"
    assert "birth_date" in report[2][4] and "%d/%m/%Y or %Y-%m-%d" in report[2][4]
