"""The fault suite: services and processes fail while a run's stage is in flight; every run still ends.

On a cluster of the suite's own (PostgreSQL, RabbitMQ, Redis, SMTP and OpenSSH started for it, see
``tests/integration/private.py``), with two ``dx worker`` processes and a ``dx scheduler`` (its watchdog
re-drives a stalled run after DX_STALL_S). A run's stage is caught in flight by a lock the test holds:
the stage's database session waits on it (seen in ``pg_stat_activity``) while the fault hits, then the
lock goes. Each run ends ``completed`` with the exact table, counters, failures and one report e-mail,
or ``failed`` with its code when the fault stays.

- A 1,000,000-row overwrite import: a worker killed with SIGKILL, RabbitMQ restarted, PostgreSQL's
  sessions terminated, PostgreSQL restarted, Redis restarted, in the plan, the chunks or the reduce;
  the SFTP server stopped mid-download; the SMTP server down when the run ends.
- An Updater run of 60,000 records against the sequential oracle: the same faults in its chunks.
- The staging disk full: the run fails with STAGING_FULL, nothing applied; the next run completes.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest
from psycopg.rows import dict_row

from dx.devkit.cluster import stop_processes
from dx.devkit.generate import contacts
from dx.devkit.sshd import Sftp, running_sshd
from tests.integration.helpers import config
from tests.integration.private import Cluster, private_cluster
from tests.integration.procs import DX, start, until
from tests.updater_reference import FIELDS as UPDATER_FIELDS
from tests.updater_reference import apply_sequentially, random_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROWS = 1_000_000
FIELDS = {"email": {"type": "email", "required": True}, "first_name": "text", "points": "int"}
COUNTERS = ("inserted", "updated", "deleted", "not_inserted", "not_updated", "not_deleted")
TERMINAL = ("completed", "completed_with_errors", "failed", "timed_out", "skipped")


@dataclass
class Site:
    """The suite's cluster, its SFTP server, and the dx processes of the test going on."""

    cluster: Cluster
    sftp: Sftp
    home: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.cluster.postgres.url

    def dx(self, *args: str) -> str:
        done = subprocess.run([DX, *args], env={**os.environ, **self.cluster.env}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self, role: str, n: int = 1, **env: str) -> list[subprocess.Popen[bytes]]:
        args = ["worker", "--threads", "1"] if role == "worker" else [role]
        started = [start(args, {**self.cluster.env, **env}, self.home / f"{role}-{len(self.procs) + i}.log")
                   for i in range(n)]
        self.procs.extend(started)
        return started

    def stop_all(self) -> None:
        stop_processes(self.procs)
        self.procs.clear()

    def logs(self, needle: str = "") -> str:
        """The dx processes' log lines holding ``needle``, for a failing assertion's message."""
        return "\n".join(line for log in sorted(self.home.glob("*.log"))
                         for line in log.read_text(errors="replace").splitlines() if needle in line)[-6000:]

    def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, row_factory=dict_row, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def run(self, run_id: int) -> dict[str, Any]:
        return self.query("SELECT * FROM dx.runs WHERE id = %s", run_id)[0]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    home = Path(tempfile.mkdtemp(prefix="dx-faults-"))  # outside 0700 temp folders: postgres and rabbitmq enter it
    os.chmod(home, 0o755)
    with running_sshd() as sftp:
        extra = {"DX_SECRET_TEST_SFTP_KEY": sftp.private_key, "DX_TRUSTED_HOSTS": "127.0.0.1",
                 "DX_STALL_S": "6", "DX_SCHEDULER_TICK_S": "0.5", "DX_MIN_CHUNK_BYTES": "1"}
        with private_cluster(home, extra) as cluster:
            yield Site(cluster, sftp, home)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def cluster(site: Site) -> Iterator[Site]:
    """Two workers and a scheduler on the suite's services, stopped after the test."""
    site.start("worker", 2)
    site.start("scheduler")
    yield site
    site.stop_all()
    for service in (site.cluster.postgres, site.cluster.rabbitmq, site.cluster.redis, site.cluster.smtp, site.sftp):
        _ensure_up(service)


