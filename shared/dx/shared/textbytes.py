"""A text column read as bytes with NumPy, for the checks that Polars' string functions would do
value by value (a trim, a decimal's parts): each one pass over the Arrow buffers instead."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

#: The last ASCII byte that can be white space (or a control character, counted as such).
SPACE = ord(" ")
#: The UTF-8 bytes of Unicode's non-ASCII white space (U+0085, U+00A0, U+1680, U+2000-200A,
#: U+2028, U+2029, U+202F, U+205F, U+3000): its first bytes, its last, and the ones before its last.
WIDE_SPACE_FIRST = np.array([0xC2, 0xE1, 0xE2, 0xE3], dtype=np.uint8)
WIDE_SPACE_LAST = np.array([0xA0, *range(0x80, 0x8B), 0xA8, 0xA9, 0xAF, 0x9F], dtype=np.uint8)
WIDE_SPACE_BEFORE_LAST = np.array([0xC2, 0x9A, 0x80, 0x81], dtype=np.uint8)
#: Printable ASCII bytes, 0x21-0x7E, less the first of them: the others are white space, control
#: characters or parts of non-ASCII characters (which a Python check reads).
PRINTABLE = 0x7E - 0x21


class TextBytes:
    """A text column's UTF-8 bytes: each value's length, and its k-th byte for every value at once."""

    def __init__(self, text: pl.Series) -> None:
        self.text = text
        array = text.to_arrow().cast(pa.large_string())
        offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset:array.offset + len(array) + 1]
        data = array.buffers()[2]
        # a 0 byte after the last value stands for the bytes past each value's end
        self.bytes = np.append(np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]] if data is not None
                               else np.empty(0, dtype=np.uint8), np.uint8(0))
        self.starts = offsets[:-1] - offsets[0]
        self.lengths = np.diff(offsets)

    def at(self, k: int) -> np.ndarray:
        """Each value's k-th byte (0 past its end)."""
        return self.bytes[np.where(k < self.lengths, self.starts + k, len(self.bytes) - 1)]

    def has(self, any_of: bytes) -> bool:
        """Whether a value holds one of the bytes ``any_of``."""
        return bool(np.isin(self.bytes, np.frombuffer(any_of, dtype=np.uint8)).any())

    def needs_trim(self) -> bool:
        """Whether a value may begin or end with white space (Polars' ``strip_chars`` may change it).
        ASCII control characters count as white space; a non-ASCII first or last character that
        may be white space by its UTF-8 bytes is checked by Python's ``isspace`` (a wider set than
        Polars' white space): a column found to need a trim may only be trimmed for nothing."""
        ends = self.starts + self.lengths
        first, last = self.bytes[self.starts], self.bytes[ends - 1]  # an empty value's are not its own
        filled = ends > self.starts
        # one compare for both ends of the printable ASCII range, 0x21-0x7E
        edge = ((first - np.uint8(SPACE + 1) > PRINTABLE) | (last - np.uint8(SPACE + 1) > PRINTABLE)) & filled
        if not edge.any():
            return False
        if (((first <= SPACE) | (last <= SPACE)) & filled).any():
            return True
        maybe = (np.isin(first, WIDE_SPACE_FIRST) | (np.isin(last, WIDE_SPACE_LAST)
                                                     & np.isin(self.bytes[ends - 2], WIDE_SPACE_BEFORE_LAST))) & edge
        return any(v[0].isspace() or v[-1].isspace() for v in self.text.gather(np.flatnonzero(maybe)).to_list())

    def has_nul(self) -> bool:
        """Whether a value holds a NUL byte (the 0 byte after the last value is not one)."""
        return bool((self.bytes[:-1] == 0).any())

    def has_empty(self) -> bool:
        """Whether a value is the empty text (not a null)."""
        return int((self.lengths == 0).sum()) > self.text.null_count()
