"""Timing, peak memory and machine details for the benchmark.

Peak memory is the kernel's own high-water mark of resident memory: VmHWM
of a long-running worker (reset before each measured run through
``/proc/<pid>/clear_refs``), ``ru_maxrss`` of a child that ran to its end.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

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
    cpu_by: dict[str, float] = field(default_factory=dict)  # CPU seconds per kind of process
    worker_threads: dict[str, float] = field(default_factory=dict)  # dx workers' CPU seconds per kind of thread

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



#: PostgreSQL's own processes, by the start of their title (the others serve a session).
PG_AUXILIARY = ("checkpointer", "background writer", "walwriter", "autovacuum", "logical replication",
                "parallel worker", "startup", "archiver", "stats")
#: The cluster name Debian's PostgreSQL puts in its processes' titles (``15/main: ``).
CLUSTER_NAME = re.compile(r"^\S+/\S+: ")
#: The kernel's own threads (page writeback among them), by name.
KERNEL_THREAD = re.compile(r"^(kworker|ksoftirqd|kswapd|rcu_|kdamond|jbd2|migration)")
#: The kind of a process's children, when none was seen alive.
CHILDREN_OF = {"postgres": "postgres backend"}
#: How often the CPU sampler reads /proc (a process that ends between two reads loses its last part).
CPU_POLL_S = 0.1
#: A dx worker's threads by the start of their OS names (``dx.shared.threads``; Polars names its own
#: pool and executor) -> what they do; any other thread is "other".
THREAD_KINDS = (("dx-actor", "actors"), ("dx-parse", "parse"), ("dx-fetch", "download"), ("dx-ssh", "ssh"),
                ("polars", "polars"), ("async-executor", "polars"), ("dx-consumer", "broker"))


def process_kind(name: str, argv: list[str]) -> str:
    """What a process is, for the CPU breakdown: dx's role, a PostgreSQL backend's kind, a kernel
    thread, or its name."""
    if name.startswith("python") or name == "dx":
        role = next((a for a in argv[1:] if a in ("worker", "run", "scheduler", "serve")), None)
        return f"dx {role}" if role else "python"
    if name == "postgres" and argv and argv[0].startswith("postgres: "):
        title = CLUSTER_NAME.sub("", argv[0].removeprefix("postgres: "))
        aux = next((a for a in PG_AUXILIARY if title.startswith(a)), None)
        return f"postgres {aux}" if aux else "postgres backend"
    if KERNEL_THREAD.match(name):
        return "kernel threads"
    return name


def thread_kind(name: str) -> str:
    """What a dx worker's thread does, by its OS name (``THREAD_KINDS``)."""
    return next((kind for prefix, kind in THREAD_KINDS if name.startswith(prefix)), "other")


class Proc(NamedTuple):
    """One read of a process: its parent, its own CPU seconds and those of its children it reaped."""

    ppid: int
    own: float
    reaped: float


class CpuSampler:
    """Each process's CPU seconds (user + system) read from /proc, its kind read once per process."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.kinds: dict[tuple[int, str], str] = {}  # (pid, start time) -> kind

    def read(self) -> dict[tuple[int, str], Proc]:
        out = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
                name, rest = stat[stat.find("(") + 1:stat.rfind(")")], stat[stat.rfind(")") + 2:].split()
                key = (int(entry.name), rest[19])
                if key not in self.kinds:
                    argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
                    self.kinds[key] = process_kind(name, [a.decode(errors="replace") for a in argv if a])
            except OSError:  # it ended meanwhile
                continue
            out[key] = Proc(int(rest[1]), (int(rest[11]) + int(rest[12])) / self.tick,
                            (int(rest[13]) + int(rest[14])) / self.tick)
        return out

    def read_threads(self) -> dict[tuple[int, str], tuple[str, float]]:
        """Each thread of every dx worker process seen: (thread id, start time) -> (its kind, its CPU seconds)."""
        out = {}
        workers = {pid for (pid, _), kind in self.kinds.items() if kind == "dx worker"}
        for pid in workers:
            try:
                tasks = list(os.scandir(f"/proc/{pid}/task"))
            except OSError:  # it ended
                continue
            for task in tasks:
                try:
                    stat = Path(task.path, "stat").read_text()
                except OSError:
                    continue
                name, rest = stat[stat.find("(") + 1:stat.rfind(")")], stat[stat.rfind(")") + 2:].split()
                out[(int(task.name), rest[19])] = (thread_kind(name),
                                                   (int(rest[11]) + int(rest[12])) / self.tick)
        return out


@dataclass
class Cpu:
    """What a measured block cost the machine: busy core-seconds (``machine_busy_s``, less this
    process's own: the sampling), and per kind of process (``process_kind``)."""

    busy_s: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)
    worker_threads: dict[str, float] = field(default_factory=dict)  # ``threads_attributed``


