"""Source formats: each reads a staged file as column names and batches of records.

``open_source`` picks the reader of the module's ``source.format``. Every
reader yields (batch, malformed records) in source order, each batch a Polars
frame with ``__row`` (the record's 1-based position) and one String column
per source column.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from dx.shared.formats import csv, xml
from dx.shared.formats.csv import Malformed

if TYPE_CHECKING:
    from dx.shared.catalog import ModuleDef

Batches = Iterator[tuple[pl.DataFrame, list[Malformed]]]


def open_source(path: Path, mdef: ModuleDef, opener: csv.Opener | None = None) -> tuple[list[str], Batches]:
    """The source's columns and its batches (read lazily, as the iterator is consumed);
    ``opener`` opens a CSV's bytes (a download still arriving)."""
    src, module = mdef.module.source, mdef.module
    assert src is not None
    if src.format == "xml":
        operation_field = module.operation_field if module.kind == "updater" else None
        columns = xml.read_columns(path, src, operation_field)
        if not columns:  # no record at all: any columns are true of it; these pass the plan's checks
            columns = [*mdef.database.fields, *([operation_field] if operation_field else [])]
        return columns, xml.iter_batches(path, src, columns, operation_field)
    opener = opener or csv.open_file
    columns = csv.read_header(path, src, opener)
    return columns, csv.iter_batches(path, src, columns, opener)
