"""``ErrorCode``: stable, documented codes; docs/error-codes.md is generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from dx.shared.errors import ConfigError, DxError, ErrorCode, Level, RunError, render_error_codes_markdown

DOCS = Path(__file__).parents[2] / "docs" / "error-codes.md"


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_every_code_has_a_meaning_and_a_level(code: ErrorCode):
    # Given any error code / Then it says what it means, in a sentence, and whether it fails a run or a record
    assert isinstance(code.level, Level)
    assert code.meaning.strip() and code.meaning.endswith(".")


def test_codes_are_unique_upper_snake_case_and_equal_their_name():
    # Given every code / Then the values users see are distinct, stable identifiers
    values = [c.value for c in ErrorCode]
    assert len(values) == len(set(values))
    assert all(c.value == c.name and c.value.replace("_", "").isupper() for c in ErrorCode)


def test_both_levels_have_codes():
    # Given the codes grouped by level / Then each level of the documentation has rows
    assert {c.level for c in ErrorCode} == set(Level)


def test_run_error_carries_its_code_and_message():
    # Given a RunError / Then its text starts with the code and it is a DxError
    err = RunError(ErrorCode.SOURCE_NOT_FOUND, "no file")
    assert (str(err), err.code, err.message) == ("SOURCE_NOT_FOUND: no file", ErrorCode.SOURCE_NOT_FOUND, "no file")
    assert isinstance(err, DxError)


def test_config_error_keeps_every_problem():
    # Given a ConfigError of two problems / Then both are kept and its text lists them one per line
    err = ConfigError(["a: x", "b: y"])
    assert (err.problems, str(err)) == (["a: x", "b: y"], "a: x\nb: y")


def test_the_committed_error_codes_document_is_up_to_date():
    # Given the committed docs/error-codes.md / When the document is generated from the code
    generated = render_error_codes_markdown()
    # Then they are identical, and every code appears in it
    assert DOCS.read_text(encoding="utf-8") == generated, f"{DOCS} is out of date: run `dx docs` and commit it"
    assert all(f"| `{c.value}` |" in generated for c in ErrorCode)
