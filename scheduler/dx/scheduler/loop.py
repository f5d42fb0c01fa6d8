"""The scheduler loop: leader lease, fire claims, overlap policy, auto-pause.

Every replica ticks; only the holder of the lease row ``dx.scheduler_lease``
(renewed each tick, expiring after DX_SCHEDULER_LEASE_S on the database's
clock) does the work, so replicas do not race. Exactly-once does not rest on
the lease: each fire inserts its claim row (UNIQUE (module, due_at)) in the
same transaction as its run and outbox row, so a stale leader that still
ticks can only find the claim taken. A crash after that commit leaves the
outbox row, which the leader's sweeper sends (dx.shared.outbox).

Per tick, the leader: moves the cursor of paused modules, and of a disabled
tenant's, to now (such periods are never back-filled), fires what is due for
active ones (a schedule without a time zone in its tenant's; misfire
grace and coalescing: dx.scheduler.schedule.due), sends ready outbox rows
(overlap ``queue`` runs wait there for their predecessor), every few seconds
pauses modules whose last ``max_failures`` ended runs all failed, and runs the
watchdog, which re-drives or times out the runs that stalled
(dx.scheduler.watchdog).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import structlog

from dx.scheduler.clock import Clock
from dx.scheduler.requests import active_run, create_queued_run, dispatch
from dx.scheduler.schedule import due, schedule_of
from dx.scheduler.watchdog import watch
from dx.shared import db, mail
from dx.shared.catalog import load_module
from dx.shared.config import ScheduleCfg
from dx.shared.cron import Schedule
from dx.shared.errors import ErrorCode
from dx.shared.runs import RunStatus, Trigger, create_run, finish
from dx.shared.settings import Settings, get_settings

log = structlog.get_logger(__name__)
#: Real seconds between two checks for modules to auto-pause.
FAILURE_CHECK_S = 2.0
#: Real seconds at most between two rounds of the watchdog (more often when DX_STALL_S is short).
WATCH_S = 5.0
#: Statuses that end a run by itself (skipped and aborted runs neither fail nor succeed).
ENDED = ("completed", "completed_with_errors", "failed", "timed_out")
FAILED = ("failed", "timed_out")


class Scheduler:
    """One replica: ``tick()`` once, or ``run(stop)`` until the event is set."""

    def __init__(self, settings: Settings | None = None, clock: Clock | None = None,
                 holder: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.clock = clock or Clock.from_settings(self.settings)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.leader = False
        self._conn: db.Conn | None = None
        # module -> (config text, cursor, next due time): skips recomputing until something changes
        self._next: dict[str, tuple[str, datetime, datetime | None]] = {}
        self._compiled: dict[str, tuple[str, ScheduleCfg, Schedule]] = {}
        self._failures_checked = 0.0
        self._watched = 0.0
        self.beat = time.monotonic()  # of the loop's last round
        self.problem: str | None = None  # why the last tick failed

    def _connection(self) -> db.Conn:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.settings, autocommit=True)
        return self._conn

    def run(self, stop: threading.Event) -> None:
        """Tick every DX_SCHEDULER_TICK_S until ``stop`` is set; then hand the lease over."""
        log.info("scheduler.started", holder=self.holder, tick_s=self.settings.scheduler_tick_s)
        while not stop.is_set():
            self.beat = time.monotonic()
            try:
                self.tick()
                self.problem = None
            except (psycopg.Error, OSError) as exc:  # a service restarting: the next tick tries again
                log.warning("scheduler.tick_failed", error=str(exc))
                self.problem = f"tick failed: {type(exc).__name__}"
                self.close()
            except Exception as exc:
                log.exception("scheduler.tick_failed")
                self.problem = f"tick failed: {type(exc).__name__}"
                self.close()
            stop.wait(self.settings.scheduler_tick_s)
        self.release()
        self.close()
        log.info("scheduler.stopped", holder=self.holder)

    def live(self) -> str | None:
        """Liveness: the loop went round within ten ticks (or a minute, whichever is longer)."""
        late = time.monotonic() - self.beat
        return f"no tick for {late:.0f} s" if late > max(60.0, 10 * self.settings.scheduler_tick_s) else None

    def ready(self) -> str | None:
        """Readiness: the last tick reached PostgreSQL."""
        return self.problem

    def close(self) -> None:
        """Close the database connection (reopened by the next tick)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def release(self) -> None:
        """Give the lease up so that a standby replica takes over at once."""
        try:
            self._connection().execute(
                "UPDATE dx.scheduler_lease SET expires_at = '-infinity' WHERE name = 'scheduler' AND holder = %s",
                (self.holder,))
        except psycopg.Error as exc:
            log.warning("scheduler.release_failed", error=str(exc))
        self.leader = False

    def _acquire(self, conn: db.Conn) -> bool:
        row = conn.execute(
            "UPDATE dx.scheduler_lease SET expires_at = now() + make_interval(secs => %(lease)s),"
            " acquired_at = CASE WHEN holder = %(me)s THEN acquired_at ELSE now() END, holder = %(me)s"
            " WHERE name = 'scheduler' AND (holder = %(me)s OR expires_at < now()) RETURNING holder",
            {"me": self.holder, "lease": self.settings.scheduler_lease_s}).fetchone()
        leader = row is not None
        if leader != self.leader:
            log.info("scheduler.leader" if leader else "scheduler.standby", holder=self.holder)
            self._next.clear()  # another leader may have moved cursors meanwhile
        self.leader = leader
        return leader

    def tick(self) -> None:
        """One round: renew the lease; as leader, fire what is due and send ready runs."""
        conn = self._connection()
        if not self._acquire(conn):
            return
        now = self.clock.now()
        # Paused modules, and a disabled tenant's: their due times pass unfired and are not back-filled.
        conn.execute("UPDATE dx.schedule_state s SET cursor_at = %s FROM dx.modules m JOIN dx.tenants t"
                     " ON t.id = m.tenant WHERE m.id = s.module AND (m.paused OR NOT t.enabled)"
                     " AND s.cursor_at < %s", (now, now))
        rows = conn.execute(
            "SELECT m.id, m.tenant, m.config, s.cursor_at, t.timezone AS tenant_timezone FROM dx.modules m"
            " JOIN dx.tenants t ON t.id = m.tenant LEFT JOIN dx.schedule_state s ON s.module = m.id"
            " WHERE NOT m.paused AND t.enabled AND jsonb_typeof(m.config->'schedule') = 'object'"
            " ORDER BY m.id").fetchall()
        for row in rows:
            self._module_tick(conn, row, now)
        dispatch()
        if time.monotonic() - self._failures_checked >= FAILURE_CHECK_S:
            self._failures_checked = time.monotonic()
            self.auto_pause()
        if time.monotonic() - self._watched >= min(WATCH_S, self.settings.stall_s / 2):
            self._watched = time.monotonic()
            watch(conn, self.settings)

    def _schedule(self, module: str, text: str, config: dict[str, Any],
                  tenant_timezone: str | None) -> tuple[ScheduleCfg, Schedule]:
        cached = self._compiled.get(module)
        if cached is None or cached[0] != text:
            cfg = schedule_of(config)
            assert cfg is not None
            cached = self._compiled[module] = (text, cfg, cfg.compile(tenant_timezone))
        return cached[1], cached[2]

    def _module_tick(self, conn: db.Conn, row: dict[str, Any], now: datetime) -> None:
        module, cursor = row["id"], row["cursor_at"]
        # the tenant's time zone is part of it: a schedule without one follows a change of the tenant's
        text = json.dumps([row["config"]["schedule"], row["tenant_timezone"]], sort_keys=True)
        if cursor is None:  # first sight: fire times from now on
            conn.execute("INSERT INTO dx.schedule_state (module, cursor_at) VALUES (%s, %s)"
                         " ON CONFLICT (module) DO NOTHING", (module, now))
            return
        cached = self._next.get(module)
        if cached and cached[:2] == (text, cursor) and (cached[2] is None or cached[2] > now):
            return
        cfg, compiled = self._schedule(module, text, row["config"], row["tenant_timezone"])
        decision = due(compiled, cfg.misfire_grace_s, cursor, now)
        if decision.fire is not None:
            self._fire(conn, row, cfg, decision.fire, decision.coalesced)
            cursor = max(cursor, decision.fire)
        self._next[module] = (text, cursor, next(compiled.fires(max(cursor, now)), None))

    def _fire(self, conn: db.Conn, row: dict[str, Any], cfg: ScheduleCfg, due_at: datetime,
              coalesced: tuple[datetime, ...]) -> None:
        """Claim the due time and create its run, skipped run or queued run, in one transaction."""
        module, tenant = row["id"], row["tenant"]
        with conn.transaction():
            conn.execute("INSERT INTO dx.schedule_state (module, cursor_at) VALUES (%s, %s) ON CONFLICT (module)"
                         " DO UPDATE SET cursor_at = GREATEST(dx.schedule_state.cursor_at, EXCLUDED.cursor_at)",
                         (module, due_at))
            claimed = conn.execute(
                "INSERT INTO dx.fire_claims (module, due_at, outcome, claimed_by) VALUES (%s, %s, 'fired', %s)"
                " ON CONFLICT ON CONSTRAINT fire_claims_once DO NOTHING RETURNING due_at",
                (module, due_at, self.holder)).fetchone()
            if claimed is None:
                log.info("scheduler.already_claimed", module=module, due_at=due_at.isoformat())
                return
            for earlier in coalesced:
                conn.execute("INSERT INTO dx.fire_claims (module, due_at, outcome, claimed_by)"
                             " VALUES (%s, %s, 'coalesced', %s) ON CONFLICT ON CONSTRAINT fire_claims_once"
                             " DO NOTHING", (module, earlier, self.holder))
            active = active_run(conn, module)
            if active is not None and cfg.overlap == "forbid":
                zone = ZoneInfo(cfg.zone(row["tenant_timezone"]))
                run_id, outcome = create_run(conn, tenant, module, Trigger.SCHEDULE, None, due_at), "skipped"
                finish(conn, run_id, RunStatus.SKIPPED, error_code=ErrorCode.OVERLAP_FORBIDDEN.value,
                       error_message=f"run {active['id']} was still {active['status']} at the fire time "
                                     f"{due_at.astimezone(zone).isoformat()} (overlap: forbid)")
            else:
                after = active["id"] if active is not None and cfg.overlap == "queue" else None
                run_id = create_queued_run(conn, tenant, module, Trigger.SCHEDULE, None, due_at=due_at,
                                           after_run=after)
                outcome = "fired"
            conn.execute("UPDATE dx.fire_claims SET run_id = %s, outcome = %s WHERE module = %s AND due_at = %s",
                         (run_id, outcome, module, due_at))
        log.info("scheduler.fired", module=module, due_at=due_at.isoformat(), run=run_id, outcome=outcome,
                 coalesced=len(coalesced))

    def auto_pause(self) -> None:
        """Pause each module whose last ``max_failures`` ended runs all failed, and say so by e-mail."""
        conn = self._connection()
        rows = conn.execute(
            "SELECT m.id, m.tenant, (m.config->'schedule'->>'max_failures')::int AS n FROM dx.modules m"
            " LEFT JOIN dx.schedule_state s ON s.module = m.id"
            " WHERE NOT m.paused AND jsonb_typeof(m.config->'schedule'->'max_failures') = 'number'"
            "   AND (SELECT count(*) FILTER (WHERE r.status = ANY(%(failed)s)) FROM"
            "        (SELECT status FROM dx.runs r WHERE r.module = m.id AND r.status = ANY(%(ended)s)"
            "         AND r.created_at > coalesce(s.failures_since, '-infinity')"
            "         ORDER BY r.id DESC LIMIT (m.config->'schedule'->>'max_failures')::int) r)"
            "       = (m.config->'schedule'->>'max_failures')::int",
            {"failed": list(FAILED), "ended": list(ENDED)}).fetchall()
        for row in rows:
            with conn.transaction():
                paused = conn.execute("UPDATE dx.modules SET paused = true, updated_at = now()"
                                      " WHERE id = %s AND NOT paused RETURNING id", (row["id"],)).fetchone()
                conn.execute("UPDATE dx.schedule_state SET auto_paused_at = now() WHERE module = %s", (row["id"],))
                failed = conn.execute("SELECT id, status, error_code, error_message FROM dx.runs WHERE module = %s"
                                      " AND status = ANY(%s) ORDER BY id DESC LIMIT %s",
                                      (row["id"], list(ENDED), row["n"])).fetchall()
                recipients = list(load_module(conn, row["id"]).notify)
            if paused is None:
                continue
            log.warning("scheduler.auto_paused", module=row["id"], failed_runs=[r["id"] for r in failed])
            if recipients:
                msg = mail.compose_paused(self.settings, row["id"], row["tenant"], failed, recipients)
                mail.send(self.settings, msg, name=f"paused-{row['id']}-{failed[0]['id']}")

