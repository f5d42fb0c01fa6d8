"""The benchmark's cluster: sshd, private database and vhost, workers, dx config.

Everything the scenarios share: the SFTP server holding the sources, the
``bench`` tenant with its modules, the worker processes (their peak memory
read from the kernel), and one timed ``dx run MODULE --wait`` process.
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.measure import Sample, cpu, peak_mb, reset_peak
from dx.devkit import configs
from dx.devkit.cluster import Workers, private_services
from dx.devkit.generate import FIELDS, write_contacts, write_contacts_xml
from dx.devkit.smtp import Smtp
from dx.devkit.sshd import Sftp, running_sshd

#: The tenant of every benchmark module.
TENANT = "bench"
#: Poll interval for a run's report once ``dx run --wait`` has exited.
POLL_S = 0.02
#: This virtualenv's ``dx`` console script: every timed run is ``dx run MODULE --wait``, as a user runs it.
DX = Path(sysconfig.get_path("scripts")) / "dx"


def config(sftp: Sftp, modules: list[dict[str, Any]]) -> str:
    """Tenant ``bench``, its SFTP connection (key login), databases ``contacts`` and ``small``, the modules."""
    return configs.dump({
        "tenants": [{"id": TENANT, "notify": ["ops@bench.example"]}],
        "connections": [{"id": "bench-sftp", "tenant": TENANT, "type": "sftp", "host": "127.0.0.1",
                         "port": sftp.port, "username": sftp.user, "host_key": sftp.host_key,
                         "root": str(sftp.root), "private_key": "${DX_SECRET_BENCH_SFTP_KEY}"}],
        "databases": [{"id": db, "tenant": TENANT, "primary_key": "email", "fields": FIELDS}
                      for db in ("contacts", "small")],
        "modules": [{"tenant": TENANT, **m} for m in modules],
    })


def importer(module_id: str, mode: str, path: str, database: str = "contacts") -> dict[str, Any]:
    """An importer module that keeps its source (so the same file serves every repetition); an XML
    source if ``path`` ends in ``.xml``."""
    source = {"connection": "bench-sftp", "path": path, "after": "keep", "settle_s": 0}
    if path.endswith(".xml"):
        source["format"] = "xml"
    return {"id": module_id, "kind": "importer", "database": database, "mode": mode, "source": source}


@dataclass
class Cluster:
    """The running pieces of one benchmark run."""

    sftp: Sftp
    env: dict[str, str]
    workers: Workers
    data_dir: Path
    out_dir: Path
    generation: int = 0  # of worker processes, each with its own log folder

    @property
    def database_url(self) -> str:
        return self.env["DX_DATABASE_URL"]

    def use_workers(self, n: int) -> list[int]:
        """Exactly ``n`` fresh worker processes, consuming; returns their pids."""
        if len(self.workers.procs) != n:
            self.workers.stop_all()
            self.generation += 1
            self.workers.logdir = self.out_dir / f"workers-{self.generation}"
            self.workers.logdir.mkdir()
            self.workers.start(n)
            deadline = time.monotonic() + 60
            while not all(p.exists() and b"worker.started" in p.read_bytes() for p in self.worker_logs):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"workers did not start; see {self.out_dir}")
                time.sleep(0.1)
        return [p.pid for p in self.workers.procs]

    @property
    def worker_logs(self) -> list[Path]:
        """The log file of each running worker."""
        return [self.workers.logdir / f"worker-{i}.log" for i in range(len(self.workers.procs))]

    def source(self, name: str, rows: int, *, seed: int = 7, start: int = 0) -> Path:
        """A generated contact file (cached in data_dir), placed at ``in/<name>`` on the SFTP server:
        CSV, or XML if ``name`` ends in ``.xml``."""
        xml = name.endswith(".xml")
        cached = self.data_dir / f"contacts-{rows}-s{seed}-k{start}.{'xml' if xml else 'csv'}"
        if not cached.exists():
            tmp = cached.with_suffix(".tmp")
            (write_contacts_xml if xml else write_contacts)(tmp, rows, seed=seed, start=start)
            tmp.replace(cached)
        placed = self.sftp.root / "in" / name
        placed.parent.mkdir(parents=True, exist_ok=True)
        placed.unlink(missing_ok=True)
        os.link(cached, placed)
        self.sftp.adopt(placed)
        return cached

    def dx_run(self, scenario: str, module: str, rows: int, note: str = "") -> tuple[Sample, dict[str, Any]]:
        """Run ``dx run MODULE --wait`` as a user does, timed from spawn to exit (``process_s``); the run's
        own time (``wall_s``) is its row's request to report: created_at to email_sent_at. ``finished_at``
        is not the end: it is the now() of the reduce's transaction, i.e. when the reduce began. The row
        gains lead_s, spawn to created_at, and tail_s, email_sent_at to the process's exit."""
        pids = [p.pid for p in self.workers.procs]
        for pid in pids:
            reset_peak(pid)
        log = self.out_dir / "dx-run.log"
        with psycopg.connect(self.database_url, autocommit=True) as conn, open(log, "ab") as out:
            last = conn.execute("SELECT coalesce(max(id), 0) FROM dx.runs").fetchone()
            with cpu() as used:
                spawned, started = time.time(), time.monotonic()  # time(): PostgreSQL's clock, on this machine
                proc = subprocess.run([str(DX), "run", module, "--wait", "--requested-by", "bench"],
                                      env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, timeout=3600)
                process_s, exited = time.monotonic() - started, time.time()
                ids = conn.execute("SELECT id FROM dx.runs WHERE module = %s AND id > %s",
                                   (module, last[0] if last else 0)).fetchall()
                if len(ids) != 1:
                    raise RuntimeError(f"`dx run {module} --wait` exited with {proc.returncode} and made "
                                       f"{len(ids)} runs; see {log}")
                run_id = ids[0][0]
                while True:  # the process waits for the run's end; its report follows
                    row = conn.execute("SELECT email_sent_at IS NOT NULL FROM dx.runs WHERE id = %s",
                                       (run_id,)).fetchone()
                    if row and row[0]:
                        break
                    if time.monotonic() - started > 3600:
                        raise RuntimeError(f"run {run_id} sent no report within an hour")
                    time.sleep(POLL_S)
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            run = cur.execute(
                "SELECT *, extract(epoch FROM email_sent_at - created_at)::float8 AS own_s,"
                " extract(epoch FROM created_at)::float8 AS created_epoch,"
                " extract(epoch FROM email_sent_at)::float8 AS reported_epoch,"
                " extract(epoch FROM started_at - created_at) AS queued_s,"
                " extract(epoch FROM planned_at - started_at) AS plan_s,"
                " extract(epoch FROM finished_at - planned_at) AS chunks_s,"  # finished_at: reduce's start (now())
                " extract(epoch FROM email_sent_at - finished_at) AS reduce_s FROM dx.runs WHERE id = %s",
                (run_id,)).fetchone()
        assert run is not None
        run["lead_s"], run["tail_s"] = run["created_epoch"] - spawned, exited - run["reported_epoch"]
        if run["status"] not in ("completed", "completed_with_errors"):
            raise RuntimeError(f"run {run_id} of {module} ended {run['status']}: {run['error_message']}")
        peaks = [peak_mb(p) for p in pids]
        tool = f"dx ({len(pids)} workers)"
        sample = Sample(scenario, tool, rows, run["own_s"], peaks, note, used.busy_s, process_s, used.by_kind,
                        used.worker_threads)
        return sample, run


@contextmanager
def cluster(data_dir: Path, out_dir: Path, modules: list[dict[str, Any]]) -> Iterator[Cluster]:
    """Start sshd, a private database and vhost, apply the config; stop everything at the end."""
    from dx.cli import main

    with ExitStack() as stack:
        sftp = stack.enter_context(running_sshd())
        smtp = Smtp()  # the reports go out over SMTP, as in a cluster (a worker refuses to start without)
        smtp.start()
        stack.callback(smtp.stop)
        home = out_dir / "home"
        env = stack.enter_context(private_services(f"dx_bench_{os.getpid()}", home,
                                                   {"DX_SECRET_BENCH_SFTP_KEY": sftp.private_key,
                                                    "DX_SMTP_URL": smtp.url}))
        cfg = out_dir / "config.yaml"
        cfg.write_text(config(sftp, modules))
        if main(["apply", "-f", str(cfg)]) != 0:
            raise RuntimeError(f"dx apply refused {cfg}")
        workers = Workers(env, out_dir)
        stack.callback(workers.stop_all)
        yield Cluster(sftp, env, workers, data_dir, out_dir)
