"""Middleware Heartbeat: while a worker holds a message of a run, the run's beat is renewed.

A message is held from the moment a worker thread takes it (or the worker
keeps a retry until its time comes) until its processing ends. A thread of the
worker writes ``dx.run_beats`` for every run held, at once when a message is
taken and then every ``Settings.beat_s``, on a connection of its own, so that
the actors never wait for it. The scheduler's watchdog (``dx.scheduler.watchdog``)
re-drives only runs that no worker holds: a plan that downloads for an hour is
not sent again. Consumes and sends nothing.
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
import psycopg
import structlog
from dramatiq.broker import MessageProxy

from dx.shared import db, threads
from dx.shared.errors import RetriableError

log = structlog.get_logger(__name__)


class Heartbeat(dramatiq.Middleware):
    """Renews the beat of each run whose message this worker holds, every ``beat_s``."""

    def __init__(self, beat_s: float) -> None:
        self.beat_s = beat_s
        self._held: dict[str, int] = {}  # message id -> run id
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop = threading.Event()  # its own: a worker started again in this process gets a new thread
        threads.Thread(self._beat, "dx-heartbeat", (self._stop,)).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        self._wake.set()

    def before_delay_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._hold(message)

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._hold(message)

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        self._release(message)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._release(message)

    def after_ack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._release(message)  # a retry held until its time is acknowledged once sent on

    def after_nack(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self._release(message)

    def _hold(self, message: MessageProxy) -> None:
        run_id = (message.kwargs or {}).get("run_id")
        if run_id is None:
            return
        with self._lock:
            self._held[message.message_id] = int(run_id)
        self._wake.set()  # beat at once: the watchdog may look right after the queue emptied

    def _release(self, message: MessageProxy) -> None:
        with self._lock:
            self._held.pop(message.message_id, None)

    def held(self) -> set[int]:
        """The runs whose messages this worker holds."""
        with self._lock:
            return set(self._held.values())

    def _beat(self, stop: threading.Event) -> None:
        conn: db.Conn | None = None
        while not stop.is_set():
            self._wake.wait(self.beat_s)
            self._wake.clear()
            runs = self.held()
            if not runs:
                continue
            try:
                if conn is None or conn.closed:
                    conn = db.connect(autocommit=True)
                conn.execute("INSERT INTO dx.run_beats (run_id, beat_at) SELECT unnest(%s::bigint[]), now()"
                             " ON CONFLICT (run_id) DO UPDATE SET beat_at = EXCLUDED.beat_at", (sorted(runs),))
            except (psycopg.Error, RetriableError) as exc:  # PostgreSQL restarting: the next beat tries again
                log.warning("heartbeat.failed", error=str(exc))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()
