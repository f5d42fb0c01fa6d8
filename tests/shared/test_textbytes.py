"""``TextBytes``: a text column's trim and blank checks on its bytes agree with Polars' own."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from dx.shared.textbytes import TextBytes

#: Every character Polars trims (Unicode's White_Space), characters that share UTF-8 bytes with
#: them, other non-ASCII letters and punctuation, and plain ones.
WHITE_SPACE = " \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2001\u2005\u200a\u2028\u2029\u202f\u205f\u3000"
LOOKALIKES = "éëüñÉ©“”€…\u200b\u2030\u20ac\u3001\u1681\u00a1"
VALUES = st.one_of(st.none(), st.text(alphabet=WHITE_SPACE + LOOKALIKES + "ab1.-", max_size=20))


@settings(max_examples=300, deadline=None)
@given(st.lists(VALUES, min_size=1, max_size=12), st.integers(0, 5))
def test_a_column_that_a_trim_would_change_needs_one(values: list[str | None], offset: int) -> None:
    column = pl.Series(values, dtype=pl.String).slice(min(offset, len(values) - 1))  # a slice: offsets not at 0
    changes = bool((column.str.strip_chars() != column).fill_null(False).any())
    if changes:
        assert TextBytes(column).needs_trim()
    assert TextBytes(column).has_empty() == bool((column == "").fill_null(False).any())


def test_non_ascii_letters_at_either_end_need_no_trim() -> None:
    assert not TextBytes(pl.Series(["José", "Zoë", "Émilie", "“quoted”", "€5", None, "naïve"])).needs_trim()


def test_white_space_of_every_kind_at_either_end_needs_a_trim() -> None:
    for space in WHITE_SPACE:
        for value in (f"{space}é", f"é{space}", space):
            assert TextBytes(pl.Series(["plain", value, None])).needs_trim(), repr(value)


def test_a_column_of_several_chunks_is_read_whole() -> None:
    clean = pl.Series(["a value longer than twelve bytes"] * 3)
    padded = pl.Series(["another long value, padded at its end\u3000"])
    assert TextBytes(pl.concat([clean, padded, clean], rechunk=False)).needs_trim()
    assert not TextBytes(pl.concat([clean, clean], rechunk=False)).needs_trim()


def test_an_empty_text_is_told_from_a_null() -> None:
    assert not TextBytes(pl.Series(["a", None])).has_empty()
    assert TextBytes(pl.Series(["a", "", None])).has_empty()
    assert not TextBytes(pl.Series([None, None], dtype=pl.String)).needs_trim()
