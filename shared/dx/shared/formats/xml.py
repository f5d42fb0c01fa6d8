"""Streaming XML reader: bounded memory, entities refused, row numbers kept.

The layout platform clients send (Microsoft Access's export among them)::

    <dataroot><RECORD ACTION="U"><EMAIL>a@x.it</EMAIL><POINTS>3</POINTS></RECORD>...</dataroot>

- A record is an element named ``record_element`` (by local name: namespaces
  are ignored), wherever it sits; its child elements are its fields, by local
  name (mapped to database fields case-insensitively, like CSV columns). A
  field missing from a record is absent, null in the batch (an update leaves
  the field as it is, an insert NULL: ``dx.shared.validate``'s ``unset``);
  ``<X/>`` or ``<X></X>`` is the empty string. Other attributes are ignored.
- The operation (the Updater's): the record's attribute named
  ``action_attribute`` (default: the module's ``operation_field``), matched
  case-insensitively, or a child element of the ``operation_field``'s name.
- Row numbers are the records' 1-based ordinals. A record giving a field
  twice, or a field holding elements, is a malformed record (the others go on).
- The encoding is the XML declaration's (UTF-8 without one). A document that
  is not well-formed fails the run (SOURCE_UNREADABLE, with line and column);
  one that declares entities or an external DTD is refused, never expanded
  (SOURCE_UNSAFE): billion laughs and external entities never get a chance.

One pass over the staged file (``read``): it checks the whole document, so a
broken file fails before any chunk exists, and spools the records as Arrow
files while the columns (the union of the field names, in order of first
appearance) are found; the batches are read back from the spool with every
column. lxml's ``iterparse`` with each record cleared after use keeps memory
flat.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import polars as pl
from lxml import etree

from dx.shared.config import SourceCfg
from dx.shared.errors import ErrorCode, RunError
from dx.shared.formats.csv import ROW, Malformed, Opener, open_file
from dx.shared.formats.csv import _open as open_decompressed

#: Records per batch: bounds memory (a few MB at typical record sizes).
BATCH_RECORDS = 50_000
#: Characters of a malformed record quoted in its report.
QUOTED_CHARS = 200
#: The most bytes one value may hold: libxml2's limit on a text node (its option that lifts it,
#: XML_PARSE_HUGE, lifts every other hard limit of the parser too).
MAX_VALUE_BYTES = 10_000_000
#: libxml2 error codes that mean the bytes are not in the declared encoding.
ENCODING_ERRORS = {9, 31, 32, 81}


def _local(tag: str) -> str:
    """An element or attribute name without its namespace."""
    return tag.rpartition("}")[2]


def _records(fh: IO[bytes], src: SourceCfg, name: str) -> Iterator[etree._Element]:
    """The record elements in document order, each cleared (with what precedes it) after use."""
    events = etree.iterparse(fh, events=("end",), tag=f"{{*}}{src.record_element}", resolve_entities=False,
                             load_dtd=False, no_network=True, huge_tree=False, remove_comments=True,
                             remove_pis=True)
    checked = False
    try:
        for _, rec in events:
            if not checked:
                _refuse_entities(rec.getroottree(), name)
                checked = True
            yield rec
            rec.clear(keep_tail=False)
            parent = rec.getparent()
            while parent is not None and rec.getprevious() is not None:
                del parent[0]
        if not checked and events.root is not None:
            _refuse_entities(events.root.getroottree(), name)
            if len(events.root):
                found = ", ".join(sorted({f"<{_local(e.tag)}>" for e in events.root if isinstance(e.tag, str)}))
                raise RunError(ErrorCode.MALFORMED_HEADER,
                               f"{name} has no <{src.record_element}> element (under its root: {found}): "
                               "check the module's source.record_element")
    except etree.XMLSyntaxError as exc:
        line, column = exc.position
        if "CharRef" in exc.msg:  # &#0; and the like: well-formed XML references no such character
            raise RunError(ErrorCode.SOURCE_UNREADABLE, f"{name} is not well-formed XML at line {line}, column "
                           f"{column}: it references a character XML does not allow (a NUL, &#0;, or another "
                           f"control character): {exc.msg}") from None
        if "Text node too long" in exc.msg or "huge text node" in exc.msg:
            raise RunError(ErrorCode.SOURCE_UNREADABLE, f"{name}: the value ending at line {line}, column {column} "
                           f"is longer than {MAX_VALUE_BYTES:,} bytes, the most one XML value may hold") from None
        if exc.code in ENCODING_ERRORS:
            raise RunError(ErrorCode.SOURCE_UNDECODABLE, f"{name} is not in the encoding its XML declaration "
                           f"names (UTF-8 without one), line {line}, column {column}: {exc.msg}") from None
        if "entity" in exc.msg.lower():  # libxml2's own guard (amplification limit) stopped an entity bomb
            raise RunError(ErrorCode.SOURCE_UNSAFE, f"{name}: XML entities are refused (never expanded); the "
                           f"parser stopped at line {line}, column {column}: {exc.msg}") from None
        raise RunError(ErrorCode.SOURCE_UNREADABLE,
                       f"{name} is not well-formed XML at line {line}, column {column}: {exc.msg}") from None


def _refuse_entities(tree: etree._ElementTree, name: str) -> None:
    """Refuse a document declaring entities or an external DTD (never expanded nor fetched)."""
    info = tree.docinfo
    dtd = info.internalDTD
    entities = [e.name for e in dtd.iterentities()] if dtd is not None else []
    if entities or info.system_url or info.public_id:
        what = f"declares the entities {', '.join(entities[:5])}" if entities else "names an external DTD"
        raise RunError(ErrorCode.SOURCE_UNSAFE, f"{name} {what}; XML entities and DTDs are refused "
                       "(never expanded nor fetched): send the values themselves")


class _Fields:
    """Reads a record element as {column: value}, or why it is malformed; each distinct
    tag or attribute name is resolved once (this runs per record: keep it lean)."""

    def __init__(self, src: SourceCfg, operation_field: str | None) -> None:
        #: (attribute name lower-cased, column) of the operation, or None (an importer)
        self.action = None if operation_field is None else \
            ((src.action_attribute or operation_field).lower(), operation_field)
        self.names: dict[str, str] = {}
        self.is_action: dict[str, bool] = {}

    def column(self, tag: str) -> str:
        """The column of a child element's tag: its local name (the operation field's, any case)."""
        name = self.names.get(tag)
        if name is None:
            name = _local(tag)
            if self.action is not None and name.lower() == self.action[1].lower():
                name = self.action[1]
            self.names[tag] = name
        return name

    def action_in(self, keys: Iterable[str]) -> bool:
        """Whether one of these attribute names is the operation's."""
        for key in keys:
            found = self.is_action.get(key)
            if found is None:
                found = self.is_action[key] = self.action is not None and _local(key).lower() == self.action[0]
            if found:
                return True
        return False

    def into(self, rec: etree._Element, columns: dict[str, list[str | None]], row: int, size: int) -> str | None:
        """Write the record's values at ``row`` of ``columns`` (a column first met gets ``size`` Nones:
        absent); why it is malformed, or None. Per record and field: kept lean."""
        if self.action is not None and rec.attrib:
            for key, value in rec.items():
                if self.action_in((key,)):
                    columns.setdefault(self.action[1], [None] * size)[row] = value
        names = self.names
        for child in rec:
            tag = child.tag
            field = names.get(tag) or self.column(tag)
            values = columns.get(field)
            if values is None:
                values = columns[field] = [None] * size
            elif values[row] is not None:
                return f"{field} is given twice in the record"
            if len(child):
                return f"{field} holds elements instead of a value"
            values[row] = child.text or ""
        return None


