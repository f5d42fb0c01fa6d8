"""Streaming CSV reader: bounded memory, every value a string, row numbers kept.

pyarrow's streaming reader parses block by block (quoted newlines, custom
delimiter and quote, gzip and zip; Latin-1 and Windows-1252 are transcoded to
UTF-8 by this module's block reader), so a 10M-row file never sits in memory.
Each batch comes back as an Arrow table with ``__row`` (the record's 1-based
position among the data records, header not counted) and one string column
per source column. Records with the wrong number of fields are returned beside
the batch, never dropped.

A record may hold up to MAX_RECORD_BYTES. The reader parses BLOCK_BYTES at a
time, and pyarrow cannot parse a record longer than its block: a file with one
is read again from its start with blocks of LARGE_BLOCK_BYTES, past the records
handed on already, its records longer than MAX_RECORD_BYTES cut out on the way
(``_Cut``: each a RECORD_TOO_LARGE failure). Only such a rare file pays for a
second parse and the larger blocks' memory.

Batches are Arrow tables, not Polars frames: the plan splits them by key and
writes them as Arrow, and a round trip through Polars' string views cost it
0.5 s of CPU per million records (0.23 s in, 0.27 s out).
"""

from __future__ import annotations

import codecs
import collections
import csv
import gzip
import io
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from dx.shared.config import SourceCfg
from dx.shared.errors import ErrorCode, RunError

#: Bytes parsed per block: the streaming reader's memory grows with it, its speed does not.
BLOCK_BYTES = 1024 * 1024
#: The most bytes (in UTF-8, its line end included) one record may hold; a longer one is RECORD_TOO_LARGE.
MAX_RECORD_BYTES = 16 * 1024 * 1024
#: Bytes parsed per block when a record is longer than BLOCK_BYTES: pyarrow parses no record longer than a block.
LARGE_BLOCK_BYTES = MAX_RECORD_BYTES + 1024 * 1024
#: Bytes of parsed records handed on per batch (several blocks), so that batches stay few.
BATCH_BYTES = 8 * 1024 * 1024
#: Bytes read to find the header line.
HEADER_BYTES = 1024 * 1024
#: Column holding each record's 1-based position among the data records.
ROW = "__row"


@dataclass(frozen=True)
class Malformed:
    """A record that cannot be read as fields: its field count differs from the header's
    (or, ``reason``, what else is wrong with it)."""

    row_number: int
    text: str
    expected: int
    actual: int
    reason: str | None = None
    code: ErrorCode = ErrorCode.MALFORMED_RECORD

    @property
    def message(self) -> str:
        """The failed operation's message (a NUL byte shown as U+FFFD: PostgreSQL stores none)."""
        why = self.reason or f"expected {self.expected} fields, found {self.actual}"
        return f"{why}: {self.text[:200]}".replace("\x00", "\ufffd")


#: Opens a source's bytes (by default the file at its path; a download still being written, in the plan).
Opener = Callable[[Path], IO[bytes]]


def open_file(path: Path) -> IO[bytes]:
    """The default opener: the file at ``path``."""
    return open(path, "rb")


