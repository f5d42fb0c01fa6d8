"""The ``dx.requests`` consumer's parsing of any body: a well-formed request, or REQUEST_MALFORMED."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dx.scheduler.amqp import MAX_NAME_CHARS, REQUEST_KEYS, Rejected, RunRequest, parse_request
from dx.shared.config import ID_PATTERN
from dx.shared.errors import ErrorCode
from tests.fuzz.strategies import FUZZ, json_values, nasty_text

pytestmark = pytest.mark.timeout(60)

ids = st.one_of(st.from_regex(ID_PATTERN, fullmatch=True), nasty_text)
requests = st.dictionaries(st.one_of(st.sampled_from(sorted(REQUEST_KEYS)), nasty_text),
                           st.one_of(ids, json_values(4)), max_size=5)
bodies = st.one_of(
    st.binary(max_size=200),
    requests.map(lambda d: json.dumps(d).encode()),  # surrogates and NULs escaped as JSON writes them
    requests.map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    json_values().map(lambda v: json.dumps(v).encode()),
)


def _parsed_or_malformed(body: bytes) -> RunRequest | None:
    try:
        return parse_request(body)
    except Rejected as exc:
        assert exc.code is ErrorCode.REQUEST_MALFORMED and exc.reason, exc
        return None


@settings(FUZZ, max_examples=200)
@given(body=bodies)
def test_any_body_is_a_well_formed_request_or_request_malformed(body):
    req = _parsed_or_malformed(body)
    if req is None:
        return
    # Then what is accepted is what the control database stores and a module id can be
    assert re.fullmatch(ID_PATTERN, req.tenant) and re.fullmatch(ID_PATTERN, req.module)
    if req.requested_by is not None:
        assert 1 <= len(req.requested_by) <= MAX_NAME_CHARS and "\x00" not in req.requested_by
        req.requested_by.encode("utf-8")
