"""The scheduler loop on an injectable clock, against the real PostgreSQL and RabbitMQ.

Each test ticks a ``Scheduler`` by hand while a FixedClock moves: pause and
resume, misfire grace, overlap policies, auto-pause, the outbox sweeper and
the lease between two schedulers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dx.scheduler.loop import Scheduler
from dx.scheduler.requests import create_queued_run
from dx.scheduler.schedule import set_paused
from dx.shared import db
from dx.shared.runs import RunStatus, Trigger, finish
from tests.integration.helpers import text_of
from tests.integration.scheduling import (
    FixedClock,
    claims,
    forget_tenant,
    outbox,
    queue_depth,
    runs_of,
    scheduled,
)

pytestmark = pytest.mark.timeout(60)
TENANT = "sched"
T0 = datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def sched(cluster_env, sshd, tmp_path):
    """A function that applies modules with schedules; everything of the tenant is removed afterwards."""
    made: list[Scheduler] = []

    def make(schedules):
        scheduled(TENANT, sshd, tmp_path, schedules)
        clock = FixedClock(T0)
        scheduler = Scheduler(clock=clock, holder="pytest")
        made.append(scheduler)
        scheduler.tick()  # first sight: the cursor starts at T0
        return scheduler, clock

    yield make
    for s in made:
        s.release()
        s.close()
    forget_tenant(TENANT, cluster_env["DX_BROKER_URL"])


def test_paused_periods_are_not_back_filled_on_resume(sched):
    # Given an hourly module with a grace window long enough to catch up days
    scheduler, clock = sched({"sched-pause": {"cron": ["0 * * * *"], "misfire_grace_s": 3 * 86400,
                                              "overlap": "allow"}})
    clock.advance(HOUR)
    scheduler.tick()
    # When it is paused for five hours (ticking), then resumed, then an hour passes
    with db.transaction() as conn:
        assert set_paused(conn, "sched-pause", True, clock.now())
    for _ in range(5):
        clock.advance(HOUR)
        scheduler.tick()
    with db.transaction() as conn:
        set_paused(conn, "sched-pause", False, clock.now())
    scheduler.tick()
    clock.advance(HOUR)
    scheduler.tick()
    # Then only 01:00 and 07:00 fired: the paused hours 02:00-06:00 never do
    assert [(c[0].hour, c[1]) for c in claims("sched-pause")] == [(1, "fired"), (7, "fired")]


def test_a_pause_while_no_scheduler_runs_is_not_back_filled_either(sched):
    # Given an hourly module paused, and no tick for three hours
    scheduler, clock = sched({"sched-pause2": {"cron": ["0 * * * *"], "misfire_grace_s": 86400}})
    with db.transaction() as conn:
        set_paused(conn, "sched-pause2", True, clock.now())
    clock.advance(3 * HOUR)
    # When it is resumed and the scheduler ticks
    with db.transaction() as conn:
        set_paused(conn, "sched-pause2", False, clock.now())
    scheduler.tick()
    # Then nothing fired (the grace window would otherwise catch 03:00 up)
    assert claims("sched-pause2") == []


def test_missed_fire_times_fire_once_within_the_grace_window(sched):
    # Given an hourly module with a 90-minute grace window
    scheduler, clock = sched({"sched-grace": {"cron": ["0 * * * *"], "misfire_grace_s": 5400}})
    # When the scheduler is down for five hours, then ticks twice
    clock.advance(5 * HOUR)
    scheduler.tick()
    scheduler.tick()
    # Then one run fires (05:00); 04:00 is recorded as coalesced; 01:00-03:00 are past the window
    assert [(c[0].hour, c[1]) for c in claims("sched-grace")] == [(4, "coalesced"), (5, "fired")]
    runs = runs_of("sched-grace")
    assert [(r["trigger"], r["due_at"].hour) for r in runs] == [("schedule", 5)]


def test_overlap_forbid_records_a_skipped_run_with_its_reason(sched):
    # Given an hourly module whose first run is still queued (no worker runs)
    scheduler, clock = sched({"sched-forbid": {"cron": ["0 * * * *"]}})
    clock.advance(HOUR)
    scheduler.tick()
    clock.advance(HOUR)
    # When the next fire comes
    scheduler.tick()
    # Then it is a skipped run that says which run was still going
    first, second = runs_of("sched-forbid")
    assert (first["status"], second["status"]) == ("queued", "skipped")
    assert second["error_code"] == "OVERLAP_FORBIDDEN"
    assert f"run {first['id']} was still queued" in second["error_message"]
    assert [c[1] for c in claims("sched-forbid")] == ["fired", "skipped"]


def test_overlap_queue_waits_for_the_previous_run_and_allow_does_not(sched, cluster_env):
    # Given one module with overlap queue and one with allow, each with a first run still queued
    scheduler, clock = sched({"sched-queue": {"cron": ["0 * * * *"], "overlap": "queue"},
                              "sched-allow": {"cron": ["0 * * * *"], "overlap": "allow"}})
    clock.advance(HOUR)
    scheduler.tick()
    clock.advance(HOUR)
    # When the second fire comes
    scheduler.tick()
    q1, q2 = runs_of("sched-queue")
    a1, a2 = runs_of("sched-allow")
    # Then both second runs are queued, but only allow's plan was sent; queue's waits in the outbox
    assert [r["status"] for r in (q1, q2, a1, a2)] == ["queued"] * 4
    assert outbox() == [q2["id"]]
    # and once the previous run ends, the next tick sends it
    with db.transaction() as conn:
        finish(conn, q1["id"], RunStatus.FAILED, error_message="ended by the test")
    scheduler.tick()
    assert outbox() == []
    assert queue_depth(cluster_env["DX_BROKER_URL"], "dx.plan") == 4


def test_auto_pause_after_consecutive_failures_sends_an_email(sched, smtp):
    # Given a module that pauses after 2 consecutive failed runs, whose last two runs failed
    scheduler, clock = sched({"sched-fail": {"cron": ["0 * * * *"], "max_failures": 2}})
    with db.transaction() as conn:
        ids = [create_queued_run(conn, TENANT, "sched-fail", Trigger.MANUAL, "pytest") for _ in range(3)]
        finish(conn, ids[0], RunStatus.COMPLETED)
        for run_id in ids[1:]:
            finish(conn, run_id, RunStatus.FAILED, error_code="SOURCE_NOT_FOUND", error_message="no file")
        conn.execute("DELETE FROM dx.run_outbox WHERE run_id = ANY(%s)", (ids,))
    # When the leader checks (each tick, at most every FAILURE_CHECK_S)
    scheduler.auto_pause()
    # Then the module is paused and its recipients told why
    with db.connect() as conn:
        assert conn.execute("SELECT paused FROM dx.modules WHERE id = 'sched-fail'").fetchone()["paused"]
    msg = smtp.wait_for(lambda m: "sched-fail: schedule paused after 2 failed runs" in m["Subject"])
    body = text_of(msg)
    assert f"run {ids[2]}" in body and f"run {ids[1]}" in body and "dx resume sched-fail" in body
    # and after a resume, the same old failures do not pause it again
    with db.transaction() as conn:
        set_paused(conn, "sched-fail", False, clock.now())
    scheduler.auto_pause()
    with db.connect() as conn:
        assert not conn.execute("SELECT paused FROM dx.modules WHERE id = 'sched-fail'").fetchone()["paused"]


def test_the_sweeper_sends_a_run_whose_sender_died_after_the_commit(sched, cluster_env):
    # Given a run committed with its outbox row, whose process died before sending the plan
    scheduler, _ = sched({"sched-sweep": {"cron": ["0 0 1 1 *"]}})
    with db.transaction() as conn:
        run_id = create_queued_run(conn, TENANT, "sched-sweep", Trigger.MANUAL, "crashed-cli")
    before = queue_depth(cluster_env["DX_BROKER_URL"], "dx.plan")
    # When the leader ticks
    scheduler.tick()
    # Then the plan was sent once and the outbox is empty
    assert outbox() == []
    assert queue_depth(cluster_env["DX_BROKER_URL"], "dx.plan") == before + 1
    assert runs_of("sched-sweep")[0]["id"] == run_id


def test_one_leader_at_a_time_and_a_released_lease_passes_on(sched):
    # Given the test's scheduler holding the lease, and a second replica on the same clock
    first, clock = sched({"sched-lease": {"cron": ["0 * * * *"], "overlap": "allow"}})
    second = Scheduler(clock=clock, holder="pytest-2")
    try:
        second.tick()
        # When both tick over three due times
        for _ in range(3):
            clock.advance(HOUR)
            second.tick()
            first.tick()
        # Then only the first led, and each due time fired once
        assert (first.leader, second.leader) == (True, False)
        assert [c[0].hour for c in claims("sched-lease")] == [1, 2, 3]
        # and when the leader stops, the other takes over at its next tick
        first.release()
        clock.advance(HOUR)
        second.tick()
        assert second.leader
        assert [c[0].hour for c in claims("sched-lease")] == [1, 2, 3, 4]
    finally:
        second.release()
        second.close()
