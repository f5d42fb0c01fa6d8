"""Fire times of a schedule, with the DST rules of docs/scheduling.md. Pure: no I/O, no clock.

A schedule is a set of rules (one per cron expression, or one for the console
form: times of day, weekdays, months) in one IANA time zone, limited to local
dates from ``start`` to ``end`` (both included). Fire times are computed on
local wall-clock times and mapped to instants like this:

- A fixed-time rule (a cron expression with a fixed hour, or console times)
  fires once per matching wall time: a wall time that does not exist (spring
  forward) fires at the first instant after the gap; a wall time that occurs
  twice (fall back) fires at its first occurrence only.
- A rule whose hour field is ``*`` or ``*/N`` follows real hours: it fires at
  every instant whose local time matches, so an hourly job fires 23 times on a
  spring-forward day and 25 times on a fall-back day, one real hour apart.

Several rules (or a gap moving two wall times onto one instant) fire once per
instant. croniter only parses here: its own iteration fires a daily 02:30
job twice on a fall-back day.
"""

from __future__ import annotations

import calendar
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter
from croniter.croniter import CroniterError

#: Days searched ahead for a next fire before concluding there is none
#: (covers 29 February after a non-leap century year).
SEARCH_DAYS = 366 * 9
#: Largest shift of a wall time by a DST change (Lord Howe's is 30 min, most are 1 h).
MAX_SHIFT = timedelta(hours=3)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
LAST_DAY = 32  # marks ``L`` (last day of the month) among days of the month
#: The span fire times are computed in: days inside the calendar's ends (years 1 and 9999), so that
#: no time zone's offset, nor a day before or after, takes a time out of it.
EARLIEST = datetime(1, 1, 3, tzinfo=UTC)
LAST_DATE = date(9999, 12, 29)
LATEST = datetime(LAST_DATE.year, LAST_DATE.month, LAST_DATE.day, tzinfo=UTC)


@dataclass(frozen=True)
class Rule:
    """One cron expression or console form: which local days and wall times fire."""

    times: tuple[tuple[int, int], ...]  # (hour, minute), sorted
    months: frozenset[int]  # 1..12
    days: frozenset[int] | None  # days of the month (LAST_DAY for L); None: any
    weekdays: frozenset[int] | None  # 0 = Monday .. 6 = Sunday; None: any
    nth_weekdays: tuple[tuple[int, int], ...] = ()  # (weekday, n): the n-th such weekday of the month
    day_or: bool = False  # cron: both day fields restricted, so either one matching is enough
    real_hours: bool = False

    def matches(self, day: date) -> bool:
        """Whether the rule fires on this local date (cron: day OR weekday when both are set)."""
        if day.month not in self.months:
            return False
        by_day = self.days is not None and (
            day.day in self.days or (LAST_DAY in self.days and day.day == calendar.monthrange(day.year, day.month)[1]))
        nth = (day.day - 1) // 7 + 1
        by_weekday = (self.weekdays is not None and day.weekday() in self.weekdays) or any(
            day.weekday() == wd and nth == n for wd, n in self.nth_weekdays)
        if self.day_or:
            return by_day or by_weekday
        has_weekday = self.weekdays is not None or bool(self.nth_weekdays)
        return (self.days is None or by_day) and (not has_weekday or by_weekday)


def _cron_weekday(value: int) -> int:
    """croniter's weekday (0 = Sunday) as Python's (0 = Monday)."""
    return (int(value) - 1) % 7


