"""The embedded PostgreSQL is the demo's: without its package dx says what to set or install."""

from __future__ import annotations

import sys

import pytest

from dx.shared import db
from dx.shared.errors import ConfigError
from dx.shared.settings import Settings


def test_without_pgserver_an_unset_database_url_says_what_to_do(tmp_path, monkeypatch):
    # Given: DX_DATABASE_URL unset, and no pgserver package (a server's install)
    monkeypatch.setitem(sys.modules, "pgserver", None)  # its import fails as if it were not installed
    settings = Settings.from_env({"DX_HOME": str(tmp_path)})
    # When: the database's URL is needed / Then: a configuration error naming both ways out
    with pytest.raises(ConfigError) as info:
        db.database_url(settings)
    (problem,) = info.value.problems
    assert "DX_DATABASE_URL is unset" in problem
    assert "set DX_DATABASE_URL=postgresql://" in problem
    assert "pip install 'dx-shared[embedded]'" in problem


def test_a_set_database_url_never_needs_pgserver(monkeypatch):
    monkeypatch.setitem(sys.modules, "pgserver", None)
    settings = Settings.from_env({"DX_DATABASE_URL": "postgresql://db.example/dx"})
    assert db.database_url(settings) == "postgresql://db.example/dx"
