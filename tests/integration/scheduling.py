"""Building blocks of the scheduler tests: a clock that moves when told, scheduled modules, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

from dx.scheduler.clock import Clock
from dx.shared import db
from tests.integration.helpers import apply, config


class FixedClock(Clock):
    """A schedule clock that moves only when the test says so."""

    def __init__(self, now: datetime) -> None:
        super().__init__()
        self.current = now

    def now(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta


def scheduled(tenant: str, sftp: Any, tmp_path: Path, schedules: dict[str, dict[str, Any]]) -> None:
    """Apply one append importer per module id, each with the given schedule."""
    modules = [{"id": mid, "mode": "append", "source": {"path": f"in/{mid}_*.csv"}, "schedule": sched}
               for mid, sched in schedules.items()]
    apply(config(tenant, sftp, modules), tmp_path)


def claims(module: str) -> list[tuple[datetime, str, int | None]]:
    """(due_at, outcome, run_id) of the module's fire claims, by due time."""
    with db.connect() as conn:
        return [(r["due_at"], r["outcome"], r["run_id"]) for r in conn.execute(
            "SELECT due_at, outcome, run_id FROM dx.fire_claims WHERE module = %s ORDER BY due_at", (module,))]


def runs_of(module: str) -> list[dict[str, Any]]:
    with db.connect() as conn:
        return conn.execute("SELECT * FROM dx.runs WHERE module = %s ORDER BY id", (module,)).fetchall()


def outbox() -> list[int]:
    with db.connect() as conn:
        return [r["run_id"] for r in conn.execute("SELECT run_id FROM dx.run_outbox ORDER BY run_id")]


def forget_tenant(tenant: str, broker_url: str) -> None:
    """Delete the tenant's modules (runs, claims cascade) and drop queued plan messages."""
    with db.transaction() as conn:
        conn.execute("DELETE FROM dx.modules WHERE tenant = %s", (tenant,))
        conn.execute("UPDATE dx.scheduler_lease SET holder = NULL, expires_at = '-infinity'")
    queue_purge(broker_url, "dx.plan")


def queue_purge(broker_url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, passive=True)
        channel.queue_purge(queue)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:  # no such queue yet: nothing to purge
            raise
    finally:
        connection.close()


def queue_depth(broker_url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        return int(connection.channel().queue_declare(queue, durable=True, passive=True).method.message_count)
    finally:
        connection.close()


def start_scheduler(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """A ``python -m dx scheduler`` process with the given environment on top of ours."""
    log = open(log_path, "wb")
    return subprocess.Popen([sys.executable, "-m", "dx", "scheduler"], env={**os.environ, **env},
                            stdout=log, stderr=log)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 15) -> int:
    """SIGTERM, then wait; returns the exit code (SIGKILL if it does not stop)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the scheduler did not stop within {timeout_s} s of SIGTERM") from None
