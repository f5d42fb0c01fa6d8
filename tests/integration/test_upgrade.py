"""What an older dx stored still loads after an upgrade's migrations."""

from __future__ import annotations

from importlib import resources

import pytest
from pydantic import ValidationError

from dx.shared import db
from dx.shared.catalog import load_module
from dx.shared.runs import Trigger, create_run, definition, get_run
from tests.integration.helpers import apply, config

pytestmark = pytest.mark.timeout(60)


def test_file_connections_stored_with_the_old_sslmode_default_load_after_migration_0013(cluster_env, sshd, tmp_path):
    # Given an sftp connection, and a queued run's copy of it, as dx stored them before sslmode's default
    # became verify-full: with the old default, prefer, written out
    apply(config("upg", sshd, [{"id": "upg-import", "mode": "upsert", "source": {"path": "in/a.csv"}}]), tmp_path)
    with db.transaction() as conn:
        conn.execute("""UPDATE dx.connections SET config = config || '{"sslmode": "prefer"}' WHERE id = 'upg-sftp'""")
        run_id = create_run(conn, "upg", "upg-import", Trigger.MANUAL, "pytest")
    with db.connect() as conn, pytest.raises(ValidationError):
        definition(conn, get_run(conn, run_id))  # type: ignore[arg-type]

    # When migration 0013 runs (as `dx migrate` runs it on an older database)
    sql = resources.files("dx.shared").joinpath("migrations", "0013_connection_tls.sql").read_text()
    with db.transaction() as conn:
        conn.execute(sql)

    # Then the connection and the run's copy load, the copy's fields still in the table's column order
    with db.connect() as conn:
        run = get_run(conn, run_id)
        assert run is not None
        pinned = definition(conn, run)
        assert pinned.connection is not None and pinned.connection.id == "upg-sftp"
        columns = [r["column_name"] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'tenant_upg'"
            " AND table_name = 'contacts' ORDER BY ordinal_position")]
        assert list(pinned.database.fields) == columns
        assert load_module(conn, "upg-import").connection is not None
