"""A worker's threads by their OS names: what ``top -H`` and the benchmark's CPU per thread see."""

from __future__ import annotations

import os
from pathlib import Path

from tests.integration.procs import start, stop, until


def _os_names(pid: int) -> set[str]:
    names = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.add((task / "comm").read_text().rstrip("\n"))
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return names


def test_a_worker_s_threads_are_named_for_the_operating_system(cluster_env, tmp_path):
    # Given: a dx worker with one actor thread
    log = tmp_path / "worker.log"
    worker = start(["worker", "--threads", "1"], {**os.environ, **cluster_env}, log)
    try:
        # When: it has started
        until(lambda: "worker.started" in log.read_text(errors="replace"), "the worker started")
        names = _os_names(worker.pid)
    finally:
        stop(worker, log)
    # Then: dramatiq's threads and dx's own carry their names: the one running actors, those taking
    # messages off the queues, the heartbeat
    assert {"dx-actor", "dx-consumer", "dx-heartbeat"} <= names, names