def _ensure_up(service: Any) -> None:
    """A test that failed half-way may leave its service stopped: start it for the next."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", service.port)) != 0:
            service.start()


# --- catching a stage in flight -------------------------------------------------------------------------


class Gate:
    """A lock of the test's that a run's stage waits on: its session shows in ``pg_stat_activity``."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.conn = psycopg.connect(site.url, application_name="fault-gate", row_factory=dict_row)

    def hold(self, sql: str, *params: Any) -> None:
        self.conn.execute(sql, params)  # type: ignore[arg-type]

    def waiter(self, statement: str, timeout_s: float = 120) -> dict[str, Any]:
        """The dx session (and its process) that waits for a lock in a statement holding ``statement``:
        on this cluster only the gate holds a lock for long."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.site.query(
                "SELECT a.application_name, a.query FROM pg_stat_activity a"
                " WHERE a.wait_event_type = 'Lock' AND a.application_name LIKE 'dx pid %%'"
                " AND strpos(a.query, %s) > 0", statement)  # behind the gate, or behind a session queued at it
            if rows:
                return {**rows[0], "pid": int(rows[0]["application_name"].rsplit(" ", 1)[1])}
            time.sleep(0.05)
        sessions = self.site.query("SELECT application_name, wait_event_type, left(query, 120) AS query,"
                                   " pg_blocking_pids(pid) AS blocked_by FROM pg_stat_activity"
                                   " WHERE application_name LIKE 'dx pid %%'")
        raise AssertionError(f"no dx session waited on the test's lock (session {self.conn.info.backend_pid}) in a"
                             f" statement holding {statement!r}: {sessions}")

    def release(self) -> None:
        with suppress(psycopg.Error):
            self.conn.close()


def _run_id(site: Site, module: str) -> int:
    site.dx("run", module)
    return int(site.query("SELECT max(id) AS id FROM dx.runs WHERE module = %s", module)[0]["id"])


def _chunks_done(site: Site, run_id: int) -> int:
    return int(site.query("SELECT count(*) AS n FROM dx.chunk_results WHERE run_id = %s", run_id)[0]["n"])


#: What a stage's session runs while it waits on the gate: the plan's update of its run, a chunk's
#: share lock on it, the overwrite's lock on the contact table at the swap.
STATEMENT_OF = {"plan": "UPDATE dx.runs", "chunk": "FOR SHARE", "reduce": "LOCK TABLE"}


@contextmanager
def caught(site: Site, module: str, stage: str, tenant: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Start a run of ``module`` and hold its ``stage`` (plan, chunk, reduce) in flight; yields the run
    and the waiting session; the stage goes on when the block ends."""
    gate = Gate(site)
    try:
        if stage == "reduce":  # the swap's ACCESS EXCLUSIVE lock on the contact table waits on our read
            gate.hold(f'LOCK TABLE "tenant_{tenant}".contacts IN ACCESS SHARE MODE')
        run_id = _run_id(site, module)
        if stage == "plan":  # the plan's writes to the run's row wait
            until(lambda: site.run(run_id)["status"] == "running", "the plan starts", 60)
            gate.hold("SELECT 1 FROM dx.runs WHERE id = %s FOR NO KEY UPDATE", run_id)
        elif stage == "chunk":  # a chunk holds its run FOR SHARE: the next one waits
            until(lambda: _chunks_done(site, run_id) >= 1, "a chunk commits", 120, poll_s=0.01)  # before the last
            gate.hold("SELECT 1 FROM dx.runs WHERE id = %s FOR NO KEY UPDATE", run_id)
        waiter = gate.waiter(STATEMENT_OF[stage])
        run = site.run(run_id)
        assert run["status"] == "running"
        if stage == "plan":
            assert run["planned_at"] is None, "the plan had ended"
        elif stage == "chunk":  # a streaming plan may still cut chunks
            assert run["n_chunks"] is None or _chunks_done(site, run_id) < run["n_chunks"], "every chunk committed"
        else:
            assert _chunks_done(site, run_id) == run["n_chunks"]
        yield run_id, waiter
    finally:
        gate.release()


