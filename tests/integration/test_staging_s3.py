"""Staging on object storage: DX_STAGING_URL=s3://… on an S3-compatible server (moto's, on loopback).

Two workers, each with a staging folder of its own that the other cannot see, so that a chunk file
one of them wrote reaches the other only through the bucket: a 550,000-row overwrite in several
chunks, then a Displacer of the same table in two parts, whose file an overwrite imports back.
"""

from __future__ import annotations

import polars as pl
import pytest

from dx.devkit.cluster import Workers
from dx.devkit.generate import contacts
from tests.integration.helpers import FIELDS, apply, export_config, run, table

pytestmark = pytest.mark.timeout(300)
TENANT = "s3stage"


def test_runs_stage_through_the_bucket_between_workers_that_share_no_folder(cluster_env, sshd, s3, tmp_path):
    # Given: an overwrite importer, a displacer of its table and an importer of that file into a copy
    apply(export_config(TENANT, sshd, {"contacts": FIELDS, "copy": FIELDS}, [
        {"id": "s3-in", "kind": "importer", "database": "contacts", "mode": "overwrite", "chunk_bytes": 8_000_000,
         "source": {"path": "s3stage/in.csv", "settle_s": 0, "after": "keep"}},
        {"id": "s3-out", "kind": "displacer", "database": "contacts", "target": {"path": "s3stage/out/contacts.csv"}},
        {"id": "s3-back", "kind": "importer", "database": "copy", "mode": "overwrite",
         "source": {"path": "s3stage/out/contacts.csv", "settle_s": 0, "after": "keep"}},
    ]), tmp_path)
    frame = contacts(550_000, seed=3).select("email", "first_name", "points", "birth_date")
    sshd.put("s3stage/in.csv", frame.write_csv().encode())
    # and two workers staging in the bucket, each with its own local folder
    pools = [Workers({**cluster_env, **s3.env, "DX_STAGING_DIR": str(tmp_path / f"local-{i}")}, tmp_path / f"w{i}")
             for i in range(2)]
    for i, pool in enumerate(pools):
        (tmp_path / f"w{i}").mkdir()
        pool.start(1)
    try:
        # When: the import, the export and the import of the exported file run
        imported = run("s3-in", 240)
        exported = run("s3-out", 240)
        back = run("s3-back", 240)
    finally:
        for pool in pools:
            pool.stop_all()

    # Then: each completed in several chunks, the table and its round trip equal the file
    for done in (imported, exported, back):
        assert done["status"] == "completed", done["error_message"]
        assert done["n_chunks"] >= 2, done
    imported_table = table(TENANT)
    assert len(imported_table) == 550_000
    assert {k: (v[0], v[1]) for k, v in imported_table.items()} == {
        r["email"]: (r["first_name"], int(r["points"])) for r in frame.iter_rows(named=True)}
    assert table(TENANT, "copy") == imported_table
    # and the chunks went through the bucket, whose run folders are gone once the runs ended
    logs_each = [(tmp_path / f"w{i}" / "worker-0.log").read_text() for i in range(2)]
    logs = "".join(logs_each)
    assert logs.count('"event": "chunk.done"') >= 6 and logs.count('"event": "export_chunk.done"') >= 2
    assert {log.count('"event": "chunk.done"') > 0 for log in logs_each} == {True}, "a worker applied no chunk"
    assert all(not list((tmp_path / f"local-{i}").glob("runs/*/chunks/*")) for i in range(2))
    assert set(s3.keys("dx/runs/")) <= {"dx/runs/"}  # pyarrow keeps the parent's empty folder marker
    assert pl.read_csv(sshd.root / "s3stage/out/contacts.csv").height == 550_000
