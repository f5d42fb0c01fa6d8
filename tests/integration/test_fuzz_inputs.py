"""Property tests of the live API (``dx serve``) and the ``dx.requests`` handler on any input: answered
2xx/4xx with a code, or made a run / dead-lettered with a code; never a 500, never another exception."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dx.scheduler.amqp import Rejected, handle
from dx.scheduler.tokens import create_token
from dx.shared import db
from dx.shared.errors import ErrorCode
from tests.fuzz.strategies import FUZZ, edge_dates, edge_ints, json_values, nasty_text
from tests.integration.helpers import apply, config

pytestmark = pytest.mark.timeout(180)
TENANT = "fuzz"
MODULE = "fuzz-import"
#: Every route of the API with parameters or a body: (method, path template).
ROUTES = [("GET", "/api/v1/modules/{m}"), ("GET", "/api/v1/modules/{m}/schedule"),
          ("POST", "/api/v1/modules/{m}/runs"), ("POST", "/api/v1/modules/{m}/pause"),
          ("POST", "/api/v1/modules/{m}/resume"), ("GET", "/api/v1/runs"), ("GET", "/api/v1/runs/{r}"),
          ("GET", "/api/v1/runs/{r}/failures.csv"), ("PUT", "/api/v1/modules/{m}/schedule"),
          ("POST", "/api/v1/modules/{m}/schedule/preview"), ("PUT", "/api/v1/modules/{m}/notifications"),
          ("GET", "/api/v1/modules/{m}/audit"), ("POST", "/console/session")]
QUERY_NAMES = ["module", "status", "trigger", "since", "before", "limit", "next", "from"]
module_ids = st.one_of(st.just(MODULE), nasty_text.filter(lambda t: "/" not in t and t not in ("", ".", "..")))
run_ids = st.one_of(edge_ints.map(str), nasty_text.filter(lambda t: "/" not in t and t not in ("", ".", "..")))
query_values = st.one_of(nasty_text, edge_dates, edge_ints.map(str))
schedules = st.fixed_dictionaries({}, optional={
    "cron": st.lists(st.one_of(st.sampled_from(["0 2 * * *", "0 2 30 2 *", "*/5 * * * *"]), nasty_text), max_size=2),
    "times": st.lists(st.one_of(st.just("02:30"), nasty_text), max_size=2), "timezone": st.one_of(
        st.sampled_from(["Europe/Rome", "Pacific/Kiritimati"]), nasty_text), "start": edge_dates,
    "end": edge_dates, "misfire_grace_s": json_values(1), "max_failures": edge_ints})
bodies = st.one_of(st.none(), json_values(), st.fixed_dictionaries({"schedule": st.one_of(schedules, json_values())}),
                   st.fixed_dictionaries({"notify": st.lists(nasty_text, max_size=2),
                                          "notify_on": st.sampled_from(["always", "x"])}),
                   st.fixed_dictionaries({"request_id": nasty_text, "requested_by": nasty_text}),
                   st.fixed_dictionaries({"username": nasty_text, "password": nasty_text}))


@pytest.fixture(scope="module")
def fuzz_token(cluster_env, sshd, tmp_path_factory) -> str:
    """Tenant ``fuzz`` with one scheduled module, and its token."""
    apply(config(TENANT, sshd, [{"id": MODULE, "mode": "upsert", "source": {"path": "in/fuzz_*.csv"},
                                 "schedule": {"cron": ["30 2 * * *"], "start": "2099-01-01"}}]),
          tmp_path_factory.mktemp("cfg-fuzz"))
    with db.transaction() as conn:
        return create_token(conn, TENANT, "fuzz")[1]


def _encoded(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


@settings(FUZZ, max_examples=120)
@given(route=st.sampled_from(ROUTES), module=module_ids, run=run_ids,
       query=st.dictionaries(st.sampled_from(QUERY_NAMES), query_values, max_size=3), body=bodies,
       raw=st.booleans())
def test_any_request_is_answered_with_a_code_never_500(api, fuzz_token, route, module, run, query, body, raw):
    method, template = route
    path = template.format(m=quote(module, safe="", errors="surrogatepass"),
                           r=quote(run, safe="", errors="surrogatepass"))
    with api.client(fuzz_token) as client:  # a connection each: a 500 would close it
        content = _encoded(body) if raw else json.dumps(body).encode()
        response = client.request(method, path, params=query, content=content,
                                  headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (method, path, query, body, response.text)
    if response.status_code >= 400:
        assert response.json()["error"]["code"] in ErrorCode.__members__, response.text


@settings(FUZZ, max_examples=80)
@given(body=st.one_of(
    st.dictionaries(st.sampled_from(["tenant", "module", "requested_by"]),
                    st.one_of(st.sampled_from([TENANT, MODULE, "acme"]), nasty_text, json_values(2)), max_size=3),
    json_values()), message_id=st.one_of(st.none(), nasty_text), raw=st.booleans())
def test_any_amqp_request_makes_a_run_or_is_dead_lettered_with_a_request_code(fuzz_token, body, message_id, raw):
    data = _encoded(body) if raw else json.dumps(body).encode()
    try:
        run_id = handle(data, message_id)
    except Rejected as exc:
        assert exc.code in (ErrorCode.REQUEST_MALFORMED, ErrorCode.UNKNOWN_MODULE, ErrorCode.REQUEST_ID_REUSED), exc
        return
    assert isinstance(body, dict) and (body.get("tenant"), body.get("module")) == (TENANT, MODULE) and run_id >= 1
