"""The report's cells: those a spreadsheet would run as a formula are defused with a quote, and those
holding a line break are quoted."""

from __future__ import annotations

import csv
import io

import pytest

from dx.shared.report import _writer, neutralise


@pytest.mark.parametrize("cell", ["=SUM(A1:A9)", "+33 6 12 34 56 78", "-2+3", "@cmd", "\tx", "\rx",
                                  '=HYPERLINK("http://evil.example")'])
def test_a_cell_starting_like_a_formula_is_prefixed_with_a_quote(cell):
    # Given a cell starting with = + - @, a tab or a carriage return / When neutralised
    # Then it is the same text behind a single quote
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["plain text", "a=b", "john@example.com", " =1+1", "'already quoted", ""])
def test_other_text_is_untouched(cell):
    # Given text that does not start like a formula / When neutralised / Then it is unchanged
    assert neutralise(cell) == cell


@pytest.mark.parametrize(("cell", "text"), [(None, ""), (42, "42"), (-3, "'-3"), (1.5, "1.5")])
def test_non_text_cells_become_text_and_are_defused_too(cell, text):
    # Given None or a number (row_number may be null) / When neutralised / Then text, negatives defused
    assert neutralise(cell) == text


def test_a_cell_holding_a_bare_cr_is_quoted_so_no_new_row_starts_in_it():
    # Given a record whose cell hides a formula after a bare CR (a spreadsheet starts a row at a CR)
    out = io.StringIO()
    # When the report writes it
    _writer(out).writerow(["1", neutralise("x\r=cmd|' /C calc'!A0"), "y\nz"])
    # Then every cell with CR or LF is quoted: the text reads back as one row of three cells
    assert out.getvalue() == '1,"x\r=cmd|\' /C calc\'!A0","y\nz"\r\n'
    assert list(csv.reader(io.StringIO(out.getvalue(), newline=""))) == [["1", "x\r=cmd|' /C calc'!A0", "y\nz"]]
