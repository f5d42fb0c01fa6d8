"""``/metrics``, ``/healthz`` and ``/readyz`` of a role without an HTTP API (``dx worker``,
``dx scheduler``), on DX_PROBE_PORT.

A small standard-library server in a daemon thread: Kubernetes' liveness probe asks ``/healthz``
(is the process still doing its work: restart it if not), its readiness probe ``/readyz`` (can it
work now: PostgreSQL reachable, staging writable), and Prometheus scrapes ``/metrics``. Each check
returns None when well, else the reason, which the 503 answer carries.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest

from dx.shared import threads

log = structlog.get_logger(__name__)

#: A check: None when well, else what is wrong.
Check = Callable[[], str | None]


def serve(port: int, registry: CollectorRegistry, live: Check, ready: Check) -> ThreadingHTTPServer:
    """Serve the probes and the registry's metrics on 0.0.0.0:``port`` until the process ends."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4)
            elif self.path in ("/healthz", "/readyz"):
                problem = (live if self.path == "/healthz" else ready)()
                body = {"status": "ok"} if problem is None else {"status": "unavailable", "reason": problem}
                self._answer(200 if problem is None else 503, json.dumps(body).encode(), "application/json")
            else:
                self._answer(404, b'{"status": "not found"}', "application/json")

        def _answer(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Silent: a probe every few seconds is no news (failures show in the checks' own logs)."""

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # every interface: the kubelet is outside the pod
    server.daemon_threads = True
    threads.Thread(server.serve_forever, "dx-probes").start()
    log.info("probes.listening", port=port)
    return server
