"""Every run ends: a lost reduce is sent again, a stalled run is re-driven, a hopeless one times out.

Messages are lost as a broker restart loses them: by purging this session's
private RabbitMQ vhost (the shared broker is never restarted). Workers are
separate ``dx worker`` processes; the scheduler's leader is ticked in this
process, with a short DX_STALL_S.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pika
import pytest
import structlog

from dx.cli import main, wait_for
from dx.devkit.generate import contacts
from dx.scheduler.loop import Scheduler
from dx.scheduler.requests import request_run
from dx.shared import db
from dx.shared.messages import EXPORT_CHUNK, QUEUES, REDUCE_QUEUE, send
from dx.shared.runs import Trigger, get_run
from dx.shared.settings import get_settings
from tests.integration.helpers import apply, config, export_config, seed, table, tables_left, text_of
from tests.integration.procs import until
from tests.integration.scheduling import FixedClock, queue_depth, runs_of

pytestmark = pytest.mark.timeout(240)
#: The stall, in seconds, of these tests' scheduler and workers (the workers beat four times within it).
STALL_S = 2.0
OLD = [("old@example.com", "Old", 1)]


@pytest.fixture
def alone(cluster_env):
    """No other test's run goes on, and no message waits: the watchdog here sees this test's runs only."""
    with db.transaction() as conn:
        conn.execute("DELETE FROM dx.run_outbox")
        conn.execute("UPDATE dx.runs SET status = 'aborted', finished_at = now()"
                     " WHERE status IN ('queued', 'running')")
    _purge(cluster_env["DX_BROKER_URL"], *QUEUES, *(f"{q}.DQ" for q in QUEUES))
    made: list[Scheduler] = []

    def scheduler(**settings: Any) -> Scheduler:
        s = Scheduler(dataclasses.replace(get_settings(), stall_s=STALL_S, **settings),
                      clock=FixedClock(datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC)), holder="pytest-runs-end")
        made.append(s)
        return s

    yield scheduler
    for s in made:
        s.release()
        s.close()


def _purge(broker_url: str, *queues: str) -> None:
    """Lose the messages waiting in these queues, as a broker that restarts loses them."""
    with pika.BlockingConnection(pika.URLParameters(broker_url)) as conn:
        for queue in queues:
            channel = conn.channel()
            try:
                channel.queue_purge(queue)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:  # not declared yet: nothing waits there
                    raise


def _workers(workers, cluster_env, n: int = 2, threads: int = 1) -> None:
    workers.env = {**cluster_env, "DX_STALL_S": str(STALL_S)}  # they beat within the stall
    workers.start(n, threads)


def _source(tenant: str, sshd, n: int, seed_no: int = 5) -> tuple[str, dict[str, tuple[Any, ...]]]:
    """A file of ``n`` contacts on the SFTP server, and the table it makes."""
    frame = contacts(n, seed=seed_no).select("email", "first_name", "points", "birth_date")
    path = f"{tenant}/contacts.csv"
    sshd.put(path, frame.write_csv().encode())
    expected = {r["email"]: (r["first_name"], int(r["points"]), date(*map(int, reversed(r["birth_date"].split("/")))))
                for r in frame.iter_rows(named=True)}
    return path, expected


def _module(tenant: str, sshd, tmp_path, mode: str, path: str, settle_s: float = 0, **extra: Any) -> str:
    module = f"{tenant}-{mode}"
    apply(config(tenant, sshd, [{"id": module, "mode": mode, "chunk_bytes": 40_000,
                                 "source": {"path": path, "settle_s": settle_s}, **extra}]), tmp_path)
    seed(tenant, OLD)
    return module


def _planned(module: str, broker_url: str) -> dict[str, Any]:
    """A run of the module, planned here (its chunk messages, and a streamed run's reduce, wait in RabbitMQ)."""
    from dx.workers.imports.plan import plan

    run_id = request_run(module, Trigger.MANUAL, "pytest")
    _purge(broker_url, "dx.plan")
    plan(run_id)
    with db.connect() as conn:
        run = get_run(conn, run_id)
    assert run is not None and run["planned_at"] is not None and run["n_chunks"] >= 3
    return dict(run)


def _all_chunks_here(run: dict[str, Any]) -> None:
    """Apply every chunk of the run in this process, as workers whose acknowledgements are then lost."""
    from dx.workers.imports.chunk import chunk

    for i in range(run["n_chunks"]):
        chunk(run["id"], i, run["plan_attempt"] or None)


def _tick_until_ended(scheduler: Scheduler, run_id: int, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        scheduler.tick()
        with db.connect() as conn:
            run = get_run(conn, run_id)
        assert run is not None
        if run["status"] not in ("queued", "running"):
            return dict(run)
        assert time.monotonic() < deadline, f"run {run_id} still {run['status']} after {timeout_s} s"
        time.sleep(0.2)


def test_chunks_delivered_again_after_their_reduce_was_lost_send_it(cluster_env, sshd, smtp, workers, tmp_path,
                                                                    alone):
    # Given: a streamed overwrite of 60,000 contacts whose every chunk committed (here), whose reduce
    # messages were lost with the broker, and whose chunk messages come again (their acks were lost)
    tenant = "lostreduce"
    path, expected = _source(tenant, sshd, 60_000)
    module = _module(tenant, sshd, tmp_path, "overwrite", path, chunk_bytes=400_000)
    run = _planned(module, cluster_env["DX_BROKER_URL"])
    _all_chunks_here(run)
    _purge(cluster_env["DX_BROKER_URL"], REDUCE_QUEUE)
    assert queue_depth(cluster_env["DX_BROKER_URL"], "dx.chunk") == run["n_chunks"]

    # When: two workers take the chunk messages (no scheduler runs)
    _workers(workers, cluster_env)
    ended = wait_for(run["id"], 60)

    # Then: a delivery that found its chunk done sent the reduce: the run completed, the table exact
    assert (ended["status"], ended["inserted"], ended["rows_read"]) == ("completed", 60_000, 60_000)
    assert table(tenant) == expected
    assert ended["redrives"] == 0
    smtp.wait_for(lambda m: f"(run {run['id']})" in m["Subject"] and "completed" in m["Subject"])


def test_an_export_chunk_delivered_again_after_its_barrier_was_lost_sends_the_reduce(cluster_env, sshd, smtp,
                                                                                    workers, tmp_path, alone):
    # Given: a Displacer run planned and its chunk written (here), whose group barrier was lost (a
    # Redis restart: no completion callback comes), and whose chunk message comes again
    from dx.workers.exports.chunk import export_chunk
    from dx.workers.exports.plan import export_plan

    tenant = "lostbarrier"
    apply(export_config(tenant, sshd, {"people": {"email": {"type": "email", "required": True}, "name": "text"}},
                        [{"id": "lostbarrier-out", "kind": "displacer", "database": "people",
                          "target": {"path": "lostbarrier/people.csv"}}]), tmp_path)
    with db.transaction() as conn:
        conn.execute('INSERT INTO "tenant_lostbarrier".people (email, name) VALUES (%s, %s), (%s, %s)',
                     ("a@x.io", "Ann", "b@x.io", "Bob"))
    broker_url = cluster_env["DX_BROKER_URL"]
    run_id = request_run("lostbarrier-out", Trigger.MANUAL, "pytest")
    _purge(broker_url, "dx.plan")
    export_plan(run_id)
    _purge(broker_url, "dx.chunk")
    export_chunk(run_id, 0)
    send(EXPORT_CHUNK, run_id=run_id, chunk_no=0)

    # When: a worker takes the chunk message (no scheduler runs)
    _workers(workers, cluster_env, n=1)
    ended = wait_for(run_id, 60)

    # Then: the delivery that found its chunk done sent the reduce: the file is delivered
    assert (ended["status"], ended["rows_exported"], ended["redrives"]) == ("completed", 2, 0)
    assert (sshd.root / "lostbarrier/people.csv").read_text().splitlines() == [
        "email,name", '"a@x.io","Ann"', '"b@x.io","Bob"']


@pytest.mark.parametrize(("lost", "mode"), [("plan", "overwrite"), ("chunks", "upsert"), ("chunks", "overwrite"),
                                            ("reduce", "upsert")])
def test_a_run_whose_message_was_lost_is_redriven_and_completes(lost, mode, cluster_env, sshd, smtp, workers,
                                                                tmp_path, alone, capsys):
    # Given: a run whose plan, chunk or reduce messages were all lost (nothing waits for it in RabbitMQ)
    tenant = f"redrive{lost}{mode}"
    path, expected = _source(tenant, sshd, 3_000, seed_no=8)
    module = _module(tenant, sshd, tmp_path, mode, path)
    if mode == "upsert":
        expected = {**expected, "old@example.com": ("Old", 1, None)}
    broker_url = cluster_env["DX_BROKER_URL"]
    if lost == "plan":
        run_id = request_run(module, Trigger.MANUAL, "pytest")
        _purge(broker_url, "dx.plan")
    else:
        run = _planned(module, broker_url)
        run_id = run["id"]
        if lost == "reduce":
            _all_chunks_here(run)
        _purge(broker_url, "dx.chunk", REDUCE_QUEUE)
    _workers(workers, cluster_env)

    # When: the scheduler's leader ticks, its watchdog seeing no progress for DX_STALL_S
    with structlog.testing.capture_logs() as logs:
        ended = _tick_until_ended(alone(), run_id)

    # Then: the missing stage was sent again, once, and the run completed with the exact table
    assert ended["status"] == "completed", ended["error_message"]
    assert table(tenant) == expected
    assert ended["redrives"] == 1
    stage = {"plan": "plan", "chunks": "chunk", "reduce": "reduce"}[lost]
    assert [(e["run"], e["stage"]) for e in logs if e["event"] == "run.redriven"] == [(run_id, stage)]
    capsys.readouterr()
    assert main(["show", str(run_id)]) == 0
    assert "re-driven 1 time after a stall" in capsys.readouterr().out


def test_a_run_that_cannot_progress_times_out_and_its_module_runs_again(cluster_env, sshd, smtp, workers,
                                                                        tmp_path, alone):
    # Given: a scheduled overwrite (overlap: forbid) whose run is planned, and a broker that loses its
    # chunk messages each time they are sent
    tenant = "timedout"
    path, expected = _source(tenant, sshd, 3_000, seed_no=9)
    module = _module(tenant, sshd, tmp_path, "overwrite", path,
                     schedule={"cron": ["0 3 * * *"], "timezone": "UTC", "overlap": "forbid"})
    broker_url = cluster_env["DX_BROKER_URL"]
    run = _planned(module, broker_url)
    _purge(broker_url, "dx.chunk", REDUCE_QUEUE)
    scheduler = alone(max_redrives=2)
    scheduler.tick()  # first sight of the schedule: it fires from 2026-06-01 00:00:30 on

    # When: the watchdog re-drives it twice, in vain, and then gives up
    with structlog.testing.capture_logs() as logs:
        def given_up() -> bool:
            scheduler.tick()
            _purge(broker_url, "dx.chunk")
            return queue_depth(broker_url, REDUCE_QUEUE) > 0  # the message that times the run out
        until(given_up, "the watchdog gives the run up", timeout_s=60)
    _workers(workers, cluster_env)
    ended = wait_for(run["id"], 60)

    # Then: the run timed out with RUN_TIMED_OUT after 2 re-drives, the old table kept, no shadow left
    assert (ended["status"], ended["error_code"], ended["redrives"]) == ("timed_out", "RUN_TIMED_OUT", 2)
    assert "after 2 re-drives" in ended["error_message"]
    assert [e["stage"] for e in logs if e["event"] == "run.redriven"] == ["chunk", "chunk"]
    assert [e["run"] for e in logs if e["event"] == "run.timing_out"] == [run["id"]]
    assert table(tenant) == {"old@example.com": ("Old", 1, None)}
    assert tables_left(tenant) == ["contacts"]
    mail = smtp.wait_for(lambda m: f"(run {run['id']})" in m["Subject"])
    assert "timed_out" in mail["Subject"] and "RUN_TIMED_OUT" in text_of(mail)
    # and its file stayed where it was
    assert (sshd.root / path).exists()

    # When: the module's next scheduled time comes
    scheduler.clock.advance(timedelta(hours=3))
    scheduler.tick()

    # Then: it fired a run (overlap released), which imports the same file
    fired = [r for r in runs_of(module) if r["trigger"] == "schedule"]
    assert [r["status"] for r in fired] != ["skipped"] and len(fired) == 1
    assert wait_for(fired[0]["id"], 60)["status"] == "completed"
    assert table(tenant) == expected
    until(lambda: not (sshd.root / path).exists(), "the run that imported the file archives it")


def test_a_run_over_its_time_limit_times_out_while_its_plan_still_works(cluster_env, sshd, smtp, workers,
                                                                         tmp_path, alone):
    # Given: a run whose plan waits 20 s for its file to settle (it holds its message: it beats)
    tenant = "overdue"
    path, _ = _source(tenant, sshd, 300)
    module = _module(tenant, sshd, tmp_path, "overwrite", path, settle_s=20)
    os.utime(sshd.root / path)  # written just now
    _workers(workers, cluster_env, n=1, threads=2)  # a thread free for the message that times it out
    run_id = request_run(module, Trigger.MANUAL, "pytest")
    until(lambda: _status(run_id) == "running", "the plan starts")

    # When: the scheduler ticks with a run time limit of 4 s
    with structlog.testing.capture_logs() as logs:
        ended = _tick_until_ended(alone(run_timeout_s=4.0), run_id, timeout_s=30)

    # Then: the run timed out, not re-driven (it made progress), saying why, with its e-mail
    assert (ended["status"], ended["error_code"], ended["redrives"]) == ("timed_out", "RUN_TIMED_OUT", 0)
    assert "DX_RUN_TIMEOUT_S=4" in ended["error_message"]
    assert not [e for e in logs if e["event"] == "run.redriven"]
    assert ended["finished_at"] - ended["started_at"] < timedelta(seconds=15)
    smtp.wait_for(lambda m: f"(run {run_id})" in m["Subject"] and "timed_out" in m["Subject"])
    # and once its plan woke up (its staging folder gone with the run), it stopped without changing
    # the run, the table or the file
    until(lambda: _plan_stopped(workers), "the plan stops", timeout_s=40)
    with db.connect() as conn:
        after = get_run(conn, run_id)
    assert after is not None and (after["status"], after["error_code"]) == ("timed_out", "RUN_TIMED_OUT")
    assert table(tenant) == {"old@example.com": ("Old", 1, None)}
    assert tables_left(tenant) == ["contacts"]
    assert (sshd.root / path).exists()


def _status(run_id: int) -> str:
    with db.connect() as conn:
        run = get_run(conn, run_id)
    assert run is not None
    return run["status"]


def _plan_stopped(workers) -> bool:
    """A worker's plan message ended: quietly (the run had ended) or failing (a terminal run stays as it is)."""
    return any(f'"{event}"' in p.read_text() for p in workers.logdir.glob("worker-*.log")
               for event in ("plan.skip", "plan.failed"))


def test_a_hung_stage_is_cut_by_its_time_limit_and_its_run_fails(cluster_env, sshd, smtp, workers, tmp_path,
                                                                 alone):
    # Given: a worker whose chunk actor never returns, with a time limit of 1 s and 1 retry
    tenant = "hung"
    path, _ = _source(tenant, sshd, 300)
    module = _module(tenant, sshd, tmp_path, "upsert", path)
    hung = tmp_path / "hung_worker.py"
    hung.write_text(HUNG_WORKER)
    with open(tmp_path / "worker-hung.log", "wb") as log:
        workers.procs.append(subprocess.Popen([sys.executable, str(hung)], env={**os.environ, **cluster_env},
                                              stdout=log, stderr=log))

    # When: a run of the module is requested
    ended = wait_for(request_run(module, Trigger.MANUAL, "pytest"), 90)

    # Then: the hung chunk was cut (twice: its try and its retry) and the run failed, not left running
    assert (ended["status"], ended["error_code"]) == ("failed", "INTERNAL_ERROR")
    assert "TimeLimitExceeded" in ended["error_message"]
    assert table(tenant) == {"old@example.com": ("Old", 1, None)}


#: A ``dx worker`` whose chunk actor blocks for ever (in short sleeps, as a loop waiting on a socket does),
#: with a time limit of 1 s and one retry.
HUNG_WORKER = """
import dataclasses, sys, time
from dx.shared import messages
messages.CHUNK = dataclasses.replace(messages.CHUNK, time_limit_ms=1000, max_retries=1, min_backoff_ms=100,
                                     max_backoff_ms=200)
from dx.workers.imports import chunk

def hangs(run_id, chunk_no, attempt=None):
    while True:
        time.sleep(0.05)

chunk.chunk = hangs
from dx.cli import main
sys.exit(main(["worker", "--threads", "1"]))
"""

