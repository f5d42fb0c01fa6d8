"""The API's edges: request bodies refused past a size before they are read, and a reference page
that loads nothing from another host."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

HUNDRED_MB = 100 * 1024 * 1024


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def _raw(url: str, head: bytes, body_chunks: int = 0, chunk: bytes = b"") -> bytes:
    """Send ``head`` and then up to ``body_chunks`` chunks over a plain socket; the server's answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        sock.sendall(head)
        try:
            for _ in range(body_chunks):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused and closed: what this test wants
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            if not (data := sock.recv(65536)):
                break
            answer += data
        return answer


def _length(answer: bytes) -> int:
    found = re.search(rb"content-length: (\d+)", answer.partition(b"\r\n\r\n")[0], re.IGNORECASE)
    return int(found.group(1)) if found else 0


def test_large_bodies_are_refused_before_they_are_read(api):
    # Given the API's process and its memory before
    before = _rss_mb(api.proc.pid)
    # When three 100 MB POSTs without a token declare their size, and three more send it chunked
    for _ in range(3):
        answer = _raw(api.url, b"POST /api/v1/modules/x/runs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n" % HUNDRED_MB)
        # Then each is answered 413 REQUEST_TOO_LARGE without its body being sent
        assert answer.startswith(b"HTTP/1.1 413") and b"REQUEST_TOO_LARGE" in answer, answer[:300]
    chunk = b"%x\r\n%s\r\n" % (1024 * 1024, b"x" * 1024 * 1024)
    for _ in range(3):
        answer = _raw(api.url, b"POST /api/v1/modules/x/runs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n", body_chunks=100, chunk=chunk)
        assert answer.startswith(b"HTTP/1.1 413") and b"REQUEST_TOO_LARGE" in answer, answer[:300]
    # ... and the server holds about what it held (the six bodies were 600 MB)
    assert _rss_mb(api.proc.pid) - before < 40


def test_a_small_body_still_reaches_the_route(api):
    # Given a body under the cap without a token / When posted / Then the route answers (401), not 413
    with api.client() as client:
        answer = client.post("/api/v1/modules/x/runs", json={"requested_by": "a" * 1000})
    assert answer.status_code == 401


def test_the_reference_page_loads_nothing_from_another_host(api):
    # When the reference page is asked for
    with api.client() as client:
        page = client.get("/docs")
        refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assets = {ref: client.get(ref) for ref in refs}
        spec = client.get("/openapi.json")
    # Then it and every file it names come from this server, under a CSP that allows nothing else
    assert page.status_code == 200 and refs
    assert all(ref.startswith("/") and not ref.startswith("//") for ref in refs), refs
    assert all(a.status_code == 200 and a.content for a in assets.values())
    assert len(assets["/docs/swagger-ui-bundle.js"].content) > 100_000
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "http" not in csp
    assert spec.status_code == 200 and spec.json()["info"]["title"] == "DataExchange"
