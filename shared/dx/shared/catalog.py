"""The catalog: applied configuration in the control schema, and contact tables.

Each tenant's contact databases live in their own PostgreSQL schema
(``tenant_<id>``): tenants are isolated by schema, identifiers always quoted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from dx.shared.config import Config, ConnectionCfg, DatabaseCfg, FieldCfg, Known, ModuleCfg
from dx.shared.db import Conn
from dx.shared.errors import ConfigError

#: PostgreSQL column type of each field type.
SQL_TYPES = {
    "text": "text", "email": "text", "int": "bigint", "decimal": "numeric",
    "bool": "boolean", "date": "date", "timestamp": "timestamptz",
}


def tenant_schema(tenant: str) -> str:
    """The PostgreSQL schema that holds a tenant's contact databases."""
    return f"tenant_{tenant}"


def table_ident(tenant: str, table: str) -> sql.Identifier:
    """A quoted schema-qualified table name."""
    return sql.Identifier(tenant_schema(tenant), table)


@dataclass(frozen=True)
class ModuleDef:
    """Everything a worker needs about one module, loaded in one query."""

    module: ModuleCfg
    database: DatabaseCfg
    connection: ConnectionCfg | None
    notify: tuple[str, ...]

    @classmethod
    def from_snapshot(cls, doc: dict[str, Any]) -> ModuleDef:
        """The definition a run was created with (``dx.shared.runs.SNAPSHOT``)."""
        connection = doc["connection"]
        return cls(ModuleCfg.model_validate(doc["module"]), DatabaseCfg.model_validate(doc["database"]),
                   ConnectionCfg.model_validate(connection) if connection else None, tuple(doc["notify"]))


def known(conn: Conn) -> Known:
    """What is already applied, for checking references of a new file."""
    return Known(
        tenants=frozenset(r["id"] for r in conn.execute("SELECT id FROM dx.tenants")),
        connections=tuple((r["id"], r["tenant"]) for r in conn.execute("SELECT id, tenant FROM dx.connections")),
        connection_types=tuple((r["id"], r["type"]) for r in conn.execute("SELECT id, type FROM dx.connections")),
        databases=frozenset((r["tenant"], r["id"]) for r in conn.execute("SELECT tenant, id FROM dx.databases")),
    )


def _key_column(f: FieldCfg) -> str:
    """What follows the key column's type. A text key is compared byte-wise (collation "C"): the
    same equality as any deterministic collation, and PostgreSQL sorts it with abbreviated keys and
    memcmp, which builds the primary key faster than C.UTF-8. Exports in key order are in byte order (C.UTF-8's code point order is the same)."""
    return ' COLLATE "C" NOT NULL' if SQL_TYPES[f.type] == "text" else " NOT NULL"


def _sync_table(conn: Conn, db: DatabaseCfg, path: str) -> list[str]:
    """Create the contact table, or add new fields; refuse a change of type or key."""
    schema = tenant_schema(db.tenant)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    existing = {
        r["column_name"]: r["data_type"]
        for r in conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s", (schema, db.id))
    }
    table = table_ident(db.tenant, db.id)
    if not existing:
        cols = [sql.SQL("{} {}{}").format(sql.Identifier(name), sql.SQL(SQL_TYPES[f.type]),
                                          sql.SQL(_key_column(f) if name == db.primary_key else ""))
                for name, f in db.fields.items()]
        conn.execute(sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}))").format(
            table, sql.SQL(", ").join(cols), sql.Identifier(db.primary_key)))
        return [f"created table {schema}.{db.id}"]
    changes, problems = [], []
    aliases = {"bigint": "bigint", "text": "text", "numeric": "numeric", "boolean": "boolean",
               "date": "date", "timestamp with time zone": "timestamptz"}
    for name, f in db.fields.items():
        have = existing.get(name)
        if have is None:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                table, sql.Identifier(name), sql.SQL(SQL_TYPES[f.type])))
            changes.append(f"added field {name} to {schema}.{db.id}")
        elif aliases.get(have) != SQL_TYPES[f.type]:
            problems.append(f"{path}.fields.{name}: the table holds {have}; changing a field's type "
                            "is not supported, add a new field instead")
    if problems:
        raise ConfigError(problems)
    return changes


