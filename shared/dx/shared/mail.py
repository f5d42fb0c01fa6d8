"""The e-mail after each run: what ran, the outcome, warnings, counters, error codes, the failures.

Sent over SMTP when DX_SMTP_URL is set, else written as an .eml file under
DX_HOME/outbox (the embedded default).
"""

from __future__ import annotations

import html
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from dx.shared.errors import MEANINGS
from dx.shared.runs import COUNTERS, Run
from dx.shared.settings import Settings

#: Which run statuses each notification policy (a module's ``notify_on``) writes to its recipients about.
POLICY = {"always": None,
          "errors": {"failed", "completed_with_errors", "timed_out", "aborted"},
          "failures": {"failed", "timed_out", "aborted"}}


def due(notify_on: str, status: str) -> bool:
    """Whether a run that ended with ``status`` is e-mailed under the policy ``notify_on``."""
    statuses = POLICY[notify_on]
    return statuses is None or status in statuses


@dataclass(frozen=True)
class Report:
    """What the e-mail of an ended run tells beyond the run's row."""

    errors: list[dict[str, Any]]
    #: the failed operations' CSV when small enough to attach, else None (linked, or `dx report`)
    failures_csv: bytes | None = None
    #: an export's file: target_path, bytes (None for imports)
    export: dict[str, Any] | None = None


def compose(settings: Settings, run: Run, report: Report, recipients: list[str]) -> EmailMessage:
    """The report e-mail of a finished run: a text part and an HTML part, the failures attached when
    small; with DX_PUBLIC_URL, links to the run's page, its failures and each code's meaning."""
    status = run["status"]
    warnings = run.get("warnings") or []
    # a run that went on despite something the client may not have meant says so at once
    noted = f", {len(warnings)} warning{'s' if len(warnings) > 1 else ''}" if warnings else ""
    msg = EmailMessage()
    msg["Subject"] = f"[DataExchange] {run['module']}: {status}{noted} (run {run['id']})"
    msg["From"] = settings.mail_from
    msg["To"] = ", ".join(recipients)
    base = settings.public_url
    links = None if base is None else {"run": f"{base}/#/runs/{run['id']}",
                                       # through the console: a link from a mail reader carries no
                                       # SameSite=Strict cookie, the console's own request does
                                       "failures": f"{base}/#/runs/{run['id']}/failures",
                                       "codes": f"{base}/error-codes"}
    facts = _facts(run, report, noted)
    failed = sum(_count(run, c) for c in ("not_inserted", "not_updated", "not_deleted"))
    lines = [f"{name + ':':<10}{value}" for name, value in facts]
    if warnings:
        lines += ["", "Warnings:"]
        for w in warnings:
            lines += [f"  {w['code']}: {w['message']}", f"    {MEANINGS.get(w['code'], '')}"]
    lines += ["", "Counters:"] + [f"  {name:<13} {run.get(name, 0):>12,}" for name in COUNTERS]
    if report.errors:
        lines += ["", "Failed operations by error code:", f"  {'code':<24} {'count':>10}  meaning"]
        lines += [f"  {e['error_code']:<24} {e['n']:>10,}  {MEANINGS.get(e['error_code'], '')}" for e in report.errors]
    if failed:
        lines += ["", _where_failures(run, report, links)]
    if links is not None:
        lines += ["", f"The run's page: {links['run']}", f"What each code means: {links['codes']}"]
    msg.set_content("\n".join(lines) + "\n")
    msg.add_alternative(_html(run, report, facts, warnings, failed, links), subtype="html")
    if report.failures_csv is not None:
        msg.add_attachment(report.failures_csv, maintype="text", subtype="csv",
                           filename=f"run-{run['id']}-failures.csv", params={"charset": "utf-8"})
    return msg


def _count(run: Run, name: str) -> int:
    return int(cast(dict[str, Any], run).get(name) or 0)


def _facts(run: Run, report: Report, noted: str) -> list[tuple[str, str]]:
    """The run's facts as (label, text), in the order both parts show them."""
    duration = "-"
    if (started := run["started_at"]) and (finished := run["finished_at"]):
        duration = f"{(finished - started).total_seconds():.1f} s"
    trigger = f"{run['id']}, triggered by {run['trigger']}" + (f" ({run['requested_by']})" if run.get("requested_by") else "")
    facts = [("Module", f"{run['module']} (tenant {run['tenant']})"), ("Run", trigger)]
    if report.export is not None:
        size = "" if report.export.get("bytes") is None else f", {report.export['bytes']:,} bytes"
        facts.append(("File", f"{report.export['target_path']}: {_count(run, 'rows_exported'):,} rows{size}"))
    else:
        facts.append(("Source", run.get("source_path") or "-"))
    facts += [("Outcome", run["status"] + (f"{noted} (see Warnings below)" if noted else "")), ("Duration", duration)]
    if run["status"] == "skipped":
        facts.append(("Why", run.get("error_message") or "-"))
    elif run.get("error_code"):
        facts.append(("Error", f"{run['error_code']}: {run.get('error_message') or ''}"))
    return facts


def _where_failures(run: Run, report: Report, links: dict[str, str] | None) -> str:
    if report.failures_csv is not None:
        return f"Every failed record, with its row number and reason, is attached: run-{run['id']}-failures.csv"
    if links is not None:
        return f"Every failed record, with its row number and reason: {links['failures']}"
    return f"Every failed record, with its row number and reason: dx report {run['id']} -o failures.csv"


def _html(run: Run, report: Report, facts: list[tuple[str, str]], warnings: list[dict[str, str]], failed: int,
          links: dict[str, str] | None) -> str:
    """The HTML part: the same content, with links (every value escaped)."""
    e = html.escape

    def code(c: str) -> str:
        return f'<a href="{e(links["codes"])}#{e(c)}">{e(c)}</a>' if links else e(c)

    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts)
    parts = [f"<h2>{e(run['module'])}: {e(run['status'].replace('_', ' '))}</h2>", f"<table>{rows}</table>"]
    if links:
        parts.append(f'<p><a id="run-link" href="{e(links["run"])}">Open run {run["id"]} in the console</a></p>')
    if warnings:
        parts.append("<h3>Warnings</h3><ul>" + "".join(
            f"<li>{code(w['code'])}: {e(w['message'])} <small>{e(MEANINGS.get(w['code'], ''))}</small></li>"
            for w in warnings) + "</ul>")
    parts.append("<h3>Counters</h3><table>" + "".join(
        f"<tr><th>{e(n.replace('_', ' '))}</th><td align=right>{_count(run, n):,}</td></tr>" for n in COUNTERS)
        + "</table>")
    if report.errors:
        parts.append("<h3>Failed operations by error code</h3><table><tr><th>code</th><th>count</th><th>meaning</th></tr>"
                     + "".join(f"<tr><td>{code(x['error_code'])}</td><td align=right>{x['n']:,}</td>"
                               f"<td>{e(MEANINGS.get(x['error_code'], ''))}</td></tr>" for x in report.errors)
                     + "</table>")
    if failed and links:
        parts.append(f'<p><a id="failures-link" href="{e(links["failures"])}">Download the failed operations '
                     f"(failures.csv)</a>" + (", also attached." if report.failures_csv is not None else "") + "</p>")
    elif failed:
        parts.append(f"<p>{e(_where_failures(run, report, None))}</p>")
    return ("<!doctype html><html><body style=\"font-family: sans-serif\">" + "".join(parts) + "</body></html>")


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
