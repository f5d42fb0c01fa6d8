"""The e-mail after each run: what ran, the outcome, counters, error codes.

Sent over SMTP when DX_SMTP_URL is set, else written as an .eml file under
DX_HOME/outbox (the embedded default).
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

from dx.shared.errors import ErrorCode
from dx.shared.runs import COUNTERS
from dx.shared.settings import Settings

#: Meaning of each error code, for the e-mail's table.
MEANINGS = {c.value: c.meaning for c in ErrorCode}


def compose(settings: Settings, run: dict[str, Any], errors: list[dict[str, Any]],
            recipients: list[str]) -> EmailMessage:
    """The report e-mail of a finished run."""
    status = run["status"]
    msg = EmailMessage()
    msg["Subject"] = f"[DataExchange] {run['module']}: {status} (run {run['id']})"
    msg["From"] = settings.mail_from
    msg["To"] = ", ".join(recipients)
    duration = ""
    if run.get("started_at") and run.get("finished_at"):
        duration = f"{(run['finished_at'] - run['started_at']).total_seconds():.1f} s"
    lines = [
        f"Module:   {run['module']} (tenant {run['tenant']})",
        f"Run:      {run['id']}, triggered by {run['trigger']}" + (f" ({run['requested_by']})" if run.get("requested_by") else ""),
        f"Source:   {run.get('source_path') or '-'}",
        f"Outcome:  {status}",
        f"Duration: {duration or '-'}",
    ]
    if run.get("error_code"):
        lines.append(f"Error:    {run['error_code']}: {run.get('error_message') or ''}")
    lines += ["", "Counters:"] + [f"  {name:<13} {run.get(name, 0):>12,}" for name in COUNTERS]
    if errors:
        lines += ["", "Failed operations by error code:", f"  {'code':<24} {'count':>10}  meaning"]
        lines += [f"  {e['error_code']:<24} {e['n']:>10,}  {MEANINGS.get(e['error_code'], '')}" for e in errors]
        lines += ["", f"Every failed record, with its row number and reason: dx report {run['id']} -o failures.csv"]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def send(settings: Settings, msg: EmailMessage) -> None:
    """Deliver over SMTP, or write to the outbox folder."""
    if settings.smtp_url is None:
        settings.outbox_dir.mkdir(parents=True, exist_ok=True)
        name = msg["Subject"].split("(run ")[-1].rstrip(")").replace(" ", "_")
        (settings.outbox_dir / f"run-{name}.eml").write_bytes(bytes(msg))
        return
    url = urlsplit(settings.smtp_url)
    cls = smtplib.SMTP_SSL if url.scheme == "smtps" else smtplib.SMTP
    with cls(url.hostname or "127.0.0.1", url.port or (465 if url.scheme == "smtps" else 25), timeout=30) as smtp:
        if url.username:
            smtp.login(unquote(url.username), unquote(url.password or ""))
        smtp.send_message(msg)
