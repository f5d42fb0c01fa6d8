"""Records the database refuses: a chunk whose write it refuses is applied again in parts, to find them.

A data error of PostgreSQL (``dx.shared.errors.is_data_error``: a CHECK, NOT
NULL, UNIQUE or foreign key the client added to the contact table, a value
longer than its varchar(n)) comes back whenever the same records are
written: retrying the chunk cannot help. ``apply_refusing`` applies the
chunk in a savepoint; if the database refuses it, the chunk's keys are
applied in halves, each in a savepoint, down to the keys it refuses; a
refused key's records are then applied one by one in source order (a
record's outcome depends only on its key's state before it, so applying a
key's records one by one is applying them together). The records refused
alone become RECORD_REFUSED failed operations with the database's reason,
counted as their kind counts its failures; the others are applied exactly
as they would have been together. A chunk with more than MAX_REFUSED
refused records (a rule every record breaks) fails the run at once
(DATA_REFUSED) instead of being applied record by record.
Not an actor module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import polars as pl
import psycopg
import structlog

from dx.shared.db import Conn
from dx.shared.errors import ErrorCode, RunError, is_data_error
from dx.shared.formats.csv import ROW
from dx.shared.runs import Run
from dx.shared.validate import FAILED_SCHEMA, KEY, Validated
from dx.workers.imports.importer import ChunkOutcome
from dx.workers.imports.kinds import ImportKind

log = structlog.get_logger(__name__)
#: Refused records of one chunk past which the run fails (DATA_REFUSED): each costs about
#: 2 log2(chunk records) partial writes.
MAX_REFUSED = 100
#: Column numbering a chunk's keys while it is split.
KEY_NO = "__key_no"
#: The column a COPY's error context names ("COPY t, line 3, column first_name: ...").
CONTEXT_COLUMN = re.compile(r"column (\w+)")


@dataclass
class _Parts:
    """What the parts of a chunk applied and refused."""

    outcomes: list[ChunkOutcome] = field(default_factory=list)
    refused: list[tuple[pl.DataFrame, str]] = field(default_factory=list)  # (a record, the database's reason)


def apply_refusing(conn: Conn, run: Run, kind: ImportKind, v: Validated) -> tuple[ChunkOutcome, pl.DataFrame]:
    """Apply the chunk ``v`` in the caller's transaction; the records the database refuses alone are
    RECORD_REFUSED failed operations. Returns the outcome and the valid records applied (``v.good`` less
    the refused). RunError DATA_REFUSED if more than MAX_REFUSED are."""
    try:
        with conn.transaction():
            return kind.apply(conn, run, v), v.good
    except psycopg.Error as exc:
        if not is_data_error(exc):
            raise
        refusal = exc
    log.info("chunk.refused", error=_reason(refusal), rows=v.good.height)
    parts = _Parts()
    _counted(conn, run, kind, v, v.failed, parts)  # the chunk's own failures
    _split(conn, run, kind, v, v.good.with_columns(pl.col(KEY).rank("dense").alias(KEY_NO)), refusal, parts)
    refused = pl.concat([pl.DataFrame(schema=FAILED_SCHEMA),
                         *[v.fail(rows, ErrorCode.RECORD_REFUSED, reason) for rows, reason in parts.refused]])
    _counted(conn, run, kind, v, refused, parts)
    counters: dict[str, int] = {}
    for outcome in parts.outcomes:
        for name, n in outcome.counters.items():
            counters[name] = counters.get(name, 0) + int(n)
    failed = pl.concat([o.failed for o in parts.outcomes]).sort("row_number")
    applied = v.good.join(refused.select(pl.col("row_number").alias(ROW)), on=ROW, how="anti")
    log.info("chunk.refused_records", refused=refused.height)
    return ChunkOutcome(counters, failed), applied


def _apply_part(conn: Conn, run: Run, kind: ImportKind, v: Validated, failed: pl.DataFrame, parts: _Parts,
                good: pl.DataFrame | None = None) -> psycopg.Error | None:
    """Apply the records ``good`` (none by default) with the failed operations ``failed`` in a savepoint;
    the database's data error if it refused them (then nothing of them stays)."""
    records = v.good.clear() if good is None else good.drop(KEY_NO)
    try:
        with conn.transaction():
            parts.outcomes.append(kind.apply(conn, run, Validated(records, failed, v.source, v.source_columns)))
    except psycopg.Error as exc:
        if not is_data_error(exc):
            raise
        return exc
    return None


def _counted(conn: Conn, run: Run, kind: ImportKind, v: Validated, failed: pl.DataFrame, parts: _Parts) -> None:
    """Count failed operations as the chunk's kind counts them (an upsert's by whether the key exists, an
    Updater's by operation): applied with no record."""
    if (exc := _apply_part(conn, run, kind, v, failed, parts)) is not None:
        raise exc


def _split(conn: Conn, run: Run, kind: ImportKind, v: Validated, good: pl.DataFrame, refusal: psycopg.Error,
           parts: _Parts) -> None:
    """Apply ``good``, which the database refused whole (``refusal``), in halves by key, down to the
    records it refuses alone."""
    none = pl.DataFrame(schema=FAILED_SCHEMA)
    keys = good[KEY_NO].unique().sort()
    if len(keys) > 1:
        middle = keys[len(keys) // 2]
        for half in (good.filter(pl.col(KEY_NO) < middle), good.filter(pl.col(KEY_NO) >= middle)):
            if (exc := _apply_part(conn, run, kind, v, none, parts, half)) is not None:
                _split(conn, run, kind, v, half, exc, parts)
        return
    if good.height == 1:
        _refuse(parts, good, refusal)
        return
    for i in range(good.height):  # one key's records, one by one in source order
        record = good.slice(i, 1)
        if (exc := _apply_part(conn, run, kind, v, none, parts, record)) is not None:
            _refuse(parts, record, exc)


def _refuse(parts: _Parts, record: pl.DataFrame, exc: psycopg.Error) -> None:
    """Keep a record the database refused alone; DATA_REFUSED past MAX_REFUSED of them."""
    parts.refused.append((record.drop(KEY_NO), _reason(exc)))
    if len(parts.refused) > MAX_REFUSED:
        first, reason = parts.refused[0]
        raise RunError(ErrorCode.DATA_REFUSED, (
            f"the database refused more than {MAX_REFUSED} records of one chunk, the first at row {first[ROW][0]}: "
            f"{reason}; does a rule of the contact table refuse every record?"))


def _reason(exc: psycopg.Error) -> str:
    """The database's reason, without the row it quotes (a record may be megabytes long), naming the
    column where its context does."""
    message = exc.diag.message_primary or str(exc).splitlines()[0]
    found = CONTEXT_COLUMN.search(exc.diag.context or "")
    column = f" (column {found.group(1)})" if found and found.group(1) not in message else ""
    return f"the database refused the record: {message}{column}"
