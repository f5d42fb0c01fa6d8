"""A module whose source is the client's database: staging its rows, moving its watermark.

``stage_query`` (called by the plan actor) reads the table or query into a
staged CSV file, which the plan then parses like any CSV source; the file
ledger does not apply. The database is any ``SourceDatabase``
(``dx.shared.connections.open_database`` picks it by the connection's type:
postgres, mysql). ``adopt_watermark`` (called by reduce in the run's
finishing transaction) makes the run's high watermark the module's: a run that
fails, or dies, never moves it, so its rows are read again by the next run.
A run that finds no new row completes with 0 rows (it did check the source).

The stored watermark belongs to a basis (connection, table or query, column):
change any of them and the next run reads the whole source again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import structlog

from dx.shared import db
from dx.shared.catalog import ModuleDef
from dx.shared.connections import FileInfo, describe_query, open_database
from dx.shared.db import Conn

log = structlog.get_logger(__name__)


def _basis(mdef: ModuleDef) -> str:
    """What a stored watermark was measured on."""
    src = mdef.module.source
    assert src is not None
    return json.dumps([src.connection, src.table, src.query, src.watermark])


def stage_query(run_id: int, mdef: ModuleDef, source_dir: Path) -> tuple[FileInfo, Path]:
    """The module's rows (only those past its watermark) as a staged CSV file with a header."""
    src, cfg = mdef.module.source, mdef.connection
    assert src is not None and cfg is not None
    since = None
    if src.watermark is not None:
        with db.connect() as conn:
            row = conn.execute("SELECT value FROM dx.source_watermarks WHERE module = %s AND basis = %s",
                               (mdef.module.id, _basis(mdef))).fetchone()
        since = row["value"] if row else None
    local = source_dir / "source.csv"
    started = time.monotonic()
    with open_database(cfg) as client, open(local, "wb") as out:
        high = client.copy_rows(src, since, out)
    with db.connect() as conn:
        conn.execute("UPDATE dx.runs SET source_watermark = %s WHERE id = %s", (high, run_id))
        conn.commit()
    size = local.stat().st_size
    log.info("plan.queried", bytes=size, since=since, high=high, seconds=round(time.monotonic() - started, 3))
    return FileInfo(describe_query(src), size, int(time.time())), local


def adopt_watermark(conn: Conn, run_id: int, mdef: ModuleDef) -> None:
    """In the run's finishing transaction: the run's high watermark becomes the module's
    (a run that read no new row leaves it where it was)."""
    conn.execute(
        "INSERT INTO dx.source_watermarks (module, basis, value, run_id)"
        " SELECT r.module, %s, r.source_watermark, r.id FROM dx.runs r"
        " WHERE r.id = %s AND r.source_watermark IS NOT NULL"
        " ON CONFLICT (module) DO UPDATE SET basis = EXCLUDED.basis, value = EXCLUDED.value,"
        " run_id = EXCLUDED.run_id, updated_at = now()", (_basis(mdef), run_id))
