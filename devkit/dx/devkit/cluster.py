"""A private slice of the real services, and separate ``dx worker`` processes.

Shared by the integration tests and the benchmark: a fresh PostgreSQL
database and RabbitMQ virtual host (dropped afterwards), the DX_* environment
that points at them (loopback trusted, where the test servers listen), and
workers started as ``python -m dx worker``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

#: The maintenance database, for creating and dropping the private ones.
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Redis of the group barrier (its keys are unique per group).
REDIS_URL = "redis://127.0.0.1:6379/0"
#: The hosts tenant connections may reach although internal: the test servers (sshd, the clients'
#: databases) listen on loopback.
TRUSTED_HOSTS = "127.0.0.1"


class ServiceDown(RuntimeError):
    """A service did not answer or refused the private database or vhost."""


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@contextmanager
def private_services(name: str, home: Path, extra: dict[str, str]) -> Iterator[dict[str, str]]:
    """Database and vhost ``name``; yields the DX_* environment (plus ``extra``), set in os.environ."""
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise ServiceDown(f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}; run scripts/services.sh") from None
    try:
        _run("rabbitmqctl", "-q", "add_vhost", name)
        _run("rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    except subprocess.CalledProcessError as exc:
        raise ServiceDown(f"RabbitMQ did not accept vhost {name}: {exc.stderr!r}; run scripts/services.sh") from None
    env = {
        "DX_HOME": str(home),
        "DX_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
        "DX_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{name}",
        "DX_REDIS_URL": REDIS_URL,
        "DX_STAGING_DIR": str(home / "staging"),
        "DX_TRUSTED_HOSTS": TRUSTED_HOSTS,
        **extra,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from dx.shared.settings import get_settings

    get_settings.cache_clear()
    from dx.shared import db

    db.migrate()
    from dx.workers.broker import setup

    setup()
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Workers:
    """Separate ``dx worker`` processes, stopped with SIGTERM at the end."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env, self.logdir = dict(env), logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int = 2, threads: int = 1) -> list[subprocess.Popen[bytes]]:
        """Start ``n`` more workers, each logging to ``worker-<i>.log``."""
        started = []
        for _ in range(n):
            with open(self.logdir / f"worker-{len(self.procs)}.log", "wb") as log:
                proc = subprocess.Popen([sys.executable, "-m", "dx", "worker", "--threads", str(threads)],
                                        env={**os.environ, **self.env}, stderr=log, stdout=log)
            self.procs.append(proc)
            started.append(proc)
        return started

    def stop_all(self) -> None:
        """SIGTERM every worker (they finish the message in hand), kill the ones that hang."""
        stop_processes(self.procs)
        self.procs.clear()


def stop_processes(procs: list[subprocess.Popen[bytes]], wait_s: float = 30) -> None:
    """SIGTERM each ``dx`` process still running, then wait; kill the ones that do not end in time."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(wait_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
