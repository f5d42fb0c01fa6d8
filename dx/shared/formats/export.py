"""The frame of an export file: what comes before and after the rows, and the joined stream.

Export chunks write their rows as separate part files (gzip members when the
target is compressed: members joined in order are one valid gzip file); the
reduce uploads head, parts and tail as one stream, hashing it on the way.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dx.shared.config import TargetCfg

#: Bytes read from a part file at a time.
READ_BYTES = 1024 * 1024
#: The name an XML declaration gives each target encoding.
XML_ENCODINGS = {"utf-8": "UTF-8", "latin-1": "ISO-8859-1", "cp1252": "windows-1252"}


class JoinedFile(io.RawIOBase):
    """Head, part files in order and tail, read as one stream; counts and hashes what is read."""

    def __init__(self, head: bytes, parts: list[Path], tail: bytes) -> None:
        self._blocks = self._iter(head, parts, tail)
        self._buf = memoryview(b"")
        self.digest = hashlib.sha256()
        self.size_bytes = 0

    @staticmethod
    def _iter(head: bytes, parts: list[Path], tail: bytes) -> Iterator[bytes]:
        yield head
        for path in parts:
            with open(path, "rb") as fh:
                while block := fh.read(READ_BYTES):
                    yield block
        yield tail

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._blocks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self.digest.update(self._buf[:n])
        self.size_bytes += n
        self._buf = self._buf[n:]
        return n


def head_and_tail(target: TargetCfg, columns: list[str]) -> tuple[bytes, bytes]:
    """What comes before and after the rows: the CSV header, or the XML declaration and root."""
    if target.format == "xml":
        head = f'<?xml version="1.0" encoding="{XML_ENCODINGS[target.encoding]}"?>\n<dataroot>\n'.encode()
        tail = b"</dataroot>\n"
    else:
        text = io.StringIO()
        if target.header:
            csv.writer(text, delimiter=target.delimiter, lineterminator="\n").writerow(columns)
        head, tail = text.getvalue().encode(target.encoding), b""
    if target.compression == "gzip":  # gzip members joined in order are one gzip file
        return (gzip.compress(head) if head else b""), (gzip.compress(tail) if tail else b"")
    return head, tail
