"""Fire times with the DST rules of docs/scheduling.md, on fixed instants (no clock, no I/O)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from dx.shared.cron import Schedule, console_rule, parse_cron

ROME, NEW_YORK = ZoneInfo("Europe/Rome"), ZoneInfo("America/New_York")
pytestmark = pytest.mark.timeout(30)


def cron(*expressions: str, tz: ZoneInfo = ROME, start: date | None = None, end: date | None = None) -> Schedule:
    return Schedule(tuple(parse_cron(e) for e in expressions), tz, start, end)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def fires_between(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    out = []
    for instant in schedule.fires(start):
        if instant >= end:
            return out
        out.append(instant.astimezone(UTC))
    return out


@pytest.mark.parametrize(("tz", "day", "wall", "expected_utc"), [
    # fall back: the repeated wall time fires once, at its first occurrence (summer time)
    (ROME, date(2026, 10, 25), "30 2 * * *", [utc(2026, 10, 25, 0, 30)]),
    (NEW_YORK, date(2026, 11, 1), "30 1 * * *", [utc(2026, 11, 1, 5, 30)]),
    # spring forward: the wall time that does not exist fires at the first instant after the gap
    (ROME, date(2026, 3, 29), "30 2 * * *", [utc(2026, 3, 29, 1, 0)]),
    (NEW_YORK, date(2026, 3, 8), "30 2 * * *", [utc(2026, 3, 8, 7, 0)]),
    # two wall times in the gap land on one instant: one fire
    (ROME, date(2026, 3, 29), "0,30 2 * * *", [utc(2026, 3, 29, 1, 0)]),
])
def test_a_fixed_time_job_fires_once_on_a_dst_day(tz, day, wall, expected_utc):
    # Given a daily fixed-time job / When its fires on the DST day are listed
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    got = fires_between(cron(wall, tz=tz), start, start + timedelta(hours=24))
    # Then it fires exactly once, at the instant the rules say
    assert got == expected_utc


def test_croniter_alone_fires_the_fall_back_job_twice_which_is_why_the_rules_are_ours():
    # Given croniter's own iteration over the Rome fall-back day
    it = croniter("30 2 * * *", datetime(2026, 10, 25, 0, 0, tzinfo=ROME))
    first, second = it.get_next(datetime), it.get_next(datetime)
    ours = cron("30 2 * * *").next_fires(datetime(2026, 10, 25, 0, 0, tzinfo=ROME), 2)
    # Then croniter yields both 02:30s of that day, ours one 02:30 a day
    assert first.date() == second.date() == date(2026, 10, 25)
    assert [f.date() for f in ours] == [date(2026, 10, 25), date(2026, 10, 26)]


@pytest.mark.parametrize(("tz", "day", "n_fires"), [
    (ROME, date(2026, 3, 29), 23), (ROME, date(2026, 10, 25), 25),
    (NEW_YORK, date(2026, 3, 8), 23), (NEW_YORK, date(2026, 11, 1), 25),
])
def test_an_hourly_job_follows_real_hours(tz, day, n_fires):
    # Given an hourly job / When the fires of a DST day (local midnight to midnight) are listed
    start = datetime(day.year, day.month, day.day, tzinfo=tz) - timedelta(microseconds=1)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tz)
    got = fires_between(cron("0 * * * *", tz=tz), start, end)
    # Then one fire per real hour: 23 or 25, each exactly one hour after the previous
    assert len(got) == n_fires
    assert all(b - a == timedelta(hours=1) for a, b in zip(got, got[1:], strict=False))


def test_a_quarter_hourly_job_fires_in_both_repeated_hours():
    # Given every 15 minutes in New York / When the repeated hour 01:00-01:59 passes on fall-back day
    got = fires_between(cron("*/15 * * * *", tz=NEW_YORK), utc(2026, 11, 1, 4, 59), utc(2026, 11, 1, 7, 0))
    # Then it fires every 15 real minutes through both 01:xx hours (EDT then EST)
    assert got == [utc(2026, 11, 1, 5, 0) + timedelta(minutes=15 * i) for i in range(8)]


def test_29_february_fires_only_in_leap_years():
    # Given a job on 29 February / When its next three fires after 2026 are listed
    got = cron("0 12 29 2 *").next_fires(datetime(2026, 1, 1, tzinfo=ROME), 3)
    # Then they are in 2028, 2032, 2036 at 12:00 Rome time
    assert [(f.year, f.month, f.day, f.hour) for f in got] == [(2028, 2, 29, 12), (2032, 2, 29, 12),
                                                                (2036, 2, 29, 12)]


def test_start_and_end_dates_bound_the_fires_in_local_days():
    # Given a daily 23:30 job from 1 to 3 December (Rome), asked from November
    s = cron("30 23 * * *", start=date(2026, 12, 1), end=date(2026, 12, 3))
    got = list(s.fires(datetime(2026, 11, 1, tzinfo=ROME)))
    # Then exactly three fires, on the local dates 1..3 (22:30 UTC each)
    assert [f.date() for f in got] == [date(2026, 12, 1), date(2026, 12, 2), date(2026, 12, 3)]
    assert got[0].astimezone(UTC) == utc(2026, 12, 1, 22, 30)


def test_the_console_form_limits_weekdays_and_months():
    # Given 08:00 and 17:30 on Mondays and Fridays of January and June (the console's form)
    s = Schedule((console_rule(["17:30", "08:00"], ["mon", "fri"], ["jan", 6]),), ROME)
    got = s.next_fires(datetime(2026, 1, 1, tzinfo=ROME), 60)
    # Then every fire is on one of those days, months and times, in order, and both months appear
    assert all(f.weekday() in (0, 4) and f.month in (1, 6) and (f.hour, f.minute) in ((8, 0), (17, 30))
               for f in got)
    assert got == sorted(got) and {f.month for f in got} == {1, 6}
    assert got[0] == datetime(2026, 1, 2, 8, 0, tzinfo=ROME)  # Friday 2 January


def test_cron_day_fields_or_when_both_are_set_and_and_with_a_star():
    # Given the 13th OR Fridays, and every 10th day AND Mondays
    either = cron("0 0 13 * fri").next_fires(datetime(2026, 2, 1, tzinfo=ROME), 4)
    both = cron("0 0 */10 * mon").next_fires(datetime(2026, 1, 1, tzinfo=ROME), 2)
    # Then the first fires on Fridays and on the 13th; the second on Mondays that are day 1, 11, 21 or 31
    assert [f.day for f in either] == [6, 13, 20, 27]
    assert all(f.weekday() == 0 and f.day in (1, 11, 21, 31) for f in both)


def test_last_day_and_nth_weekday():
    # Given the last day of each month, and the second Monday
    last = cron("0 6 L * *").next_fires(datetime(2028, 1, 1, tzinfo=ROME), 2)
    second_monday = cron("0 6 * * 1#2").next_fires(datetime(2026, 1, 1, tzinfo=ROME), 1)
    # Then 31 January and 29 February 2028; 12 January 2026
    assert [f.date() for f in last] == [date(2028, 1, 31), date(2028, 2, 29)]
    assert second_monday[0].date() == date(2026, 1, 12)


def test_several_expressions_fire_once_per_instant_in_order():
    # Given two expressions sharing 12:00
    got = cron("0 12 * * *", "0 */6 * * *").next_fires(datetime(2026, 5, 1, tzinfo=ROME), 4)
    # Then 12:00 fires once, between 06:00 and 18:00
    assert [f.hour for f in got] == [6, 12, 18, 0]


@pytest.mark.parametrize(("expression", "message"), [
    ("0 2 * *", "expected 5 fields"), ("61 * * * *", "out of range"), ("* * * * * *", "expected 5 fields"),
])
def test_a_bad_expression_says_what_is_wrong(expression, message):
    with pytest.raises(ValueError, match=message):
        parse_cron(expression)


@pytest.mark.parametrize("after", [datetime.min.replace(tzinfo=timezone(timedelta(hours=14))),
                                   datetime.min.replace(tzinfo=UTC), datetime(1, 1, 1, 5, tzinfo=ROME),
                                   datetime(9999, 12, 28, 23, tzinfo=ZoneInfo("Etc/GMT+12")),
                                   datetime.max.replace(tzinfo=timezone(timedelta(hours=-12)))])
@pytest.mark.parametrize("tz", [ZoneInfo("Pacific/Kiritimati"), ZoneInfo("Pacific/Pago_Pago"), ROME])
def test_fire_times_at_the_ends_of_the_calendar_stop_instead_of_overflowing(after, tz):
    # Given daily, half-hourly and yearly schedules, with and without start and end dates at the calendar's ends
    for schedule in (cron("0 2 * * *", tz=tz), cron("*/30 * * * *", tz=tz, end=date(9999, 12, 31)),
                     cron("59 23 L 12 *", tz=tz, start=date(1, 1, 1)), cron("0 2 * * *", tz=tz, start=date(9999, 12, 31))):
        # When the next fire times after an instant of year 1 or year 9999 are asked
        fires = schedule.next_fires(after, 3)
        # Then they are real instants after it (none past the calendar's end), in order
        assert fires == sorted(fires) and all(f > after for f in fires)
    # and a daily schedule from year 1 fires on its first days
    early = cron("0 2 * * *", tz=tz).next_fires(datetime.min.replace(tzinfo=UTC), 1)
    assert early and early[0].year == 1
