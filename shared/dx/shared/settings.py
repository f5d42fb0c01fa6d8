"""One typed, read-only settings object, built once from the DX_* environment.

Every variable that is unset falls back to an embedded default,
so that ``dx demo`` runs on a bare laptop: an embedded PostgreSQL
(``pgserver``) under ``DX_HOME``, an in-process broker and worker, a local
staging folder and ``.eml`` files instead of SMTP. Every problem is reported
at once, each with how to fix it. ``DX_SECRET_*`` variables are tenants'
secrets (see ``dx.shared.config.SECRET_PREFIX``), never settings.

Secrets may come from files instead of the environment (``read_secret``): ``NAME_FILE`` names the
file holding NAME's value, or DX_SECRETS_DIR names a folder (a mounted Kubernetes Secret) whose file
NAME holds it. The service URLs are read so at start; a tenant's ``${DX_SECRET_...}`` each time a
connection opens, so that a rotated secret is picked up without a restart.
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
from dx.shared.hosts import TrustedHosts

N = TypeVar("N", int, float)
#: A name that may be looked up as a file in DX_SECRETS_DIR: an identifier, never a path.
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Bytes of source per chunk: enough chunks to keep every worker busy, small enough that a
#: worker's memory stays flat in the file's size (see docs/performance.md).
DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024
#: The smallest chunk a module's chunk_bytes or DX_CHUNK_BYTES may ask for: a chunk per few records
#: would make millions of messages and transactions of a large file.
DEFAULT_MIN_CHUNK_BYTES = 1024 * 1024
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
    #: object storage for staging (``s3://BUCKET/PREFIX?endpoint_override=...``); None: DX_STAGING_DIR
    staging_url: str | None
    mail_from: str
    chunk_bytes: int
    worker_threads: int
    log_level: str
    scheduler_tick_s: float = 1.0
    scheduler_lease_s: float = 15.0
    clock_origin: tuple[datetime, float] | None = None  # (schedule time, at this Unix time)
    clock_speed: float = 1.0
    #: the largest failures CSV attached to a report e-mail (a larger one is linked)
    mail_attach_bytes: int = 2_000_000
    #: the console's address as clients reach it (links in e-mails); None: no links
    public_url: str | None = None
    #: the port of ``dx worker``'s and ``dx scheduler``'s /metrics, /healthz and /readyz (0: none)
    probe_port: int = 0
    #: internal networks and hosts that tenant connections may reach, and without TLS (DX_TRUSTED_HOSTS)
    trusted_hosts: TrustedHosts = TrustedHosts()
    #: the folders tenants' local connections may use as root (DX_LOCAL_ROOTS); none: no local connection
    local_roots: tuple[Path, ...] = ()
    #: the smallest chunk_bytes `dx apply` accepts of a module, and the smallest DX_CHUNK_BYTES
    min_chunk_bytes: int = DEFAULT_MIN_CHUNK_BYTES
    #: seconds without progress after which the scheduler re-drives a run (``dx.scheduler.watchdog``)
    stall_s: float = 600.0
    #: re-drives of a run before a stall times it out
    max_redrives: int = 3
    #: seconds a run may run before it is timed out (0: no limit)
    run_timeout_s: float = 21600.0

    @property
    def beat_s(self) -> float:
        """How often a worker says it still holds a run's message: well within ``stall_s``."""
        return min(30.0, self.stall_s / 4)
    #: False: ``dx worker``, ``scheduler``, ``serve``, ``apply`` and ``token`` only check that the control
    #: schema is current (``dx migrate`` runs apart, and their database user needs no DDL right)
    migrate_on_start: bool = True
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

    def worker_problem(self) -> str | None:
        """Why these settings cannot run a separate ``dx worker`` (only workers use Redis), or None."""
        if self.broker_url and not self.redis_url:
            return ("DX_REDIS_URL is unset while DX_BROKER_URL is set: workers in separate processes "
                    "share the chunk barrier through Redis; set DX_REDIS_URL=redis://127.0.0.1:6379/0")
        return None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build the settings, raising ConfigError with every problem found."""
        env = os.environ if env is None else env
        environ = env  # narrowed for the generic helper below (mypy does not narrow into it)
        problems: list[str] = []

        def url(name: str, schemes: tuple[str, ...]) -> str | None:
            try:
                value = read_secret(name, env)
            except ConfigError as exc:
                problems.extend(exc.problems)
                return None
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

        def flag(name: str, default: bool) -> bool:
            raw = (env.get(name) or "").strip().lower()
            if raw in FLAG_VALUES:
                return FLAG_VALUES[raw]
            if raw:
                problems.append(f"{name}={raw!r}: expected true or false")
            return default

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

        trusted, untrusted = TrustedHosts.parse(env.get("DX_TRUSTED_HOSTS") or "")
        problems += [f"DX_TRUSTED_HOSTS: {p}; list networks (10.20.0.0/16), addresses and host names, "
                     "separated by commas" for p in untrusted]
        local_roots = tuple(Path(r.strip()) for r in (env.get("DX_LOCAL_ROOTS") or "").split(",") if r.strip())
        problems += [f"DX_LOCAL_ROOTS: {r} is not an absolute path; list folders such as /srv/dx-files, "
                     "separated by commas" for r in local_roots if not r.is_absolute()]
        secrets_dir = env.get("DX_SECRETS_DIR") or None
        if secrets_dir is not None and not Path(secrets_dir).is_dir():
            problems.append(f"DX_SECRETS_DIR={secrets_dir}: not a folder (mount the Secret there, or unset it)")
        home = Path(env.get("DX_HOME") or Path.cwd() / ".dx").expanduser()
        min_chunk_bytes = number("DX_MIN_CHUNK_BYTES", DEFAULT_MIN_CHUNK_BYTES, 1, int)
        settings = cls(
            home=home,
            database_url=url("DX_DATABASE_URL", ("postgresql", "postgres")),
            broker_url=url("DX_BROKER_URL", ("amqp", "amqps")),
            redis_url=url("DX_REDIS_URL", ("redis", "rediss")),
            smtp_url=url("DX_SMTP_URL", ("smtp", "smtps")),
            staging_dir=Path(env.get("DX_STAGING_DIR") or home / "staging").expanduser(),
            staging_url=url("DX_STAGING_URL", ("s3",)),
            mail_from=env.get("DX_MAIL_FROM") or "dataexchange@localhost",
            chunk_bytes=number("DX_CHUNK_BYTES", DEFAULT_CHUNK_BYTES, min_chunk_bytes, int),
            min_chunk_bytes=min_chunk_bytes,
            worker_threads=number("DX_WORKER_THREADS", 1, 1, int),
            log_level=(env.get("DX_LOG_LEVEL") or "INFO").upper(),
            scheduler_tick_s=number("DX_SCHEDULER_TICK_S", 1.0, 0.01, float),
            scheduler_lease_s=number("DX_SCHEDULER_LEASE_S", 15.0, 0.1, float),
            clock_origin=clock_origin(),
            clock_speed=number("DX_CLOCK_SPEED", 1.0, 0.001, float),
            probe_port=number("DX_PROBE_PORT", 0, 0, int),
            stall_s=number("DX_STALL_S", 600.0, 0.1, float),
            max_redrives=number("DX_MAX_REDRIVES", 3, 0, int),
            run_timeout_s=number("DX_RUN_TIMEOUT_S", 21600.0, 0.0, float),
            mail_attach_bytes=number("DX_MAIL_ATTACH_BYTES", 2_000_000, 0, int),
            public_url=(url("DX_PUBLIC_URL", ("https", "http")) or "").rstrip("/") or None,
            trusted_hosts=trusted,
            local_roots=tuple(Path(os.path.realpath(r)) for r in local_roots if r.is_absolute()),
            migrate_on_start=flag("DX_MIGRATE_ON_START", True),
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
        if 0 < settings.run_timeout_s < settings.stall_s:
            problems.append(f"DX_RUN_TIMEOUT_S={settings.run_timeout_s}: must be 0 (no limit) or at least "
                            f"DX_STALL_S={settings.stall_s}, the time a run may go without progress")
        if settings.clock_speed != 1.0 and settings.clock_origin is None:
            problems.append("DX_CLOCK_SPEED is set without DX_CLOCK_ORIGIN=ISO-TIME@UNIX-SECONDS "
                            "(where the test clock starts)")
        if settings.broker_url and not settings.database_url:
            problems.append(
                "DX_DATABASE_URL is unset while DX_BROKER_URL is set: separate workers cannot share "
                "an embedded PostgreSQL; set DX_DATABASE_URL=postgresql://..."
            )
        if problems:
            raise ConfigError(["Settings problems (environment variables):", *problems])
        return settings


#: The spellings DX_MIGRATE_ON_START (and any on/off setting) accepts.
FLAG_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def read_secret(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The value of secret ``name``: the variable NAME, else the file that NAME_FILE names, else the
    file NAME in the folder DX_SECRETS_DIR; None when none is set (an empty value counts as unset).
    One trailing line break of a file is dropped. ConfigError if NAME and NAME_FILE are both set or
    the file cannot be read; the message never holds the value."""
    env = os.environ if env is None else env
    value = env.get(name) or None
    file = env.get(f"{name}_FILE") or None
    if value is not None and file is not None:
        raise ConfigError([f"{name} and {name}_FILE are both set: keep one"])
    if value is not None:
        return value
    source = f"{name}_FILE={file}"
    if file is None:
        folder = env.get("DX_SECRETS_DIR") or None
        if folder is None or not SECRET_NAME.fullmatch(name) or not (Path(folder) / name).exists():
            return None
        file, source = str(Path(folder) / name), f"{name} in DX_SECRETS_DIR={folder}"
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([f"{source}: cannot be read ({reason})"]) from None
    return text.removesuffix("\n").removesuffix("\r") or None


def redact_url(value: str) -> str:
    """A URL with its password replaced, for messages and logs."""
    return re.sub(r"(://[^:/@]*:).*@", r"\1***@", value)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings.from_env()
