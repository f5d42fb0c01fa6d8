"""The e-mail after each run: what ran, the outcome, warnings, counters, error codes.

Sent over SMTP when DX_SMTP_URL is set, else written as an .eml file under
DX_HOME/outbox (the embedded default).
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

from dx.shared.errors import MEANINGS
from dx.shared.runs import COUNTERS, Run
from dx.shared.settings import Settings


def compose(settings: Settings, run: Run, errors: list[dict[str, Any]],
            recipients: list[str]) -> EmailMessage:
    """The report e-mail of a finished run."""
    status = run["status"]
    warnings = run.get("warnings") or []
    # a run that went on despite something the client may not have meant says so at once
    noted = f", {len(warnings)} warning{'s' if len(warnings) > 1 else ''}" if warnings else ""
    msg = EmailMessage()
    msg["Subject"] = f"[DataExchange] {run['module']}: {status}{noted} (run {run['id']})"
    msg["From"] = settings.mail_from
    msg["To"] = ", ".join(recipients)
    duration = ""
    if (started := run["started_at"]) and (finished := run["finished_at"]):
        duration = f"{(finished - started).total_seconds():.1f} s"
    lines = [
        f"Module:   {run['module']} (tenant {run['tenant']})",
        f"Run:      {run['id']}, triggered by {run['trigger']}" + (f" ({run['requested_by']})" if run.get("requested_by") else ""),
        f"Source:   {run.get('source_path') or '-'}",
        f"Outcome:  {status}" + (f"{noted} (see Warnings below)" if warnings else ""),
        f"Duration: {duration or '-'}",
    ]
    if run.get("error_code"):
        lines.append(f"Error:    {run['error_code']}: {run.get('error_message') or ''}")
    if warnings:
        lines += ["", "Warnings:"]
        for w in warnings:
            lines += [f"  {w['code']}: {w['message']}", f"    {MEANINGS.get(w['code'], '')}"]
    lines += ["", "Counters:"] + [f"  {name:<13} {run.get(name, 0):>12,}" for name in COUNTERS]
    if errors:
        lines += ["", "Failed operations by error code:", f"  {'code':<24} {'count':>10}  meaning"]
        lines += [f"  {e['error_code']:<24} {e['n']:>10,}  {MEANINGS.get(e['error_code'], '')}" for e in errors]
        lines += ["", f"Every failed record, with its row number and reason: dx report {run['id']} -o failures.csv"]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def compose_paused(settings: Settings, module: str, tenant: str, failed: list[dict[str, Any]],
                   recipients: list[str]) -> EmailMessage:
    """The e-mail saying a module's schedule was paused after consecutive failed runs."""
    msg = EmailMessage()
    msg["Subject"] = f"[DataExchange] {module}: schedule paused after {len(failed)} failed runs"
    msg["From"] = settings.mail_from
    msg["To"] = ", ".join(recipients)
    lines = [f"Module:   {module} (tenant {tenant})",
             f"Its last {len(failed)} runs failed, so its schedule is paused: no scheduled run starts",
             "until someone resumes it. Runs on demand (dx run) still work.", "", "Failed runs:"]
    lines += [f"  run {r['id']:<8} {r['status']:<10} {r['error_code'] or '-':<24} {r['error_message'] or ''}"
              for r in failed]
    lines += ["", f"Once the cause is fixed: dx resume {module}"]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def send(settings: Settings, msg: EmailMessage, name: str | None = None) -> None:
    """Deliver over SMTP, or write to the outbox folder (as ``name``.eml, default run-N)."""
    if settings.smtp_url is None:
        settings.outbox_dir.mkdir(parents=True, exist_ok=True)
        if name is None:
            name = "run-" + msg["Subject"].split("(run ")[-1].rstrip(")").replace(" ", "_")
        (settings.outbox_dir / f"{name}.eml").write_bytes(bytes(msg))
        return
    url = urlsplit(settings.smtp_url)
    cls = smtplib.SMTP_SSL if url.scheme == "smtps" else smtplib.SMTP
    with cls(url.hostname or "127.0.0.1", url.port or (465 if url.scheme == "smtps" else 25), timeout=30) as smtp:
        if url.username:
            smtp.login(unquote(url.username), unquote(url.password or ""))
        smtp.send_message(msg)