def parse_cron(expression: str) -> Rule:
    """A five-field cron expression as a Rule; ValueError says what is wrong."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"{expression!r}: expected 5 fields (minute hour day-of-month month weekday), "
                         f"found {len(fields)}")
    try:
        expanded, nth = croniter.expand(expression)
    except (CroniterError, ValueError) as exc:
        raise ValueError(f"{expression!r}: {exc}") from None
    minutes, hours, days, months, weekdays = expanded

    def ints(values: list[int | str], full: range) -> list[int]:
        return list(full) if values == ["*"] else [int(v) for v in values]

    if any(isinstance(d, str) and d not in ("*", "l") for d in days) or any(
            isinstance(w, str) and w != "*" for w in weekdays):
        raise ValueError(f"{expression!r}: only L (last day of the month) and N#K weekdays are supported")
    day_set = None if days == ["*"] else frozenset(LAST_DAY if d == "l" else int(d) for d in days)
    plain_weekdays = [w for w in weekdays if w != "*" and int(w) % 7 not in nth]
    nth_weekdays = tuple(sorted((_cron_weekday(w), n) for w, ns in nth.items() for n in ns))
    weekday_set = frozenset(_cron_weekday(w) for w in plain_weekdays) if plain_weekdays else None
    times = tuple(sorted((h, m) for h in ints(hours, range(24)) for m in ints(minutes, range(60))))
    # Vixie cron: a day field starting with * does not widen the other one (AND, not OR).
    day_or = not fields[2].startswith(("*", "?")) and not fields[4].startswith(("*", "?"))
    return Rule(times=times, months=frozenset(ints(months, range(1, 13))), days=day_set,
                weekdays=weekday_set, nth_weekdays=nth_weekdays, day_or=day_or,
                real_hours=fields[1].startswith("*"))


def console_rule(times: Iterable[str], weekdays: Iterable[str] = (), months: Iterable[str | int] = ()) -> Rule:
    """The console's form (``02:30``, ``mon``, ``jan`` or 1) as a fixed-time Rule."""
    pairs = []
    for text in times:
        try:
            parsed = time.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r}: expected a time of day as HH:MM") from None
        if parsed.second or parsed.microsecond or parsed.tzinfo:
            raise ValueError(f"{text!r}: expected a time of day as HH:MM (no seconds, no offset)")
        pairs.append((parsed.hour, parsed.minute))
    month_set = set()
    for m in months:
        name = str(m).lower()
        if name in MONTHS:
            month_set.add(MONTHS.index(name) + 1)
        elif name.isdigit() and 1 <= int(name) <= 12:
            month_set.add(int(name))
        else:
            raise ValueError(f"{m!r}: expected a month as 1..12 or jan..dec")
    day_set = set()
    for w in weekdays:
        if w.lower() not in WEEKDAYS:
            raise ValueError(f"{w!r}: expected a weekday as mon..sun")
        day_set.add(WEEKDAYS.index(w.lower()))
    if not pairs:
        raise ValueError("times: give at least one time of day, e.g. [\"02:30\"]")
    return Rule(times=tuple(sorted(set(pairs))), months=frozenset(month_set or range(1, 13)),
                days=None, weekdays=frozenset(day_set) if day_set else None)


@dataclass(frozen=True)
class Schedule:
    """Rules in one time zone, between two local dates."""

    rules: tuple[Rule, ...]
    tz: ZoneInfo
    start: date | None = None
    end: date | None = None

    def fires(self, after: datetime) -> Iterator[datetime]:
        """Fire instants strictly after ``after``, ascending, in the schedule's time zone."""
        if after.tzinfo is None:
            raise ValueError("after must be timezone-aware")
        if after >= LATEST:  # past the last day fire times are computed for
            return
        local = max(after, EARLIEST).astimezone(self.tz)
        # Candidates of the previous day may land after ``after`` (a gap, or fold).
        day = local.date() - timedelta(days=1)
        if self.start is not None and day < self.start:
            day = self.start
        floor = local.replace(tzinfo=None) - MAX_SHIFT
        last, idle_days = after, 0
        while idle_days < SEARCH_DAYS:  # a schedule that matches no date ends here
            if (self.end is not None and day > self.end) or day > LAST_DATE:
                return
            idle_days += 1
            for instant in sorted(self._day_fires(day, floor)):
                if instant > last:
                    last, idle_days = instant, 0
                    yield instant.astimezone(self.tz)
            day += timedelta(days=1)

    def _day_fires(self, day: date, floor: datetime) -> set[datetime]:
        out: set[datetime] = set()
        if day < floor.date():
            return out
        for rule in self.rules:
            if not rule.matches(day):
                continue
            first = bisect_left(rule.times, (floor.hour, floor.minute)) if day == floor.date() else 0
            for hour, minute in rule.times[first:]:
                wall = datetime(day.year, day.month, day.day, hour, minute)  # noqa: DTZ001 (a wall time)
                out.update(resolve(wall, self.tz, real_hours=rule.real_hours))
        return out

    def rules_can_fire(self) -> bool:
        """Whether some date matches a rule (``0 0 30 2 *`` never does)."""
        first = date(2024, 1, 1)  # nine years hold every weekday of every day, and a leap day
        return any(r.matches(first + timedelta(days=i)) for i in range(SEARCH_DAYS) for r in self.rules)

    def next_fires(self, after: datetime, n: int) -> list[datetime]:
        """The next ``n`` fire instants after ``after`` (fewer if the schedule ends)."""
        out = []
        for instant in self.fires(after):
            out.append(instant)
            if len(out) == n:
                break
        return out


def resolve(wall: datetime, tz: ZoneInfo, *, real_hours: bool) -> tuple[datetime, ...]:
    """The UTC instants a local wall time fires at, under the DST rules above."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return (first,)
    if first < second:  # the wall time occurs twice (fall back)
        return (first, second) if real_hours else (first,)
    # the wall time does not exist (spring forward): fold=1 used the offset after the gap
    return () if real_hours else (_gap_end(second, first, tz),)


def _gap_end(low: datetime, high: datetime, tz: ZoneInfo) -> datetime:
    """The instant the clock jumps, found between two UTC bounds of a gap."""
    after_offset = high.astimezone(tz).utcoffset()
    lo, hi = int(low.timestamp()), int(high.timestamp())
    while lo < hi:  # smallest second whose offset is already the one after the gap
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == after_offset:
            hi = mid
        else:
            lo = mid + 1
    return datetime.fromtimestamp(lo, UTC)
