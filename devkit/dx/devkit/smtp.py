"""An SMTP server on a free loopback port that keeps every message (aiosmtpd), for the tests and the benchmark.

It can stop and start again on the same port: a mail server that goes away and comes back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from dx.devkit.sshd import free_port


@dataclass
class Smtp:
    """The server: its port and every message it took."""

    port: int = field(default_factory=free_port)
    messages: list[Message] = field(default_factory=list)
    controller: Any = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        box = self.messages

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                box.append(message_from_bytes(envelope.content, policy=policy.default))
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
