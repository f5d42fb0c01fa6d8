"""The schedule of a module in YAML (ScheduleCfg), the AMQP request body, and ``due``."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import yaml

from dx.scheduler.amqp import Rejected, handle, parse_request
from dx.scheduler.schedule import due
from dx.shared.config import parse_config
from dx.shared.errors import ConfigError, ErrorCode
from tests.shared.test_config import VALID_YAML

pytestmark = pytest.mark.timeout(30)


def with_schedule(schedule: dict[str, Any]) -> str:
    raw = yaml.safe_load(VALID_YAML)
    raw["modules"][0]["schedule"] = schedule
    return yaml.safe_dump(raw)


def problems(schedule: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(with_schedule(schedule))
    return info.value.problems


def test_the_design_example_and_the_console_form_parse():
    # Given the documented schedule form, and the console's form
    design = parse_config(with_schedule({"cron": ["0 2 * * *"], "timezone": "Europe/Rome", "start": "2026-12-01"}))
    console = parse_config(with_schedule({"times": ["02:30", "14:00"], "weekdays": ["mon", "fri"],
                                          "months": ["jan", 7], "overlap": "queue", "max_failures": 3}))
    # Then both give schedules with their defaults
    s = design.modules[0].schedule
    assert s is not None and (s.timezone, s.start, s.overlap, s.misfire_grace_s) == (
        "Europe/Rome", date(2026, 12, 1), "forbid", 300.0)
    c = console.modules[0].schedule
    assert c is not None
    fires = c.compile().next_fires(datetime(2026, 1, 1, tzinfo=UTC), 3)
    assert [(f.day, f.hour, f.minute) for f in fires] == [(2, 2, 30), (2, 14, 0), (5, 2, 30)]


@pytest.mark.parametrize(("schedule", "expected"), [
    ({"cron": ["0 2 * *"]}, "modules[0].schedule.cron[0]: '0 2 * *': expected 5 fields"),
    ({"cron": ["0 2 * * *", "61 * * * *"]}, "modules[0].schedule.cron[1]: '61 * * * *'"),
    ({"times": ["25:00"]}, "modules[0].schedule.times[0]: '25:00': expected a time of day as HH:MM"),
    ({"times": ["02:30"], "months": [13]}, "modules[0].schedule.months[0]: 13: expected a month"),
    ({"times": ["02:30"], "weekdays": ["monday"]}, "modules[0].schedule.weekdays[0]: Input should be"),
    ({"cron": ["0 2 * * *"], "timezone": "Europe/Roma"}, "modules[0].schedule.timezone: unknown time zone"),
    ({"timezone": "UTC"}, "modules[0].schedule: give either cron"),
    ({"cron": ["0 2 * * *"], "times": ["02:00"]}, "modules[0].schedule: give either cron"),
    ({"cron": ["0 2 * * *"], "weekdays": ["mon"]}, "modules[0].schedule: weekdays and months go with times"),
    ({"cron": ["0 0 30 2 *"]}, "modules[0].schedule: this schedule never fires"),
    ({"cron": ["0 2 * * *"], "start": "2026-02-01", "end": "2026-01-01"}, "modules[0].schedule: end 2026-01-01"),
    ({"cron": ["0 2 * * *"], "overlap": "skip"}, "modules[0].schedule.overlap: Input should be"),
    ({"cron": ["0 2 * * *"], "max_failures": 0}, "modules[0].schedule.max_failures: Input should be greater"),
    ({"cron": ["0 2 * * *"], "every": "day"}, "modules[0].schedule.every: unknown key"),
])
def test_a_schedule_problem_names_its_path(schedule, expected):
    # Given a schedule with one mistake / When parsed / Then the one problem names where it is
    got = problems(schedule)
    assert len(got) == 1 and got[0].startswith(expected), got


def test_due_fires_the_latest_missed_time_within_grace_once():
    # Given an hourly schedule whose cursor is five hours old, and a 90-minute grace window
    schedule = parse_config(with_schedule({"cron": ["0 * * * *"]})).modules[0].schedule
    assert schedule is not None
    cursor = datetime(2026, 6, 1, 0, 0, 30, tzinfo=UTC)
    # When due is asked at 05:10, and at 00:59 (nothing due yet)
    d = due(schedule.compile(), 5400, cursor, cursor + timedelta(hours=5, minutes=10))
    nothing = due(schedule.compile(), 5400, cursor, cursor + timedelta(minutes=58))
    # Then 05:00 fires, 04:00 is coalesced, older ones are past the window; nothing is due before 01:00
    assert (d.fire, d.coalesced) == (datetime(2026, 6, 1, 5, tzinfo=UTC), (datetime(2026, 6, 1, 4, tzinfo=UTC),))
    assert nothing.fire is None and nothing.coalesced == ()


@pytest.mark.parametrize(("body", "reason"), [
    (b"\xff\xfe", "not UTF-8 JSON"), (b"[1, 2]", "expected a JSON object"),
    (b'{"module": "m"}', "tenant must be a non-empty string"),
    (b'{"tenant": "acme", "module": 3}', "module must be a non-empty string"),
    (b'{"tenant": "acme", "module": "m", "priority": 1}', "unknown keys ['priority']"),
    (b'{"tenant": "acme", "module": "m", "requested_by": ["crm"]}', "requested_by must be a string"),
])
def test_a_malformed_request_is_rejected_with_its_reason(body, reason):
    with pytest.raises(Rejected) as info:
        parse_request(body)
    assert info.value.code is ErrorCode.REQUEST_MALFORMED and reason in info.value.reason


def test_a_well_formed_request_parses():
    req = parse_request(b'{"tenant": "acme", "module": "acme-nightly-import", "requested_by": "crm"}')
    assert (req.tenant, req.module, req.requested_by) == ("acme", "acme-nightly-import", "crm")


@pytest.mark.parametrize(("schedule", "says"), [
    ({"cron": ["0 2 30 2 *"], "end": "2030-12-31"}, "never fires (no date matches"),
    ({"cron": ["0 2 29 2 *"], "start": "2025-03-01", "end": "2027-12-31"}, "never fires between 2025-03-01 and 2027-12-31"),
    ({"times": ["02:00"], "weekdays": ["sat"], "start": "2026-06-01", "end": "2026-06-05"}, "never fires between"),
    ({"cron": ["0 2 * * *"], "start": "9999-12-31"}, "never fires from 9999-12-31"),
])
def test_a_schedule_whose_window_holds_no_fire_is_refused(schedule, says):
    # Given a cron line that never matches, or start/end dates between which no day matches (on main: accepted
    # when an end is given, and never fires)
    # When applied / Then refused at the schedule, saying so
    [problem] = problems(schedule)
    assert problem.startswith("modules[0].schedule:") and says in problem, problem


def test_a_schedule_whose_window_holds_a_fire_is_accepted():
    # Given a window of one day that its rule matches (29 February of a leap year)
    cfg = parse_config(with_schedule({"cron": ["0 2 29 2 *"], "start": "2028-02-29", "end": "2028-02-29"}))
    assert cfg.modules[0].schedule is not None


@pytest.mark.parametrize("start", [1700000000, 1699920000.0, True])
def test_a_number_is_not_a_date(start):
    # Given a start date written as seconds since 1970 (pydantic's lax mode read midnight ones as dates)
    [problem] = problems({"cron": ["0 2 * * *"], "start": start})
    assert problem.startswith("modules[0].schedule.start:") and "not a number" in problem, problem


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"tenant": "acme", "module": "m\\u0000"}', "module must be"),
    (b'{"tenant": "acme\\n", "module": "m"}', "tenant must be"),
    (b'{"tenant": "acme", "module": "m", "requested_by": "crm\\u0000"}', "requested_by must be"),
    (b'{"tenant": "acme", "module": "m", "requested_by": "\\ud800"}', "requested_by must be"),
    (b'{"tenant": 1' + b"0" * 5000 + b"}", "not UTF-8 JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "larger than"),
    (b"[" * 30_000 + b"]" * 30_000, "not UTF-8 JSON"),
])
def test_names_the_control_database_cannot_store_are_malformed_requests(body, reason):
    # Given a NUL, a line end, a lone surrogate, a 5000-digit number, a huge or deeply nested body (on main:
    # accepted then failed in PostgreSQL, or a ValueError/RecursionError: dead-lettered as INTERNAL_ERROR)
    with pytest.raises(Rejected) as info:
        parse_request(body)
    # Then it is REQUEST_MALFORMED, saying why
    assert info.value.code is ErrorCode.REQUEST_MALFORMED and reason in info.value.reason, info.value.reason


@pytest.mark.parametrize("message_id", ["crm\x00001", "x" * 201, "\ud800"])
def test_a_message_id_the_control_database_cannot_store_is_a_malformed_request(message_id):
    # When a well-formed body comes with such a message_id / Then refused before the database is asked
    with pytest.raises(Rejected) as info:
        handle(b'{"tenant": "acme", "module": "m"}', message_id)
    assert info.value.code is ErrorCode.REQUEST_MALFORMED and "message_id" in info.value.reason
