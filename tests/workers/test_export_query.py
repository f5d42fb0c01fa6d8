"""Pure parts of the export: target paths, date formats for to_char (no database, no broker)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from dx.workers.exports.query import render_path, to_char_format


def test_a_path_template_takes_the_date_in_the_modules_zone_the_run_and_the_module():
    # Given 23:30 UTC on 31 December, which is already 1 January in Rome
    now = datetime(2026, 12, 31, 23, 30, tzinfo=UTC).astimezone(ZoneInfo("Europe/Rome"))
    # When the path is rendered / Then the date is Rome's, and the run and module are filled in
    assert render_path("out/{module}/newsletter_{date:%Y%m%d}_{run}.csv.gz", now, 42, "acme-out") == \
        "out/acme-out/newsletter_20270101_42.csv.gz"
    assert render_path("x_{date}.csv", now, 1, "m") == "x_2027-01-01.csv"


@pytest.mark.parametrize(("fmt", "pattern"), [
    ("%Y-%m-%d", 'YYYY"-"MM"-"DD'),
    ("%d/%m/%Y", 'DD"/"MM"/"YYYY'),
    ("%Y-%m-%dT%H:%M:%S%z", 'YYYY"-"MM"-"DD"T"HH24":"MI":"SS"+0000"'),
    ("%j %I%p %y.%f", 'DDD" "HH12AM" "YY"."US'),
    ('Day "%d"', '"Day \\""DD"\\""'),
])
def test_a_strftime_format_becomes_a_to_char_pattern_with_literals_quoted(fmt, pattern):
    # Given a field format / When translated / Then letters of literal text cannot act as to_char codes
    assert to_char_format(fmt) == pattern


def test_a_format_directive_that_cannot_be_exported_is_refused_by_name():
    # Given %A (a weekday name) / When translated / Then the error names it and lists what is supported
    with pytest.raises(ValueError, match="%A cannot be exported"):
        to_char_format("%A %d")