# --- the faults -------------------------------------------------------------------------------------------


def kill_worker(site: Site, waiter: dict[str, Any]) -> None:
    """SIGKILL the worker whose stage waits; another takes its place."""
    victim = next(p for p in site.procs if p.pid == waiter["pid"])
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL
    site.start("worker")


def restart_rabbitmq(site: Site, waiter: dict[str, Any]) -> None:
    site.cluster.rabbitmq.stop()
    site.cluster.rabbitmq.start()


def terminate_sessions(site: Site, waiter: dict[str, Any]) -> None:
    assert site.cluster.postgres.terminate_sessions() >= 1


def restart_postgres(site: Site, waiter: dict[str, Any]) -> None:
    site.cluster.postgres.stop("fast")
    time.sleep(1)
    site.cluster.postgres.start()


def crash_postgres(site: Site, waiter: dict[str, Any]) -> None:
    site.cluster.postgres.stop("immediate")
    site.cluster.postgres.start()


def restart_redis(site: Site, waiter: dict[str, Any]) -> None:
    site.cluster.redis.stop()
    site.cluster.redis.start()


FAULTS: dict[str, Callable[[Site, dict[str, Any]], None]] = {
    "worker-sigkill": kill_worker, "rabbitmq-restart": restart_rabbitmq, "postgres-sessions-terminated":
    terminate_sessions, "postgres-restart": restart_postgres, "postgres-crash": crash_postgres,
    "redis-restart": restart_redis}
IMPORT_CASES = [(stage, fault) for stage in ("plan", "chunk", "reduce") for fault in FAULTS
                if (stage, fault) != ("plan", "redis-restart")]  # the plan does not use Redis


# --- the 1,000,000-row import ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(site: Site) -> pl.DataFrame:
    frame = contacts(ROWS, seed=31).select("email", "first_name", "points")
    site.sftp.put("faults/contacts.csv", frame.write_csv().encode())
    return frame


def _import(site: Site, tenant: str, **module: Any) -> str:
    mid = f"{tenant}-import"
    path = site.home / f"{tenant}.yaml"
    path.write_text(config(tenant, site.sftp, [{"id": mid, "mode": "overwrite", "chunk_bytes": 4_000_000,
                                                "source": {"path": "faults/contacts.csv", "after": "keep"},
                                                **module}], fields=FIELDS))
    site.dx("apply", "-f", str(path))
    return mid


def _ended(site: Site, run_id: int, timeout_s: float = 300) -> dict[str, Any]:
    """The run once it ended and its e-mail went (fails the test if it does not within ``timeout_s``)."""
    until(lambda: site.run(run_id)["email_sent_at"] is not None, f"run {run_id} ends and reports", timeout_s)
    return site.run(run_id)


def _mails(site: Site, run_id: int) -> list[Any]:
    return [m for m in site.cluster.smtp.messages if str(m["Subject"]).endswith(f"(run {run_id})")]


def _assert_imported(site: Site, run_id: int, tenant: str, frame: pl.DataFrame) -> None:
    run = site.run(run_id)
    assert run["status"] == "completed", (run["error_code"], run["error_message"], site.logs(f'"run": {run_id}'))
    assert {c: run[c] for c in COUNTERS} == {**dict.fromkeys(COUNTERS, 0), "inserted": ROWS}
    assert run["rows_read"] == ROWS
    assert site.query("SELECT count(*) AS n FROM dx.failed_operations WHERE run_id = %s", run_id)[0]["n"] == 0
    with psycopg.connect(site.url) as conn:
        rows = conn.execute(f'SELECT email, first_name, points FROM "tenant_{tenant}".contacts').fetchall()  # noqa: S608
    got = pl.DataFrame(rows, schema=frame.schema, orient="row")
    assert got.sort("email").equals(frame.sort("email")), "the table differs from the file"
    assert len(_mails(site, run_id)) == 1, [m["Subject"] for m in site.cluster.smtp.messages]


