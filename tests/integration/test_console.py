"""The console in a real browser (Playwright driving Debian's Chromium), against ``dx serve`` and workers.

An operator signs in, opens a module, sets it to run at 08:00 and 17:00 on weekdays in Europe/Rome and
sees the server's preview, pauses and resumes it, runs it now, watches its progress to the end, opens the
run's page and downloads the failed operations, which equal ``dx report`` byte for byte. A viewer sees the
same pages and can change nothing (the server answers 403). A user of another tenant sees nothing of it.
With DX_SCREENSHOTS=folder, the module list, a module's page and a run's page are saved there.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from playwright.sync_api import expect

from dx.cli import main, wait_for
from dx.devkit.cluster import Workers
from dx.devkit.generate import contacts
from dx.scheduler.users import create_user
from dx.shared import db
from tests.integration.helpers import apply, config, text_of

pytestmark = pytest.mark.timeout(300)
PASSWORD = "correct horse battery staple"
USERS = {"op@shop.example": ("shop", "operator"), "viewer@shop.example": ("shop", "viewer"),
         "op@other.example": ("other", "operator")}


@pytest.fixture(scope="module")
def shop(cluster_env, sshd, tmp_path_factory) -> dict[str, Any]:
    """Tenants shop (an upsert importer with a file of 200,000 records, 3 of them bad) and other, and
    the console users of both."""
    tmp = tmp_path_factory.mktemp("console")
    apply(config("shop", sshd, [{"id": "shop-import", "mode": "upsert", "chunk_bytes": 500_000,
                                 "source": {"path": "shop/in.csv", "after": "keep"}}]), tmp)
    apply(config("other", sshd, [{"id": "other-import", "mode": "upsert",
                                  "source": {"path": "other/in.csv", "after": "keep"}}]), tmp)
    frame = contacts(200_000, seed=8).select("email", "first_name", "points", "birth_date")
    bad = pl.DataFrame({"email": ["not-an-email", "x@shop.example", "y@shop.example"], "first_name": ["A", "B", "C"],
                        "points": ["1", "many", "3"], "birth_date": ["01/01/2000", "01/01/2000", "31/02/2000"]})
    sshd.put("shop/in.csv", pl.concat([frame, bad]).write_csv().encode())
    with db.transaction() as conn:
        for username, (tenant, role) in USERS.items():
            create_user(conn, tenant, username, role, PASSWORD)
    return {"tmp": tmp}


def _signed_in(browser: Any, api: Any, username: str) -> Any:
    page = browser.new_context(base_url=api.url, accept_downloads=True).new_page()
    page.goto("/")
    page.wait_for_selector("#username")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#modules")
    return page


def _shoot(page: Any, name: str) -> None:
    folder = os.environ.get("DX_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"console-{name}.png"), full_page=True)


def _fetch(page: Any, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """A request with the page's session cookie and CSRF token, as the console's own script sends it."""
    requests = page.context.request
    csrf = requests.get("/console/session").json()["csrf"]
    answer = requests.fetch(path, method=method, headers={"X-CSRF-Token": csrf}, data=body)
    return {"status": answer.status, "body": answer.json() if answer.body() else None}


def test_an_operator_schedules_pauses_runs_and_downloads_the_failures(shop, browser, api, workers, capsysbinary):
    workers.start(2)
    page = _signed_in(browser, api, "op@shop.example")
    # Given: the module list shows the tenant's module, not the other tenant's
    assert page.locator("#modules tbody tr").all_inner_texts()[0].startswith("shop-import")
    assert "other-import" not in page.inner_text("#modules")

    # When: the operator opens the module, tests its connection and previews its next file
    page.click("text=shop-import")
    page.wait_for_selector("#schedule")
    page.click("#check-connection")
    expect(page.locator("#check-files")).to_contain_text("shop/in.csv", timeout=60_000)  # a worker answers
    page.click("#check-preview")
    expect(page.locator("#check-records tbody tr")).to_have_count(50, timeout=60_000)  # the first 50 records, none bad among them
    expect(page.locator("#check-result")).to_contain_text("the first 50 records of shop/in.csv")

    # When: it sets 08:00 and 17:00 on weekdays in Europe/Rome
    page.fill("#sched-times", "08:00, 25:00")
    expect(page.locator("[data-error=times]")).to_contain_text("25:00")  # the error is shown beside its input
    page.fill("#sched-times", "08:00, 17:00")
    for day in ("mon", "tue", "wed", "thu", "fri"):
        page.check(f"#sched-weekdays input[value={day}]")
    page.fill("#sched-timezone", "Europe/Rome")
    expect(page.locator("#preview-zone")).to_have_text("(Europe/Rome)")
    expect(page.locator("#preview li")).to_have_count(10)
    # Then: the server's preview lists 10 fire times, each at 08:00 or 17:00 of a weekday
    fires = [datetime.fromisoformat(t) for t in page.locator("#preview li").all_inner_texts()]
    assert len(fires) == 10 and all(f.strftime("%H:%M") in ("08:00", "17:00") and f.weekday() < 5 for f in fires)
    assert [f.strftime("%H:%M") for f in fires[:2]] in (["08:00", "17:00"], ["17:00", "08:00"])
    page.click("#save-schedule")
    expect(page.locator("#message")).to_have_text("Schedule saved")
    saved = _fetch(page, "GET", "/api/v1/modules/shop-import")["body"]
    assert saved["schedule"]["times"] == ["08:00", "17:00"] and saved["timezone"] == "Europe/Rome"
    assert saved["schedule"]["weekdays"] == ["mon", "tue", "wed", "thu", "fri"]
    next_fire = datetime.fromisoformat(saved["next_fire"])
    assert next_fire.utcoffset() == datetime.now(ZoneInfo("Europe/Rome")).utcoffset()
    page.reload()
    page.wait_for_selector("#schedule")
    _shoot(page, "module")

    # When: it pauses and resumes the schedule, each confirmed in the dialog
    for verb, state in (("Pause", "paused"), ("Resume", "active")):
        page.click(f"button:has-text('{verb}')")
        page.click("#confirm-ok")
        expect(page.locator("#message")).to_have_text(verb)
        page.reload()
        page.wait_for_selector("#module-state")
        assert page.inner_text("#module-state") == state

    # When: it runs the module now, and follows the run's page to the end
    page.click("button:has-text('Run now')")
    page.click("#confirm-ok")
    page.wait_for_selector("#run-id")
    run_id = int(page.inner_text("#run-id"))
    seen_progress = []
    while page.locator("#run-status .status-completed_with_errors, #run-status .status-failed").count() == 0:
        if page.locator("#progress-text").count():
            seen_progress.append(page.inner_text("#progress-text"))
        page.wait_for_timeout(100)
    # Then: it saw the chunks advance, and the run ended with its failed records counted by code
    assert any(re.search(r"\d+ of \d+ chunks", p) for p in seen_progress), seen_progress
    assert page.inner_text("#run-status") == "completed with errors"
    assert page.inner_text("[data-counter=not_inserted]") == "3"
    codes = {row.split("\t")[0] for row in page.locator("#errors tbody tr").all_inner_texts()}
    assert codes and all(c.startswith("INVALID_") for c in codes), page.inner_text("#page")
    _shoot(page, "run")

    # When: the failures are downloaded with the paperclip
    with page.expect_download() as download:
        page.click("#failures")
    downloaded = Path(download.value.path()).read_bytes()
    # Then: they equal `dx report` byte for byte
    assert main(["report", str(run_id)]) == 0
    assert downloaded == capsysbinary.readouterr().out
    assert downloaded.count(b"\r\n") == 4  # the header and the 3 failed records
    page.goto("/#/")
    expect(page.locator("#modules")).to_contain_text("completed with errors")
    _shoot(page, "modules")


def test_a_viewer_sees_the_pages_and_the_server_refuses_its_changes(shop, browser, api):
    page = _signed_in(browser, api, "viewer@shop.example")
    # Given: the viewer sees the module list and the module's page, without buttons that change anything
    assert "shop-import" in page.inner_text("#modules")
    assert page.locator("#modules button").count() == 0
    page.click("text=shop-import")
    page.wait_for_selector("#schedule")
    assert page.locator("#save-schedule").count() == 0
    expect(page.locator("#preview-zone")).not_to_be_empty()
    # When: it sends changes itself, with its valid session and CSRF token
    answers = [_fetch(page, "PUT", "/api/v1/modules/shop-import/schedule", {"schedule": {"times": ["09:00"]}}),
               _fetch(page, "POST", "/api/v1/modules/shop-import/pause"),
               _fetch(page, "POST", "/api/v1/modules/shop-import/runs", {}),
               _fetch(page, "PUT", "/api/v1/modules/shop-import/notifications",
                      {"notify": ["a@shop.example"], "notify_on": "always"})]
    # Then: the server answers 403 FORBIDDEN to each
    assert [(a["status"], a["body"]["error"]["code"]) for a in answers] == [(403, "FORBIDDEN")] * 4


def test_a_user_of_another_tenant_finds_nothing_of_it(shop, browser, api):
    page = _signed_in(browser, api, "op@other.example")
    assert "shop-import" not in page.inner_text("#modules")
    with db.connect() as conn:
        run = conn.execute("SELECT max(id) AS id FROM dx.runs WHERE tenant = 'shop'").fetchone()["id"]
    page.goto("/#/modules/shop-import")
    page.wait_for_selector("#page-error")
    assert page.inner_text("#page-error").startswith("NOT_FOUND")
    for method, path in (("GET", "/api/v1/modules/shop-import"), ("GET", f"/api/v1/runs/{run or 1}"),
                         ("GET", f"/api/v1/runs/{run or 1}/failures.csv"), ("POST", "/api/v1/modules/shop-import/pause")):
        assert _fetch(page, method, path)["status"] == 404, (method, path)


def test_the_report_e_mail_s_links_open_the_run_s_page_and_its_failures(shop, browser, api, cluster_env, smtp,
                                                                        tmp_path, capsysbinary):
    # Given: workers that know the console's public address, and an operator signed in
    workers = Workers({**cluster_env, "DX_PUBLIC_URL": api.url}, tmp_path)
    workers.start(1)
    page = _signed_in(browser, api, "op@shop.example")
    try:
        # When: the module runs, and its report e-mail arrives
        run_id = _fetch(page, "POST", "/api/v1/modules/shop-import/runs", {})["body"]["id"]
        wait_for(run_id, 120)
        mail = smtp.wait_for(lambda m: f"(run {run_id})" in m["Subject"], 60)
    finally:
        workers.stop_all()
    # Then: it has a text and an HTML part, and the failures attached as `dx report` writes them
    assert main(["report", str(run_id)]) == 0
    report = capsysbinary.readouterr().out
    [attached] = list(mail.iter_attachments())
    assert attached.get_filename() == f"run-{run_id}-failures.csv" and attached.get_payload(decode=True) == report
    assert f"{api.url}/#/runs/{run_id}" in text_of(mail)
    # When: the HTML part is opened in the browser, and its links followed
    page.goto("about:blank")  # a page of its own, as a mail reader shows it
    page.set_content(mail.get_body(("html",)).get_content())
    assert page.locator("a[href$='/error-codes#INVALID_VALUE']").count() >= 1  # each code links to its meaning
    page.click("#run-link")
    # Then: the run's page opens, and the failures link downloads the same CSV
    expect(page.locator("#run-id")).to_have_text(str(run_id))
    page.goto("about:blank")
    page.set_content(mail.get_body(("html",)).get_content())
    with page.expect_download() as download:
        page.click("#failures-link")
    assert Path(download.value.path()).read_bytes() == report
