"""Services of the fault tests' own, which they stop, restart and break: PostgreSQL, RabbitMQ, Redis, SMTP
(``dx.devkit.smtp``).

Each listens on a free loopback port and keeps its files in a folder of the test's; the session's
shared services stay untouched while these restart. ``Cluster`` starts the four, migrates the
control schema and gives the DX_* environment that points at them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from dx.devkit.smtp import Smtp
from dx.devkit.sshd import free_port, wait_port
from tests.integration.procs import DX

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]


def _as(user: str, *cmd: str) -> None:
    subprocess.run(["runuser", "-u", user, "--", *cmd], check=True, capture_output=True)


@dataclass
class Postgres:
    """A PostgreSQL server of its own (initdb), run as the ``postgres`` user."""

    home: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/dx"

    def init(self) -> None:
        self.home.mkdir(parents=True)
        shutil.chown(self.home, "postgres", "postgres")
        _as("postgres", str(PG_BIN / "initdb"), "-D", str(self.home / "data"), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()
        with psycopg.connect(self.url.replace("/dx", "/postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE dx")

    def start(self) -> None:
        _as("postgres", str(PG_BIN / "pg_ctl"), "-D", str(self.home / "data"), "-l", str(self.home / "log"),
            "-w", "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.home}", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown that ends every session; ``immediate``: a crash."""
        _as("postgres", str(PG_BIN / "pg_ctl"), "-D", str(self.home / "data"), "-m", mode, "-w", "stop")

    def terminate_sessions(self) -> int:
        """End every dx process's database session (as an admin's pg_terminate_backend would)."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            return len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                    " WHERE application_name LIKE 'dx %'").fetchall())


@dataclass
class RabbitMQ:
    """A RabbitMQ node of its own (name, ports, data, no plugins), run as the ``rabbitmq`` user."""

    home: Path
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def node(self) -> str:
        return f"dxfault{self.port}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def init(self) -> None:
        self.home.mkdir(parents=True)
        (self.home / "enabled_plugins").write_text("[].\n")
        (self.home / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.home / "env.conf").write_text('ERL_EPMD_ADDRESS=127.0.0.1\n'
                                            'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n')
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.home)], check=True)
        self.start()

    def start(self) -> None:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/var/lib/rabbitmq",
               "RABBITMQ_NODENAME": self.node, "RABBITMQ_CONF_ENV_FILE": str(self.home / "env.conf"),
               "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
               "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"), "RABBITMQ_LOG_BASE": str(self.home / "log"),
               "RABBITMQ_DIST_PORT": str(self.dist_port)}
        with open(self.home / "server.out", "ab") as out:
            self.proc = subprocess.Popen(["rabbitmq-server"], env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while subprocess.run(["rabbitmqctl", "-q", "-n", self.node, "await_startup", "--timeout", "60"],
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, (self.home / "server.out").read_text()[-2000:]
            time.sleep(0.5)
        wait_port(self.port)

    def stop(self) -> None:
        """A clean shutdown: connections close, durable queues and persistent messages stay."""
        subprocess.run(["rabbitmqctl", "-q", "-n", self.node, "stop"], check=True, capture_output=True)
        if self.proc is not None:
            self.proc.wait(60)


@dataclass
class Redis:
    """A Redis server of its own that, like the shared one, keeps nothing on disk."""

    home: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "no", "--dir", str(self.home)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)


@dataclass
class Cluster:
    """The four services of one fault test and the DX_* environment pointing at them."""

    postgres: Postgres
    rabbitmq: RabbitMQ
    redis: Redis
    smtp: Smtp
    env: dict[str, str]


@contextmanager
def private_cluster(home: Path, extra: dict[str, str]) -> Iterator[Cluster]:
    """Start PostgreSQL, RabbitMQ, Redis and SMTP of this test's own, migrate, and stop them on exit."""
    pg, mq, redis, smtp = Postgres(home / "pg"), RabbitMQ(home / "rabbitmq"), Redis(home / "redis"), Smtp()
    started: list[Any] = []
    try:
        for service, begin in ((pg, pg.init), (mq, mq.init), (redis, redis.start), (smtp, smtp.start)):
            begin()
            started.append(service)
        env = {"DX_HOME": str(home / "dx"), "DX_DATABASE_URL": pg.url, "DX_BROKER_URL": mq.url,
               "DX_REDIS_URL": redis.url, "DX_SMTP_URL": smtp.url,
               "DX_STAGING_DIR": str(home / "staging"), **extra}
        subprocess.run([DX, "migrate"], env={**os.environ, **env}, check=True, capture_output=True)
        yield Cluster(pg, mq, redis, smtp, env)
    finally:
        for service in reversed(started):
            try:
                service.stop()
            except (subprocess.SubprocessError, OSError, AssertionError):
                pass  # a service a test left stopped