@contextmanager
def _open(path: Path, compression: str, opener: Opener = open_file) -> Iterator[IO[bytes]]:
    kind = compression
    if kind == "auto":
        kind = "gzip" if path.name.endswith(".gz") else "zip" if path.name.endswith(".zip") else "none"
    try:
        if kind == "gzip":
            with opener(path) as raw, gzip.open(raw, "rb") as gz:
                yield gz  # type: ignore[misc]
        elif kind == "zip":
            with opener(path) as raw, zipfile.ZipFile(raw) as zf:
                members = [m for m in zf.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise RunError(ErrorCode.SOURCE_UNREADABLE,
                                   f"{path.name}: a zip source must hold exactly one file, it holds {len(members)}")
                with zf.open(members[0]) as fh:
                    yield fh
        else:
            with opener(path) as fh:
                yield fh
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise RunError(ErrorCode.SOURCE_UNREADABLE, f"{path.name} could not be read: {exc}") from None


def read_header(path: Path, src: SourceCfg, opener: Opener = open_file) -> list[str]:
    """The column names: the first record of the file, or the configured columns."""
    if not src.header:
        return list(src.columns or [])
    with _open(path, src.compression, opener) as fh:
        head = fh.read(HEADER_BYTES)
    encoding = "utf-8-sig" if src.encoding == "utf-8" else src.encoding
    try:
        text = head.decode(encoding)
    except UnicodeDecodeError as exc:
        cut = len(head) == HEADER_BYTES and exc.reason == "unexpected end of data"
        if not cut:  # a multi-byte character cut by the read limit is fine; anything else is not
            raise RunError(ErrorCode.SOURCE_UNDECODABLE,
                           f"{path.name} is not valid {src.encoding} (byte {exc.start} of the file)") from None
        text = head[: exc.start].decode(encoding)
    try:
        first = next(csv.reader(io.StringIO(text), delimiter=src.delimiter, quotechar=src.quote), None)
    except csv.Error:  # a carriage return alone inside the header line: where it ends is not clear
        raise RunError(ErrorCode.MALFORMED_HEADER, f"{path.name}: the header line holds a carriage return "
                       "outside quotes (lines must end with LF or CR LF)") from None
    names = [n.strip() for n in first] if first else []
    if not names or all(n == "" for n in names):
        raise RunError(ErrorCode.MALFORMED_HEADER, f"{path.name} has no header line")
    if nul := [n for n in names if "\x00" in n]:
        raise RunError(ErrorCode.MALFORMED_HEADER,
                       f"{path.name}: the header name {nul[0].replace(chr(0), '<NUL>')!r} holds a NUL byte, which "
                       "no column name may hold (a binary file, or one in UTF-16?)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes or "" in names:
        raise RunError(ErrorCode.MALFORMED_HEADER,
                       f"{path.name}: the header names {', '.join(dupes) or 'an empty column'} "
                       f"{'twice' if dupes else ''}".strip())
    return names


def iter_batches(path: Path, src: SourceCfg, columns: list[str],
                 opener: Opener = open_file) -> Iterator[tuple[pa.Table, list[Malformed]]]:
    """Yield (batch, malformed records of that batch) in source order."""
    handed = _Handed()
    try:
        yield from _read(path, src, columns, opener, handed, large=False)
    except _Straddling:  # a record longer than a block: read again with large blocks, past what was handed on
        yield from _read(path, src, columns, opener, handed, large=True)


class _Straddling(Exception):
    """pyarrow met a record longer than its block."""


class _Handed:
    """The row number past every record handed on (good or malformed)."""

    def __init__(self) -> None:
        self.next = 1

    def hand(self, table: pa.Table, bad: list[Malformed], skip: int) -> tuple[pa.Table, list[Malformed]]:
        """The batch less its records before row ``skip`` (handed on by an earlier read), counted as handed."""
        if skip > 1:
            table = table.filter(pc.greater_equal(table[ROW], skip))
            bad = [m for m in bad if m.row_number >= skip]
        last = max([pc.max(table[ROW]).as_py() or 0 if table.num_rows else 0, *(m.row_number for m in bad)])
        self.next = max(self.next, last + 1)
        return table, bad


def _read(path: Path, src: SourceCfg, columns: list[str], opener: Opener, handed: _Handed, *,
          large: bool) -> Iterator[tuple[pa.Table, list[Malformed]]]:
    """``iter_batches``' work, with BLOCK_BYTES blocks, or ``large`` ones past the records ``handed`` on
    already (and records over MAX_RECORD_BYTES cut out); _Straddling if a record is longer than a block."""
    malformed: list[Malformed] = []
    skip = handed.next if large else 1
    cut: _Cut | None = None

    def on_invalid(row: pacsv.InvalidRow) -> str:
        if cut is not None and row.text == cut.marker:
            size, head = cut.cut.popleft()
            malformed.append(Malformed(row.number or 0, head, 0, 0, code=ErrorCode.RECORD_TOO_LARGE, reason=(
                f"the record holds {size / 2 ** 20:.1f} MiB, more than {MAX_RECORD_BYTES // 2 ** 20} MiB, the most "
                "one record may hold; it begins")))
        else:
            malformed.append(Malformed(row.number or 0, row.text, row.expected_columns, row.actual_columns))
        return "skip"

    # the header is skipped here, not by pyarrow's skip_rows (which counts physical lines,
    # so a header cell holding a quoted line break would leak into the data)
    read_opts = pacsv.ReadOptions(use_threads=False, block_size=LARGE_BLOCK_BYTES if large else BLOCK_BYTES,
                                  column_names=columns)
    parse_opts = pacsv.ParseOptions(delimiter=src.delimiter, quote_char=src.quote, newlines_in_values=True,
                                    invalid_row_handler=on_invalid)
    # nulls "unquoted": an unquoted empty cell is null, a quoted one ("") the empty string
    convert_opts = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, null_values=[""],
                                        strings_can_be_null=src.nulls == "unquoted", quoted_strings_can_be_null=False)
    numbering = _Numbering()
    with _open(path, src.compression, opener) as raw:
        blocks_in = _Blocks(_after_header(raw, src.quote.encode()) if src.header else raw, src.encoding)
        if large:
            cut = _Cut(blocks_in, src, len(columns))
        fh = blocks_in if cut is None else cut
        try:
            reader = pacsv.open_csv(fh, read_options=read_opts, parse_options=parse_opts,
                                    convert_options=convert_opts)
            blocks: list[pa.RecordBatch] = []
            numbers: list[pl.Series] = []
            bad: list[Malformed] = []
            size = 0
            for block in reader:
                bad += malformed
                numbering.reject(m.row_number for m in malformed)
                malformed[:] = []
                numbers.append(numbering.take(block.num_rows))
                blocks.append(block)
                size += block.nbytes
                if size >= BATCH_BYTES:
                    yield handed.hand(_batch(blocks, numbers, columns), bad, skip)
                    blocks, numbers, bad, size = [], [], [], 0
            if blocks:
                yield handed.hand(_batch(blocks, numbers, columns), bad, skip)
                bad = []
            malformed[:0] = bad  # rejected after the last block: handed on below
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            text = str(exc)
            near = f"near record {numbering.next}"
            if isinstance(exc, UnicodeDecodeError) or "UTF8" in text or "decode" in text:
                raise RunError(ErrorCode.SOURCE_UNDECODABLE, f"{path.name} is not valid {src.encoding} {near}: "
                               "check the module's source.encoding") from None
            if "Empty CSV file" in text:
                return
            if "straddl" in text and not large:
                raise _Straddling from None
            raise RunError(ErrorCode.SOURCE_UNREADABLE, f"{path.name} could not be parsed {near}: {text}") from None
    malformed = [m for m in malformed if m.row_number >= skip]
    if malformed:  # records rejected after the last batch
        yield pa.table({ROW: pa.array([], pa.int64()), **{c: pa.array([], pa.string()) for c in columns}}), \
            list(malformed)


class _Cut:
    """The records of a stream (in UTF-8, past the header) as pyarrow reads them, each longer than
    MAX_RECORD_BYTES replaced by ``marker``, a line of one field more than the header's (pyarrow reports it
    as an invalid row): the size and first characters of each record replaced wait in ``cut``. A record
    ends at a line feed outside a quoted value (``_ends``); the record being read is held back until it
    ends, or dropped as soon as it is too long. Used for the rare file with a record longer than
    BLOCK_BYTES only: it looks at every quote in Python."""

    #: Characters of a record cut out quoted in its failure.
    HEAD_CHARS = 200

    def __init__(self, stream: _Blocks, src: SourceCfg, n_columns: int) -> None:
        self.stream = stream
        self.quote = ord(src.quote)
        token = "".join(c for c in f"dxrecordtoolarge{uuid.uuid4().hex}" if c not in (src.delimiter, src.quote))
        self.marker = token + src.delimiter * n_columns
        self.cut: collections.deque[tuple[int, str]] = collections.deque()
        self.starts = {0x0A, 0x0D, ord(src.delimiter)}  # a quote right after one of these opens a quoted value
        self.inside = False  # within a quoted value at the end of what was read
        self.closing = False  # ... just after a quote in it, which closes it unless a second one follows
        self.last = 0x0A  # the last byte read
        self.record = bytearray()  # the record being read, while it is not too long
        self.dropped = 0  # bytes of the record being read, once it is too long
        self.head = b""
        self.out = bytearray()
        self.ended = self.closed = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self.ended and (n < 0 or len(self.out) < n):
            data = self.stream.read(BLOCK_BYTES)
            if data:
                self._feed(data)
            else:
                self.ended = True
                if self.dropped:
                    self._replace(0)
                self.out += self.record
        size = len(self.out) if n < 0 else n
        out = bytes(self.out[:size])
        if len(out) > 1 and out.endswith(b"\r") and not (self.ended and size >= len(self.out)):
            out = out[:-1]  # see _Blocks: no block ends in a carriage return while more follows
        del self.out[:len(out)]
        return out

    def close(self) -> None:
        self.closed = True

    def _feed(self, data: bytes) -> None:
        """Hand on the records that ``data`` ends (those too long replaced), hold back the one it begins."""
        ends = self._ends(data)
        if not len(ends):
            self._hold(data)
            return
        bounds = np.concatenate(([0], ends + 1))  # record i of data: data[bounds[i]:bounds[i + 1]]
        sizes = np.diff(bounds)
        sizes[0] += len(self.record) + self.dropped
        long = np.flatnonzero(sizes > MAX_RECORD_BYTES).tolist()
        first = int(bounds[1])
        if long and long[0] == 0:
            self._hold(data[:first])
            self._replace(0)
            long = long[1:]
        else:
            self.out += self.record
            self.out += data[:first]
        self.record = bytearray()
        at = first
        for i in long:
            self.out += data[at:bounds[i]]
            self.head = data[bounds[i]:bounds[i] + self.HEAD_CHARS * 4]
            self._replace(int(sizes[i]))
            at = int(bounds[i + 1])
        self.out += data[at:int(bounds[-1])]
        self._hold(data[int(bounds[-1]):])

    def _ends(self, data: bytes) -> np.ndarray:
        """The positions in ``data`` of the line feeds that end records, as pyarrow reads quotes: a quote
        opens a quoted value only where a value begins (elsewhere it is a character), and two quotes in
        one stand for one. A loop over the quotes alone (the line feeds are found with NumPy)."""
        arr = np.frombuffer(data, dtype=np.uint8)
        toggles = np.zeros(len(arr) + 1, dtype=np.int8)  # 1 where quoting starts or stops
        inside, closing, last = self.inside, self.closing, self.last
        previous = -1  # the last quote inside a value (-1: one ending the data before, if ``closing``)
        for p in np.flatnonzero(arr == self.quote).tolist():
            before = last if p == 0 else data[p - 1]
            if closing:
                closing = False
                if p == previous + 1:  # a doubled quote: still inside
                    previous = p
                    continue
                inside = False
                toggles[previous + 1] = 1  # the value closed after the quote before
            if inside:
                closing, previous = True, p
            elif before in self.starts:
                inside = True
                toggles[p] = 1
        # a quote that closed the value before the end of data (one ending data waits for the next byte)
        if closing and previous + 1 < len(arr):
            inside = closing = False
            toggles[previous + 1] = 1
        quoted = (np.cumsum(toggles[:-1]) + self.inside) % 2 == 1
        self.inside, self.closing, self.last = inside, closing, data[-1]
        return np.flatnonzero((arr == 0x0A) & ~quoted)

    def _hold(self, data: bytes) -> None:
        """Keep the part ``data`` of the record being read, or drop it once the record is too long."""
        if not self.dropped and len(self.record) + len(data) <= MAX_RECORD_BYTES:
            self.record += data
            return
        if not self.dropped:
            self.head = bytes((self.record + data)[:self.HEAD_CHARS * 4])
        self.dropped += len(self.record) + len(data)
        self.record = bytearray()

    def _replace(self, size: int) -> None:
        """The marker in place of the record too long (of ``size`` bytes, or the ones dropped)."""
        head = self.head.decode("utf-8", errors="ignore")[:self.HEAD_CHARS]
        self.cut.append((size or self.dropped, head))
        self.out += f"{self.marker}\n".encode()
        self.dropped, self.head = 0, b""


class _Rest(io.RawIOBase):
    """The bytes read past the header, then the rest of the stream."""

    def __init__(self, rest: bytes, stream: IO[bytes]) -> None:
        self.rest, self.stream = rest, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.rest:
            n = min(len(buffer), len(self.rest))
            buffer[:n], self.rest = self.rest[:n], self.rest[n:]
            return n
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Blocks:
    """The stream as pyarrow reads it, block by block: in UTF-8 (transcoded here from another
    encoding), and no block ending in a carriage return while more follows (held back, it starts
    the next block). pyarrow 26 loses the line feed of a quoted CR LF cut by a block's end (a value
    "\r\n" read as "\r"), and its own transcoding cuts blocks anywhere."""

    def __init__(self, stream: IO[bytes], encoding: str) -> None:
        self.stream = stream
        self.decoder = None if encoding == "utf-8" else codecs.getincrementaldecoder(encoding)()
        self.held, self.ended, self.closed = b"", False, False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if not self.ended and (n < 0 or len(self.held) < n):
            data = self.stream.read(n - len(self.held) if n > 0 else -1)
            self.ended = not data
            if self.decoder is not None:  # a single-byte encoding: never more than 3 bytes out per byte in
                data = self.decoder.decode(data, final=self.ended).encode()
            self.held += data
        out = self.held if n < 0 else self.held[:n]
        if len(out) > 1 and out.endswith(b"\r") and not (self.ended and len(out) == len(self.held)):
            out = out[:-1]
        self.held = self.held[len(out):]
        return out

    def close(self) -> None:
        self.closed = True


def _after_header(stream: IO[bytes], quote: bytes) -> IO[bytes]:
    """The stream past its first record: the first line end outside quotes (the
    delimiters, quote and line ends of the supported encodings are ASCII bytes)."""
    inside = False
    while block := stream.read(HEADER_BYTES):
        for i, byte in enumerate(block):
            if byte == quote[0]:
                inside = not inside
            elif byte == 0x0A and not inside:
                return io.BufferedReader(_Rest(block[i + 1:], stream), BLOCK_BYTES)
    return io.BytesIO(b"")  # the header is the whole file


def _batch(blocks: list[pa.RecordBatch], numbers: list[pl.Series], columns: list[str]) -> pa.Table:
    """One table of consecutive blocks, with their row numbers first."""
    return pa.Table.from_batches(blocks).select(columns).add_column(0, ROW, pl.concat(numbers).to_arrow())


class _Numbering:
    """Hands out the row numbers of good records, skipping those of malformed ones.

    The reader reports a malformed record by its number, sometimes before the
    batch that precedes it is yielded; numbers are given out in order, so a
    known rejected number is simply skipped whenever it comes up.
    """

    def __init__(self) -> None:
        self.next = 1
        self.rejected: set[int] = set()

    def reject(self, numbers: Iterable[int]) -> None:
        self.rejected.update(numbers)

    def take(self, n: int) -> pl.Series:
        """The next n row numbers, as a column."""
        end = self.next + n
        while True:  # widen the range until it holds n numbers that are not rejected
            skipped = [r for r in self.rejected if self.next <= r < end]
            if end - self.next - len(skipped) == n:
                break
            end = self.next + n + len(skipped)
        numbers = pl.int_range(self.next, end, eager=True, dtype=pl.Int64)
        if skipped:
            numbers = numbers.filter(~numbers.is_in(skipped))
            self.rejected.difference_update(skipped)
        self.next = end
        return numbers.alias(ROW)
