"""Each export behaviour's hooks: the one place in the exports wing that looks at a module's kind.

``export_kind(mdef)`` picks the run's ``ExportKind``: the ``Displacer`` (a
database's rows) or the ``Exporter`` (the platform's events since its
watermark). The export plan, chunk and reduce actors ask it what differs; the
SQL stays in ``query``, which the hooks call. Not an actor module.
"""

from __future__ import annotations

from typing import Any, Protocol

from dx.shared.catalog import ModuleDef
from dx.shared.db import Conn
from dx.workers.exports.query import (
    ExportQuery,
    displacer_query,
    exporter_query,
    exporter_window,
    move_watermark,
)


class ExportKind(Protocol):
    """What one export behaviour decides, for the run of ``mdef``."""

    mdef: ModuleDef

    def window(self, conn: Conn, run_id: int) -> tuple[str | None, str | None]:
        """In the plan's transaction: the snapshots (from, to) bounding what the run exports, which the
        plan records in ``dx.exports``."""

    def query(self, export: dict[str, Any]) -> ExportQuery:
        """The query of a planned run, from its ``dx.exports`` row: the same for its plan, chunks and retries."""

    def delivered(self, conn: Conn, run_id: int, export: dict[str, Any]) -> None:
        """In the transaction that records the delivery: what the run moves on."""


class Displacer:
    """A database's rows, as each chunk reads its key range."""

    def __init__(self, mdef: ModuleDef) -> None:
        self.mdef = mdef

    def window(self, conn: Conn, run_id: int) -> tuple[str | None, str | None]:
        return None, None  # no window: every row the filter keeps

    def query(self, export: dict[str, Any]) -> ExportQuery:
        return displacer_query(self.mdef)

    def delivered(self, conn: Conn, run_id: int, export: dict[str, Any]) -> None:
        return None


class Exporter:
    """The platform's events committed between the module's watermark and the plan's snapshot."""

    def __init__(self, mdef: ModuleDef) -> None:
        self.mdef = mdef

    def window(self, conn: Conn, run_id: int) -> tuple[str | None, str | None]:
        """From the watermark to now; ``query.Busy`` while another run of the module is in flight."""
        return exporter_window(conn, self.mdef.module.id, run_id)

    def query(self, export: dict[str, Any]) -> ExportQuery:
        return exporter_query(self.mdef, export["snapshot_from"], export["snapshot_to"])

    def delivered(self, conn: Conn, run_id: int, export: dict[str, Any]) -> None:
        """The run's snapshot becomes the watermark: the next run exports the events after it."""
        move_watermark(conn, self.mdef.module.id, export["snapshot_to"], run_id)


def export_kind(mdef: ModuleDef) -> ExportKind:
    """The hooks of the module's export behaviour."""
    match mdef.module.kind:
        case "displacer":
            return Displacer(mdef)
        case "exporter":
            return Exporter(mdef)
    raise ValueError(f"module {mdef.module.id} is no export: kind {mdef.module.kind}")
