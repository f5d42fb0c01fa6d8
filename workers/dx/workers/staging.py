"""The staging store: per-run folders of chunk files every worker reaches.

The store is the folder DX_STAGING_DIR (one volume every worker mounts), or with
DX_STAGING_URL=s3://BUCKET/PREFIX object storage through pyarrow's S3 client:
each stage reads and writes its files as ``Staged`` names, the same code for
both. A downloaded source stays in the worker's own DX_STAGING_DIR: only the
plan that downloaded it reads it.

Layout: ``runs/<run>/source/`` (a downloaded source, removed
after planning) and ``.../chunks/chunk-<n>.arrow`` (one Arrow IPC file per
chunk, a record batch per source batch; a streamed chunk adds ``keys-<n>.arrow``,
the keys it applied or found existing); an export's chunks write
``.../export/part-<n>`` (file bytes, in order), under ``.part-<n>.tmp`` while
it is written, and ``part-<n>.placed`` once it is in the target file too
(``placements-void`` when a chunk ran again: every part then goes up at the
reduce).
"""

from __future__ import annotations

import io
import posixpath
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import fs

from dx.shared.settings import get_settings


class Size(NamedTuple):
    """What ``Staged.stat`` tells: the size (the only field the stages read)."""

    st_size: int


class Staged:
    """A file of the staging store, with the few ``pathlib`` methods the stages use."""

    def __init__(self, store: fs.FileSystem, key: str) -> None:
        self.store, self.key = store, key

    def __truediv__(self, name: str) -> Staged:
        return Staged(self.store, posixpath.join(self.key, name))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Staged) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return self.key

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def parent(self) -> Staged:
        return Staged(self.store, posixpath.dirname(self.key))

    @property
    def local(self) -> Path | None:
        """The file's path when the store is a local folder, else None."""
        return Path(self.key) if isinstance(self.store, fs.LocalFileSystem) else None

    def with_name(self, name: str) -> Staged:
        return self.parent / name

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        if self.local is not None:  # object storage has no folders: a marker object would outlive the run
            self.local.mkdir(parents=True, exist_ok=True)

    def exists(self) -> bool:
        return bool(self.store.get_file_info(self.key).type == fs.FileType.File)

    def stat(self) -> Size:
        info = self.store.get_file_info(self.key)
        if info.type != fs.FileType.File:
            raise FileNotFoundError(self.key)
        return Size(int(info.size))

    def open(self, mode: str = "rb") -> Any:
        """A pyarrow file: random access for reading (``rb``), a stream for writing (``wb``)."""
        if mode == "rb":
            return self.store.open_input_file(self.key)
        assert mode == "wb", mode
        self.parent.mkdir(parents=True, exist_ok=True)
        return self.store.open_output_stream(self.key)

    def touch(self) -> None:
        """Create the file empty (the stages touch markers only)."""
        with self.open("wb"):
            pass

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.store.delete_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def replace(self, target: Staged) -> None:
        """Rename to ``target`` (on object storage a copy, then a delete)."""
        self.store.move(self.key, target.key)

    def write_bytes(self, data: bytes) -> None:
        with self.open("wb") as out:
            out.write(data)

    def read_bytes(self) -> bytes:
        with self.open("rb") as f:
            return bytes(f.read())

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def remove_tree(self) -> None:
        """Delete this folder and everything in it, if it exists."""
        try:
            self.store.delete_dir(self.key)
        except FileNotFoundError:
            pass


@lru_cache(maxsize=4)
def _store(url: str | None, folder: Path) -> Staged:
    """The store's root: the folder, or the bucket and prefix of an ``s3://`` URL."""
    if url is None:
        return Staged(fs.LocalFileSystem(), str(folder))
    store, root = fs.FileSystem.from_uri(url)
    return Staged(store, root.rstrip("/"))


def root() -> Staged:
    """The staging store's root (DX_STAGING_URL, else DX_STAGING_DIR)."""
    settings = get_settings()
    return _store(settings.staging_url, settings.staging_dir)


def run_dir(run_id: int) -> Staged:
    """The run's staging folder."""
    return root() / "runs" / str(run_id)


def source_dir(run_id: int) -> Path:
    """Where the plan downloads the run's source, in DX_STAGING_DIR (created): a folder of this attempt's
    own, since a twin delivery of the plan (a broker that restarted) may download beside it."""
    folder = get_settings().staging_dir / "runs" / str(run_id) / "source" / uuid.uuid4().hex
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def written_locally(target: Staged) -> Iterator[Path]:
    """A local path to write ``target``'s content into (a program such as psql writes it); copied into
    the store when the block ends without error. In a local store, the target's own path."""
    if target.local is not None:
        yield target.local
        return
    scratch = get_settings().staging_dir / "scratch" / target.key.replace("/", "_")
    scratch.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield scratch
        fs.copy_files(str(scratch), target.key, source_filesystem=fs.LocalFileSystem(),
                      destination_filesystem=target.store)
    finally:
        scratch.unlink(missing_ok=True)


def read_ipc(file: Staged, columns: list[str] | None = None) -> pl.DataFrame:
    """An Arrow IPC file of the store as a frame (memory-mapped from a local store)."""
    if file.local is not None:
        return pl.read_ipc(file.local, columns=columns)
    return pl.read_ipc(io.BytesIO(file.read_bytes()), columns=columns)


def chunk_file(run_id: int, chunk_no: int) -> Staged:
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
            writer = self.writers[chunk_no] = pa.ipc.new_file(being_written(path).open("wb"), table.schema)
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


def being_written(path: Staged) -> Staged:
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
    return read_ipc(path)


def keys_file(run_id: int, chunk_no: int) -> Staged:
    """The keys (and row numbers) of a streamed chunk's valid records, for the reduce to find the
    keys that several chunks held."""
    return run_dir(run_id) / "chunks" / f"keys-{chunk_no:04d}.arrow"


def write_keys(run_id: int, chunk_no: int, keys: pl.DataFrame) -> None:
    """Write a chunk's keys file whole (under its being-written name first)."""
    path = keys_file(run_id, chunk_no)
    with being_written(path).open("wb") as out:
        keys.write_ipc(out)
    being_written(path).replace(path)


def remove_chunks(run_id: int) -> None:
    """Delete the run's chunk files (before a retried plan writes them again)."""
    (run_dir(run_id) / "chunks").remove_tree()


def remove_run(run_id: int) -> None:
    """Delete the run's staging folder (after the run ended), in the store and in this worker's folder."""
    run_dir(run_id).remove_tree()
    shutil.rmtree(get_settings().staging_dir / "runs" / str(run_id), ignore_errors=True)


def remove_export(run_id: int) -> None:
    """Delete the run's export parts and notes (before a retried plan)."""
    (run_dir(run_id) / "export").remove_tree()


def _export_dir(run_id: int) -> Staged:
    """The run's export folder, created."""
    folder = run_dir(run_id) / "export"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export_part(run_id: int, chunk_no: int) -> Staged:
    """Where an export chunk writes its piece of the file (the folder is created)."""
    return _export_dir(run_id) / f"part-{chunk_no:04d}"


def placements_void(run_id: int) -> Staged:
    """Present when the chunks' notes of placed parts cannot be trusted: a chunk ran again after its part
    was written, so its size may have changed after the chunks behind it read it (the folder is created:
    a run with no row has no part)."""
    return _export_dir(run_id) / "placements-void"


def placed_marker(part: Staged) -> Staged:
    """Where a chunk notes the offset and size at which it wrote its part into the target file."""
    return part.with_name(f"{part.name}.placed")
