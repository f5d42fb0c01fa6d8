"""Where a dx run spends its time: py-spy on every worker, and the workers' own stage logs.

py-spy samples each worker (``--idle`` too: waiting on PostgreSQL's COPY is
time the run takes); only the samples inside an actor count. The summary
gives per stage (plan, chunk, reduce) the seconds sampled, and the functions
that hold the most of them, inclusive (dx code) and as the innermost frame
(libraries: Polars, pyarrow, psycopg, paramiko …).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: py-spy samples per second.
RATE_HZ = 100
#: A frame in py-spy's raw output: "function (path/file.py:line)".
FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")
#: The actors by the file that holds them, and paramiko's transport thread (it decrypts SFTP downloads).
STAGES = {"workers/imports/plan.py": "plan", "workers/imports/chunk.py": "chunk",
          "workers/imports/reduce.py": "reduce", "paramiko/transport.py": "sftp transport thread"}
#: What a run without py-spy is told.
MISSING = "py-spy is missing (the profile scenario needs it): pip install -e '.[bench]'"
#: dx's own files, as py-spy names them (it cuts the path at the package root: ``dx/`` may go too).
DX_FILE = re.compile(r"^(?:.*/)?(?:dx/)?(?:shared|workers|scheduler|cli|devkit)/[^/]")


def py_spy() -> str | None:
    """py-spy's path: beside this interpreter (a virtualenv not activated), else on PATH."""
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


def require() -> list[str]:
    """What is missing for a profile, said before anything is measured."""
    return [] if py_spy() else [MISSING]


@contextmanager
def sampling(pids: list[int], out_dir: Path) -> Iterator[list[Path]]:
    """py-spy record on every pid while the block runs; yields the raw output files."""
    spy = py_spy()
    if spy is None:
        raise RuntimeError(MISSING)
    files = [out_dir / f"pyspy-{pid}.txt" for pid in pids]
    procs = [subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--idle", "--format",
                               "raw", "--output", str(f), "--nonblocking"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid, f in zip(pids, files,
                                                                                                       strict=True)]
    try:
        yield files
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(60)


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for part in stack.split(";"):
        m = FRAME.match(part.strip())
        if m:
            out.append((m["fn"], m["file"]))
    return out


def summarise(files: list[Path], top: int = 12) -> str:
    """Markdown: seconds per stage, top inclusive dx functions and top innermost frames."""
    per_stage: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for f in files:
        if not f.exists():
            continue
        for line in f.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            frames = _frames(stack)
            stage = next((STAGES[k] for fn, file in frames for k in STAGES if file.endswith(k)), None)
            if stage is None:
                continue
            count = int(n)
            per_stage[stage] += count
            for name in {f"{fn} ({file})" for fn, file in frames if DX_FILE.match(file)}:
                inclusive[f"{stage}: {name}"] += count
            fn, file = frames[-1]
            leaf[f"{stage}: {fn} ({file})"] += count
    lines = ["| stage | seconds sampled (all workers) |", "| --- | ---: |"]
    lines += [f"| {s} | {c / RATE_HZ:.2f} |" for s, c in per_stage.most_common()]
    lines += ["", "Inclusive, dx functions (seconds):", "", "| function | s |", "| --- | ---: |"]
    lines += [f"| {k} | {c / RATE_HZ:.2f} |" for k, c in inclusive.most_common(top)]
    lines += ["", "Innermost frame (seconds):", "", "| function | s |", "| --- | ---: |"]
    lines += [f"| {k} | {c / RATE_HZ:.2f} |" for k, c in leaf.most_common(top)]
    return "\n".join(lines)


def stage_log(logs: list[Path], run_id: int) -> str:
    """The workers' own timings of one run: fetch, plan, each chunk."""
    rows = []
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("run") != run_id:
                continue
            if event.get("event") in ("plan.fetched", "plan.done"):
                rows.append(f"| {event['event']} | {log.stem} | {event['seconds']:.2f} s since plan start |")
            elif event.get("event") == "chunk.done":
                rows.append(f"| chunk {event['chunk']} ({event['rows']:,} rows) | {log.stem} | {event['ms'] / 1000:.2f} s |")
    return "\n".join(["| step | worker | time |", "| --- | --- | ---: |", *rows])
