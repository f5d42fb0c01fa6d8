"""Source formats: each reads a staged file as column names and batches of records.

``open_source`` picks the reader of the module's ``source.format``. Every
reader yields (batch, malformed records) in source order, each batch an Arrow
table with ``__row`` (the record's 1-based position) and one string column
per source column. ``read_ahead`` has them made by a thread of their own.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from dx.shared import threads
from dx.shared.formats import csv, xml
from dx.shared.formats.csv import Malformed

if TYPE_CHECKING:
    from dx.shared.catalog import ModuleDef

Batches = Iterator[tuple[pa.Table, list[Malformed]]]
#: Items (source batches: about 8 MB of records each) made ahead of the one the caller holds.
READ_AHEAD = 1
T = TypeVar("T")


def open_source(path: Path, mdef: ModuleDef, scratch: Path,
                opener: csv.Opener | None = None) -> tuple[list[str], Batches]:
    """The source's columns and its batches (read lazily, as the iterator is consumed);
    ``opener`` opens the file's bytes (a download still arriving); an XML document is read whole
    first, its batches spooled in a folder under ``scratch`` (dx's own staging, never the source's)."""
    src, module = mdef.module.source, mdef.module
    assert src is not None
    opener = opener or csv.open_file
    if src.format == "xml":
        operation_field = module.operation_field if module.kind == "updater" else None
        spooled = xml.read(path, src, operation_field, scratch / f".{path.name}.spool", opener)
        columns = spooled.columns
        if not columns:  # no record at all: any columns are true of it; these pass the plan's checks
            columns = [*mdef.database.fields, *([operation_field] if operation_field else [])]
        return columns, ((frame.to_arrow(), bad) for frame, bad in spooled.batches(columns))
    columns = csv.read_header(path, src, opener)
    return columns, csv.iter_batches(path, src, columns, opener)


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """``items`` made by a thread of their own, up to READ_AHEAD ahead of the caller: in the plan,
    the source's next batch is parsed while this one is partitioned and written (both release the
    GIL), for a little more memory at a worker's peak. The caller gets the thread's exception; a caller
    that stops early stops the thread."""
    ready: queue.Queue[tuple[bool, Any]] = queue.Queue(READ_AHEAD)
    stop = threading.Event()

    def put(item: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # handed to the caller
            put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threads.Thread(produce, "dx-parse")
    thread.start()
    try:
        while True:
            more, item = ready.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()