@contextmanager
def cpu() -> Iterator[Cpu]:
    """Measure the CPU the machine spends while the block runs; the Cpu is filled when it ends.

    A process that ended meanwhile was last read up to CPU_POLL_S before its end (or never, if it
    lived less): its parent's reaped-children time, read at the end, gives the rest, counted under
    the kind of the children it was seen with (a PostgreSQL postmaster's: its backends)."""
    sampler, result, done = CpuSampler(), Cpu(), threading.Event()
    first = sampler.read()
    first_threads = sampler.read_threads()
    last: dict[tuple[int, str], Proc] = {}
    last_threads: dict[tuple[int, str], tuple[str, float]] = {}

    def poll() -> None:
        while not done.wait(CPU_POLL_S):
            last.update(sampler.read())
            last_threads.update(sampler.read_threads())

    busy, own = machine_busy_s(), time.process_time()
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        final = sampler.read()
        last.update(final)
        last_threads.update(sampler.read_threads())
        result.busy_s = machine_busy_s() - busy - (time.process_time() - own)
        _attribute(result.by_kind, sampler.kinds, first, last, final)
        result.worker_threads = threads_attributed(first_threads, last_threads, result.by_kind.get("dx worker", 0.0))


def _attribute(by_kind: dict[str, float], kinds: dict[tuple[int, str], str], first: dict[tuple[int, str], Proc],
               last: dict[tuple[int, str], Proc], final: dict[tuple[int, str], Proc]) -> None:
    """CPU seconds per kind: each process's own, from its first read to its last; for those that
    ended, what their parent reaped beyond their last read."""
    me = os.getpid()
    gone: dict[int, list[tuple[int, str]]] = {}
    for key, proc in last.items():
        before = first[key].own if key in first else 0.0
        if key[0] != me and proc.own > before:
            by_kind[kinds[key]] = by_kind.get(kinds[key], 0.0) + proc.own - before
        if key not in final:
            gone.setdefault(proc.ppid, []).append(key)
    for key, proc in final.items():
        reaped = proc.reaped - (first[key].reaped if key in first else 0.0)
        children = gone.get(key[0], [])
        rest = reaped - sum(last[c].own for c in children)
        if rest > 0:
            kind = kinds[children[0]] if children else CHILDREN_OF.get(kinds[key], f"{kinds[key]} (children)")
            by_kind[kind] = by_kind.get(kind, 0.0) + rest


def threads_attributed(first: dict[tuple[int, str], tuple[str, float]], last: dict[tuple[int, str], tuple[str, float]],
                       workers_s: float) -> dict[str, float]:
    """The dx workers' CPU seconds per kind of thread, each thread's from its first read to its last;
    what the workers spent beyond those (a thread's part after its last read, when it ended between
    two reads) is "other"."""
    out: dict[str, float] = {}
    for key, (kind, seconds) in last.items():
        spent = seconds - (first[key][1] if key in first else 0.0)
        if spent > 0:
            out[kind] = out.get(kind, 0.0) + spent
    rest = workers_s - sum(out.values())
    if rest > 0:
        out["other"] = out.get("other", 0.0) + rest
    return out
