"""``dx demo``: the Importer end to end on embedded defaults.

Generates a contact file with a few broken records in a local client folder,
applies a configuration for it, runs an overwrite import and prints the run
and the first lines of its failed-operations report. The command line passes
in how to run a module (its ``dx run --wait``): the demo never imports it.
"""

from __future__ import annotations

import io
import json
import os
from typing import Protocol

import yaml

from dx.devkit.generate import FIELDS, contacts, write_csv
from dx.shared import db
from dx.shared.catalog import apply_config, count_contacts, known
from dx.shared.config import parse_config
from dx.shared.report import write_report
from dx.shared.runs import list_runs
from dx.shared.settings import get_settings

#: How many lines of the failed-operations report the demo prints.
REPORT_LINES = 6


class RunModule(Protocol):
    """Runs a module to its end and returns the CLI exit code of the run (``dx.cli.run_module``)."""

    def __call__(self, module: str, *, wait: bool, requested_by: str | None) -> int: ...


def demo_config(root: str) -> str:
    """The demo's configuration: one tenant, a local folder, one overwrite module."""
    return yaml.safe_dump({
        "tenants": [{"id": "demo", "notify": ["crm@demo.example"]}],
        "connections": [{"id": "demo-files", "tenant": "demo", "type": "local", "root": root}],
        "databases": [{"id": "newsletter", "tenant": "demo", "primary_key": "email", "fields": FIELDS}],
        "modules": [{"id": "demo-import", "tenant": "demo", "kind": "importer", "database": "newsletter",
                     "mode": "overwrite", "max_error_ratio": 0.05,
                     "source": {"connection": "demo-files", "path": "in/contacts_*.csv", "after": "archive",
                                "settle_s": 0}}],
    }, sort_keys=False)


def run_demo(rows: int, run_module: RunModule) -> int:
    """Run the demo, its import by ``run_module``; returns the CLI exit code of the import."""
    root = get_settings().home / "demo"
    root.mkdir(parents=True, exist_ok=True)
    # the demo's folder is a local root its tenant may use, as an operator would list it
    os.environ["DX_LOCAL_ROOTS"] = ",".join(filter(None, (os.environ.get("DX_LOCAL_ROOTS"), str(root))))
    get_settings.cache_clear()
    existing = len(list((root / "in").glob("contacts_*.csv")))
    path = write_csv(contacts(rows, bad_ratio=0.002, seed=existing), root / "in" / f"contacts_{existing + 1:04d}.csv")
    print(f"1. generated {rows:,} contacts (a few broken on purpose): {path}")
    db.migrate()
    with db.transaction() as conn:
        apply_config(conn, parse_config(demo_config(str(root)), known(conn)))
    print("2. applied the demo configuration (tenant demo, module demo-import: importer, overwrite)")
    print("3. running demo-import on the embedded broker and PostgreSQL ...")
    code = run_module("demo-import", wait=True, requested_by="dx demo")
    with db.connect() as conn:
        last = list_runs(conn, "demo-import", 1)
        assert last
        run_id, status = last[0]["id"], last[0]["status"]
        out = io.StringIO()
        write_report(conn, run_id, out)
        count = count_contacts(conn, "demo", "newsletter")
    print(f"4. tenant_demo.newsletter now holds {count:,} contacts; failed-operations report (first lines):")
    for line in out.getvalue().splitlines()[:REPORT_LINES]:
        print("   " + line)
    mails = sorted(get_settings().outbox_dir.glob("*.eml"))
    if mails:
        print(f"5. report e-mail written to {mails[-1]}")
    print(json.dumps({"run": run_id, "import_exit_code": code}))
    # a few rejected records are part of the demo; only a failed run fails it
    return 0 if code == 0 or status in ("completed", "completed_with_errors") else code
