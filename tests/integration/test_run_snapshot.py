"""A run pins its module's definition: a `dx apply` during the run changes only later runs."""

from __future__ import annotations

from typing import Any

from dx.cli import wait_for
from dx.devkit.generate import contacts
from dx.scheduler.requests import request_run
from dx.shared import db
from dx.shared.catalog import load_module
from dx.shared.runs import Trigger, definition, get_run
from tests.integration.helpers import apply, config, failures, run, table

OLD_FIELDS = {"email": {"type": "email", "required": True}, "first_name": "text", "points": "int",
              "birth_date": {"type": "date", "format": "%d/%m/%Y"}}
#: Every field's rule changes: the file's dates, its longer names and its empty points all fail under it.
NEW_FIELDS = {"email": {"type": "email", "required": True}, "first_name": {"type": "text", "max_length": 4},
              "points": {"type": "int", "required": True}, "birth_date": {"type": "date", "format": "%Y-%m-%d"}}
OLD_CHUNK_BYTES, NEW_CHUNK_BYTES = 4_000, 1_000_000


def _config(tenant: str, sshd: Any, fields: dict[str, Any], chunk_bytes: int) -> str:
    return config(tenant, sshd, [{"id": f"{tenant}-import", "mode": "upsert", "chunk_bytes": chunk_bytes,
                                  "source": {"path": f"{tenant}/in_*.csv", "after": "keep"}}], fields=fields)


def _outcome(run_id: int, tenant: str) -> tuple[Any, ...]:
    """What a run did: its status, counters and chunks, its failed operations, the table after it."""
    with db.connect() as conn:
        r = conn.execute("SELECT * FROM dx.runs WHERE id = %s", (run_id,)).fetchone()
    assert r is not None
    counters = {k: r[k] for k in ("status", "rows_read", "inserted", "updated", "not_inserted", "n_chunks")}
    return counters, failures(run_id), table(tenant)


def test_an_apply_during_a_run_leaves_the_run_as_the_old_definition_makes_it(
        cluster_env, sshd, workers, tmp_path):
    # Given: the same file for two tenants' upsert modules, both on the old fields and chunk size
    frame = contacts(400, seed=11, bad_ratio=0.05).select("email", "first_name", "points", "birth_date")
    data = frame.write_csv().encode()
    for tenant in ("pinned", "pinref"):
        apply(_config(tenant, sshd, OLD_FIELDS, OLD_CHUNK_BYTES), tmp_path)
        sshd.put(f"{tenant}/in_1.csv", data)
    # ... and the reference: the run the old definition makes, with nothing applied during it
    workers.start(2)
    reference = run("pinref-import")
    workers.stop_all()

    # When: a run is requested (no worker is running: it waits, queued), then the fields and chunk size
    # change under it, then its plan, chunks and reduce run
    pinned = request_run("pinned-import", Trigger.MANUAL, "pytest")
    with db.connect() as conn:  # the snapshot is the module as `dx apply` left it, fields in table order
        snapshot, live = definition(conn, get_run(conn, pinned)), load_module(conn, "pinned-import")
        columns = [r["column_name"] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'tenant_pinned'"
            " AND table_name = 'contacts' ORDER BY ordinal_position")]
    assert snapshot == live and list(snapshot.database.fields) == columns
    apply(_config("pinned", sshd, NEW_FIELDS, NEW_CHUNK_BYTES), tmp_path)
    workers.start(2)
    wait_for(pinned, 120)

    # Then: it did exactly what the old definition does: same counters, chunks, failures and table
    assert reference["n_chunks"] > 1
    assert _outcome(pinned, "pinned") == _outcome(reference["id"], "pinref")

    # When: the next run, created after the apply, imports the same records again
    sshd.put("pinned/in_2.csv", data)
    later = run("pinned-import")
    # Then: it follows the new definition: fewer chunks, and every record refused by the new rules
    assert later["n_chunks"] < reference["n_chunks"]
    assert later["updated"] == 0 and len(failures(later["id"])) == later["rows_read"] == 400
    assert {code for _, code in failures(later["id"])} >= {"INVALID_VALUE"}
