"""``Settings.from_env``: embedded defaults, every problem at once, no password in a message."""

from __future__ import annotations

from pathlib import Path

import pytest

from dx.shared.errors import ConfigError
from dx.shared.settings import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_TENANT_MAX_CHUNKS,
    Settings,
    read_secret,
    redact_url,
)

SEPARATE_WORKERS = {"DX_BROKER_URL": "amqp://mq/", "DX_REDIS_URL": "redis://cache/0",
                    "DX_DATABASE_URL": "postgresql://db/dx"}


def problems_of(env: dict[str, str]) -> list[str]:
    """The problems from_env reports (after its title line); fails the test if it accepts env."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    title, *problems = info.value.problems
    assert title == "Settings problems (environment variables):"
    return problems


def test_an_empty_environment_gives_the_embedded_defaults(tmp_path, monkeypatch):
    # Given no DX_* variable, run from some folder
    monkeypatch.chdir(tmp_path)
    # When the settings are built
    s = Settings.from_env({})
    # Then everything is embedded, under ./.dx
    assert s.home == tmp_path / ".dx"
    assert (s.staging_dir, s.outbox_dir) == (tmp_path / ".dx" / "staging", tmp_path / ".dx" / "outbox")
    assert s.embedded_broker is True
    assert (s.database_url, s.broker_url, s.redis_url, s.smtp_url) == (None, None, None, None)
    assert (s.chunk_bytes, s.worker_threads, s.log_level) == (DEFAULT_CHUNK_BYTES, 1, "INFO")


def test_empty_variables_count_as_unset(tmp_path, monkeypatch):
    # Given variables set to "" (as `VAR= dx ...` does) / When built / Then the defaults apply
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env(dict.fromkeys(["DX_HOME", "DX_DATABASE_URL", "DX_CHUNK_BYTES", "DX_LOG_LEVEL"], ""))
    assert (s.home, s.database_url, s.chunk_bytes, s.log_level) == (tmp_path / ".dx", None, DEFAULT_CHUNK_BYTES,
                                                                    "INFO")


def test_separate_services_are_configured_from_urls():
    # Given a broker, Redis and PostgreSQL, a home and a lower-case log level / When built
    s = Settings.from_env({**SEPARATE_WORKERS, "DX_HOME": "/var/lib/dx", "DX_LOG_LEVEL": "debug",
                           "DX_WORKER_THREADS": "8"})
    # Then workers are separate processes and the values are kept
    assert s.embedded_broker is False
    assert (s.home, s.staging_dir) == (Path("/var/lib/dx"), Path("/var/lib/dx/staging"))
    assert (s.broker_url, s.log_level, s.worker_threads) == ("amqp://mq/", "DEBUG", 8)


def test_several_bad_variables_are_reported_together():
    # Given four wrong variables
    env = {"DX_DATABASE_URL": "mysql://db/dx", "DX_CHUNK_BYTES": "lots", "DX_WORKER_THREADS": "0",
           "DX_LOG_LEVEL": "loud"}
    # When built / Then one ConfigError names each of them
    problems = problems_of(env)
    assert [p.split("=")[0] for p in problems] == ["DX_DATABASE_URL", "DX_CHUNK_BYTES", "DX_WORKER_THREADS",
                                                   "DX_LOG_LEVEL"]
    assert "postgresql://" in problems[0] and "whole number" in problems[1] and "at least 1" in problems[2]


def test_a_password_in_a_url_is_redacted_in_the_message():
    # Given a database URL with a password and the wrong scheme
    problems = problems_of({"DX_DATABASE_URL": "mysql://app:s3cr3t-pw@db.internal:3306/dx"})
    # When reported / Then the URL is shown without its password
    assert len(problems) == 1
    assert "s3cr3t-pw" not in problems[0]
    assert problems[0].startswith("DX_DATABASE_URL=mysql://app:***@db.internal:3306/dx:")


def test_a_password_with_special_characters_is_redacted_too():
    # Given a SQLAlchemy-style URL (wrong scheme) whose password holds a '#'
    problems = problems_of({"DX_DATABASE_URL": "postgresql+psycopg://app:s3c#r3t@db/dx"})
    # When reported / Then no part of the password is shown
    assert "s3c#r3t" not in problems[0]


def test_redact_url_leaves_a_url_without_password_unchanged():
    # Given URLs without a password / When redacted / Then unchanged
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert redact_url("amqp://guest@mq/") == "amqp://guest@mq/"


def test_a_broker_without_redis_is_a_problem_for_workers_only():
    # Given a broker and a database, but no Redis for the chunk barrier
    env = {k: v for k, v in SEPARATE_WORKERS.items() if k != "DX_REDIS_URL"}
    # When built / Then the API and scheduler may run (their Secret holds no Redis URL)
    s = Settings.from_env(env)
    # but a worker may not: the problem says which variable to set, with an example
    problem = s.worker_problem()
    assert problem is not None and problem.startswith("DX_REDIS_URL is unset while DX_BROKER_URL is set")
    assert "DX_REDIS_URL=redis://" in problem
    assert Settings.from_env(SEPARATE_WORKERS).worker_problem() is None


def test_a_broker_without_database_is_a_problem_too():
    # Given a broker and Redis but the embedded database / When built / Then DX_DATABASE_URL is asked for
    env = {k: v for k, v in SEPARATE_WORKERS.items() if k != "DX_DATABASE_URL"}
    [problem] = problems_of(env)
    assert problem.startswith("DX_DATABASE_URL is unset while DX_BROKER_URL is set")


def test_a_malformed_url_is_reported_as_a_problem():
    # Given an unparseable URL (unclosed IPv6 bracket) and another mistake
    env = {"DX_DATABASE_URL": "postgresql://[::1/dx", "DX_LOG_LEVEL": "loud"}
    # When built / Then both are reported in the ConfigError
    problems = problems_of(env)
    assert [p.split("=")[0] for p in problems] == ["DX_DATABASE_URL", "DX_LOG_LEVEL"]


def test_the_test_clock_and_scheduler_timings_are_read_and_checked(tmp_path, monkeypatch):
    # Given a test clock and scheduler timings / When built / Then they are parsed
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({"DX_CLOCK_ORIGIN": "2026-06-01T00:00:00+00:00@1700000000.5", "DX_CLOCK_SPEED": "20",
                           "DX_SCHEDULER_TICK_S": "0.1", "DX_SCHEDULER_LEASE_S": "1"})
    assert s.clock_origin is not None and s.clock_origin[1] == 1700000000.5
    assert (s.clock_origin[0].isoformat(), s.clock_speed) == ("2026-06-01T00:00:00+00:00", 20.0)
    assert (s.scheduler_tick_s, s.scheduler_lease_s) == (0.1, 1.0)
    # and bad values are all reported
    problems = problems_of({"DX_CLOCK_ORIGIN": "2026-06-01T00:00:00", "DX_SCHEDULER_TICK_S": "fast",
                            "DX_SCHEDULER_LEASE_S": "0.5", "DX_CLOCK_SPEED": "3"})
    assert any(p.startswith("DX_CLOCK_ORIGIN=") for p in problems)
    assert any(p.startswith("DX_SCHEDULER_TICK_S='fast'") for p in problems)
    assert any(p.startswith("DX_SCHEDULER_LEASE_S=0.5: must be at least twice") for p in problems)
    assert any(p.startswith("DX_CLOCK_SPEED is set without DX_CLOCK_ORIGIN") for p in problems)


def test_how_runs_end_has_defaults_and_is_read_from_the_environment():
    # Given no setting, then the three set / When built
    default = Settings.from_env({})
    s = Settings.from_env({"DX_STALL_S": "2", "DX_MAX_REDRIVES": "0", "DX_RUN_TIMEOUT_S": "0"})
    # Then a stall is 10 minutes, 3 re-drives, 6 hours at most, workers beating every 30 s; or as set
    assert (default.stall_s, default.max_redrives, default.run_timeout_s, default.beat_s) == (600.0, 3, 21600.0, 30.0)
    assert (s.stall_s, s.max_redrives, s.run_timeout_s, s.beat_s) == (2.0, 0, 0.0, 0.5)


def test_a_run_time_limit_shorter_than_a_stall_is_refused():
    # Given a run limit below the stall, and a negative number of re-drives / When built
    problems = problems_of({"DX_STALL_S": "600", "DX_RUN_TIMEOUT_S": "60", "DX_MAX_REDRIVES": "-1"})
    # Then both are named, the limit with what it must be
    assert any(p.startswith("DX_MAX_REDRIVES=-1: must be at least 0") for p in problems)
    assert any(p.startswith("DX_RUN_TIMEOUT_S=60.0: must be 0 (no limit) or at least DX_STALL_S=600.0")
               for p in problems)


def test_dx_chunk_bytes_below_the_floor_is_a_settings_problem():
    # Given chunks of 4 KiB under the default floor of 1 MiB, then with the floor lowered
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DX_CHUNK_BYTES": "4096"})
    assert any(p.startswith("DX_CHUNK_BYTES=4096: must be at least 1048576") for p in info.value.problems)
    lowered = Settings.from_env({"DX_CHUNK_BYTES": "4096", "DX_MIN_CHUNK_BYTES": "1024"})
    assert (lowered.chunk_bytes, lowered.min_chunk_bytes) == (4096, 1024)


# --- secrets from files: NAME_FILE and DX_SECRETS_DIR ---------------------------------------------

def test_a_url_is_read_from_the_file_its_FILE_variable_names(tmp_path):
    # Given the database URL in a file ending with a line break, named by DX_DATABASE_URL_FILE
    (tmp_path / "db").write_text("postgresql://app:pw@db.internal:5432/dx\n", encoding="utf-8")
    # When built / Then the URL is the file's text without the line break
    s = Settings.from_env({"DX_DATABASE_URL_FILE": str(tmp_path / "db")})
    assert s.database_url == "postgresql://app:pw@db.internal:5432/dx"


def test_urls_are_read_from_the_secrets_folder(tmp_path):
    # Given a mounted Secret: one file per variable, in DX_SECRETS_DIR
    for name, value in SEPARATE_WORKERS.items():
        (tmp_path / name).write_text(value, encoding="utf-8")
    # When built from nothing else / Then every URL comes from its file
    s = Settings.from_env({"DX_SECRETS_DIR": str(tmp_path)})
    assert (s.broker_url, s.redis_url, s.database_url) == ("amqp://mq/", "redis://cache/0", "postgresql://db/dx")
    # and a variable set in the environment wins over the folder
    assert Settings.from_env({"DX_SECRETS_DIR": str(tmp_path), "DX_REDIS_URL": "redis://other/1"}).redis_url == \
        "redis://other/1"


def test_a_secret_file_with_a_bad_url_is_reported_like_the_variable(tmp_path):
    # Given a URL of the wrong scheme in the secrets folder / When built / Then the usual problem, redacted
    (tmp_path / "DX_DATABASE_URL").write_text("mysql://app:s3cr3t@db/dx", encoding="utf-8")
    [problem] = problems_of({"DX_SECRETS_DIR": str(tmp_path)})
    assert problem.startswith("DX_DATABASE_URL=mysql://app:***@db/dx:") and "s3cr3t" not in problem


def test_secret_files_that_cannot_be_used_are_all_reported(tmp_path):
    # Given a variable set both ways, a FILE naming a missing file, and a secrets folder that is a file
    (tmp_path / "db").write_text("postgresql://db/dx", encoding="utf-8")
    env = {"DX_DATABASE_URL": "postgresql://db/dx", "DX_DATABASE_URL_FILE": str(tmp_path / "db"),
           "DX_BROKER_URL_FILE": str(tmp_path / "missing"), "DX_SECRETS_DIR": str(tmp_path / "db")}
    # When built / Then each is a problem saying what to fix
    problems = problems_of(env)
    assert "DX_DATABASE_URL and DX_DATABASE_URL_FILE are both set: keep one" in problems
    assert f"DX_BROKER_URL_FILE={tmp_path / 'missing'}: cannot be read (No such file or directory)" in problems
    assert any(p.startswith("DX_SECRETS_DIR=") and "not a folder" in p for p in problems)


def test_read_secret_serves_a_tenant_secret_from_the_folder_and_never_a_path(tmp_path):
    # Given a tenant's password in the secrets folder, and a file outside it
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "DX_SECRET_ACME_SFTP_PASSWORD").write_text("pw\r\n", encoding="utf-8")
    (tmp_path / "outside").write_text("not yours", encoding="utf-8")
    env = {"DX_SECRETS_DIR": str(secrets)}
    # When read / Then the folder's file gives the value; an unknown name is unset; a path is no name
    assert read_secret("DX_SECRET_ACME_SFTP_PASSWORD", env) == "pw"
    assert read_secret("DX_SECRET_OTHER", env) is None
    assert read_secret("../outside", env) is None


def test_migrating_at_start_is_on_unless_switched_off(tmp_path, monkeypatch):
    # Given no setting, then each spelling / When built / Then roles migrate by default, not when told
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({}).migrate_on_start is True
    assert Settings.from_env({"DX_MIGRATE_ON_START": "false"}).migrate_on_start is False
    assert Settings.from_env({"DX_MIGRATE_ON_START": "0"}).migrate_on_start is False
    assert Settings.from_env({"DX_MIGRATE_ON_START": "True"}).migrate_on_start is True
    [problem] = problems_of({"DX_MIGRATE_ON_START": "sometimes"})
    assert problem == "DX_MIGRATE_ON_START='sometimes': expected true or false"


def test_the_tenant_chunk_limit_and_its_lease_are_read_and_checked():
    # Given no setting / When built / Then a tenant holds at most 4 chunks, a dead worker's slot for 30 s
    s = Settings.from_env(SEPARATE_WORKERS)
    assert (s.tenant_max_chunks, s.tenant_lease_s) == (DEFAULT_TENANT_MAX_CHUNKS, 30.0) == (4, 30.0)
    # Given 0 (no limit) and a lease of 5 s / Then both are kept
    s = Settings.from_env({**SEPARATE_WORKERS, "DX_TENANT_MAX_CHUNKS": "0", "DX_TENANT_LEASE_S": "5"})
    assert (s.tenant_max_chunks, s.tenant_lease_s) == (0, 5.0)
    # Given a negative limit and a lease under a second / Then both are problems
    problems = problems_of({**SEPARATE_WORKERS, "DX_TENANT_MAX_CHUNKS": "-1", "DX_TENANT_LEASE_S": "0.5"})
    assert [p.split("=")[0] for p in problems] == ["DX_TENANT_MAX_CHUNKS", "DX_TENANT_LEASE_S"]
    assert "at least 0" in problems[0] and "at least 1" in problems[1]
