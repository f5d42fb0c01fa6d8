"""The watchdog: no run stays queued or running for ever.

Run by the scheduler's leader (``dx.scheduler.loop``) every few seconds. It
watches the runs that go on: running ones, and queued ones whose plan was
sent (no outbox row). A run's progress is its latest sign of life: created,
started, planned, a chunk's result, a worker's beat (a worker holds one of its
messages: ``dx.workers.heartbeat``) or the watchdog's last action on it.

- **Stalled**: no progress for DX_STALL_S while no stage message waits in
  RabbitMQ (the run's message is then neither waiting nor held: it was lost,
  for example with a broker that restarted). The run is re-driven: the
  missing stage is sent again, as its state says: the plan (queued, or not
  planned yet: a plan starts again from its source), the chunks without a
  result, or the reduce once every chunk is done. Each stage is idempotent.
  ``dx.runs.redrives`` counts the re-drives.
- **Given up**: a stalled run re-driven DX_MAX_REDRIVES times already, or a
  running run older than DX_RUN_TIMEOUT_S (whatever holds it), is sent to
  ``run_timed_out``, which ends it ``timed_out`` with RUN_TIMED_OUT through the
  usual end of a run (e-mail, overlap released, file left in place).

The watchdog acts on a run at most once per DX_STALL_S (``redriven_at``).
Every action is logged (``run.redriven``, ``run.timing_out``).
"""

from __future__ import annotations

from typing import Any

import dramatiq.errors
import pika.exceptions
import psycopg
import structlog

from dx.scheduler.metrics import queue_stats
from dx.shared import db, messages
from dx.shared.outbox import ACTIVE
from dx.shared.runs import RunStatus
from dx.shared.settings import Settings

log = structlog.get_logger(__name__)
#: The queues where a run's message may wait: each stage's, and its retries' (.DQ).
STAGE_QUEUES = (*messages.QUEUES, *(f"{q}.DQ" for q in messages.QUEUES))
#: What a send raises while the broker is down.
SEND_ERRORS = (dramatiq.errors.BrokerError, pika.exceptions.AMQPError, OSError)
#: How long the watchdog waits for a run's row lock (a stage holding it is working on the run).
LOCK_TIMEOUT_MS = 1000

#: The runs to act on: stalled, or over the run time limit and not acted on within DX_STALL_S.
CANDIDATES = """
SELECT r.id, r.status, r.planned_at, r.n_chunks, r.plan_attempt, r.redrives,
       coalesce(r.definition->'module'->>'kind', m.kind) AS kind,
       greatest(r.created_at, r.started_at, r.planned_at, r.redriven_at, b.beat_at,
                (SELECT max(c.finished_at) FROM dx.chunk_results c WHERE c.run_id = r.id))
         < now() - make_interval(secs => %(stall_s)s) AS stalled,
       (%(timeout_s)s > 0 AND r.status = 'running'
         AND r.started_at < now() - make_interval(secs => %(timeout_s)s)) AS overdue,
       round(extract(epoch FROM now() - r.started_at)) AS running_s
FROM dx.runs r JOIN dx.modules m ON m.id = r.module LEFT JOIN dx.run_beats b ON b.run_id = r.id
WHERE r.status = ANY(%(active)s)
  AND NOT EXISTS (SELECT 1 FROM dx.run_outbox o WHERE o.run_id = r.id)
  AND (r.redriven_at IS NULL OR r.redriven_at < now() - make_interval(secs => %(stall_s)s))
ORDER BY r.id"""


