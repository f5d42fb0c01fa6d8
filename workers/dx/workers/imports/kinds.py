"""Each import behaviour's hooks: the one place in the imports wing that looks at a module's kind and mode.

``import_kind(mdef)`` picks the run's ``ImportKind``: the Importer's
``Overwrite``, ``Append`` or ``Upsert``, or the ``Updater``. The plan, chunk
and reduce actors, and a failing run (``dx.workers.failures.Discards``), ask it
what differs between them; the SQL and the logic stay in ``importer``,
``updater`` and ``duplicates``, which the hooks call. Not an actor module.
"""

from __future__ import annotations

from typing import Protocol

import polars as pl
import structlog

from dx.shared import db
from dx.shared.catalog import ModuleDef
from dx.shared.db import Conn
from dx.shared.errors import ErrorCode
from dx.shared.runs import Run, streamed
from dx.shared.validate import Validated, find_column, missing_required, unmapped_columns
from dx.workers.imports import duplicates, importer, updater
from dx.workers.imports.importer import ChunkOutcome

log = structlog.get_logger(__name__)
#: How a run's load ends: (None, None), or the error code and message the run fails with (its load then
#: applied nothing: the run reports nothing inserted, updated or deleted).
Verdict = tuple[ErrorCode | None, str | None]


class ImportKind(Protocol):
    """What one import behaviour decides, for the run of ``mdef``."""

    mdef: ModuleDef
    #: The plan sends chunks of consecutive records while it reads, as the first occurrence of a key
    #: counts whatever follows it; else it splits the records by a hash of their key.
    streams: bool
    #: A retried streaming plan starts from nothing; else it cuts the same chunks again.
    restarts: bool
    #: The operation of a line the plan could not read (None: unknown), and the counter it counts in.
    malformed_operation: str | None
    malformed_counter: str

    def missing_columns(self, columns: list[str]) -> list[str]:
        """The columns the run cannot do without that the source's ``columns`` lack."""

    def unknown_columns(self, columns: list[str]) -> list[str]:
        """The source's ``columns`` that map to no field and that the run reads for nothing else."""

    def prepare_load(self, conn: Conn, run_id: int) -> None:
        """In the plan's transaction: make what the chunks load into besides the contact table."""

    def validate(self, frame: pl.DataFrame, columns: list[str]) -> Validated:
        """A chunk's records validated."""

    def apply(self, conn: Conn, run: Run, v: Validated) -> ChunkOutcome:
        """Apply a validated chunk in the caller's transaction."""

    def keys_applied(self, good: pl.DataFrame) -> pl.DataFrame:
        """What a streamed chunk writes to its keys file for the reduce (``duplicates``)."""

    def finish_load(self, conn: Conn, run: Run, counters: dict[str, int]) -> Verdict:
        """In the reduce's transaction, with the run's summed ``counters`` (corrected in place): what
        ends the load; (code, message) when the run must fail."""

    def tidy(self, run_id: int) -> None:
        """Once the run ended and its e-mail went: drop what it no longer needs."""

    def discard(self, conn: Conn, run: Run, *, chunks: bool) -> bool:
        """What a failing run throws away (``dx.workers.failures.Discards``); whether nothing its chunks
        applied stays."""


class _Defaults:
    """The hooks' defaults: an Importer's records (each an insert, the first occurrence of a key
    counting), split by key, with nothing to make, settle or discard."""

    streams = False
    restarts = False
    malformed_operation: str | None = "I"
    malformed_counter = "not_inserted"  # a line the plan could not read would have been an insert
    dedupe = "first"

    def __init__(self, mdef: ModuleDef) -> None:
        self.mdef = mdef

    def missing_columns(self, columns: list[str]) -> list[str]:
        return missing_required(columns, self.mdef.database)

    def unknown_columns(self, columns: list[str]) -> list[str]:
        src = self.mdef.module.source
        watermark = (src.watermark,) if src is not None and src.watermark else ()  # read for the watermark
        return unmapped_columns(columns, self.mdef.database, also=watermark)

    def prepare_load(self, conn: Conn, run_id: int) -> None:
        return None  # the chunks write into the contact table

    def validate(self, frame: pl.DataFrame, columns: list[str]) -> Validated:
        return importer.validate_records(frame, self.mdef, columns, dedupe=self.dedupe)

    def keys_applied(self, good: pl.DataFrame) -> pl.DataFrame:
        return duplicates.keys_applied(good)

    def finish_load(self, conn: Conn, run: Run, counters: dict[str, int]) -> Verdict:
        return None, None

    def tidy(self, run_id: int) -> None:
        return None

    def discard(self, conn: Conn, run: Run, *, chunks: bool) -> bool:
        return chunks  # a plan that splits by key sends its chunks once done: a failed one sent none


