"""The workers' broker and the one place where actors are registered.

``setup()`` makes the broker (RabbitMQ with publisher confirms, or in-process when DX_BROKER_URL is
unset), adds the middleware (with Redis, a chunk takes a slot of its tenant: ``dx.workers.tenants``)
and registers each stage's function under its name and options from ``dx.shared.messages``. Only
``dx worker`` (and the command line's embedded worker) calls it: the actor modules register nothing
when imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend, StubBackend

from dx.shared import messages
from dx.shared.errors import RunError
from dx.shared.settings import Settings, get_settings
from dx.workers.heartbeat import Heartbeat
from dx.workers.metrics import Metrics
from dx.workers.middleware import GiveBackMemory, LogContext, ThreadNames

#: How long past the longest time limit of its actors a stopping worker waits for its threads: a
#: message that reaches its limit needs a moment to unwind and be retried.
STOP_MARGIN_MS = 30_000

_broker: dramatiq.Broker | None = None
_broker_url: str | None = None


def _actors() -> list[tuple[messages.Actor, Callable[..., Any], tuple[type[BaseException], ...]]]:
    """Each actor's name and options, its function, and the errors it does not retry."""
    from dx.workers import crashed
    from dx.workers.exports import chunk as export_chunk
    from dx.workers.exports import plan as export_plan
    from dx.workers.exports import reduce as export_reduce
    from dx.workers.imports import checks, chunk, plan, reduce

    return [
        (messages.PLAN, plan.plan, (RunError,)),
        (messages.CHUNK, chunk.chunk, ()),
        (messages.REDUCE, reduce.reduce, ()),
        (messages.EXPORT_PLAN, export_plan.export_plan, (RunError,)),
        (messages.EXPORT_CHUNK, export_chunk.export_chunk, ()),
        (messages.EXPORT_REDUCE, export_reduce.export_reduce, ()),
        (messages.RUN_CRASHED, crashed.run_crashed, ()),
        (messages.CHECK, checks.check, ()),
        (messages.RUN_TIMED_OUT, crashed.run_timed_out, ()),
    ]


def setup(settings: Settings | None = None) -> dramatiq.Broker:
    """Create the broker once per process (per broker URL) and register the actors on it."""
    global _broker, _broker_url
    settings = settings or get_settings()
    if _broker is not None and _broker_url == settings.broker_url:
        return _broker
    if settings.broker_url:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker: dramatiq.Broker = RabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
        backend = RedisBackend(url=settings.redis_url)
    else:
        broker = StubBroker()
        backend = StubBackend()
    broker.add_middleware(CurrentMessage())  # a stage's retries left: dx.workers.retries
    broker.add_middleware(GroupCallbacks(backend))
    broker.add_middleware(LogContext())
    broker.add_middleware(ThreadNames())
    if settings.broker_url and settings.tenant_max_chunks:  # the embedded broker's one worker has none to balance
        from dx.workers.tenants import TenantLimit, leases

        broker.add_middleware(TenantLimit(leases(settings)))  # before Metrics: a deferral is not timed
    broker.add_middleware(GiveBackMemory())
    broker.add_middleware(Metrics())
    broker.add_middleware(Heartbeat(settings.beat_s))
    dramatiq.set_broker(broker)
    for spec, fn, throws in _actors():
        dramatiq.actor(broker=broker, throws=throws, **spec.options())(fn)
    messages.use_broker(broker)
    _broker, _broker_url = broker, settings.broker_url
    return broker


def start_worker(threads: int, queues: Iterable[str] | None = None) -> dramatiq.Worker:
    """Start consuming ``queues`` (each with its delay queue ``.DQ``; None: every stage's queue) with
    ``threads`` worker threads."""
    broker = setup()
    # paramiko is slow to import (it imports invoke, and that unittest): paid here, not by a run
    from dx.shared.connections import sftp  # noqa: F401

    broker.emit_after("process_boot")  # starts the TimeLimit middleware's watcher, as dramatiq's CLI does
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100,
                             queues=set(queues) if queues else None)
    # One message per thread: a large chunk must not wait behind another on a busy worker.
    worker.queue_prefetch = threads
    worker.start()
    return worker


def stop_timeout_ms(queues: Iterable[str] | None = None) -> int:
    """How long a stopping worker waits for the messages in hand: the longest time limit of the actors
    on ``queues`` (None: every queue), plus STOP_MARGIN_MS. A pod's grace period must be longer."""
    wanted = set(queues or messages.QUEUES)
    return max(a.time_limit_ms for a in messages.ACTORS if a.queue in wanted) + STOP_MARGIN_MS
