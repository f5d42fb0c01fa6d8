"""Messages by name: the queues, the actors and their options, and how a message is sent.

The control plane sends a run's plan through ``send`` and never imports actor code; the workers
register their functions under these names (``dx.workers.broker``) and send the later stages
through the same functions. A message's retry-exhausted callback is ``run_crashed``, which fails
the run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dx.shared.errors import DxError
from dx.shared.settings import get_settings

if TYPE_CHECKING:  # dramatiq is imported when a message is first sent: a run is created without it
    import dramatiq

#: One queue per stage, so that queue depth shows where work waits.
PLAN_QUEUE, CHUNK_QUEUE, REDUCE_QUEUE = "dx.plan", "dx.chunk", "dx.reduce"
QUEUES = (PLAN_QUEUE, CHUNK_QUEUE, REDUCE_QUEUE)


@dataclass(frozen=True)
class Actor:
    """An actor as the broker knows it: its name, queue, retries and time limit."""

    name: str
    queue: str
    max_retries: int
    min_backoff_ms: int
    max_backoff_ms: int
    time_limit_ms: int

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``dramatiq.actor`` that register a function as this actor."""
        return {"actor_name": self.name, "queue_name": self.queue, "max_retries": self.max_retries,
                "min_backoff": self.min_backoff_ms, "max_backoff": self.max_backoff_ms,
                "time_limit": self.time_limit_ms}


_MIN_S = 60 * 1000
PLAN = Actor("plan", PLAN_QUEUE, 3, 1000, 30_000, 60 * _MIN_S)
CHUNK = Actor("chunk", CHUNK_QUEUE, 5, 500, 30_000, 10 * _MIN_S)
REDUCE = Actor("reduce", REDUCE_QUEUE, 5, 1000, 30_000, 10 * _MIN_S)
EXPORT_PLAN = Actor("export_plan", PLAN_QUEUE, 3, 1000, 30_000, 30 * _MIN_S)
EXPORT_CHUNK = Actor("export_chunk", CHUNK_QUEUE, 5, 500, 30_000, 10 * _MIN_S)
EXPORT_REDUCE = Actor("export_reduce", REDUCE_QUEUE, 5, 1000, 30_000, 30 * _MIN_S)
#: Receives a plan, chunk or reduce message whose retries are exhausted: the run fails.
RUN_CRASHED = Actor("run_crashed", REDUCE_QUEUE, 3, 1000, 10_000, 10 * _MIN_S)
#: A console's "Test connection" or "Preview" (short, not retried: the API waits for it, the user asks again).
CHECK = Actor("check", REDUCE_QUEUE, 0, 1000, 1000, 2 * _MIN_S)
ACTORS = (PLAN, CHUNK, REDUCE, EXPORT_PLAN, EXPORT_CHUNK, EXPORT_REDUCE, RUN_CRASHED, CHECK)


#: The plan actor of each module kind.
PLAN_OF = {"importer": PLAN, "updater": PLAN, "displacer": EXPORT_PLAN, "exporter": EXPORT_PLAN}


_lock = threading.Lock()
_broker: dramatiq.Broker | None = None
_broker_url: str | None = None


def use_broker(broker: dramatiq.Broker) -> None:
    """Send through this broker from now on (the worker's own, or the in-process one)."""
    global _broker, _broker_url
    with _lock:
        _broker, _broker_url = broker, get_settings().broker_url


def broker() -> dramatiq.Broker:
    """The broker messages are sent through: the one in use, else RabbitMQ at DX_BROKER_URL with
    publisher confirms (a publish to a missing queue is then an error, not a silent loss)."""
    global _broker, _broker_url
    url = get_settings().broker_url
    with _lock:
        if _broker is not None and (_broker_url == url or url is None):
            return _broker
        if url is None:
            raise DxError("DX_BROKER_URL is unset and no worker runs in this process: set DX_BROKER_URL="
                          "amqp://... (or run `dx run`, which works on the embedded broker)")
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        _broker, _broker_url = RabbitmqBroker(url=url, confirm_delivery=True), url
        return _broker


def close() -> None:
    """Close the connections of the broker in use and forget it (a process done with sending)."""
    global _broker, _broker_url
    with _lock:
        if _broker is not None:
            _broker.close()
        _broker, _broker_url = None, None


def message(actor: Actor, **kwargs: Any) -> dramatiq.Message[Any]:
    """A message for ``actor`` with keyword arguments; exhausted retries go to ``run_crashed``."""
    import dramatiq

    return dramatiq.Message(queue_name=actor.queue, actor_name=actor.name, args=(), kwargs=kwargs,
                            options={"on_retry_exhausted": RUN_CRASHED.name})


def send(actor: Actor, **kwargs: Any) -> None:
    """Send one message to ``actor``."""
    broker().enqueue(message(actor, **kwargs))


def send_chunks(chunk: Actor, reduce: Actor, run_id: int, n_chunks: int) -> None:
    """Send a run's ``n_chunks`` chunk messages as a group whose completion sends its reduce (Redis
    keeps the count), or the reduce alone when there is no chunk."""
    if n_chunks == 0:
        send(reduce, run_id=run_id)
        return
    import dramatiq

    group = dramatiq.group([message(chunk, run_id=run_id, chunk_no=i) for i in range(n_chunks)], broker=broker())
    group.add_completion_callback(message(reduce, run_id=run_id))
    group.run()
