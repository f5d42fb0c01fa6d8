"""A source column that maps to no field is never ignored in silence: ``unknown_columns: warn`` (the
default) completes the run with a warning UNKNOWN_COLUMN shown by `dx show`, the e-mail and the API;
``fail`` fails the run before anything is written; ``ignore`` says nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dx.cli import main
from dx.scheduler.tokens import create_token
from dx.shared import db
from tests.integration.helpers import apply, config, run, seed, table, tables_left, text_of

pytestmark = pytest.mark.timeout(180)

BEFORE = [("keep1@x.it", "Keep", 1), ("keep2@x.it", "Keep", 2)]
#: first_name misspelled, an extra column, and points in upper case (a match)
SOURCE = b"email,frist_name,POINTS,e_mail\na@x.it,Ann,1,x\nb@x.it,Bob,2,y\n"


def _module(tenant: str, path: str, **options: Any) -> dict[str, Any]:
    return {"id": f"{tenant}-import", "mode": "overwrite", "source": {"path": path}, **options}


def _chunk_results(run_id: int) -> int:
    with db.connect() as conn:
        row = conn.execute("SELECT count(*) AS n FROM dx.chunk_results WHERE run_id = %s", (run_id,)).fetchone()
    assert row is not None
    return int(row["n"])


def test_a_misspelled_column_completes_with_a_warning_in_dx_show_the_mail_and_the_api(
        cluster_env, sshd, smtp, workers, api, tmp_path, capsys):
    # Given: an overwrite module left at the default unknown_columns (warn) over a seeded table, and a
    # file whose first_name is misspelled, with an extra column, and points in upper case (a match)
    tenant = "ukwarn"
    path = f"{tenant}/in.csv"
    apply(config(tenant, sshd, [_module(tenant, path)]), tmp_path)
    seed(tenant, BEFORE)
    sshd.put(path, SOURCE)
    workers.start(1)

    # When: it runs
    result = run(f"{tenant}-import")

    # Then: it completed, first_name is empty as before, and the run carries one warning naming both columns
    assert result["status"] == "completed", result["error_message"]
    assert table(tenant) == {"a@x.it": (None, 1, None), "b@x.it": (None, 2, None)}
    message = "columns frist_name, e_mail map to no field of database contacts; they were not imported"
    expected = [{"code": "UNKNOWN_COLUMN", "message": message}]
    assert result["warnings"] == expected

    # and `dx show --json` lists it, `dx show` prints it
    capsys.readouterr()  # what `dx apply` printed
    assert main(["show", str(result["id"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == expected
    assert main(["show", str(result["id"])]) == 0
    assert f"warning UNKNOWN_COLUMN: {message}" in capsys.readouterr().out

    # and the e-mail says so in its subject and in a Warnings section with the code's meaning
    mail = smtp.wait_for(lambda m: f"(run {result['id']})" in m["Subject"])
    assert "completed, 1 warning" in mail["Subject"]
    body = text_of(mail)
    assert "Warnings:" in body and f"UNKNOWN_COLUMN: {message}" in body
    assert "map to no field of the database (a misspelled name?)" in body

    # and the API's run detail and run list show it, as its OpenAPI document describes
    with db.transaction() as conn:
        token = create_token(conn, tenant, "pytest")[1]
    with api.client(token) as client:
        assert client.get(f"/api/v1/runs/{result['id']}").json()["warnings"] == expected
        listed = client.get("/api/v1/runs", params={"module": f"{tenant}-import"}).json()["runs"]
        assert [r["warnings"] for r in listed if r["id"] == result["id"]] == [expected]
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["RunOut"]["properties"]["warnings"]["items"] == {"$ref": "#/components/schemas/RunWarning"}
    assert set(schemas["RunWarning"]["properties"]) == {"code", "message"}

    # When: the module is set to unknown_columns: ignore and the same file comes again
    apply(config(tenant, sshd, [_module(tenant, path, unknown_columns="ignore")]), tmp_path)
    sshd.put(path, SOURCE)
    ignored = run(f"{tenant}-import")

    # Then: it completes alike, with no warning, and its e-mail mentions none
    assert ignored["status"] == "completed", ignored["error_message"]
    assert ignored["warnings"] == []
    assert table(tenant) == {"a@x.it": (None, 1, None), "b@x.it": (None, 2, None)}
    quiet = smtp.wait_for(lambda m: f"(run {ignored['id']})" in m["Subject"])
    assert "warning" not in quiet["Subject"] and "Warnings:" not in text_of(quiet)


def test_under_fail_a_misspelled_column_fails_the_run_before_anything_is_written(
        cluster_env, sshd, workers, tmp_path):
    # Given: an overwrite module with unknown_columns: fail over a seeded table, and a file whose key
    # column and first_name are both misspelled
    tenant = "ukfail"
    path = f"{tenant}/in.csv"
    apply(config(tenant, sshd, [_module(tenant, path, unknown_columns="fail")]), tmp_path)
    seed(tenant, BEFORE)
    sshd.put(path, b"e_mail,frist_name,points\na@x.it,Ann,1\n")
    workers.start(1)

    # When: it runs
    missing = run(f"{tenant}-import")

    # Then: the missing key column is what fails it, as before
    assert (missing["status"], missing["error_code"]) == ("failed", "MISSING_REQUIRED_COLUMN")
    assert "email" in missing["error_message"]

    # When: the key's column is fixed but first_name is still misspelled, and it runs again
    sshd.put(path, b"email,frist_name,points\na@x.it,Ann,1\nb@x.it,Bob,2\n")
    result = run(f"{tenant}-import")

    # Then: it failed with UNKNOWN_COLUMN, naming the column and the ways out
    assert (result["status"], result["error_code"]) == ("failed", "UNKNOWN_COLUMN")
    assert "column frist_name maps to no field of database contacts" in result["error_message"]
    assert "unknown_columns: ignore" in result["error_message"]
    assert result["warnings"] == []
    # and nothing was written: no chunk ran, no streaming attempt began, the table and its key stay
    assert _chunk_results(result["id"]) == 0
    assert (result["plan_attempt"], result["n_chunks"]) == (0, None)
    assert table(tenant) == {k: (n, p, None) for k, n, p in BEFORE}
    assert tables_left(tenant) == ["contacts"]


def test_an_xml_element_that_maps_to_no_field_is_a_warning_and_the_action_attribute_is_not(
        cluster_env, sshd, workers, tmp_path):
    # Given: an updater reading XML whose records carry their operation as an ACTION attribute, a
    # misspelled FRIST_NAME element and a NOTE element (unknown_columns left at warn)
    tenant = "ukxml"
    path = f"{tenant}/in.xml"
    apply(config(tenant, sshd, [{"id": f"{tenant}-update", "kind": "updater", "operation_field": "action",
                                 "source": {"path": path, "format": "xml"}}]), tmp_path)
    seed(tenant, BEFORE)
    sshd.put(path, b'<dataroot><RECORD ACTION="I"><EMAIL>n@x.it</EMAIL><FRIST_NAME>N</FRIST_NAME>'
                   b'<POINTS>5</POINTS></RECORD><RECORD ACTION="U"><EMAIL>keep1@x.it</EMAIL><POINTS>9</POINTS>'
                   b'<NOTE>x</NOTE></RECORD></dataroot>')
    workers.start(1)

    # When: it runs
    result = run(f"{tenant}-update")

    # Then: the operations applied, and the one warning names the two elements, not the attribute
    assert result["status"] == "completed", result["error_message"]
    assert (result["inserted"], result["updated"]) == (1, 1)
    rows = table(tenant)
    assert rows["n@x.it"] == (None, 5, None) and rows["keep1@x.it"][1] == 9
    assert result["warnings"] == [{"code": "UNKNOWN_COLUMN", "message": "columns FRIST_NAME, NOTE map to no "
                                   "field of database contacts; they were not imported"}]
