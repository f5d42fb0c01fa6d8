"""Connections to the client's side: where sources are read and targets written.

``open_remote(cfg)`` gives a ``Remote`` for a connection: ``local`` (a folder,
the embedded default and tests) or ``sftp`` (paramiko, host key pinned).
Every path is confined under the connection's ``root``. ``reach(cfg)`` gives
the checked addresses of a connection's host, the only ones it connects to
(``dx.shared.hosts``).

``open_database(cfg)`` gives a ``SourceDatabase`` for a client's database
read as a source: ``postgres`` (psycopg) or ``mysql`` (MySQL and MariaDB,
PyMySQL). Another engine implements that interface and is added there.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from dx.shared.config import (
    PLAINTEXT_SSLMODES,
    SECRET_PATTERN,
    SECRET_PREFIX,
    ConnectionCfg,
    SourceCfg,
    root_problem,
)
from dx.shared.errors import ConfigError, ErrorCode, RunError
from dx.shared.hosts import resolve
from dx.shared.settings import get_settings, read_secret

#: Bytes read from a local stream per write while uploading.
UPLOAD_BLOCK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileInfo:
    """A file on the client's side, by its path relative to the root."""

    path: str
    size_bytes: int
    mtime: int


class Remote(Protocol):
    """What the modules need of a client's file space."""

    def list(self, pattern: str) -> list[FileInfo]: ...
    def stat(self, path: str) -> FileInfo | None: ...
    def fetch(self, path: str, staging: Path) -> Path: ...
    def move(self, path: str, new_path: str) -> None:
        """Rename ``path`` to ``new_path`` atomically, replacing a file already there."""
    def remove(self, path: str) -> None: ...
    def upload(self, source: IO[bytes], path: str) -> None:
        """Write the stream to ``path`` (its folders created); TARGET_WRITE_FAILED if it breaks off."""
    def place(self, path: str, pieces: Sequence[tuple[int, IO[bytes]]], size: int | None = None) -> None:
        """Write each stream at its byte offset in ``path``, creating the file (and its folders) if it is
        missing and keeping the rest of what it holds; then, if ``size`` is given, cut it to that size.
        Several tasks may place disjoint ranges of one file at once. TARGET_WRITE_FAILED if it breaks off."""


class SourceDatabase(Protocol):
    """What an import needs of a client's database (one implementation per engine)."""

    def copy_rows(self, src: SourceCfg, since: str | None, out: IO[bytes]) -> str | None:
        """Write the table's or query's rows whose watermark is greater than ``since`` (all of them
        without a watermark or ``since``) to ``out``, in watermark order, as UTF-8 CSV with a header
        (NULL an unquoted empty cell, text quoted, numbers exact, dates and times ISO and in UTC);
        return the highest watermark value among them as the server writes it (None without a
        watermark or rows). Read in a read-only transaction, each statement within the source's
        ``timeout_s``; SOURCE_QUERY_FAILED if the server refuses it, RetriableError if the
        connection breaks."""

    def close(self) -> None:
        """Close the connection."""


def describe_query(src: SourceCfg) -> str:
    """What a table or query source reads, for a run's source_path: the table, or the start of the query."""
    if src.table is not None:
        return f"table {src.table}"
    query = " ".join((src.query or "").split())
    return f"query {query[:120]}"


@contextmanager
def open_database(cfg: ConnectionCfg) -> Iterator[SourceDatabase]:
    """The client's database of a postgres or mysql connection, connected (CONNECTION_FAILED,
    AUTHENTICATION_FAILED, SECRET_MISSING); closed when the block ends."""
    database: SourceDatabase
    if cfg.type == "postgres":
        from dx.shared.connections.postgres import PostgresSource

        database = PostgresSource(cfg)
    elif cfg.type == "mysql":
        from dx.shared.connections.mysql import MySQLSource

        database = MySQLSource(cfg)
    else:
        raise RunError(ErrorCode.CONFIG_INVALID, f"the source reads a table or query, but connection {cfg.id} "
                       f"is {cfg.type}: apply the configuration again")
    try:
        yield database
    finally:
        database.close()


