"""One typed, read-only settings object, built once from the DX_* environment.

Every variable that is unset falls back to an embedded default,
so that ``dx demo`` runs on a bare laptop: an embedded PostgreSQL
(``pgserver``) under ``DX_HOME``, an in-process broker and worker, a local
staging folder and ``.eml`` files instead of SMTP. Every problem is reported
at once, each with how to fix it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from dx.shared.errors import ConfigError

N = TypeVar("N", int, float)
#: Bytes of source per chunk: enough chunks to keep every worker busy, small enough that a
#: worker's memory stays flat in the file's size (see docs/performance.md).
DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024
#: Chunks of one tenant processed at once, over all workers: the other tenants keep the rest of the
#: worker threads (see docs/operations.md, "Fairness between tenants").
DEFAULT_TENANT_MAX_CHUNKS = 4


@dataclass(frozen=True)
class Settings:
    """Where the services are and how work is sliced; None means embedded."""

    home: Path
    database_url: str | None
    broker_url: str | None
    redis_url: str | None
    smtp_url: str | None
    staging_dir: Path
    mail_from: str
    chunk_bytes: int
    worker_threads: int
    log_level: str
    scheduler_tick_s: float = 1.0
    scheduler_lease_s: float = 15.0
    clock_origin: tuple[datetime, float] | None = None  # (schedule time, at this Unix time)
    clock_speed: float = 1.0
    #: the port of ``dx worker``'s and ``dx scheduler``'s /metrics, /healthz and /readyz (0: none)
    probe_port: int = 0
    #: chunks of one tenant processed at once over all workers (0: no limit); needs Redis
    tenant_max_chunks: int = DEFAULT_TENANT_MAX_CHUNKS
    #: how long a chunk's slot stays taken after its worker stopped renewing it (a worker that died)
    tenant_lease_s: float = 30.0

    @property
    def outbox_dir(self) -> Path:
        """Where e-mails go as .eml files when DX_SMTP_URL is unset."""
        return self.home / "outbox"

    @property
    def embedded_broker(self) -> bool:
        """True when jobs run on an in-process broker and worker."""
        return self.broker_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build the settings, raising ConfigError with every problem found."""
        env = os.environ if env is None else env
        environ = env  # narrowed for the generic helper below (mypy does not narrow into it)
        problems: list[str] = []

        def url(name: str, schemes: tuple[str, ...]) -> str | None:
            value = env.get(name) or None
            if value is None:
                return None
            try:
                scheme = urlsplit(value).scheme
            except ValueError:
                problems.append(f"{name}={redact_url(value)}: not a valid URL")
                return value
            if scheme not in schemes:
                problems.append(
                    f"{name}={redact_url(value)!s}: expected a URL starting with "
                    f"{' or '.join(s + '://' for s in schemes)}; unset it to use the embedded default"
                )
            return value

        def number(name: str, default: N, minimum: N, cast: Callable[[str], N]) -> N:
            raw = environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = cast(raw)
            except ValueError:
                problems.append(f"{name}={raw!r}: expected {'a whole number' if cast is int else 'a number'}")
                return default
            if not value >= minimum:  # also refuses nan
                problems.append(f"{name}={value}: must be at least {minimum}")
            return value

        def clock_origin() -> tuple[datetime, float] | None:
            raw = env.get("DX_CLOCK_ORIGIN") or None
            if raw is None:
                return None
            try:
                iso, _, unix = raw.partition("@")
                origin = datetime.fromisoformat(iso)
                if origin.tzinfo is None:
                    raise ValueError("no UTC offset")
                return origin, float(unix)
            except ValueError:
                problems.append(f"DX_CLOCK_ORIGIN={raw!r}: expected ISO-TIME-WITH-OFFSET@UNIX-SECONDS "
                                "(a test clock; unset it in production)")
                return None

        home = Path(env.get("DX_HOME") or Path.cwd() / ".dx").expanduser()
        settings = cls(
            home=home,
            database_url=url("DX_DATABASE_URL", ("postgresql", "postgres")),
            broker_url=url("DX_BROKER_URL", ("amqp", "amqps")),
            redis_url=url("DX_REDIS_URL", ("redis", "rediss")),
            smtp_url=url("DX_SMTP_URL", ("smtp", "smtps")),
            staging_dir=Path(env.get("DX_STAGING_DIR") or home / "staging").expanduser(),
            mail_from=env.get("DX_MAIL_FROM") or "dataexchange@localhost",
            chunk_bytes=number("DX_CHUNK_BYTES", DEFAULT_CHUNK_BYTES, 1, int),
            worker_threads=number("DX_WORKER_THREADS", 1, 1, int),
            log_level=(env.get("DX_LOG_LEVEL") or "INFO").upper(),
            scheduler_tick_s=number("DX_SCHEDULER_TICK_S", 1.0, 0.01, float),
            scheduler_lease_s=number("DX_SCHEDULER_LEASE_S", 15.0, 0.1, float),
            clock_origin=clock_origin(),
            clock_speed=number("DX_CLOCK_SPEED", 1.0, 0.001, float),
            probe_port=number("DX_PROBE_PORT", 0, 0, int),
            tenant_max_chunks=number("DX_TENANT_MAX_CHUNKS", DEFAULT_TENANT_MAX_CHUNKS, 0, int),
            tenant_lease_s=number("DX_TENANT_LEASE_S", 30.0, 1.0, float),
        )
        if settings.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            problems.append(f"DX_LOG_LEVEL={settings.log_level}: expected DEBUG, INFO, WARNING or ERROR")
        if settings.scheduler_lease_s < 2 * settings.scheduler_tick_s:
            problems.append(f"DX_SCHEDULER_LEASE_S={settings.scheduler_lease_s}: must be at least twice "
                            f"DX_SCHEDULER_TICK_S={settings.scheduler_tick_s}, or the leader loses its lease")
        if settings.probe_port > 65535:
            problems.append(f"DX_PROBE_PORT={settings.probe_port}: expected a TCP port (1-65535) or 0 for none")
        if settings.clock_speed != 1.0 and settings.clock_origin is None:
            problems.append("DX_CLOCK_SPEED is set without DX_CLOCK_ORIGIN=ISO-TIME@UNIX-SECONDS "
                            "(where the test clock starts)")
        if settings.broker_url and not settings.redis_url:
            problems.append(
                "DX_REDIS_URL is unset while DX_BROKER_URL is set: workers in separate processes "
                "share the chunk barrier through Redis; set DX_REDIS_URL=redis://127.0.0.1:6379/0"
            )
        if settings.broker_url and not settings.database_url:
            problems.append(
                "DX_DATABASE_URL is unset while DX_BROKER_URL is set: separate workers cannot share "
                "an embedded PostgreSQL; set DX_DATABASE_URL=postgresql://..."
            )
        if problems:
            raise ConfigError(["Settings problems (environment variables):", *problems])
        return settings


def redact_url(value: str) -> str:
    """A URL with its password replaced, for messages and logs."""
    return re.sub(r"(://[^:/@]*:).*@", r"\1***@", value)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings.from_env()