#: What the console may change in a module: the keys its ``console_changes`` can hold.
CONSOLE_KEYS = ("schedule", "notify", "notify_on")


def _console_conflicts(conn: Conn, cfg: Config) -> list[str]:
    """Each module key changed in the console since the last apply to a value the file does not give."""
    problems = []
    for i, m in enumerate(cfg.modules):
        row = conn.execute("SELECT console_changes FROM dx.modules WHERE id = %s", (m.id,)).fetchone()
        written = m.model_dump(mode="json")
        for key, change in ((row or {}).get("console_changes") or {}).items():
            if written.get(key) != change["value"]:
                problems.append(f"modules[{i}].{key}: changed in the console by {change['by']} at {change['at']} "
                                f"to {json.dumps(change['value'])}; write that into the file, or apply with "
                                "--discard-console-changes to put the file's back")
    return problems


def apply_config(conn: Conn, cfg: Config, *, discard_console_changes: bool = False) -> list[str]:
    """Write the configuration into the control schema; returns what changed. A module whose schedule or
    notifications were changed in the console since the last apply is refused (ConfigError) unless the
    file gives the same, or ``discard_console_changes``: neither side is lost in silence."""
    if not discard_console_changes and (conflicts := _console_conflicts(conn, cfg)):
        raise ConfigError(conflicts)
    changes: list[str] = []
    for t in cfg.tenants:
        conn.execute(
            "INSERT INTO dx.tenants (id, notify, enabled, timezone) VALUES (%s, %s, %s, %s) ON CONFLICT (id)"
            " DO UPDATE SET notify = EXCLUDED.notify, enabled = EXCLUDED.enabled, timezone = EXCLUDED.timezone,"
            " updated_at = now()", (t.id, t.notify, t.enabled, t.timezone))
        changes.append(f"tenant {t.id}")
    for c in cfg.connections:
        row = conn.execute("SELECT tenant FROM dx.connections WHERE id = %s", (c.id,)).fetchone()
        if row and row["tenant"] != c.tenant:
            raise ConfigError([f"connections: {c.id!r} already belongs to tenant {row['tenant']!r}"])
        conn.execute(
            "INSERT INTO dx.connections (id, tenant, type, config) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET type = EXCLUDED.type, config = EXCLUDED.config, updated_at = now()",
            (c.id, c.tenant, c.type, Jsonb(c.model_dump())))
        changes.append(f"connection {c.id}")
    for i, d in enumerate(cfg.databases):
        changes += _sync_table(conn, d, f"databases[{i}]")
        conn.execute(
            "INSERT INTO dx.databases (tenant, id, primary_key, fields) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (tenant, id) DO UPDATE SET fields = EXCLUDED.fields, updated_at = now()",
            (d.tenant, d.id, d.primary_key, Jsonb(d.model_dump()["fields"])))
        key = conn.execute("SELECT primary_key FROM dx.databases WHERE tenant = %s AND id = %s",
                           (d.tenant, d.id)).fetchone()
        if key and key["primary_key"] != d.primary_key:
            raise ConfigError([f"databases[{i}].primary_key: the database is keyed on "
                               f"{key['primary_key']!r}; the key cannot change"])
        changes.append(f"database {d.tenant}/{d.id}")
    for m in cfg.modules:
        row = conn.execute("SELECT tenant FROM dx.modules WHERE id = %s", (m.id,)).fetchone()
        if row and row["tenant"] != m.tenant:
            raise ConfigError([f"modules: {m.id!r} already belongs to tenant {row['tenant']!r}"])
        conn.execute(
            "INSERT INTO dx.modules (id, tenant, kind, database, config, paused)"
            " VALUES (%(id)s, %(tenant)s, %(kind)s, %(database)s, %(config)s, coalesce(%(paused)s, false))"
            " ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, database = EXCLUDED.database,"
            " config = EXCLUDED.config, paused = coalesce(%(paused)s, dx.modules.paused), console_changes = '{}',"
            " updated_at = now()",
            {"id": m.id, "tenant": m.tenant, "kind": m.kind, "database": m.database,
             "config": Jsonb(m.model_dump(mode="json")), "paused": m.paused})
        changes.append(f"module {m.id}")
    return changes


