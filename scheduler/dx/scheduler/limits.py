"""Request bodies are refused past a size before they are read (413 REQUEST_TOO_LARGE).

An ASGI middleware in front of everything else, the token check included: a
body declared larger than the cap (Content-Length) is refused at once, and a
chunked one as soon as its bytes pass the cap, so that no request, with or
without a token, makes the server hold more than the cap.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from dx.shared.errors import ErrorCode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
#: The largest request body the API reads: its bodies are small JSON documents.
MAX_BODY_BYTES = 64 * 1024


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, before reading them whole."""

    def __init__(self, app: App, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        received, too_large, answered = 0, False, False

        async def limited() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # the app reads no further: to it the client went away
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def answer(message: Message) -> None:
            nonlocal answered
            if too_large:  # whatever the app says of the cut body, the client hears 413
                if not answered:
                    answered = True
                    await self._refuse(send)
                return
            await send(message)

        await self.app(scope, limited, answer)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": {"code": ErrorCode.REQUEST_TOO_LARGE.value,
                                     "message": f"the request body is larger than {self.max_bytes} bytes"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
