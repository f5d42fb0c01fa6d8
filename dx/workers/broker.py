"""The Dramatiq broker: RabbitMQ with publisher confirms, or in-process.

``setup()`` must run before the actor modules are imported (Dramatiq binds
actors to the broker that is current at import). With DX_BROKER_URL unset
the broker is a StubBroker and ``start_embedded_worker()`` runs the workers
as threads of the calling process (the embedded default of ``dx demo``).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend, StubBackend

from dx.shared.settings import Settings, get_settings
from dx.workers.middleware import GiveBackMemory, LogContext

#: One queue per stage, so that queue depth shows where work waits.
QUEUES = ("dx.plan", "dx.chunk", "dx.reduce")
_broker: dramatiq.Broker | None = None


def setup(settings: Settings | None = None) -> dramatiq.Broker:
    """Create the broker once per process and register the actors on it."""
    global _broker
    if _broker is not None:
        return _broker
    settings = settings or get_settings()
    if settings.broker_url:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker: dramatiq.Broker = RabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
        backend = RedisBackend(url=settings.redis_url)
    else:
        broker = StubBroker()
        backend = StubBackend()
    broker.add_middleware(GroupCallbacks(backend))
    broker.add_middleware(LogContext())
    broker.add_middleware(GiveBackMemory())
    dramatiq.set_broker(broker)
    _broker = broker
    # imported for their effect: registering the actors on this broker
    from dx.workers import chunk, export, export_chunk, export_reduce, failures, plan, reduce  # noqa: F401

    return broker


def start_worker(threads: int) -> dramatiq.Worker:
    """Start consuming every stage's queue with ``threads`` worker threads."""
    broker = setup()
    # paramiko, imported where a task first opens an SFTP session, takes 0.15-0.6 s to import (it
    # imports invoke, and that unittest): paid here, before the first message, not by a run
    from dx.shared.connections import sftp  # noqa: F401

    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    # One message per thread: a large chunk must not wait behind another on a busy worker.
    worker.queue_prefetch = threads
    worker.start()
    return worker
