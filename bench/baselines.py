"""The baselines, on the same file and a table identical to dx's target.

- ``psql \\copy``: PostgreSQL's own bulk load, one stream, no validation;
- pgloader (Debian's package): parses, converts, batches COPY, writes rejects;
- for the Displacer: ``psql \\copy (SELECT …) TO`` a local file, then
  OpenSSH ``sftp put``;
- the hand-tuned limit of an overwrite: two ``psql \\copy`` streams at once
  into a table without key, then the primary key built.
Each baseline table is ``CREATE TABLE … (LIKE <target> INCLUDING ALL)``:
same columns, types and primary key.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import psycopg
from psycopg import sql

from bench.measure import run_child
from dx.devkit.sshd import Sftp

#: Schema of the baseline tables.
SCHEMA = "bench"
#: Session settings every loader gets, so that all read dates and times alike.
PG_SESSION = "-c datestyle=ISO,DMY -c timezone=UTC"


def fresh_table(database_url: str, name: str, like: sql.Composable, *, keyed: bool = True) -> sql.Identifier:
    """An empty table ``bench.<name>`` shaped like ``like`` (without its key and indexes unless ``keyed``)."""
    table = sql.Identifier(SCHEMA, name)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        including = sql.SQL("INCLUDING ALL" if keyed else "INCLUDING DEFAULTS")
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} {})").format(table, like, including))
    return table


def count(database_url: str, table: sql.Composable) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
    assert row is not None
    return int(row[0])


def _qualified(database_url: str, table: sql.Composable) -> str:
    with psycopg.connect(database_url) as conn:
        return table.as_string(conn)


def psql_copy_in(database_url: str, table: sql.Composable, columns: list[str], csv: Path,
                 log: Path) -> tuple[float, float]:
    """``psql -c '\\copy table (cols) FROM csv (FORMAT csv, HEADER)'``: (wall s, psql's peak MB)."""
    target = _qualified(database_url, table)
    cols = ", ".join(f'"{c}"' for c in columns)
    command = f"\\copy {target} ({cols}) FROM '{csv}' WITH (FORMAT csv, HEADER)"
    return run_child(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database_url, "-c", command],
                     {"PGOPTIONS": PG_SESSION}, log)


def split_csv(csv: Path, parts: int) -> list[Path]:
    """``csv`` cut into ``parts`` files of whole records, each with the header (untimed set-up; read
    and written by Polars, since a value may hold a line break)."""
    records = pl.read_csv(csv, infer_schema=False)
    per = -(-records.height // parts)
    paths = []
    for i in range(parts):
        path = csv.with_name(f"{csv.stem}.part{i}{csv.suffix}")
        records.slice(i * per, per).write_csv(path)
        paths.append(path)
    return paths


def psql_parallel_then_key(database_url: str, table: sql.Identifier, columns: list[str], parts: list[Path],
                           key: str, log: Path) -> tuple[float, list[float]]:
    """One ``psql \\copy`` per part, all at once, into the keyless ``table``, then its primary key built:
    (wall s of both steps, each psql's peak MB)."""
    started = time.monotonic()
    with ThreadPoolExecutor(len(parts)) as pool:
        loads = list(pool.map(lambda part: psql_copy_in(database_url, table, columns, part, log), parts))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(table, sql.Identifier(key)))
    return time.monotonic() - started, [peak for _, peak in loads]


def pgloader_in(database_url: str, table: sql.Composable, columns: list[str], csv: Path,
                workdir: Path) -> tuple[float, float]:
    """pgloader's CSV load (its defaults: 2 workers, batches, rejects under workdir): (wall s, peak MB)."""
    target = _qualified(database_url, table).replace('"', "")
    cols = ", ".join(columns)
    load = workdir / "contacts.load"
    load.write_text(f"""\
LOAD CSV
     FROM '{csv}' ({cols})
     INTO {database_url}?tablename={target} ({cols})
     WITH skip header = 1,
          fields optionally enclosed by '"',
          fields escaped by double-quote,
          fields terminated by ','
      SET client_encoding to 'utf8', datestyle to 'ISO, DMY', timezone to 'UTC';
""")
    return run_child(["pgloader", "--no-ssl-cert-verification", "--root-dir", str(workdir / "pgloader"),
                      str(load)], None, workdir / "pgloader.log")


def psql_export_put(database_url: str, query: str, local: Path, sftp: Sftp, remote: Path,
                    log: Path) -> tuple[float, float]:
    """``psql \\copy (query) TO local`` then ``sftp put`` it: (wall s of both, larger peak MB)."""
    copy_s, copy_mb = run_child(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database_url, "-c",
                                 f"\\copy ({query}) TO '{local}' WITH (FORMAT csv, HEADER)"],
                                {"PGOPTIONS": PG_SESSION}, log)
    key = sftp.workdir / "client_ed25519"
    known = sftp.workdir / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sftp.port} {sftp.host_key}\n")
    put_s, put_mb = run_child(["sftp", "-q", "-b", "-", "-i", str(key), "-P", str(sftp.port),
                               "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                               f"{sftp.user}@127.0.0.1"], None, log, stdin=f"put {local} {remote}\n")
    return copy_s + put_s, max(copy_mb, put_mb)


def require_tools() -> list[str]:
    """Problems with the baseline tools, each with how to fix it."""
    problems = []
    if not shutil.which("psql"):
        problems.append("psql is missing: apt-get install postgresql-client")
    if not shutil.which("pgloader"):
        problems.append("pgloader is missing: apt-get install pgloader (Debian's package)")
    if not shutil.which("sftp"):
        problems.append("the OpenSSH sftp client is missing: apt-get install openssh-client")
    return problems
