"""The staging store: per-run folders of chunk files every worker reaches.

Layout: ``<DX_STAGING_DIR>/runs/<run>/source/`` (a downloaded source, removed
after planning) and ``.../chunks/chunk-<n>.arrow`` (one Arrow IPC file per
chunk, a record batch per source batch; a streamed chunk adds ``keys-<n>.arrow``,
the keys it applied or found existing); an export's chunks write
``.../export/part-<n>`` (file bytes, in order), under ``.part-<n>.tmp`` while
it is written, and ``part-<n>.placed`` once it is in the target file too
(``placements-void`` when a chunk ran again: every part then goes up at the
reduce).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from dx.shared.settings import get_settings


def run_dir(run_id: int) -> Path:
    """The run's staging folder."""
    return get_settings().staging_dir / "runs" / str(run_id)


def chunk_file(run_id: int, chunk_no: int) -> Path:
    """The Arrow IPC file of one chunk's records."""
    return run_dir(run_id) / "chunks" / f"chunk-{chunk_no:04d}.arrow"


class ChunkFiles:
    """The plan's writer of chunk files: one Arrow IPC file per chunk, kept open while the source
    is read, a record batch per write (one file per batch and chunk cost the plan twice the time
    and the chunks twice the reading). A file takes its final name when the writer closes cleanly,
    so a chunk never reads a half-written one; a retried plan starts from ``remove_chunks``."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}

    def write(self, chunk_no: int, table: pa.Table) -> None:
        """Append ``table`` (the same columns every time) to chunk ``chunk_no``."""
        writer = self.writers.get(chunk_no)
        if writer is None:
            path = chunk_file(self.run_id, chunk_no)
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = self.writers[chunk_no] = pa.ipc.new_file(being_written(path), table.schema)
        writer.write_table(table)

    def close(self, chunk_no: int) -> None:
        """Close chunk ``chunk_no``'s file and give it its final name (a streaming plan's, before it is sent)."""
        self.writers.pop(chunk_no).close()
        path = chunk_file(self.run_id, chunk_no)
        being_written(path).replace(path)

    def __enter__(self) -> ChunkFiles:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for chunk_no in list(self.writers):
            if kind is None:
                self.close(chunk_no)
            else:
                self.writers.pop(chunk_no).close()


def record_sizes(table: pa.Table) -> np.ndarray:
    """Each record's size as parsed, about its share of the table's bytes: its cells' bytes and an
    offset each, after the row number (the table's first column)."""
    sizes = np.full(table.num_rows, 4 * (table.num_columns - 1) + 8, np.int64)
    for column in table.columns[1:]:
        sizes += pc.binary_length(column).fill_null(0).to_numpy()
    return sizes


def cut(tables: Iterable[pa.Table], chunk_bytes: int) -> Iterator[tuple[int, pa.Table, bool]]:
    """A streaming plan's chunks of consecutive records: (chunk number, records, whether they end the
    chunk), in order. A chunk ends with the record that brings it to ``chunk_bytes`` (``record_sizes``;
    the first two at a quarter of it: the other workers start sooner, and the plan's own worker holds
    one of them, taken while it plans, until the plan ends), or with the last record. Decided by the
    records alone, not by the tables they come in: the same records make the same chunks."""
    chunk_no, size, last = 0, 0, None
    for table in tables:
        through = np.cumsum(record_sizes(table))  # the table's bytes up to each record
        start = 0
        while start < table.num_rows:
            limit = chunk_bytes if chunk_no > 1 else max(1, chunk_bytes // 4)
            before = int(through[start - 1]) if start else 0
            end = min(int(np.searchsorted(through, before + limit - size)) + 1, table.num_rows)
            size += int(through[end - 1]) - before
            last = table.slice(end, 0)
            yield chunk_no, table.slice(start, end - start), size >= limit
            if size >= limit:
                chunk_no, size, last = chunk_no + 1, 0, None
            start = end
    if last is not None:  # the last chunk ends with the source
        yield chunk_no, last, True


def split(table: pa.Table, chunk_nos: np.ndarray, n_chunks: int) -> Iterator[tuple[int, pa.Table]]:
    """The records of each chunk, in source order (chunks read them unsorted): one stable sort of
    the chunk numbers, one take, then slices. In Arrow, not Polars: the batch is neither converted
    to Polars' string views and back, nor copied once per chunk."""
    order = np.argsort(chunk_nos, kind="stable")
    counts = np.bincount(chunk_nos, minlength=n_chunks)
    records = table.combine_chunks().take(order)  # a take of a table in pieces costs three times as much
    start = 0
    for chunk_no in np.flatnonzero(counts):
        yield int(chunk_no), records.slice(start, counts[chunk_no])
        start += counts[chunk_no]


def being_written(path: Path) -> Path:
    """The name a staging file has while it is written (a chunk file by the plan, an export part by its
    chunk): present means its writer is at work; it is renamed to ``path`` when whole."""
    return path.with_name(f".{path.name}.tmp")


def read_chunk(run_id: int, chunk_no: int, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A chunk's records in the order written, which is source order (the plan writes each batch's
    records in the order read, batch after batch): no sort, which would hold the chunk twice.
    Empty with ``schema`` if the plan wrote none."""
    path = chunk_file(run_id, chunk_no)
    if not path.exists():
        return pl.DataFrame(schema=schema)
    return pl.read_ipc(path)


def keys_file(run_id: int, chunk_no: int) -> Path:
    """The keys (and row numbers) of a streamed chunk's valid records, for the reduce to find the
    keys that several chunks held."""
    return run_dir(run_id) / "chunks" / f"keys-{chunk_no:04d}.arrow"


def write_keys(run_id: int, chunk_no: int, keys: pl.DataFrame) -> None:
    """Write a chunk's keys file whole (under its being-written name first)."""
    path = keys_file(run_id, chunk_no)
    keys.write_ipc(being_written(path))
    being_written(path).replace(path)


def remove_chunks(run_id: int) -> None:
    """Delete the run's chunk files (before a retried plan writes them again)."""
    shutil.rmtree(run_dir(run_id) / "chunks", ignore_errors=True)


def remove_run(run_id: int) -> None:
    """Delete the run's staging folder (after the run ended)."""
    shutil.rmtree(run_dir(run_id), ignore_errors=True)


def _export_dir(run_id: int) -> Path:
    """The run's export folder, created."""
    folder = run_dir(run_id) / "export"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export_part(run_id: int, chunk_no: int) -> Path:
    """Where an export chunk writes its piece of the file (the folder is created)."""
    return _export_dir(run_id) / f"part-{chunk_no:04d}"


def placements_void(run_id: int) -> Path:
    """Present when the chunks' notes of placed parts cannot be trusted: a chunk ran again after its part
    was written, so its size may have changed after the chunks behind it read it (the folder is created:
    a run with no row has no part)."""
    return _export_dir(run_id) / "placements-void"


def placed_marker(part: Path) -> Path:
    """Where a chunk notes the offset and size at which it wrote its part into the target file."""
    return part.with_name(f"{part.name}.placed")
