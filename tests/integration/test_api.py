"""The HTTP API of ``dx serve``, spoken to over real HTTP: tokens, tenants, run-now, pause, reports."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from dx.cli import main
from dx.scheduler.tokens import create_token
from dx.shared import db
from dx.shared.runs import COUNTERS, RunStatus, Trigger, create_run, finish
from tests.integration.helpers import apply, config, run

pytestmark = pytest.mark.timeout(120)

# Given: a file with good records, bad ones, and a cell a spreadsheet would run as a formula.
SOURCE = (b"email,first_name,points,birth_date\n"
          b"a@x.it,A,1,01/01/1990\n"
          b"bad-email,B,2,\n"
          b"c@x.it,=HYPERLINK(1),notanint,\n"
          b"d@x.it,D,4,31/02/1990\n"
          b"e@x.it,E,5,\n")
#: Far ahead, so that no scheduler of another test ever fires it.
SCHEDULE = {"cron": ["30 2 * * *"], "timezone": "Europe/Rome", "start": "2099-01-01"}


@pytest.fixture(scope="module")
def tokens(cluster_env, sshd, tmp_path_factory) -> dict[str, str]:
    """Tenants apia (two modules, one scheduled) and apib (one), and a token each."""
    apply(config("apia", sshd, [
        {"id": "apia-import", "mode": "overwrite", "max_error_ratio": 1.0, "source": {"path": "in/apia_*.csv"},
         "schedule": SCHEDULE},
        {"id": "apia-other", "mode": "append", "source": {"path": "in/apia-other_*.csv"}}]),
        tmp_path_factory.mktemp("cfg-a"))
    apply(config("apib", sshd, [{"id": "apib-import", "mode": "append", "source": {"path": "in/apib_*.csv"}}]),
          tmp_path_factory.mktemp("cfg-b"))
    with db.transaction() as conn:
        return {t: create_token(conn, t, "pytest")[1] for t in ("apia", "apib")}


def wait_run(client: Any, run_id: int, timeout_s: float = 60) -> dict[str, Any]:
    """Poll GET /api/v1/runs/ID until the run ends."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        doc = client.get(f"/api/v1/runs/{run_id}").json()
        if RunStatus(doc["status"]).terminal:
            return dict(doc)
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end within {timeout_s} s")


def error_of(response: Any) -> str:
    """The stable code of an error response (and a check of the error body's shape)."""
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    return str(body["error"]["code"])


def test_without_a_valid_token_every_api_route_answers_401(api, tokens, capsys):
    # Given: no token, junk tokens, another scheme, and a token revoked with `dx token revoke`
    assert main(["token", "create", "--tenant", "apia", "--name", "short-lived"]) == 0
    revoked = capsys.readouterr().out.strip()
    with api.client(revoked) as c:
        assert c.get("/api/v1/modules").status_code == 200  # it works before it is revoked
    token_id = next(t["id"] for t in _token_rows("apia") if t["name"] == "short-lived")
    assert main(["token", "revoke", str(token_id)]) == 0
    with api.client() as c:
        # When: each asks for the tenant's modules, runs, or a run-now
        for path, method in (("/api/v1/modules", "GET"), ("/api/v1/runs", "GET"),
                             ("/api/v1/modules/apia-import/runs", "POST")):
            for headers in ({}, {"Authorization": "Bearer dx_" + "A" * 43}, {"Authorization": "Bearer junk"},
                            {"Authorization": "Basic YWNtZTphY21l"}, {"Authorization": f"Bearer {revoked}"}):
                response = c.request(method, path, headers=headers)
                # Then: 401 with a JSON error and a Bearer challenge
                assert response.status_code == 401, (path, headers)
                assert error_of(response) == "UNAUTHENTICATED"
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # and the database holds the tokens' hashes only; the server's log never shows a token
    rows = _token_rows("apia")
    assert all(bytes(r["token_sha256"]) != revoked.encode() for r in rows)
    assert hashlib.sha256(revoked.encode()).digest() in {bytes(r["token_sha256"]) for r in rows}
    log = api.log.read_text()
    assert revoked not in log and tokens["apia"] not in log
    assert main(["token", "list", "--tenant", "apia"]) == 0
    listing = capsys.readouterr().out
    assert "short-lived" in listing and revoked not in listing


def _token_rows(tenant: str) -> list[dict[str, Any]]:
    with db.connect() as conn:
        return conn.execute("SELECT * FROM dx.api_tokens WHERE tenant = %s", (tenant,)).fetchall()