class Spooled:
    """A document read once: its columns (the union of the field names, in order of first appearance;
    the operation's first when an attribute carries it) and its batches, spooled as Arrow files."""

    def __init__(self, columns: list[str], parts: list[tuple[Path, list[Malformed]]], spool: Path) -> None:
        self.columns, self.parts, self.spool = columns, parts, spool

    def batches(self, columns: list[str]) -> Iterator[tuple[pl.DataFrame, list[Malformed]]]:
        """(batch, malformed records of that batch) in source order, ``__row`` and a String column per
        name of ``columns`` (null where a batch had none: absent); each spool file is removed once read."""
        try:
            for part, bad in self.parts:
                frame = pl.read_ipc(part)
                part.unlink()
                missing = [pl.lit(None, pl.String).alias(c) for c in columns if c not in frame.columns]
                yield frame.with_columns(missing).select([ROW, *columns]), bad
        finally:
            shutil.rmtree(self.spool, ignore_errors=True)


def read(path: Path, src: SourceCfg, operation_field: str | None, spool: Path,
         opener: Opener = open_file) -> Spooled:
    """Read the document once, checking all of it (a broken one fails before any batch is used): each
    BATCH_RECORDS records go to an Arrow file in ``spool`` with the columns met so far, their malformed
    records kept beside it; the columns are known at the end."""
    fields = _Fields(src, operation_field)
    spool.mkdir(parents=True, exist_ok=True)
    parts: list[tuple[Path, list[Malformed]]] = []
    order: dict[str, None] = {}
    action_attribute = False
    columns: dict[str, list[str | None]] = {}
    numbers: list[int] = []
    bad: list[Malformed] = []

    def flush() -> None:
        order.update(dict.fromkeys(columns))
        n = len(numbers)
        frame = pl.DataFrame({ROW: numbers, **{c: v[:n] for c, v in columns.items()}},
                             schema={ROW: pl.Int64, **{c: pl.String for c in columns}})
        part = spool / f"batch-{len(parts):06d}.arrow"
        frame.write_ipc(part)
        parts.append((part, bad))

    try:
        with open_decompressed(path, src.compression, opener) as fh:
            for number, rec in enumerate(_records(fh, src, path.name), start=1):
                row = len(numbers)
                if fields.action is not None and rec.attrib and fields.action_in(rec.keys()):
                    action_attribute = True
                why = fields.into(rec, columns, row, BATCH_RECORDS)
                if why is None:
                    numbers.append(number)
                else:
                    for values in columns.values():
                        values[row] = None
                    for child in rec:  # its field names count too, those past its fault as well
                        columns.setdefault(fields.column(child.tag), [None] * BATCH_RECORDS)
                    text = etree.tostring(rec, encoding="unicode")[:QUOTED_CHARS]
                    bad.append(Malformed(number, text, 0, 0, reason=why))
                if len(numbers) + len(bad) >= BATCH_RECORDS:
                    flush()
                    columns, numbers, bad = {}, [], []
        if numbers or bad:
            flush()
    except BaseException:
        shutil.rmtree(spool, ignore_errors=True)
        raise
    first = [operation_field] if action_attribute and operation_field else []
    return Spooled(list(dict.fromkeys([*first, *order])), parts, spool)
