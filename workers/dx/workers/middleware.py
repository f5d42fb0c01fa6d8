"""Middleware wrapping every actor; consumes nothing and sends nothing.

LogContext binds the stage (the actor's name), run and chunk of the message being processed to the
logs, the libraries' lines included (the actors bind tenant and module themselves once they have
loaded the run).
GiveBackMemory returns to the system what pyarrow's allocator kept after a
message (see ``dx/workers/__init__.py`` for Polars').
ThreadNames names dramatiq's threads for the operating system (``dx.shared.threads``).
"""

from __future__ import annotations

from typing import Any

import dramatiq
import structlog
from dramatiq.broker import MessageProxy

from dx.shared.threads import name_native


class LogContext(dramatiq.Middleware):
    """Every log line of a message's processing carries its stage, run and chunk."""

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
        kwargs = message.kwargs or {}
        structlog.contextvars.bind_contextvars(
            stage=message.actor_name, message_id=message.message_id,
            run=kwargs.get("run_id"), chunk=kwargs.get("chunk_no"))

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        structlog.contextvars.clear_contextvars()

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()


class GiveBackMemory(dramatiq.Middleware):
    """After each message, pyarrow's allocator (mimalloc) gives back the memory it keeps for reuse: it
    purges only when next called, so an idle worker held what its last task freed, and the next task's
    peak came on top of it. Purging at once on every free instead (``MIMALLOC_PURGE_DELAY=0``) slows
    every task."""

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        import pyarrow as pa  # here: the scheduler and the API import this module without needing pyarrow

        pa.default_memory_pool().release_unused()


class ThreadNames(dramatiq.Middleware):
    """dramatiq's threads, by their OS names: those that run actors, and those that take messages off
    a queue."""

    def after_worker_thread_boot(self, broker: dramatiq.Broker, thread: Any) -> None:
        name_native("dx-actor")

    def after_consumer_thread_boot(self, broker: dramatiq.Broker, thread: Any) -> None:
        name_native("dx-consumer")
