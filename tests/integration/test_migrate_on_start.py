"""DX_MIGRATE_ON_START=false: the roles only check that the control schema is current, so that their
database user needs no DDL right (the Kubernetes Job dx-migrate migrates, as the schema owner)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from dx.devkit.cluster import PG_ADMIN


@pytest.fixture
def bare_database() -> Iterator[str]:
    """A database no dx has migrated, and its name."""
    name = f"dx_nomigrate_{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def app_user(bare_database: str) -> Iterator[str]:
    """A login role that may read and write the control schema's tables but create nothing in the
    database (no CREATE on it): what an application role's user gets in production."""
    role = f"dx_app_{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    yield role
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{bare_database}" WITH (FORCE)')
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def _dx(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DX_")}
    return subprocess.run([sys.executable, "-m", "dx", *args], env={**base, "DX_DATABASE_URL": url, **env},
                          capture_output=True, text=True, timeout=120)


def _schema_exists(database: str) -> bool:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}") as conn:
        row = conn.execute("SELECT to_regnamespace('dx') IS NOT NULL").fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("command", [["scheduler"], ["serve", "--port", "0"], ["token", "list"]])
def test_a_role_that_may_not_migrate_refuses_an_old_schema_and_changes_nothing(bare_database, command):
    # Given a database without the control schema, and a role told not to migrate
    url = f"postgresql://postgres@127.0.0.1:5432/{bare_database}"
    # When it starts
    done = _dx(url, *command, DX_MIGRATE_ON_START="false")
    # Then exit 2, saying to run dx migrate, and no schema was created
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the control schema lacks 0001_control.sql" in done.stderr and "run `dx migrate` first" in done.stderr
    assert "Traceback" not in done.stderr
    assert not _schema_exists(bare_database)


def test_an_application_user_without_ddl_rights_runs_once_the_job_migrated(bare_database, app_user):
    # Given the schema migrated by its owner, and a user granted only the use of its tables
    admin = f"postgresql://postgres@127.0.0.1:5432/{bare_database}"
    assert _dx(admin, "migrate").returncode == 0
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'GRANT USAGE ON SCHEMA dx TO "{app_user}"')
        conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA dx TO "{app_user}"')
    url = f"postgresql://{app_user}@127.0.0.1:5432/{bare_database}"
    # When a role starts as that user, told not to migrate / Then it works
    allowed = _dx(url, "token", "list", DX_MIGRATE_ON_START="false")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    # but migrating at start, the default, needs a right this user lacks
    default = _dx(url, "token", "list")
    assert default.returncode != 0
    assert "permission denied for database" in default.stderr
