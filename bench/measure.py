"""Timing, peak memory and machine details for the benchmark.

Peak memory is the kernel's own high-water mark of resident memory: VmHWM
of a long-running worker (reset before each measured run through
``/proc/<pid>/clear_refs``), ``ru_maxrss`` of a child that ran to its end.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import psycopg
import pyarrow

#: How often a child's peak memory is read (its VmHWM only grows, so this loses only the last moment).
PEAK_POLL_S = 0.01


@dataclass
class Sample:
    """One measured run of one tool."""

    scenario: str
    tool: str
    rows: int
    wall_s: float
    peak_mb: list[float] = field(default_factory=list)  # per process
    note: str = ""
    busy_s: float | None = None  # core-seconds the whole machine was busy during the run
    process_s: float | None = None  # dx: the ``dx run --wait`` process, spawn to exit (wall_s: the run's own)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0

    @property
    def overhead_s(self) -> float | None:
        """What the ``dx run --wait`` process took beyond the run's own time."""
        return None if self.process_s is None else self.process_s - self.wall_s


def machine_busy_s() -> float:
    """Core-seconds the whole machine has been busy since boot: user, nice, system, irq and softirq
    time of /proc/stat (idle, iowait and time stolen by the hypervisor left out). The difference over
    a run is the CPU it cost every process (PostgreSQL, sshd, workers), plus other jobs' if any."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields)
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def reset_peak(pid: int) -> None:
    """Start a new high-water mark of the process's resident memory (Linux ≥ 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_mb(pid: int) -> float:
    """The process's peak resident memory since start or the last reset_peak, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def run_child(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None,
              stdin: str | None = None) -> tuple[float, float]:
    """Run a command to its end; (wall seconds, its peak RSS in MB). Fails on a non-zero exit.

    The peak is VmHWM read while it runs (rusage's ru_maxrss would count the
    memory of this process, which the child shares until its exec).
    """
    started = time.monotonic()
    top = 0.0
    with open(log or os.devnull, "ab") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin.encode())
            proc.stdin.close()
        while proc.poll() is None:
            try:
                top = max(top, peak_mb(proc.pid))
            except (OSError, RuntimeError):  # exiting: its status is gone or has no memory left
                pass
            time.sleep(PEAK_POLL_S)
    wall_s = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; see {log}")
    return wall_s, top


def _first(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def machine(database_url: str) -> dict[str, str]:
    """What the numbers were measured on."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT version(), current_setting('shared_buffers'),"
                           " current_setting('max_wal_size'), current_setting('synchronous_commit')").fetchone()
    assert row is not None
    pgloader = subprocess.run(["pgloader", "--version"], capture_output=True, text=True).stdout.splitlines()
    return {
        "cpu": f"{_first('/proc/cpuinfo', 'model name')} × {os.cpu_count()}",
        "memory": _first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "polars / pyarrow / psycopg": f"{pl.__version__} / {pyarrow.__version__} / {psycopg.__version__}",
        "postgresql": row[0].split(" on ")[0],
        "shared_buffers / max_wal_size / synchronous_commit": f"{row[1]} / {row[2]} / {row[3]}",
        "pgloader": pgloader[0] if pgloader else "missing",
    }


def best_median(samples: list[Sample]) -> tuple[float, float]:
    """(best, median) wall time."""
    walls = [s.wall_s for s in samples]
    return min(walls), statistics.median(walls)
