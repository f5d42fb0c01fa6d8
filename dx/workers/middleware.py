"""LogContext: binds run and chunk of the message being processed to the logs.

Consumes nothing and sends nothing: it wraps every actor. The actors bind
tenant and module themselves once they have loaded the run.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import structlog
from dramatiq.broker import MessageProxy


class LogContext(dramatiq.Middleware):
    """Every log line of a message's processing carries its run and chunk."""

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
        kwargs = message.kwargs or {}
        structlog.contextvars.bind_contextvars(
            actor=message.actor_name, message_id=message.message_id,
            run=kwargs.get("run_id"), chunk=kwargs.get("chunk_no"))

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
