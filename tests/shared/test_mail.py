"""The report e-mail's content and the notification policy: pure logic on a run's row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from typing import Any

import pytest

from dx.shared import mail
from dx.shared.settings import Settings

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


def _settings(public_url: str | None) -> Settings:
    return Settings.from_env({"DX_HOME": "/tmp/dx-mail-test", **({"DX_PUBLIC_URL": public_url} if public_url else {})})


def _run(**fields: Any) -> Any:
    run = {"id": 42, "tenant": "acme", "module": "acme-import", "trigger": "schedule", "requested_by": None,
           "status": "completed_with_errors", "error_code": None, "error_message": None, "warnings": [],
           "source_path": "in/contacts.csv", "started_at": T0, "finished_at": T0 + timedelta(seconds=3),
           "rows_read": 10, "inserted": 8, "updated": 0, "deleted": 0, "not_inserted": 2, "not_updated": 0,
           "not_deleted": 0, "rows_exported": 0}
    return {**run, **fields}


def _parts(msg: Any) -> tuple[str, str, list[Any]]:
    parsed = message_from_bytes(bytes(msg), policy=policy.default)
    return (parsed.get_body(("plain",)).get_content(), parsed.get_body(("html",)).get_content(),
            list(parsed.iter_attachments()))


ERRORS = [{"error_code": "INVALID_EMAIL", "n": 2}]


@pytest.mark.parametrize(("notify_on", "sent"), [
    ("always", {"completed", "completed_with_errors", "failed", "skipped", "timed_out"}),
    ("errors", {"completed_with_errors", "failed", "timed_out"}),
    ("failures", {"failed", "timed_out"}),
])
def test_the_policy_picks_the_runs_that_are_e_mailed(notify_on, sent):
    statuses = ("completed", "completed_with_errors", "failed", "skipped", "timed_out")
    assert {s for s in statuses if mail.due(notify_on, s)} == sent


def test_with_a_public_url_both_parts_link_the_run_its_failures_and_each_code():
    msg = mail.compose(_settings("https://dx.example.com"), _run(), mail.Report(ERRORS, b"row_number\r\n1\r\n"),
                       ["ops@acme.example"])
    text, html, attached = _parts(msg)
    assert "https://dx.example.com/#/runs/42" in text and 'href="https://dx.example.com/#/runs/42"' in html
    assert 'href="https://dx.example.com/error-codes#INVALID_EMAIL"' in html
    assert 'href="https://dx.example.com/#/runs/42/failures"' in html
    assert [a.get_filename() for a in attached] == ["run-42-failures.csv"]
    assert attached[0].get_payload(decode=True) == b"row_number\r\n1\r\n"


def test_a_report_too_large_to_attach_is_linked_and_without_a_public_url_named_as_a_command():
    _, html, attached = _parts(mail.compose(_settings("https://dx.example.com"), _run(), mail.Report(ERRORS),
                                            ["ops@acme.example"]))
    assert attached == [] and "Download the failed operations" in html and "also attached" not in html
    text, html, _ = _parts(mail.compose(_settings(None), _run(), mail.Report(ERRORS), ["ops@acme.example"]))
    assert "dx report 42 -o failures.csv" in text and "href" not in html


def test_a_skipped_run_says_why_and_an_export_names_its_file_and_rows():
    text, html, _ = _parts(mail.compose(_settings(None), _run(status="skipped", not_inserted=0,
                                        error_message="the previous run 41 still runs (overlap: forbid)"),
                                        mail.Report([]), ["ops@acme.example"]))
    assert "Why:      the previous run 41 still runs (overlap: forbid)" in text
    assert "the previous run 41 still runs" in html
    text, _, _ = _parts(mail.compose(_settings(None), _run(status="completed", not_inserted=0, rows_exported=1234),
                                     mail.Report([], export={"target_path": "out/contacts.csv", "bytes": 56789}),
                                     ["ops@acme.example"]))
    assert "File:     out/contacts.csv: 1,234 rows, 56,789 bytes" in text


def test_values_are_escaped_in_the_html_part():
    _, html, _ = _parts(mail.compose(_settings(None), _run(status="failed", error_code="SOURCE_NOT_FOUND",
                                                           error_message="<script>x</script>"),
                                     mail.Report([]), ["ops@acme.example"]))
    assert "<script>" not in html and "&lt;script&gt;" in html
