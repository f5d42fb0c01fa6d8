"""What the property tests over client inputs share: their settings and the values a client may send.

Each property: an input is accepted, or refused with one of our stable codes; never another exception,
never a hang (each test has a timeout; Hypothesis' deadline is off, so that a slow shared machine does not
fail a test). Example counts stay modest so that the whole set runs in seconds. No example database is
kept (``database=None``): nothing is written to the tree.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: The settings of every fuzz test; each sets its own ``max_examples``.
FUZZ = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Text with what breaks parsers and databases: NUL and other controls, lone surrogates, line ends,
#: quotes, non-ASCII letters, and plain letters.
nasty_text = st.text(alphabet=st.one_of(st.sampled_from(list("\x00\x01\x1f\x7f\n\r\t\"'\\<>&;,/.-_ *{}%$")),
                                        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                                        st.characters(codec="utf-8"), st.sampled_from(list("acmez09"))),
                     max_size=30)
#: Integers around the limits of PostgreSQL's int and bigint, and far beyond.
edge_ints = st.one_of(st.integers(min_value=-3, max_value=3),
                      st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**30]),
                      st.integers())
#: Numbers with the floats JSON and YAML allow, and those they do not.
edge_floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e300, -1e300, 5e-324])
#: Date-like text: ISO dates and times at and past the calendar's ends, and numbers in their place.
edge_dates = st.sampled_from(["0001-01-01", "9999-12-31", "10000-01-01", "2026-02-30", "2026-12-01",
                              "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "2026-10-24T12:00",
                              "1700000000", "2026-13-01T25:61", ""])
scalars = st.one_of(st.none(), st.booleans(), edge_ints, edge_floats, nasty_text, edge_dates)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON-like value: scalars above, in lists and mappings."""
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.one_of(nasty_text, st.sampled_from(["id", "tenant", "module", "path", "cron", "start", "end"])),
        inner, max_size=4), max_leaves=max_leaves)
