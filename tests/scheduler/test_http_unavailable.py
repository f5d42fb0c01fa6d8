"""The API when PostgreSQL and RabbitMQ do not answer: 503 with a code, and metrics that still answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from dx.scheduler.http import create_app
from dx.shared.settings import get_settings
from tests.integration.conftest import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client(monkeypatch) -> Iterator[httpx.Client]:
    """The app on uvicorn (a thread), its services on ports where nothing listens: real refused connections.

    Not ``dx serve``: that migrates first, so it does not start without PostgreSQL."""
    monkeypatch.setenv("DX_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    monkeypatch.setenv("DX_BROKER_URL", f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    monkeypatch.setenv("DX_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(get_settings()), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as c:
        yield c
    server.should_exit = True
    thread.join(10)
    get_settings.cache_clear()


def test_routes_answer_503_with_a_code_when_postgresql_is_down(client):
    # When: a health check and an authenticated route are asked for
    health = client.get("/healthz")
    modules = client.get("/api/v1/modules", headers={"Authorization": "Bearer dx_" + "a" * 43})
    # Then: 503 SERVICE_UNAVAILABLE with a Retry-After, not a crash page
    for response in (health, modules):
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert response.headers["Retry-After"] == "5"


def test_metrics_still_answer_and_count_the_503s(client):
    # Given: a health check answered 503
    assert client.get("/healthz").status_code == 503
    # When: Prometheus scrapes
    response = client.get("/metrics")
    # Then: the scrape succeeds, with the API's own series only (the cluster's come from the scheduler)
    assert response.status_code == 200
    assert 'dx_http_requests_total{method="GET",route="/healthz",status="503"} 1.0' in response.text
    assert "dx_broker_up" not in response.text and "dx_queue_messages" not in response.text
