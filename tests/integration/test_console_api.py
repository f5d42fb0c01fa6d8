"""The console's routes over HTTP: sign-in and its limits, the cookie, CSRF, roles, schedule and
notification edits with their audit, and how a later `dx apply` meets a console change."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import structlog
from psycopg.types.json import Jsonb

from dx.cli import main
from dx.scheduler.users import MAX_PER_USER, create_user
from dx.shared import db
from tests.integration.helpers import config

PASSWORD = "a long enough password"


@pytest.fixture(scope="module")
def tenant(cluster_env, sshd, tmp_path_factory) -> dict[str, str]:
    """Tenant capi with a module and an operator; its config file."""
    tmp = tmp_path_factory.mktemp("capi")
    text = config("capi", sshd, [{"id": "capi-import", "mode": "upsert", "source": {"path": "capi/in.csv"},
                                  "schedule": {"times": ["06:00"], "timezone": "UTC"}}])
    path = tmp / "config.yaml"
    path.write_text(text)
    assert main(["apply", "-f", str(path)]) == 0
    with db.transaction() as conn:
        create_user(conn, "capi", "op@capi.example", "operator", PASSWORD)
        create_user(conn, "capi", "locked@capi.example", "operator", PASSWORD)
    return {"config": str(path), "text": text}


def _session(api, username: str = "op@capi.example") -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=api.url, timeout=90)  # a check waits for a worker (up to 60 s)
    answer = client.post("/console/session", json={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return client, answer.json()["csrf"]


def test_the_session_cookie_is_http_only_and_strict_and_sign_out_ends_it(tenant, api):
    client = httpx.Client(base_url=api.url, timeout=30)
    answer = client.post("/console/session", json={"username": "op@capi.example", "password": PASSWORD})
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback; behind HTTPS (DX_PUBLIC_URL https://) it is set
    assert answer.json()["role"] == "operator" and client.get("/api/v1/modules").status_code == 200
    csrf = answer.json()["csrf"]
    assert client.delete("/console/session", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert client.get("/api/v1/modules").status_code == 401


def test_a_change_without_the_csrf_token_is_refused(tenant, api):
    client, csrf = _session(api)
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        answer = client.post("/api/v1/modules/capi-import/pause", headers=headers)
        assert (answer.status_code, answer.json()["error"]["code"]) == (403, "CSRF_FAILED")
    assert client.post("/api/v1/modules/capi-import/pause", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert client.post("/api/v1/modules/capi-import/resume", headers={"X-CSRF-Token": csrf}).status_code == 200


def test_failed_sign_ins_are_limited_even_for_the_right_password_then(tenant, api):
    client = httpx.Client(base_url=api.url, timeout=30)
    for _ in range(MAX_PER_USER):
        wrong = client.post("/console/session", json={"username": "locked@capi.example", "password": "wrong" * 4})
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "SIGN_IN_FAILED")
    right = client.post("/console/session", json={"username": "locked@capi.example", "password": PASSWORD})
    assert (right.status_code, right.json()["error"]["code"]) == (429, "TOO_MANY_ATTEMPTS")
    assert int(right.headers["Retry-After"]) > 0 and "set-cookie" not in right.headers
    unknown = client.post("/console/session", json={"username": "nobody@capi.example", "password": PASSWORD})
    assert unknown.json()["error"]["code"] == "SIGN_IN_FAILED"  # same answer as a wrong password


def test_a_schedule_edit_is_checked_audited_and_a_later_apply_must_agree_or_discard_it(tenant, api, capsys):
    client, csrf = _session(api)
    headers = {"X-CSRF-Token": csrf}
    # Given: a bad draft is refused with each field named, and the preview saves nothing
    bad = client.post("/api/v1/modules/capi-import/schedule/preview", headers=headers,
                      json={"schedule": {"times": ["25:00"], "timezone": "Mars/Olympus"}})
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["error"]["details"]} >= {"schedule.times.0", "schedule.timezone"}
    # When: the operator saves a schedule
    saved = client.put("/api/v1/modules/capi-import/schedule", headers=headers,
                       json={"schedule": {"times": ["08:00", "17:00"], "weekdays": ["mon", "fri"],
                                          "timezone": "Europe/Rome"}})
    assert saved.status_code == 200 and len(saved.json()["fires"]) == 10
    # Then: it is audited with before and after
    [entry] = client.get("/api/v1/modules/capi-import/audit").json()["entries"][:1]
    assert entry["actor"] == "user:op@capi.example" and entry["before"]["schedule"]["times"] == ["06:00"]
    assert entry["after"]["schedule"]["times"] == ["08:00", "17:00"]
    # When: the unchanged file is applied again / Then: it is refused, naming the console's change
    capsys.readouterr()
    assert main(["apply", "-f", tenant["config"]]) == 2
    err = capsys.readouterr().err
    assert "modules[0].schedule: changed in the console by user:op@capi.example" in err
    assert client.get("/api/v1/modules/capi-import").json()["schedule"]["times"] == ["08:00", "17:00"]
    # When: it is applied with --discard-console-changes / Then: the file's schedule is back
    assert main(["apply", "-f", tenant["config"], "--discard-console-changes"]) == 0
    assert client.get("/api/v1/modules/capi-import").json()["schedule"]["times"] == ["06:00"]
    assert main(["apply", "-f", tenant["config"]]) == 0  # nothing left to disagree with


def test_notifications_are_validated_and_saved(tenant, api):
    client, csrf = _session(api)
    bad = client.put("/api/v1/modules/capi-import/notifications", headers={"X-CSRF-Token": csrf},
                     json={"notify": ["a@b.example\r\nBcc: x@y.example"], "notify_on": "always"})
    assert bad.status_code == 422
    good = client.put("/api/v1/modules/capi-import/notifications", headers={"X-CSRF-Token": csrf},
                      json={"notify": ["desk@capi.example"], "notify_on": "failures"})
    assert good.status_code == 200
    config = client.get("/api/v1/modules/capi-import").json()["config"]
    assert (config["notify"], config["notify_on"]) == (["desk@capi.example"], "failures")


def test_dx_user_create_list_and_disable(tenant, cluster_env, api):
    env = {**cluster_env, "PATH": ""}
    dx = [sys.executable, "-m", "dx"]
    made = subprocess.run([*dx, "user", "create", "new@capi.example", "--tenant", "capi", "--role", "viewer",
                           "--password-stdin"], input="short\n", capture_output=True, text=True, env=env)
    assert made.returncode == 2 and "at least 12 characters" in made.stderr
    made = subprocess.run([*dx, "user", "create", "new@capi.example", "--tenant", "capi", "--role", "viewer",
                           "--password-stdin"], input=PASSWORD + "\n", capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stderr
    listed = subprocess.run([*dx, "user", "list", "--tenant", "capi"], capture_output=True, text=True, env=env)
    assert "new@capi.example" in listed.stdout and "viewer" in listed.stdout and PASSWORD not in listed.stdout
    with db.connect() as conn:
        stored = conn.execute("SELECT password_hash FROM dx.users WHERE username = 'new@capi.example'").fetchone()
    assert stored["password_hash"].startswith("$argon2id$") and PASSWORD not in stored["password_hash"]
    client = httpx.Client(base_url=api.url, timeout=30)
    assert client.post("/console/session", json={"username": "new@capi.example", "password": PASSWORD}).status_code == 200
    assert subprocess.run([*dx, "user", "disable", "new@capi.example"], capture_output=True, env=env).returncode == 0
    assert client.get("/console/session").status_code == 401  # its session ended with it
    refused = client.post("/console/session", json={"username": "new@capi.example", "password": PASSWORD})
    assert refused.json()["error"]["code"] == "SIGN_IN_FAILED"


def test_test_connection_and_preview_answer_from_a_worker_and_write_nothing(tenant, api, sshd, workers, tmp_path):
    # Given: two files waiting, the first with a bad e-mail and a bad number among its records, and a worker
    lines = ["email,first_name,points"] + [f"c{i}@capi.example,C{i},{i}" for i in range(60)]
    lines[3], lines[5] = "not-an-email,Bad,3", "c4@capi.example,Bad,lots"
    sshd.put("capi/in.csv", ("\n".join(lines) + "\n").encode())
    workers.start(1)
    client, csrf = _session(api)
    with db.connect() as conn:
        runs_before = conn.execute("SELECT count(*) AS n FROM dx.runs").fetchone()["n"]
    # When: the connection is tested / Then: the matching file is listed with its size and time
    tested = client.post("/api/v1/modules/capi-import/checks/connection", headers={"X-CSRF-Token": csrf})
    assert tested.status_code == 200, tested.text
    body = tested.json()
    assert body["ok"] and [(f["path"], f["size_bytes"], f["imported"]) for f in body["files"]] == [
        ("capi/in.csv", (sshd.root / "capi/in.csv").stat().st_size, False)]
    # When: the next file is previewed / Then: its first 50 records, each with the code it would fail with
    preview = client.post("/api/v1/modules/capi-import/checks/preview", headers={"X-CSRF-Token": csrf}).json()
    assert preview["ok"] and preview["file"]["path"] == "capi/in.csv" and len(preview["records"]) == 50
    codes = {r["row"]: r["code"] for r in preview["records"]}
    assert codes[3] == "INVALID_VALUE" and codes[5] == "INVALID_VALUE"  # a bad e-mail and a bad number
    assert sum(code is None for code in codes.values()) == 48
    assert preview["records"][0]["values"] == {"email": "c0@capi.example", "first_name": "C0", "points": "0"}
    # and nothing was written: no run, no ledger entry, the file where it was
    with db.connect() as conn:
        assert conn.execute("SELECT count(*) AS n FROM dx.runs").fetchone()["n"] == runs_before
        assert conn.execute("SELECT count(*) AS n FROM dx.file_ledger WHERE connection = 'capi-sftp'").fetchone()["n"] == 0
    assert (sshd.root / "capi/in.csv").exists()


def test_a_check_is_committed_before_its_message_is_sent(tenant, monkeypatch):
    # Given: the request's connection inside a transaction already (the module was read), as in a request
    from dx.scheduler import console_api
    from dx.scheduler.api_base import Who

    def send(actor, check_id):
        # a worker taking the message at once: it must see the row, else it drops the message
        with db.connect() as other:
            found = other.execute("SELECT kind FROM dx.checks WHERE id = %s", (check_id,)).fetchone()
            assert found is not None and found["kind"] == "connection", "the check's row was not committed"
            other.execute("UPDATE dx.checks SET result = %s, finished_at = now() WHERE id = %s",
                          (Jsonb({"ok": True, "message": "answered"}), check_id))
            other.commit()

    monkeypatch.setattr(console_api.messages, "send", send)
    # When: a connection test is asked for / Then: the worker's answer comes back
    with db.connect() as conn:
        answer = console_api.run_check("capi-import", "connection", conn, Who("capi", "op@capi.example", "operator"))
    assert answer.ok and answer.message == "answered"


def test_a_check_answered_already_is_left_as_it_is_and_the_skip_is_logged(tenant):
    # Given: a check a worker answered, its message delivered again
    from dx.workers.imports.checks import check

    with db.connect() as conn:
        check_id = conn.execute(
            "INSERT INTO dx.checks (tenant, module, kind, requested_by, result, finished_at)"
            " VALUES ('capi', 'capi-import', 'connection', 'op@capi.example', %s, now()) RETURNING id",
            (Jsonb({"ok": True, "message": "first answer"}),)).fetchone()["id"]
        conn.commit()
    # When: the worker takes it
    with structlog.testing.capture_logs() as logs:
        check(check_id)
    # Then: the first answer stands, and the log says why nothing was done
    with db.connect() as conn:
        assert conn.execute("SELECT result FROM dx.checks WHERE id = %s", (check_id,)).fetchone()["result"] == {
            "ok": True, "message": "first answer"}
    assert [e["check_id"] for e in logs if e["event"] == "check.skipped"] == [check_id]


def test_a_check_of_a_server_that_does_not_answer_says_so_with_a_code(tenant, api, sshd, workers, tmp_path):
    text = tenant["text"].replace(f"port: {sshd.port}", "port: 9")  # nothing listens on the discard port
    assert text != tenant["text"]
    path = tmp_path / "down.yaml"
    path.write_text(text)
    assert main(["apply", "-f", str(path), "--discard-console-changes"]) == 0  # earlier tests edited the module
    workers.start(1)
    client, csrf = _session(api)
    try:
        answer = client.post("/api/v1/modules/capi-import/checks/connection", headers={"X-CSRF-Token": csrf})
        assert answer.status_code == 200 and answer.json()["ok"] is False
        assert answer.json()["code"] in ("CONNECTION_FAILED", "SOURCE_UNREADABLE"), answer.json()
    finally:
        assert main(["apply", "-f", tenant["config"]]) == 0
