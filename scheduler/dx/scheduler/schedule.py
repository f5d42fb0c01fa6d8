"""Module schedules as the scheduler sees them: what is due, pause and resume.

``due`` is the pure decision of one tick for one module: of the due times
since the cursor, those older than the misfire grace window are dropped and
the rest fire at most once (the latest fires, earlier ones are recorded as
coalesced): a scheduler that was down does not fire a burst on restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dx.shared.config import ScheduleCfg
from dx.shared.cron import Schedule
from dx.shared.db import Conn


def schedule_of(config: dict[str, Any]) -> ScheduleCfg | None:
    """The schedule in a module's stored config (``dx.modules.config``), if any."""
    raw = config.get("schedule")
    return None if raw is None else ScheduleCfg.model_validate(raw)


@dataclass(frozen=True)
class Due:
    """What one tick does for one module."""

    fire: datetime | None
    coalesced: tuple[datetime, ...] = ()


def due(schedule: Schedule, misfire_grace_s: float, cursor: datetime, now: datetime) -> Due:
    """Due times in (cursor, now]: the latest within the grace window fires, once."""
    since = max(cursor, now - timedelta(seconds=misfire_grace_s))
    pending = []
    for instant in schedule.fires(since):
        if instant > now:
            break
        pending.append(instant)
    if not pending:
        return Due(None)
    return Due(pending[-1], tuple(pending[:-1]))


def set_paused(conn: Conn, module: str, paused: bool, now: datetime) -> bool:
    """Pause or resume a module (caller's transaction); False if there is no such module.

    Resuming moves the cursor to ``now``: the paused period is not back-filled,
    and failed runs from before count no more towards auto-pause.
    """
    row = conn.execute("UPDATE dx.modules SET paused = %s, updated_at = now() WHERE id = %s RETURNING id",
                       (paused, module)).fetchone()
    if row is None:
        return False
    if not paused:
        conn.execute(
            "INSERT INTO dx.schedule_state (module, cursor_at, failures_since) VALUES (%s, %s, now())"
            " ON CONFLICT (module) DO UPDATE SET cursor_at = GREATEST(dx.schedule_state.cursor_at, EXCLUDED.cursor_at),"
            " failures_since = now(), auto_paused_at = NULL", (module, now))
    return True


def next_fire(config: dict[str, Any], now: datetime, tenant_timezone: str | None = None) -> datetime | None:
    """The module's next fire time after ``now``, in its time zone (None: no schedule or ended); a schedule
    without a time zone is read in ``tenant_timezone`` (its tenant's, ``dx.tenants.timezone``), else UTC."""
    schedule = schedule_of(config)
    if schedule is None:
        return None
    return next(schedule.compile(tenant_timezone).fires(now), None)


def upcoming(config: dict[str, Any], start: datetime, n: int, tenant_timezone: str | None = None) -> list[datetime]:
    """The module's next ``n`` fire times after ``start`` (a naive ``start`` is read in its time zone: the
    schedule's, else ``tenant_timezone``, else UTC)."""
    schedule = schedule_of(config)
    if schedule is None:
        return []
    compiled = schedule.compile(tenant_timezone)
    if start.tzinfo is None:
        start = start.replace(tzinfo=compiled.tz)
    return compiled.next_fires(start, n)