def watch(conn: db.Conn, settings: Settings) -> None:
    """One round on the leader's connection (autocommit): re-drive the stalled runs, time out those given
    up, forget the beats of ended runs."""
    conn.execute("DELETE FROM dx.run_beats b WHERE NOT EXISTS"
                 " (SELECT 1 FROM dx.runs r WHERE r.id = b.run_id AND r.status = ANY(%s))", (list(ACTIVE),))
    rows = conn.execute(CANDIDATES, {"stall_s": settings.stall_s, "timeout_s": settings.run_timeout_s,
                                     "active": list(ACTIVE)}).fetchall()
    rows = [r for r in rows if r["stalled"] or r["overdue"]]
    if not rows:
        return
    idle = any(r["stalled"] for r in rows) and _queues_idle(settings)
    for row in rows:
        if row["overdue"]:
            _time_out(conn, row, f"the run was still running after {row['running_s']:.0f} s, longer than "
                                 f"DX_RUN_TIMEOUT_S={settings.run_timeout_s:g}")
        elif row["stalled"] and idle and row["redrives"] >= settings.max_redrives:
            _time_out(conn, row, f"the run made no progress for {settings.stall_s:g} s (DX_STALL_S) after "
                                 f"{row['redrives']} re-drives (DX_MAX_REDRIVES={settings.max_redrives})")
        elif row["stalled"] and idle:
            _redrive(conn, row, settings)


def _queues_idle(settings: Settings) -> bool:
    """Whether no stage message waits in the broker: a stalled run's message is then lost, not queued
    behind others. False when the broker cannot tell (the next round asks again)."""
    if settings.broker_url is None:  # embedded: the queues are this process's broker's
        queues = getattr(messages.broker(), "queues", {})
        return all(queues[q].qsize() == 0 for q in STAGE_QUEUES if q in queues)
    try:
        stats = queue_stats(settings.broker_url, STAGE_QUEUES)
    except (pika.exceptions.AMQPError, OSError) as exc:
        log.warning("watchdog.broker_unreachable", error=str(exc))
        return False
    return all(ready == 0 for ready, _ in stats.values())


def _acted(conn: db.Conn, row: dict[str, Any], redrive: bool) -> bool:
    """In the caller's transaction: note the action on the run (a re-drive counts); False if the run
    moved on meanwhile or a stage holds its row (it is working on it)."""
    conn.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
    try:
        done = conn.execute("UPDATE dx.runs SET redriven_at = now(), redrives = redrives + %s"
                            " WHERE id = %s AND status = %s RETURNING redrives",
                            (int(redrive), row["id"], row["status"])).fetchone()
    except psycopg.errors.LockNotAvailable:
        return False
    return done is not None


def _redrive(conn: db.Conn, row: dict[str, Any], settings: Settings) -> None:
    """Send the run's missing stage again, and count it."""
    run_id, stages = row["id"], messages.STAGES_OF[row["kind"]]
    missing: list[int] = []
    if row["status"] == RunStatus.RUNNING.value and row["planned_at"] is not None:
        missing = [r["chunk_no"] for r in conn.execute(
            "SELECT n AS chunk_no FROM generate_series(0, %s - 1) n WHERE NOT EXISTS"
            " (SELECT 1 FROM dx.chunk_results c WHERE c.run_id = %s AND c.chunk_no = n) ORDER BY n",
            (row["n_chunks"], run_id))]
    try:
        with conn.transaction():
            if not _acted(conn, row, redrive=True):
                return
            if row["status"] == RunStatus.QUEUED.value or row["planned_at"] is None:
                stage = "plan"
                messages.send(stages.plan, run_id=run_id)
            elif missing:
                stage = "chunk"
                messages.resend_chunks(stages, run_id, missing, row["plan_attempt"] or None)
            else:
                stage = "reduce"
                messages.send(stages.reduce, run_id=run_id)
    except SEND_ERRORS as exc:  # the broker is down: the next round tries again
        log.warning("watchdog.send_failed", run=run_id, error=str(exc))
        return
    log.warning("run.redriven", run=run_id, stage=stage, chunks=missing or None, redrives=row["redrives"] + 1,
                stall_s=settings.stall_s)


def _time_out(conn: db.Conn, row: dict[str, Any], reason: str) -> None:
    """Send the run to ``run_timed_out``, which ends it timed_out."""
    try:
        with conn.transaction():
            if not _acted(conn, row, redrive=False):
                return
            messages.send(messages.RUN_TIMED_OUT, run_id=row["id"], reason=reason)
    except SEND_ERRORS as exc:
        log.warning("watchdog.send_failed", run=row["id"], error=str(exc))
        return
    log.warning("run.timing_out", run=row["id"], redrives=row["redrives"], reason=reason)