def load_module(conn: Conn, module_id: str) -> ModuleDef:
    """The module with its database, connection and recipients; KeyError if unknown."""
    row = conn.execute(
        "SELECT m.config AS module, d.id AS db_id, d.tenant AS db_tenant, d.primary_key, d.fields,"
        " c.config AS connection, t.notify AS tenant_notify"
        " FROM dx.modules m JOIN dx.databases d ON d.tenant = m.tenant AND d.id = m.database"
        " JOIN dx.tenants t ON t.id = m.tenant"
        " LEFT JOIN dx.connections c ON c.tenant = m.tenant"
        " AND c.id = coalesce(m.config->'source'->>'connection', m.config->'target'->>'connection')"
        " WHERE m.id = %s", (module_id,)).fetchone()
    if row is None:
        raise KeyError(module_id)
    module = ModuleCfg.model_validate(row["module"])
    database = DatabaseCfg(id=row["db_id"], tenant=row["db_tenant"], primary_key=row["primary_key"],
                           fields=_in_table_order(conn, row["db_tenant"], row["db_id"], row["fields"]))
    connection = ConnectionCfg.model_validate(row["connection"]) if row["connection"] else None
    notify = tuple(dict.fromkeys([*row["tenant_notify"], *module.notify]))
    return ModuleDef(module, database, connection, notify)


def _in_table_order(conn: Conn, tenant: str, table: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The fields in the order of the table's columns, which is the order they were configured in
    (then those added later): the database's config is stored as jsonb, which keeps keys in an order of
    its own (shortest first), and a Displacer without ``fields`` writes the columns in this order."""
    order = [r["attname"] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum", (table_ident(tenant, table).as_string(conn),))]
    return {**{name: fields[name] for name in order if name in fields}, **fields}


def module_rows(conn: Conn, tenant: str | None = None, module: str | None = None) -> list[dict[str, Any]]:
    """Modules with their last run and their tenant's ``tenant_enabled`` and ``tenant_timezone`` (all, or one
    tenant's, or one), for ``dx modules`` and the API."""
    return conn.execute(
        "SELECT m.id, m.tenant, m.kind, m.database, m.config->>'mode' AS mode, m.config, m.paused,"
        " t.enabled AS tenant_enabled, t.timezone AS tenant_timezone,"
        " r.id AS last_run, r.status AS last_status, r.finished_at AS last_finished"
        " FROM dx.modules m JOIN dx.tenants t ON t.id = m.tenant"
        " LEFT JOIN LATERAL (SELECT id, status, finished_at FROM dx.runs"
        " WHERE module = m.id ORDER BY id DESC LIMIT 1) r ON true"
        " WHERE (%(tenant)s::text IS NULL OR m.tenant = %(tenant)s) AND (%(module)s::text IS NULL OR m.id = %(module)s)"
        " ORDER BY m.tenant, m.id", {"tenant": tenant, "module": module}).fetchall()


def module_state(conn: Conn, module_id: str) -> dict[str, Any] | None:
    """The module's stored ``config``, its ``paused`` flag and its tenant's ``tenant_enabled`` and
    ``tenant_timezone``; None if there is no such module."""
    return conn.execute("SELECT m.config, m.paused, t.enabled AS tenant_enabled, t.timezone AS tenant_timezone"
                        " FROM dx.modules m JOIN dx.tenants t ON t.id = m.tenant WHERE m.id = %s",
                        (module_id,)).fetchone()


def tenant_exists(conn: Conn, tenant: str) -> bool:
    """Whether a configuration has made the tenant."""
    return conn.execute("SELECT 1 FROM dx.tenants WHERE id = %s", (tenant,)).fetchone() is not None


def primary_key(conn: Conn, tenant: str, database: str) -> str | None:
    """The key field of a tenant's database; None if there is no such database."""
    row = conn.execute("SELECT primary_key FROM dx.databases WHERE tenant = %s AND id = %s",
                       (tenant, database)).fetchone()
    return None if row is None else str(row["primary_key"])


def count_contacts(conn: Conn, tenant: str, database: str) -> int:
    """How many contacts the table of a tenant's database holds."""
    row = conn.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(table_ident(tenant, database))).fetchone()
    return int(row["n"]) if row else 0