def test_a_tenant_sees_and_touches_only_its_own_modules_and_runs(api, tokens):
    # Given: a finished run of tenant B
    with db.transaction() as conn:
        b_run = create_run(conn, "apib", "apib-import", Trigger.MANUAL, "pytest")
        finish(conn, b_run, RunStatus.FAILED, error_code="SOURCE_NOT_FOUND", error_message="none")
    with api.client(tokens["apia"]) as a, api.client(tokens["apib"]) as b:
        # When: A lists, reads, runs, pauses and downloads B's things
        listed = {m["id"] for m in a.get("/api/v1/modules").json()["modules"]}
        missing = a.get("/api/v1/modules/no-such-module")
        probes = [a.get("/api/v1/modules/apib-import"), a.get("/api/v1/modules/apib-import/schedule"),
                  a.post("/api/v1/modules/apib-import/runs", json={}), a.post("/api/v1/modules/apib-import/pause"),
                  a.post("/api/v1/modules/apib-import/resume"), a.get(f"/api/v1/runs/{b_run}"),
                  a.get(f"/api/v1/runs/{b_run}/failures.csv")]
        a_runs = a.get("/api/v1/runs", params={"module": "apib-import"}).json()["runs"]
        # Then: A sees its own modules only, and B's ids answer exactly like missing ones
        assert listed == {"apia-import", "apia-other"}
        assert missing.status_code == 404 and error_of(missing) == "NOT_FOUND"
        for response in probes:
            assert response.status_code == 404, response.request.url
            assert error_of(response) == "NOT_FOUND"
        assert a_runs == []
        # and nothing of B changed, while B itself sees all of it
        with db.connect() as conn:
            assert conn.execute("SELECT count(*) AS n FROM dx.runs WHERE tenant = 'apib'").fetchone()["n"] == 1
            assert conn.execute("SELECT paused FROM dx.modules WHERE id = 'apib-import'").fetchone()["paused"] is False
        assert b.get("/api/v1/modules/apib-import").status_code == 200
        assert b.get(f"/api/v1/runs/{b_run}").json()["error_code"] == "SOURCE_NOT_FOUND"


def test_run_now_over_http_runs_like_dx_run_once_per_request_id(api, tokens, sshd, workers, tmp_path: Path):
    # Given: the same file twice on the SFTP server and two workers
    sshd.put("in/apia_0001.csv", SOURCE)
    sshd.put("in/apia_0002.csv", SOURCE)
    workers.start(2)
    with api.client(tokens["apia"]) as a, api.client(tokens["apib"]) as b:
        # When: a client asks for a run-now twice with one request id
        first = a.post("/api/v1/modules/apia-import/runs", json={"request_id": "req-1"})
        again = a.post("/api/v1/modules/apia-import/runs", json={"request_id": "req-1"})
        # Then: one run, trigger http, by the token's name
        assert first.status_code == again.status_code == 202
        run_id = first.json()["id"]
        assert again.json()["id"] == run_id
        assert first.headers["Location"] == f"/api/v1/runs/{run_id}"
        by_http = wait_run(a, run_id)
        assert (by_http["trigger"], by_http["requested_by"], by_http["request_id"]) == ("http", "token:pytest", "req-1")
        assert by_http["status"] == "completed_with_errors" and by_http["errors"] == {"INVALID_VALUE": 3}
        # and `dx run` of the same file gives the same outcome
        by_cli = run("apia-import")
        assert {c: by_http[c] for c in COUNTERS} == {c: by_cli[c] for c in COUNTERS}
        assert by_cli["status"] == by_http["status"]
        # and the failures download is byte for byte `dx report`
        download = a.get(f"/api/v1/runs/{run_id}/failures.csv")
        assert download.status_code == 200 and download.headers["content-type"].startswith("text/csv")
        assert main(["report", str(run_id), "-o", str(tmp_path / "report.csv")]) == 0
        assert download.content == (tmp_path / "report.csv").read_bytes()
        assert download.text.count("\n") == 4 and "'=HYPERLINK(1)" in download.text
        # and a request id names one run per tenant: reused for another module it is refused,
        reused = a.post("/api/v1/modules/apia-other/runs", json={"request_id": "req-1"})
        assert reused.status_code == 409 and error_of(reused) == "REQUEST_ID_REUSED"
        # while another tenant's same id is its own
        other = b.post("/api/v1/modules/apib-import/runs", json={"request_id": "req-1"})
        assert other.status_code == 202 and other.json()["id"] != run_id
        assert wait_run(b, other.json()["id"])["error_code"] == "SOURCE_NOT_FOUND"


