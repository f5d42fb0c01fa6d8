"""Building blocks of the integration tests: config, runs, tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dx.cli import main, wait_for
from dx.devkit import configs
from dx.scheduler.requests import request_run
from dx.shared import db
from dx.shared.runs import Trigger

FIELDS = {"email": {"type": "email", "required": True}, "first_name": "text", "points": "int",
          "birth_date": {"type": "date", "format": "%d/%m/%Y"}}


def config(tenant: str, sftp: Any, modules: list[dict[str, Any]], *, host_key: str | None = None,
           auth: str = "key", fields: dict[str, Any] | None = None) -> str:
    """A YAML config: one tenant, its SFTP connection, database ``contacts``, the given modules."""
    conn: dict[str, Any] = {"id": f"{tenant}-sftp", "tenant": tenant, "type": "sftp", "host": "127.0.0.1",
                            "port": sftp.port, "username": "dxsftp", "host_key": host_key or sftp.host_key,
                            "root": str(sftp.root), "timeout_s": 5}
    if auth == "password":
        conn["password"] = "${DX_SECRET_TEST_SFTP_PASSWORD}"
    else:
        conn["private_key"] = "${DX_SECRET_TEST_SFTP_KEY}"
    mods = [{"tenant": tenant, "kind": "importer", "database": "contacts", **m} for m in modules]
    for m in mods:
        m["source"] = {"connection": f"{tenant}-sftp", "settle_s": 0, **m["source"]}
    return configs.dump(sort_keys=True, doc={  # keys sorted, as yaml.safe_dump wrote them
        "tenants": [{"id": tenant, "notify": [f"ops@{tenant}.example"]}],
        "connections": [conn],
        "databases": [{"id": "contacts", "tenant": tenant, "primary_key": "email",
                       "fields": fields or FIELDS}],
        "modules": mods,
    })


def text_of(message: Any) -> str:
    """The plain-text part of an e-mail (its HTML part and attachments aside)."""
    return str(message.get_body(("plain",)).get_content())


def apply(text: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert main(["apply", "-f", str(path)]) == 0


def run(module: str, timeout_s: float = 120) -> dict[str, Any]:
    """Request a run as `dx run` does and wait for its end."""
    return wait_for(request_run(module, Trigger.MANUAL, "pytest"), timeout_s)


def table(tenant: str, name: str = "contacts") -> dict[str, tuple[Any, ...]]:
    """The contact table as {key: (first_name, points, birth_date)}."""
    with db.connect() as conn:
        rows = conn.execute(
            f'SELECT email, first_name, points, birth_date FROM "tenant_{tenant}"."{name}"').fetchall()  # noqa: S608
    return {r["email"]: (r["first_name"], r["points"], r["birth_date"]) for r in rows}


def seed(tenant: str, rows: list[tuple[str, str, int]]) -> None:
    with db.transaction() as conn:
        conn.execute(f'DELETE FROM "tenant_{tenant}".contacts')  # noqa: S608
        for r in rows:
            conn.execute(f'INSERT INTO "tenant_{tenant}".contacts (email, first_name, points)'  # noqa: S608
                         " VALUES (%s, %s, %s)", r)


def failures(run_id: int) -> list[tuple[int | None, str]]:
    """(row_number, error_code) of the run's failed operations, by row."""
    with db.connect() as conn:
        rows = conn.execute("SELECT row_number, error_code FROM dx.failed_operations WHERE run_id = %s"
                            " ORDER BY row_number", (run_id,)).fetchall()
    return [(r["row_number"], r["error_code"]) for r in rows]


def tables_left(tenant: str) -> list[str]:
    with db.connect() as conn:
        return [r["table_name"] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
            (f"tenant_{tenant}",))]


def export_config(tenant: str, sftp: Any, databases: dict[str, dict[str, Any]], modules: list[dict[str, Any]],
                  primary_key: str = "email") -> str:
    """A YAML config: one tenant, its SFTP connection, the given databases and modules (any kind).

    A module's ``target`` or ``source`` gets the connection filled in.
    """
    conn = {"id": f"{tenant}-sftp", "tenant": tenant, "type": "sftp", "host": "127.0.0.1", "port": sftp.port,
            "username": "dxsftp", "host_key": sftp.host_key, "root": str(sftp.root), "timeout_s": 5,
            "private_key": "${DX_SECRET_TEST_SFTP_KEY}"}  # the key is this session's own; the password is shared
    mods = []
    for m in modules:
        m = {"tenant": tenant, **m}
        for side in ("source", "target"):
            if side in m:
                m[side] = {"connection": f"{tenant}-sftp", **m[side]}
        mods.append(m)
    return configs.dump({  # in the order written, as a user writes a file
        "tenants": [{"id": tenant, "notify": [f"ops@{tenant}.example"]}],
        "connections": [conn],
        "databases": [{"id": d, "tenant": tenant, "primary_key": primary_key, "fields": f}
                      for d, f in databases.items()],
        "modules": mods,
    })