@pytest.mark.parametrize(("stage", "fault"), IMPORT_CASES, ids=[f"{s}-{f}" for s, f in IMPORT_CASES])
def test_an_import_completes_exactly_through_a_fault_in_flight(stage, fault, cluster, source):
    # Given: an overwrite import of 1,000,000 contacts in about 14 chunks
    tenant = f"f{IMPORT_CASES.index((stage, fault))}"
    module = _import(cluster, tenant)

    # When: the fault hits while the stage is in flight, the stage waiting on the test's lock
    with caught(cluster, module, stage, tenant) as (run_id, waiter):
        FAULTS[fault](cluster, waiter)

    # Then: the run completes, its table, counters, failures and e-mail exact
    _ended(cluster, run_id)
    _assert_imported(cluster, run_id, tenant, source)


def test_an_import_completes_through_an_sftp_server_stopped_mid_download(cluster, source):
    # Given: the import, and the plan's download under way (the staged copy growing)
    tenant = "fsftp"
    module = _import(cluster, tenant)
    run_id = _run_id(cluster, module)
    staged = cluster.home / "staging"

    def downloading() -> bool:
        sizes = [p.stat().st_size for p in staged.rglob("*") if p.is_file()]
        return any(0 < s < size for s in sizes) and cluster.run(run_id)["planned_at"] is None

    size = (cluster.sftp.root / "faults" / "contacts.csv").stat().st_size
    deadline = time.monotonic() + 60
    while not downloading():
        assert time.monotonic() < deadline, "the download did not start within 60 s"
        time.sleep(0.005)

    # When: the transfer stalls, the SFTP server stops (the session breaks off) and comes back 3 s later
    cluster.sftp.freeze_sessions()
    assert cluster.run(run_id)["planned_at"] is None, "the plan had ended"
    assert max(p.stat().st_size for p in staged.rglob("*") if p.is_file()) < size, "the download had ended"
    cluster.sftp.stop()
    time.sleep(3)
    cluster.sftp.start()

    # Then: the plan starts again and the run completes, exact
    _ended(cluster, run_id)
    _assert_imported(cluster, run_id, tenant, source)


def test_an_import_reports_once_the_smtp_server_is_back(cluster, source):
    # Given: the import, its reduce in flight
    tenant = "fsmtp"
    module = _import(cluster, tenant)
    sent_before = len(cluster.cluster.smtp.messages)

    # When: the SMTP server is down as the run ends
    with caught(cluster, module, "reduce", tenant) as (run_id, _):
        cluster.cluster.smtp.stop()
    until(lambda: cluster.run(run_id)["status"] in TERMINAL, "the run ends", 120)
    time.sleep(3)

    # Then: the run ended completed without its e-mail, and sends it once the server is back
    assert cluster.run(run_id)["email_sent_at"] is None, cluster.logs(f'"run": {run_id}')
    cluster.cluster.smtp.start()
    _ended(cluster, run_id, 120)
    assert len(cluster.cluster.smtp.messages) == sent_before + 1
    _assert_imported(cluster, run_id, tenant, source)


# --- an Updater run ---------------------------------------------------------------------------------------

UPDATER_CASES = [(stage, fault) for stage in ("plan", "chunk") for fault in FAULTS
                 if (stage, fault) != ("plan", "redis-restart")]