def test_pause_resume_and_schedule_over_http_match_the_cli(api, tokens, capsys):
    with api.client(tokens["apia"]) as a:
        # When: the module is paused
        paused = a.post("/api/v1/modules/apia-import/pause")
        # Then: it is paused for the scheduler and the listing says so
        assert paused.status_code == 200 and paused.json()["paused"] is True
        assert _paused("apia-import") is True
        listed = {m["id"]: m for m in a.get("/api/v1/modules").json()["modules"]}
        assert listed["apia-import"]["paused"] is True and listed["apia-other"]["paused"] is False
        # and resuming undoes it
        resumed = a.post("/api/v1/modules/apia-import/resume")
        assert resumed.status_code == 200 and resumed.json()["paused"] is False
        assert _paused("apia-import") is False
        # and the next fires are those of `dx schedule` (across the spring-forward night of 2099)
        fires = a.get("/api/v1/modules/apia-import/schedule", params={"next": 4, "from": "2099-03-27T00:00"}).json()
        assert main(["schedule", "apia-import", "--next", "4", "--from", "2099-03-27T00:00"]) == 0
        assert [f for f in fires["fires"]] == capsys.readouterr().out.split()
        assert fires["schedule"]["timezone"] == "Europe/Rome"
        assert listed["apia-import"]["next_fire"] == "2099-01-01T02:30:00+01:00"
        assert listed["apia-other"]["next_fire"] is None


def _paused(module: str) -> bool:
    with db.connect() as conn:
        return bool(conn.execute("SELECT paused FROM dx.modules WHERE id = %s", (module,)).fetchone()["paused"])


def test_bad_input_answers_422_and_unknown_paths_404_with_stable_codes(api, tokens):
    with api.client(tokens["apia"]) as a:
        # When: parameters or bodies are not valid
        for response in (a.post("/api/v1/modules/apia-other/runs", json={"request_id": ""}),
                         a.post("/api/v1/modules/apia-other/runs", json={"surprise": 1}),
                         a.post("/api/v1/modules/apia-other/runs", content=b"{not json",
                                headers={"Content-Type": "application/json"}),
                         a.get("/api/v1/runs", params={"status": "sleeping"}),
                         a.get("/api/v1/runs", params={"limit": 0}),
                         a.get("/api/v1/runs", params={"since": "2026-01-01T00:00"}),
                         a.get("/api/v1/runs/abc")):
            # Then: 422 INVALID_REQUEST, saying which field
            assert response.status_code == 422, response.request.url
            assert error_of(response) == "INVALID_REQUEST"
        detail = a.post("/api/v1/modules/apia-other/runs", json={"request_id": ""}).json()["error"]["details"]
        assert detail[0]["field"] == "body.request_id"
        # and unknown paths and methods have codes too
        nowhere = a.get("/api/v1/nowhere")
        assert nowhere.status_code == 404 and error_of(nowhere) == "NOT_FOUND"
        wrong = a.delete("/api/v1/modules")
        assert wrong.status_code == 405 and error_of(wrong) == "METHOD_NOT_ALLOWED"
        # and no run was made by any of it
        assert a.get("/api/v1/runs", params={"module": "apia-other"}).json()["runs"] == []


#: Values the API refused with 500 (or took for something else) before it checked them: (method, path, query, JSON).
BAD_VALUES: list[tuple[str, str, dict[str, str] | None, Any]] = [
    ("GET", "/api/v1/modules/a%00b", None, None),
    ("GET", "/api/v1/modules/a%00b/schedule", None, None),
    ("POST", "/api/v1/modules/a%00b/runs", None, {}),
    ("POST", "/api/v1/modules/a%00b/pause", None, None),
    ("GET", "/api/v1/runs", {"module": "a\x00b"}, None),
    ("GET", "/api/v1/runs", {"before": str(2**63)}, None),
    ("GET", "/api/v1/runs/" + str(2**63), None, None),
    ("GET", "/api/v1/runs/" + "9" * 30 + "/failures.csv", None, None),
    ("GET", "/api/v1/runs", {"since": "1700000000"}, None),
    ("GET", "/api/v1/runs", {"since": "10000-01-01T00:00:00+00:00"}, None),
    ("GET", "/api/v1/runs", {"since": "0001-01-01T00:00:00+05:00"}, None),
    ("GET", "/api/v1/modules/apia-import/schedule", {"from": "1700000000"}, None),
    ("POST", "/api/v1/modules/apia-other/runs", None, {"request_id": "a\x00b"}),
    ("POST", "/api/v1/modules/apia-other/runs", None, {"requested_by": "a\x00b"}),
    ("POST", "/api/v1/modules/apia-import/schedule/preview", None,
     {"schedule": {"cron": ["0 2 * * *"], "start": "9999-12-31"}}),
    ("POST", "/api/v1/modules/apia-import/schedule/preview", None,
     {"schedule": {"cron": ["0 2 * * *"], "start": 1699920000}}),
    ("POST", "/api/v1/modules/apia-import/schedule/preview", None,
     {"schedule": {"cron": ["0 2 * * *"], "max_failures": 2**31}}),
    ("PUT", "/api/v1/modules/apia-import/schedule", None,
     {"schedule": {"cron": ["0 2 * * *"], "start": "9999-12-31", "timezone": "Pacific/Kiritimati"}}),
    ("PUT", "/api/v1/modules/apia-import/notifications", None, {"notify": ["a\x00b@x.it"], "notify_on": "always"}),
    ("POST", "/console/session", None, {"username": "a\x00b", "password": "x"}),
]
#: Bodies Python's JSON parser gives up on, or whose strings no database can store.
BAD_BODIES = [
    ("POST", "/api/v1/modules/apia-other/runs", b'{"request_id": 1' + b"0" * 5000 + b"}"),
    ("POST", "/api/v1/modules/apia-other/runs", b"[" * 5000 + b"]" * 5000),
    ("POST", "/api/v1/modules/apia-other/runs", b'{"request_id": "a\\ud800"}'),
    ("POST", "/console/session", b'{"username": "a\\ud800", "password": "x"}'),
]


