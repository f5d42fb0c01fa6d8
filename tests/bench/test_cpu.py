"""The bench's CPU breakdown: what kind each process is, and each one's seconds, those that ended too."""

from __future__ import annotations

import os

from bench.measure import Proc, _attribute, process_kind, thread_kind, threads_attributed


def test_processes_are_named_by_their_role():
    assert process_kind("python", ["/venv/bin/python", "/venv/bin/dx", "worker"]) == "dx worker"
    assert process_kind("dx", ["/venv/bin/dx", "run", "m", "--wait"]) == "dx run"
    assert process_kind("postgres", ["postgres: 15/main: dx dx_bench 127.0.0.1(5) COPY"]) == "postgres backend"
    assert process_kind("postgres", ["postgres: 15/main: parallel worker for PID 7"]) == "postgres parallel worker"
    assert process_kind("postgres", ["postgres: checkpointer"]) == "postgres checkpointer"
    assert process_kind("kworker/u8:0-writeback", []) == "kernel threads"
    assert process_kind("sshd", ["sshd: bench [priv]"]) == "sshd"


def test_a_process_that_ended_counts_what_its_parent_reaped_beyond_its_last_read():
    # Given a worker that ran throughout, a backend last read at 1.0 s that ended at 1.3 s, one never
    # read at all (0.2 s), both reaped by the postmaster, and the bench's own process
    me = os.getpid()
    kinds = {(10, "a"): "dx worker", (20, "b"): "postgres", (21, "c"): "postgres backend", (me, "d"): "python"}
    first = {(10, "a"): Proc(1, 5.0, 0.0), (20, "b"): Proc(1, 1.0, 3.0), (me, "d"): Proc(1, 9.0, 0.0)}
    last = {**first, (10, "a"): Proc(1, 7.5, 0.0), (21, "c"): Proc(20, 1.0, 0.0)}
    final = {(10, "a"): Proc(1, 7.5, 0.0), (20, "b"): Proc(1, 1.0, 4.5), (me, "d"): Proc(1, 9.5, 0.0)}
    by_kind: dict[str, float] = {}
    # When attributed
    _attribute(by_kind, kinds, first, {**last, (me, "d"): final[(me, "d")]}, final)
    # Then the worker's 2.5 s count, the backends' 1.3 + 0.2 s, and not the bench's own
    assert by_kind == {"dx worker": 2.5, "postgres backend": 1.5}


def test_a_worker_s_threads_are_told_apart_by_their_os_names():
    assert thread_kind("dx-actor") == "actors"
    assert thread_kind("dx-parse") == "parse"
    assert thread_kind("dx-ssh") == "ssh"
    assert thread_kind("polars-1") == thread_kind("async-executor-") == "polars"
    assert thread_kind("python") == thread_kind("dx-heartbeat") == "other"


def test_what_the_workers_spent_beyond_their_threads_reads_is_other():
    # Given an actor thread read from 1.0 to 3.0 s, a parse thread born during the run and last read at
    # 0.8 s, and the workers' processes 3.5 s in all
    first = {(11, "a"): ("actors", 1.0)}
    last = {(11, "a"): ("actors", 3.0), (12, "b"): ("parse", 0.8)}
    # When attributed / Then each thread counts its part, and the 0.7 s nobody read are "other"
    got = threads_attributed(first, last, 3.5)
    assert got.keys() == {"actors", "parse", "other"}
    assert (got["actors"], got["parse"], round(got["other"], 6)) == (2.0, 0.8, 0.7)