@pytest.mark.parametrize(("stage", "fault"), UPDATER_CASES, ids=[f"{s}-{f}" for s, f in UPDATER_CASES])
def test_an_updater_run_matches_the_oracle_through_a_fault_in_flight(stage, fault, cluster):
    # Given: 60,000 I/U/D records (2% bad) over 20,000 keys, half of them in the table, in about 48 chunks
    tenant = f"u{UPDATER_CASES.index((stage, fault))}"
    rng = random.Random(7)
    records = random_records(rng, 60_000, 20_000, bad_ratio=0.02)
    initial = {f"k{k}@x.it": {"first_name": "Init", "points": k, "birth_date": None} for k in range(0, 20_000, 2)}
    data = pl.DataFrame(records, schema=["operation", "email", "first_name", "points"], orient="row").write_csv()
    cluster.sftp.put(f"faults/{tenant}.csv", data.encode())
    path = cluster.home / f"{tenant}.yaml"
    path.write_text(config(tenant, cluster.sftp, [
        {"id": f"{tenant}-ops", "kind": "updater", "chunk_bytes": len(data) // 48, "update_missing": "fail",
         "source": {"path": f"faults/{tenant}.csv", "after": "keep"}}], fields=UPDATER_FIELDS))
    cluster.dx("apply", "-f", str(path))
    with psycopg.connect(cluster.url) as conn, conn.cursor().copy(
            f'COPY "tenant_{tenant}".contacts (email, first_name, points) FROM STDIN') as copy:
        for key, r in initial.items():
            copy.write_row((key, r["first_name"], r["points"]))

    # When: the fault hits while the stage is in flight
    with caught(cluster, f"{tenant}-ops", stage, tenant) as (run_id, waiter):
        FAULTS[fault](cluster, waiter)

    # Then: the table, failures and counters are the sequential oracle's
    run = _ended(cluster, run_id)
    expected = apply_sequentially(initial, records, upsert=False)
    assert run["status"] == "completed_with_errors", (run["error_code"], run["error_message"])
    assert {c: run[c] for c in COUNTERS} == expected.counters
    got = cluster.query(f'SELECT email, first_name, points FROM "tenant_{tenant}".contacts')  # noqa: S608
    assert {r["email"]: (r["first_name"], r["points"]) for r in got} == {
        k: (r["first_name"], r["points"]) for k, r in expected.table.items()}
    failed = cluster.query("SELECT row_number, error_code FROM dx.failed_operations WHERE run_id = %s"
                           " ORDER BY row_number", run_id)
    assert [(r["row_number"], r["error_code"]) for r in failed] == sorted(expected.failures)
    assert len(_mails(cluster, run_id)) == 1


# --- the staging disk full -----------------------------------------------------------------------------------


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path``: writes past it fail with ENOSPC."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def test_a_full_staging_disk_fails_the_run_with_its_code_and_the_next_run_completes(site, source):
    # Given: the import of 1,000,000 contacts (about 50 MB), and workers whose staging holds 8 MB
    tenant = "fdisk"
    module = _import(site, tenant)
    with small_disk(site.home / "small", "8m") as disk:
        site.start("worker", 2, DX_STAGING_DIR=str(disk))
        site.start("scheduler")
        try:
            # When: the run stages the file
            run_id = _run_id(site, module)
            run = _ended(site, run_id, 180)
        finally:
            site.stop_all()

    # Then: it failed with STAGING_FULL on every try, nothing applied, its e-mail sent with the code
    assert (run["status"], run["error_code"]) == ("failed", "STAGING_FULL"), run["error_message"]
    assert "No space left on device" in run["error_message"]
    assert site.query(f'SELECT count(*) AS n FROM "tenant_{tenant}".contacts')[0]["n"] == 0  # noqa: S608
    assert "STAGING_FULL" in _mails(site, run_id)[0].get_body(("plain",)).get_content()

    # When: workers with room run the module again
    site.start("worker", 2)
    site.start("scheduler")
    try:
        again = _run_id(site, module)
        _ended(site, again)
    finally:
        site.stop_all()

    # Then: it imports the file exactly
    _assert_imported(site, again, tenant, source)
