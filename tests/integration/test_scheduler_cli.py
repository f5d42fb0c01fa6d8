"""``dx schedule``, ``dx modules`` (next fire) and ``dx pause``/``resume`` on the real database."""

from __future__ import annotations

import pytest

from dx.cli import main
from dx.shared import db
from tests.integration.helpers import apply, config
from tests.integration.scheduling import forget_tenant, scheduled

pytestmark = pytest.mark.timeout(60)
TENANT = "schedcli"


@pytest.fixture
def module(cluster_env, sshd, tmp_path):
    scheduled(TENANT, sshd, tmp_path, {"cli-nightly": {"cron": ["30 2 * * *"], "timezone": "Europe/Rome"}})
    yield "cli-nightly"
    forget_tenant(TENANT, cluster_env["DX_BROKER_URL"])


def test_schedule_prints_the_next_fire_times_in_the_module_time_zone(module, capsys):
    # Given a daily 02:30 Rome module / When the next 3 fires from noon before the fall-back day are asked
    code = main(["schedule", module, "--next", "3", "--from", "2026-10-24T12:00:00+02:00"])
    # Then the fall-back day has one 02:30 (summer time) and the offsets are Rome's
    assert code == 0
    assert capsys.readouterr().out.split() == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00",
                                               "2026-10-27T02:30:00+01:00"]


def test_schedule_refuses_an_unknown_module_and_a_bad_time(module, capsys):
    assert main(["schedule", "nope", "--next", "2"]) == 2
    assert main(["schedule", module, "--next", "2", "--from", "yesterday"]) == 2
    err = capsys.readouterr().err
    assert "no module 'nope'" in err and "expected an ISO time" in err


def test_modules_shows_the_next_fire_and_pause_resume_keep_working(module, capsys):
    # Given the module paused
    assert main(["pause", module]) == 0
    with db.connect() as conn:
        assert conn.execute("SELECT paused FROM dx.modules WHERE id = %s", (module,)).fetchone()["paused"]
    # When it is resumed and the modules listed
    assert main(["resume", module]) == 0
    capsys.readouterr()
    assert main(["modules"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(module))
    # Then its line says active and its next fire is a 02:30 in Rome
    assert " active " in line and "T02:30+0" in line


def test_a_re_apply_keeps_a_pause_unless_the_config_says_otherwise(module, sshd, tmp_path):
    def paused() -> bool:
        with db.connect() as conn:
            return conn.execute("SELECT paused FROM dx.modules WHERE id = %s", (module,)).fetchone()["paused"]

    # Given the module paused by hand
    assert main(["pause", module]) == 0
    # When the same config (no `paused` key) is applied again / Then it stays paused
    scheduled(TENANT, sshd, tmp_path, {module: {"cron": ["30 2 * * *"], "timezone": "Europe/Rome"}})
    assert paused()
    # When a config says `paused: false` / Then it is active again
    apply(config(TENANT, sshd, [{"id": module, "mode": "append", "source": {"path": f"in/{module}_*.csv"},
                                 "schedule": {"cron": ["30 2 * * *"]}, "paused": False}]), tmp_path)
    assert not paused()
