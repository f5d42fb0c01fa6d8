"""A worker's metrics and probes: Dramatiq's message series and the workers' own, liveness and
readiness, served on DX_PROBE_PORT (``dx.shared.probes``).

``Metrics`` is a middleware keeping the series that Dramatiq's Prometheus middleware defines (same
names and labels, so its dashboards work), in this process's registry: Dramatiq's own middleware
expects its CLI's forked processes and an exposition server of its own. Runs and rows by module and
outcome are counted where a run ends (``dx.shared.runs.finish``).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import dramatiq
import psycopg
from dramatiq.broker import MessageProxy
from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from dx.shared import db
from dx.shared.errors import RetriableError
from dx.shared.settings import get_settings
from dx.workers import staging

_LABELS = ("queue_name", "actor_name")
MESSAGES = Counter("dramatiq_messages", "Messages processed", _LABELS)
ERRORS = Counter("dramatiq_message_errors", "Messages whose processing raised", _LABELS)
RETRIES = Counter("dramatiq_message_retries", "Messages sent again to be retried", _LABELS)
REJECTS = Counter("dramatiq_message_rejects", "Messages dead-lettered (retries exhausted)", _LABELS)
IN_PROGRESS = Gauge("dramatiq_messages_inprogress", "Messages being processed", _LABELS)
DURATION = Histogram("dramatiq_message_duration_milliseconds", "Time spent processing a message, by stage",
                     _LABELS, buckets=(5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10_000,
                                       30_000, 60_000, 600_000, 900_000, 1_800_000, 3_600_000, float("inf")))
THREADS = Gauge("dx_worker_threads", "Worker threads of this process")
BUSY = Gauge("dx_worker_threads_busy", "Worker threads processing a message now")


class Metrics(dramatiq.Middleware):
    """Counts every message by queue and stage (actor), and times it."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        labels = (message.queue_name, message.actor_name)
        IN_PROGRESS.labels(*labels).inc()
        BUSY.inc()
        self._started[message.message_id] = time.monotonic()

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        labels = (message.queue_name, message.actor_name)
        started = self._started.pop(message.message_id, None)
        if started is not None:
            DURATION.labels(*labels).observe((time.monotonic() - started) * 1000)
            IN_PROGRESS.labels(*labels).dec()
            BUSY.dec()
        MESSAGES.labels(*labels).inc()
        if exception is not None:
            ERRORS.labels(*labels).inc()

    after_skip_message = after_process_message

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        if "retries" in message.options:
            RETRIES.labels(message.queue_name, message.actor_name).inc()

    def after_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        REJECTS.labels(message.queue_name, message.actor_name).inc()


def registry(threads: int) -> Any:
    """This process's registry, with the worker's thread count set."""
    THREADS.set(threads)
    return REGISTRY


def live(worker: dramatiq.Worker) -> str | None:
    """Liveness: every consumer and worker thread is alive (a consumer reconnects by itself)."""
    dead = [t.name for t in [*worker.consumers.values(), *worker.workers] if not t.is_alive()]
    return f"threads stopped: {', '.join(dead)}" if dead else None


def ready() -> str | None:
    """Readiness: PostgreSQL answers and staging takes a file."""
    return database_answers() or staging_writable()


def database_answers() -> str | None:
    """None if PostgreSQL answers within 3 s, else why not."""
    try:
        with db.connect(connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except (RetriableError, psycopg.Error) as exc:
        return f"PostgreSQL: {type(exc).__name__}"
    return None


def staging_writable() -> str | None:
    """None if this worker's staging folder and the staging store (the same folder, or object storage)
    each take a file, else why not."""
    folder = get_settings().staging_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as exc:
        return f"staging folder {folder} is not writable: {exc.strerror}"
    probe = staging.root() / f".probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"staging store {staging.root()} does not take a file: {exc}"
    return None