def confine(root: str, path: str) -> str:
    """The absolute path of ``path`` under ``root``; RunError if it leaves the root."""
    root = posixpath.normpath(root)
    full = posixpath.normpath(posixpath.join(root, path.lstrip("/")))
    if full != root and not full.startswith(root.rstrip("/") + "/"):
        raise RunError(ErrorCode.PATH_OUTSIDE_ROOT, f"{path!r} leaves the connection root {root!r}")
    return full


def split_pattern(pattern: str) -> tuple[str, str]:
    """(folder, name pattern): wildcards are allowed in the file name only."""
    folder, name = posixpath.split(pattern)
    if any(ch in folder for ch in "*?["):
        raise RunError(ErrorCode.CONFIG_INVALID, f"{pattern!r}: wildcards are allowed in the file name only")
    return folder, name


def match_names(names: list[str], name_pattern: str) -> list[str]:
    """The names matching a file-name pattern, sorted; temporary names are never matched."""
    return sorted(n for n in names if fnmatch.fnmatchcase(n, name_pattern) and not n.startswith(".")
                  and not n.endswith((".part", ".tmp", ".filepart")))


def resolve_secret(reference: str | None) -> str | None:
    """The value of a ${DX_SECRET_NAME} reference, read now and never stored: from the worker's environment,
    NAME_FILE or DX_SECRETS_DIR (``settings.read_secret``); a variable without the prefix (a
    configuration applied before it was required) is never read."""
    if reference is None:
        return None
    m = SECRET_PATTERN.match(reference)
    name = m.group(1) if m else reference
    if not name.startswith(SECRET_PREFIX):
        raise RunError(ErrorCode.SECRET_MISSING, f"${{{name}}} is not a tenant secret (its name does not start "
                       f"with {SECRET_PREFIX}) and is never read: apply the connection again naming a "
                       f"{SECRET_PREFIX} variable")
    try:
        value = read_secret(name)
    except ConfigError as exc:
        raise RunError(ErrorCode.SECRET_MISSING, f"the secret ${{{name}}}: {exc.problems[0]}") from None
    if value is None:
        raise RunError(ErrorCode.SECRET_MISSING, f"the secret ${{{name}}} is not set in the worker's environment "
                       "(nor as a file: NAME_FILE or DX_SECRETS_DIR)")
    return value


def reach(cfg: ConnectionCfg) -> list[str]:
    """The addresses of the connection's host, each checked (HOST_NOT_ALLOWED); for a client database,
    TLS_REQUIRED if its sslmode may send the password in clear to a host the platform does not trust."""
    assert cfg.host
    trusted = get_settings().trusted_hosts
    addresses = resolve(cfg.host, cfg.port, trusted)
    if cfg.is_database and cfg.sslmode in PLAINTEXT_SSLMODES and not trusted.trusts_host(cfg.host):
        raise RunError(ErrorCode.TLS_REQUIRED,
                       f"sslmode {cfg.sslmode} may send the password in clear, and {cfg.host} is not a host the "
                       "platform trusts (DX_TRUSTED_HOSTS): nothing was sent; apply the connection without "
                       "sslmode (verify-full), or with require or verify-ca")
    return addresses


@contextmanager
def open_remote(cfg: ConnectionCfg) -> Iterator[Remote]:
    """A Remote for the connection; an SFTP session is kept for the process's next task on the same
    connection when the block ends cleanly (``sftp.SessionPool``), closed when it raises."""
    if cfg.is_database:
        raise RunError(ErrorCode.CONFIG_INVALID, f"connection {cfg.id} is a {cfg.type} connection: it holds no files")
    if cfg.type == "local":
        from dx.shared.connections.local import LocalRemote

        if (problem := root_problem(cfg.root, get_settings().local_roots)) is not None:
            raise RunError(ErrorCode.ROOT_NOT_ALLOWED, f"connection {cfg.id}: {problem}")
        yield LocalRemote(cfg.root)
        return
    from dx.shared.connections.sftp import POOL

    remote = POOL.take(cfg)
    try:
        yield remote
    except BaseException:
        remote.close()  # its state is unknown: not kept
        raise
    POOL.give(cfg, remote)