class Overwrite(_Defaults):
    """The chunks load a shadow table, swapped in for the contact table at the reduce."""

    streams = True
    restarts = True  # its chunks loaded the shadow table only: an attempt starts from an empty one

    def prepare_load(self, conn: Conn, run_id: int) -> None:
        importer.create_shadow(conn, self.mdef, run_id)

    def apply(self, conn: Conn, run: Run, v: Validated) -> ChunkOutcome:
        return importer.overwrite_chunk(conn, run, self.mdef, v)

    def finish_load(self, conn: Conn, run: Run, counters: dict[str, int]) -> Verdict:
        """Keep the first occurrence of a key that several chunks loaded, build the shadow table's key,
        apply the guards and swap; a refused swap drops the shadow table."""
        mdef, key_built = self.mdef, False
        if streamed(run):
            key_built, repeated = duplicates.build_key_while_checking(conn, run, mdef, counters["inserted"])
            if repeated is not None:
                removed = duplicates.settle_duplicates(conn, run, mdef, repeated)
                counters["inserted"] -= removed
                counters["not_inserted"] += removed
        code, message = importer.finish_overwrite(conn, run, mdef, counters, key_built=key_built)
        if code is not None:
            importer.drop_shadow(conn, mdef, run["id"])
        return code, message

    def tidy(self, run_id: int) -> None:
        """Drop the table the swap replaced, outside the reduce's transaction (see ``drop_replaced``)."""
        with db.transaction() as conn:
            importer.drop_replaced(conn, self.mdef, run_id)

    def discard(self, conn: Conn, run: Run, *, chunks: bool) -> bool:
        importer.drop_shadow(conn, self.mdef, run["id"])  # with or without chunks: it was the run's alone
        return True


class Append(_Defaults):
    """The chunks insert the new keys into the contact table as they commit."""

    streams = True

    def apply(self, conn: Conn, run: Run, v: Validated) -> ChunkOutcome:
        return importer.append_chunk(conn, run, self.mdef, v)

    def keys_applied(self, good: pl.DataFrame) -> pl.DataFrame:
        return duplicates.keys_applied(good, self.mdef.database.primary_key)

    def finish_load(self, conn: Conn, run: Run, counters: dict[str, int]) -> Verdict:
        """Settle a streamed run's keys that several chunks inserted or found existing."""
        if streamed(run):
            removed = duplicates.settle_append(conn, run, self.mdef, counters["inserted"])
            counters["inserted"] -= removed
            counters["not_inserted"] += removed
        return None, None

    def discard(self, conn: Conn, run: Run, *, chunks: bool) -> bool:
        """With ``chunks``, delete the rows a streamed run's committed chunks inserted."""
        if chunks and streamed(run):
            log.info("run.undone", rows_deleted=duplicates.undo_append(conn, run, self.mdef))
        return chunks


class Upsert(_Defaults):
    """The last occurrence of each key is inserted or updates the row: its records are split by key.
    Records that leave fields unset (XML, ``empty_on_update: keep``) apply in order, as an Updater's U."""

    dedupe = "last"

    def validate(self, frame: pl.DataFrame, columns: list[str]) -> Validated:
        return importer.validate_records(frame, self.mdef, columns, dedupe=self.dedupe,
                                         unset=importer.unset_values(self.mdef.module))

    def apply(self, conn: Conn, run: Run, v: Validated) -> ChunkOutcome:
        if updater.leaves_unset(v.good):
            return updater.upsert_records(conn, self.mdef, v)
        return importer.upsert_chunk(conn, run, self.mdef, v)


class Updater(_Defaults):
    """Each record's operation (I, U, D) applies in source order: its records are split by key."""

    malformed_operation: str | None = None  # a line the plan could not read has no operation
    malformed_counter = "not_updated"

    def missing_columns(self, columns: list[str]) -> list[str]:
        return updater.missing_columns(columns, self.mdef)

    def unknown_columns(self, columns: list[str]) -> list[str]:
        operation = find_column(columns, self.mdef.module.operation_field)  # each record's operation
        return [c for c in super().unknown_columns(columns) if c != operation]

    def validate(self, frame: pl.DataFrame, columns: list[str]) -> Validated:
        return updater.validate_operations(frame, self.mdef, columns)

    def apply(self, conn: Conn, run: Run, v: Validated) -> ChunkOutcome:
        return updater.apply_updates(conn, run, self.mdef, v)


def import_kind(mdef: ModuleDef) -> ImportKind:
    """The hooks of the module's import behaviour."""
    module = mdef.module
    match module.kind, module.mode:
        case "importer", "overwrite":
            return Overwrite(mdef)
        case "importer", "append":
            return Append(mdef)
        case "importer", "upsert":
            return Upsert(mdef)
        case "updater", None:
            return Updater(mdef)
    raise ValueError(f"module {module.id} is no import: kind {module.kind}, mode {module.mode}")
