"""PostgreSQL access: the connection URL (embedded or not) and migrations.

The control schema ``dx`` is created and upgraded by numbered SQL files in
``migrations/``; ``dx migrate`` applies the missing ones in order, under a
transaction-level advisory lock so that two replicas never migrate at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources

import psycopg
from psycopg.rows import DictRow, dict_row

from dx.shared.errors import ConfigError, RetriableError
from dx.shared.settings import Settings, get_settings

#: A connection whose rows are dicts (every connection this project opens).
Conn = psycopg.Connection[DictRow]
#: Advisory lock key that serialises migrations across processes.
MIGRATION_LOCK_KEY = 0x6478_6D67


@lru_cache(maxsize=4)
def _embedded_url(home: str) -> str:
    """Start (or reuse) the embedded PostgreSQL under DX_HOME/pgdata."""
    import warnings

    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on servers, at pgserver's import
        warnings.simplefilter("ignore")
        try:
            import pgserver  # imported here: only the embedded mode needs it, and a server has it not
        except ImportError:
            raise ConfigError([
                "DX_DATABASE_URL is unset and the embedded PostgreSQL (the pgserver package, for the demo only) "
                "is not installed: set DX_DATABASE_URL=postgresql://..., or install it with "
                "pip install 'dx-shared[embedded]' (Python 3.11 or 3.12; bash scripts/bootstrap.sh does it)"]) from None
        server = pgserver.get_server(f"{home}/pgdata", cleanup_mode=None)
    return server.get_uri()


def database_url(settings: Settings | None = None) -> str:
    """The URL of the platform's PostgreSQL, starting the embedded one if needed."""
    settings = settings or get_settings()
    if settings.database_url:
        return settings.database_url
    settings.home.mkdir(parents=True, exist_ok=True)
    return _embedded_url(str(settings.home))


def connect(settings: Settings | None = None, **kwargs: object) -> Conn:
    """A new connection with dict rows; wraps connection failures as retriable."""
    try:
        # the process id in pg_stat_activity tells operators (and tests) which worker holds a session
        kwargs.setdefault("application_name", f"dx pid {os.getpid()}")
        return psycopg.connect(database_url(settings), row_factory=dict_row, **kwargs)  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        raise RetriableError(f"PostgreSQL is not reachable: {exc}") from exc


@contextmanager
def transaction(settings: Settings | None = None) -> Iterator[Conn]:
    """A connection inside one transaction: committed on success, rolled back on error."""
    with connect(settings) as conn, conn.transaction():
        yield conn


def _migrations() -> list[tuple[int, str, str]]:
    files = resources.files("dx.shared").joinpath("migrations")
    found = []
    for entry in files.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def missing_migrations(conn: Conn) -> list[str]:
    """The migrations this version of dx has that the database has not applied."""
    if conn.execute("SELECT to_regclass('dx.schema_migrations') AS t").fetchone()["t"] is None:  # type: ignore[index]
        return [name for _, name, _ in _migrations()]
    done = {r["version"] for r in conn.execute("SELECT version FROM dx.schema_migrations")}
    return [name for version, name, _ in _migrations() if version not in done]


def migrate(settings: Settings | None = None) -> list[str]:
    """Apply the missing migrations; returns the names applied."""
    applied: list[str] = []
    with transaction(settings) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS dx")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS dx.schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in conn.execute("SELECT version FROM dx.schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO dx.schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            applied.append(name)
    return applied


def ensure_schema(settings: Settings | None = None) -> list[str]:
    """At a role's start: apply the missing migrations, or, with DX_MIGRATE_ON_START=false, only check
    that none is missing (the role's database user then needs no DDL right on the control schema);
    ConfigError saying to run ``dx migrate`` if one is. Returns the names applied."""
    settings = settings or get_settings()
    if settings.migrate_on_start:
        return migrate(settings)
    with connect(settings) as conn:
        missing = missing_migrations(conn)
    if missing:
        raise ConfigError([f"the control schema lacks {', '.join(missing)}: run `dx migrate` first (the Job "
                           "dx-migrate in Kubernetes); with DX_MIGRATE_ON_START=false this process does not migrate"])
    return []
