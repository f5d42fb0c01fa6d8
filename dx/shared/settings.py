"""One typed, read-only settings object, built once from the DX_* environment.

Every variable that is unset falls back to an embedded default (DESIGN §6),
so that ``dx demo`` runs on a bare laptop: an embedded PostgreSQL
(``pgserver``) under ``DX_HOME``, an in-process broker and worker, a local
staging folder and ``.eml`` files instead of SMTP. Every problem is reported
at once, each with how to fix it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from dx.shared.errors import ConfigError

#: Bytes of source per chunk: a 1M-row contact file (~100 MB) makes 4 chunks.
DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024


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

        def integer(name: str, default: int, minimum: int) -> int:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                problems.append(f"{name}={raw!r}: expected a whole number")
                return default
            if value < minimum:
                problems.append(f"{name}={value}: must be at least {minimum}")
            return value

        home = Path(env.get("DX_HOME") or Path.cwd() / ".dx").expanduser()
        settings = cls(
            home=home,
            database_url=url("DX_DATABASE_URL", ("postgresql", "postgres")),
            broker_url=url("DX_BROKER_URL", ("amqp", "amqps")),
            redis_url=url("DX_REDIS_URL", ("redis", "rediss")),
            smtp_url=url("DX_SMTP_URL", ("smtp", "smtps")),
            staging_dir=Path(env.get("DX_STAGING_DIR") or home / "staging").expanduser(),
            mail_from=env.get("DX_MAIL_FROM") or "dataexchange@localhost",
            chunk_bytes=integer("DX_CHUNK_BYTES", DEFAULT_CHUNK_BYTES, 1),
            worker_threads=integer("DX_WORKER_THREADS", 1, 1),
            log_level=(env.get("DX_LOG_LEVEL") or "INFO").upper(),
        )
        if settings.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            problems.append(f"DX_LOG_LEVEL={settings.log_level}: expected DEBUG, INFO, WARNING or ERROR")
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
