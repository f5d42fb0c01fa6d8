"""schemathesis over the API's OpenAPI document, against ``dx serve``: generated requests to every
operation, with a tenant's token and without, and none answers with a server error (5xx)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from dx.scheduler.tokens import create_token
from dx.shared import db
from tests.integration.helpers import apply, config

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def token(api, sshd, tmp_path_factory) -> str:
    apply(config("fuzzapi", sshd, [{"id": "fuzzapi-import", "mode": "append", "source": {"path": "fuzz/in_*.csv"},
                                    "schedule": {"times": ["06:00"]}}]), tmp_path_factory.mktemp("fuzzapi"))
    with db.transaction() as conn:
        return create_token(conn, "fuzzapi", "schemathesis")[1]


def test_no_generated_request_gets_a_server_error(api, token):
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    try:
        _each(api, token, operations)
    finally:
        with db.transaction() as conn:  # its random sign-ins from 127.0.0.1 must not lock later tests out
            conn.execute("DELETE FROM dx.sign_in_failures")


def _each(api: Any, token: str, operations: list[Any]) -> None:
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_server_error(case: Any) -> None:
            for headers in ({"Authorization": f"Bearer {token}"}, {}):
                response = case.call(base_url=api.url, headers=headers)
                assert response.status_code < 500, (case.method, case.formatted_path, case.query, case.body,
                                                     response.text)

        no_server_error()