def test_bad_values_answer_422_with_a_code_never_500(api, tokens):
    # Given the schedule and recipients of a module as they are
    with api.client(tokens["apia"]) as a:
        before = a.get("/api/v1/modules/apia-import").json()["config"]
    for method, path, params, body in [*BAD_VALUES, *[(m, p, None, b) for m, p, b in BAD_BODIES]]:
        # When a NUL, an id past PostgreSQL's bigint, a number for a date-time, a date at the calendar's ends,
        # a schedule that never fires or a body JSON cannot hold is sent (each on a connection of its own:
        # a 500 closes the connection)
        with api.client(tokens["apia"]) as a:
            if isinstance(body, bytes):
                response = a.request(method, path, content=body, headers={"Content-Type": "application/json"})
            else:
                response = a.request(method, path, params=params, json=body)
        # Then 422 INVALID_REQUEST
        assert (response.status_code, error_of(response)) == (422, "INVALID_REQUEST"), (path, params, body,
                                                                                        response.text)
    with api.client(tokens["apia"]) as a:
        # and nothing changed, no run was made
        assert a.get("/api/v1/modules/apia-import").json()["config"] == before
        assert a.get("/api/v1/runs", params={"module": "apia-other"}).json()["runs"] == []
        # and far dates that are valid are answered: fire times from year 1, none after the calendar's end
        early = a.get("/api/v1/modules/apia-import/schedule", params={"from": "0001-01-01T00:00:00", "next": 3})
        late = a.get("/api/v1/modules/apia-import/schedule", params={"from": "9999-12-31T23:00:00+00:00"})
        assert (early.status_code, late.status_code, late.json()["fires"]) == (200, 200, [])
        assert len(early.json()["fires"]) == 3
    # and the server logged no failure
    assert '"http.failed"' not in api.log.read_text()


def test_openapi_document_lists_every_endpoint(api):
    # When: the OpenAPI document is fetched (no token needed)
    with api.client() as c:
        doc = c.get("/openapi.json").json()
    # Then: it lists every route of the API and the bearer scheme
    assert {("/api/v1/modules", "get"), ("/api/v1/modules/{module_id}", "get"),
            ("/api/v1/modules/{module_id}/schedule", "get"), ("/api/v1/modules/{module_id}/runs", "post"),
            ("/api/v1/modules/{module_id}/pause", "post"), ("/api/v1/modules/{module_id}/resume", "post"),
            ("/api/v1/runs", "get"), ("/api/v1/runs/{run_id}", "get"),
            ("/api/v1/runs/{run_id}/failures.csv", "get")} <= {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_console_page_and_script_are_served_with_a_strict_policy(api):
    with api.client() as c:
        # When: the console's page and script are fetched, one with a query that tries to be rendered
        page = c.get("/", params={"body": "<script>alert(1)</script>"})
        script = c.get("/console.js")
    # Then: the page is the console, under a policy allowing only its own script, and ignores the query
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Configure › DataExchange" in page.text and "<script>alert" not in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert '<script src="/console.js">' in page.text
    # and the script renders data as text, never as HTML
    assert script.status_code == 200 and "textContent" in script.text
    assert "innerHTML" not in script.text and "insertAdjacentHTML" not in script.text
