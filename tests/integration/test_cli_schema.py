"""Commands on a database that `dx migrate` has not brought up to date say so, plainly."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from dx.devkit.cluster import PG_ADMIN


@pytest.fixture
def bare_database():
    name = f"dx_bare_{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _dx(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DX_")} | {"DX_DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "dx", *args], env=env, capture_output=True, text=True, timeout=60)


def test_a_command_before_migrate_says_to_run_it_then_works(bare_database):
    # Given a database no dx has migrated / When runs are listed
    before = _dx(bare_database, "runs")
    # Then exit 2 with what to do, and no traceback
    assert before.returncode == 2
    assert "the control schema lacks 0001_control.sql" in before.stderr and "run `dx migrate`" in before.stderr
    assert "Traceback" not in before.stderr
    # When migrated / Then the same command works
    assert _dx(bare_database, "migrate").returncode == 0
    after = _dx(bare_database, "runs")
    assert after.returncode == 0, after.stderr
