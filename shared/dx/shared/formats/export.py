"""The frame of an export file: what comes before and after the rows, and the whole file's digest.

Export chunks write their rows as separate part files (gzip members when the
target is compressed: members joined in order are one valid gzip file), then
into the target file at their offsets; the file is head, parts in order and
tail, and the reduce reads its size and SHA-256 from the staged parts.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections.abc import Sequence
from typing import Any, Protocol

from dx.shared.config import TargetCfg


class Openable(Protocol):
    """A part file: a local path, or a file of the staging store."""

    def open(self, mode: str) -> Any: ...


#: Bytes read from a part file at a time.
READ_BYTES = 1024 * 1024
#: The name an XML declaration gives each target encoding.
XML_ENCODINGS = {"utf-8": "UTF-8", "latin-1": "ISO-8859-1", "cp1252": "windows-1252"}


def file_digest(head: bytes, parts: Sequence[Openable], tail: bytes) -> tuple[int, str]:
    """(size in bytes, SHA-256 in hex) of the file that is ``head``, the part files in order and ``tail``."""
    digest = hashlib.sha256(head)
    size = len(head)
    for path in parts:
        with path.open("rb") as fh:
            while block := fh.read(READ_BYTES):
                digest.update(block)
                size += len(block)
    digest.update(tail)
    return size + len(tail), digest.hexdigest()


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
