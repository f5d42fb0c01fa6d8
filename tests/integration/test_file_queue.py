"""A file source's queue on SFTP: a bad file is rejected and does not block the next, ``files: all``
imports every pending file one run each, and a file still being written skips the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dx.cli import main
from dx.scheduler.loop import Scheduler
from dx.shared import db
from dx.shared.runs import definition, get_run
from dx.workers.imports.files import after_end
from tests.integration.helpers import apply, config, run, table, text_of
from tests.integration.scheduling import FixedClock, forget_tenant, runs_of

pytestmark = pytest.mark.timeout(240)
UNDECODABLE = b"email,first_name,points\nbad@x.it,\xff\xfe broken,1\n"
#: Two records of three rejected: more than an overwrite's max_error_ratio 0.1 allows.
TOO_MANY_BAD = b"email,first_name,points\nok@x.it,Ok,1\nno-email,No,2\nalso-no,No,3\n"


def _csv(*rows: tuple[str, str, int]) -> bytes:
    return b"email,first_name,points\n" + b"".join(f"{e},{n},{p}\n".encode() for e, n, p in rows)


def _reported(run_id: int, smtp: Any) -> tuple[dict[str, Any], str]:
    """The run once its e-mail is out (what follows its end is done first), and the e-mail's text."""
    mail = smtp.wait_for(lambda m: f"(run {run_id})" in m["Subject"])
    with db.connect() as conn:
        ended = get_run(conn, run_id)
    assert ended is not None
    return dict(ended), text_of(mail)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.exists() else []


def test_a_rejected_file_does_not_block_the_next_and_keeps_its_reason(cluster_env, sshd, smtp, workers, tmp_path):
    # Given an upsert module taking one file per run, and three files of which the oldest is not UTF-8
    tenant = "fq-oldest"
    module = f"{tenant}-import"
    apply(config(tenant, sshd, [{"id": module, "mode": "upsert", "source": {"path": f"{tenant}/in/add_*.csv"}}]),
          tmp_path)
    inbox, rejected = sshd.root / tenant / "in", sshd.root / tenant / "in" / "rejected"
    sshd.put(f"{tenant}/in/add_000.csv", UNDECODABLE)
    sshd.put(f"{tenant}/in/add_001.csv", _csv(("a@x.it", "Ann", 1)))
    sshd.put(f"{tenant}/in/add_002.csv", _csv(("b@x.it", "Bob", 2)))
    workers.start(2)

    # When three runs run one after another
    first, first_mail = _reported(run(module)["id"], smtp)
    second, _ = _reported(run(module)["id"], smtp)
    third, _ = _reported(run(module)["id"], smtp)

    # Then the first failed on add_000, which is now in rejected/ with its reason beside it
    assert (first["status"], first["error_code"]) == ("failed", "SOURCE_UNDECODABLE")
    assert first["source_path"] == f"{tenant}/in/add_000.csv"
    assert _files(rejected) == ["add_000.csv", "add_000.csv.reason.txt"]
    assert (rejected / "add_000.csv").read_bytes() == UNDECODABLE
    reason = (rejected / "add_000.csv.reason.txt").read_text()
    assert f"Run:     {first['id']} of module {module}" in reason
    assert "Code:    SOURCE_UNDECODABLE" in reason and "not valid utf-8" in reason
    assert "The file was moved" not in reason  # the reason is the failure's, not the note about the move
    # and its message and e-mail say where the file went
    note = f"The file was moved to {tenant}/in/rejected/add_000.csv; add_000.csv.reason.txt beside it says why."
    assert first["error_message"].endswith(note)
    assert first["rejected_path"] == f"{tenant}/in/rejected/add_000.csv"
    assert note in first_mail
    # and the next two runs imported add_001 and add_002, in name order, and archived them
    assert [(r["status"], r["source_path"]) for r in (second, third)] == [
        ("completed", f"{tenant}/in/add_001.csv"), ("completed", f"{tenant}/in/add_002.csv")]
    assert set(table(tenant)) == {"a@x.it", "b@x.it"}
    assert _files(inbox) == []
    assert _files(inbox / "archive") == [f"add_001.csv.run{second['id']}", f"add_002.csv.run{third['id']}"]

    # When what follows the first run's end is done again (a redelivered message)
    with db.connect() as conn:
        ended = get_run(conn, first["id"])
        assert ended is not None
        mdef = definition(conn, ended)
    after_end(first["id"], mdef)
    # Then nothing moves again and the message says it once
    assert _files(rejected) == ["add_000.csv", "add_000.csv.reason.txt"]
    again, _ = _reported(first["id"], smtp)
    assert again["error_message"] == first["error_message"]

    # When a file of the same name fails again
    sshd.put(f"{tenant}/in/add_000.csv", UNDECODABLE + b"more@x.it,\xff,3\n")
    fourth, _ = _reported(run(module)["id"], smtp)
    # Then it is rejected under a name of its own, beside the first, which stays as it was
    own = f"add_000.run{fourth['id']}.csv"
    assert fourth["error_code"] == "SOURCE_UNDECODABLE" and fourth["rejected_path"] == f"{tenant}/in/rejected/{own}"
    assert _files(rejected) == sorted(["add_000.csv", "add_000.csv.reason.txt", own, f"{own}.reason.txt"])
    assert (rejected / "add_000.csv").read_bytes() == UNDECODABLE
    assert f"Run:     {fourth['id']} " in (rejected / f"{own}.reason.txt").read_text()


def test_files_all_imports_every_pending_file_in_name_order_one_run_each(cluster_env, sshd, smtp, workers,
                                                                         tmp_path):
    # Given an overwrite module with files: all, a schedule, and three files of which the middle one
    # has too many bad records
    tenant = "fq-all"
    module = f"{tenant}-import"
    apply(config(tenant, sshd, [{"id": module, "mode": "overwrite",
                                 "source": {"path": f"{tenant}/in/add_*.csv", "files": "all"},
                                 "schedule": {"cron": ["0 3 * * *"]}}]), tmp_path)
    sshd.put(f"{tenant}/in/add_000.csv", _csv(("a@x.it", "Ann", 1)))
    sshd.put(f"{tenant}/in/add_001.csv", TOO_MANY_BAD)
    sshd.put(f"{tenant}/in/add_002.csv", _csv(("c@x.it", "Cid", 3), ("d@x.it", "Dan", 4)))
    workers.start(2)
    try:
        # When `dx run --wait` asks for one run
        done = subprocess.run([sys.executable, "-m", "dx", "run", module, "--wait"], env={**os.environ, **cluster_env},
                              capture_output=True, text=True, timeout=180)

        # Then three runs ran, one per file, in name order, each made by the end of the one before
        runs = runs_of(module)
        assert [(r["source_path"], r["status"], r["error_code"]) for r in runs] == [
            (f"{tenant}/in/add_000.csv", "completed", None),
            (f"{tenant}/in/add_001.csv", "failed", "ERROR_RATIO_EXCEEDED"),
            (f"{tenant}/in/add_002.csv", "completed", None)]
        assert [r["follows_run"] for r in runs] == [None, runs[0]["id"], runs[1]["id"]]
        assert all(r["trigger"] == "manual" for r in runs)
        assert runs[0]["finished_at"] <= runs[1]["started_at"] and runs[1]["finished_at"] <= runs[2]["started_at"]
        # and the table holds the last file (each overwrite was applied after the one before)
        assert set(table(tenant)) == {"c@x.it", "d@x.it"}
        # and the middle file was rejected, the others archived
        assert _files(sshd.root / tenant / "in" / "rejected") == ["add_001.csv", "add_001.csv.reason.txt"]
        # and `dx run` followed and printed all three, and exits 1: one of them failed
        assert done.returncode == 1, done.stderr
        assert [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("run ")] == [
            f"run {r['id']} of {module} (tenant {tenant})" for r in runs]
        assert "add_001.csv.reason.txt beside it says why" in done.stdout

        # When two more files come and the schedule fires
        sshd.put(f"{tenant}/in/add_003.csv", _csv(("e@x.it", "Eve", 5)))
        sshd.put(f"{tenant}/in/add_004.csv", _csv(("f@x.it", "Fay", 6)))
        clock = FixedClock(datetime(2026, 6, 1, 2, 59, 30, tzinfo=UTC))
        scheduler = Scheduler(clock=clock, holder="pytest-files-all")
        try:
            scheduler.tick()  # first sight
            clock.current = datetime(2026, 6, 1, 3, 0, 1, tzinfo=UTC)
            scheduler.tick()
        finally:
            scheduler.release()
            scheduler.close()
        # Then the fired run and the run its end made import both, in name order
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            later = runs_of(module)[3:]
            if len(later) == 2 and all(r["email_sent_at"] for r in later):
                break
            time.sleep(0.3)
        assert [(r["trigger"], r["source_path"], r["status"]) for r in later] == [
            ("schedule", f"{tenant}/in/add_003.csv", "completed"),
            ("schedule", f"{tenant}/in/add_004.csv", "completed")]
        assert later[1]["follows_run"] == later[0]["id"] and later[1]["due_at"] is None
        assert set(table(tenant)) == {"f@x.it"}
        assert len(runs_of(module)) == 5  # and nothing more: no file is left
    finally:
        forget_tenant(tenant, cluster_env["DX_BROKER_URL"])


class Appender(threading.Thread):
    """Appends a record to a file every tenth of a second until stopped: an upload in progress."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.stop = path, threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.wait(0.1):
            n += 1
            with open(self.path, "ab") as fh:
                fh.write(f"late{n}@x.it,Late,{n}\n".encode())


def test_a_file_still_being_written_skips_the_run_without_counting_as_a_failure(cluster_env, sshd, smtp, workers,
                                                                                tmp_path):
    # Given a module that pauses after one failed run, whose only file is still being uploaded
    tenant = "fq-growing"
    module = f"{tenant}-import"
    apply(config(tenant, sshd, [{"id": module, "mode": "upsert",
                                 "source": {"path": f"{tenant}/in/add_*.csv", "settle_s": 1},
                                 "schedule": {"cron": ["0 3 * * *"], "start": "2099-01-01", "max_failures": 1}}]),
          tmp_path)
    path = sshd.put(f"{tenant}/in/add_000.csv", _csv(("a@x.it", "Ann", 1)))
    growing = Appender(path)
    growing.start()
    workers.start(1)
    try:
        # When it runs while the file grows
        skipped, _ = _reported(run(module)["id"], smtp)
    finally:
        growing.stop.set()
        growing.join()
    # Then the run is skipped with SOURCE_NOT_READY, not failed, and imported nothing
    assert (skipped["status"], skipped["error_code"]) == ("skipped", "SOURCE_NOT_READY")
    assert skipped["source_path"] == f"{tenant}/in/add_000.csv" and skipped["rejected_path"] is None
    assert table(tenant) == {}
    assert path.exists()
    # and the scheduler does not count it towards max_failures
    scheduler = Scheduler(clock=FixedClock(datetime(2026, 6, 1, tzinfo=UTC)), holder="pytest-growing")
    try:
        scheduler.auto_pause()
    finally:
        scheduler.close()
    with db.connect() as conn:
        assert conn.execute("SELECT paused FROM dx.modules WHERE id = %s", (module,)).fetchone()["paused"] is False

    # When the upload has ended and settled, and the module runs again
    old = time.time() - 60
    os.utime(path, (old, old))
    imported, _ = _reported(run(module)["id"], smtp)
    # Then it imports the whole file
    assert (imported["status"], imported["source_path"]) == ("completed", f"{tenant}/in/add_000.csv")
    n = path.with_name("archive").joinpath(f"add_000.csv.run{imported['id']}").read_text().count("\n") - 1
    assert imported["rows_read"] == n and n >= 2
    assert "a@x.it" in table(tenant) and len(table(tenant)) == n


def test_a_file_that_cannot_be_archived_is_a_coded_warning_of_its_run(cluster_env, sshd, smtp, workers, tmp_path,
                                                                      capsys):
    # Given an upsert module archiving into archive/, where a plain file of that name stands in the way
    tenant = "fq-archive"
    module = f"{tenant}-import"
    apply(config(tenant, sshd, [{"id": module, "mode": "upsert", "source": {"path": f"{tenant}/in/add_*.csv"}}]),
          tmp_path)
    sshd.put(f"{tenant}/in/archive", b"not a folder\n")
    sshd.put(f"{tenant}/in/add_001.csv", _csv(("a@x.it", "Ann", 1)))
    workers.start(1)

    # When the file is imported
    imported, mail = _reported(run(module)["id"], smtp)

    # Then the run completed, and says with a code that its file stays where it is (on main: a log line only)
    assert imported["status"] == "completed" and set(table(tenant)) == {"a@x.it"}
    [warning] = imported["warnings"]
    assert warning["code"] == "SOURCE_NOT_ARCHIVED" and f"{tenant}/in/add_001.csv stays where it is" in warning["message"]
    # and so do its e-mail and `dx show --json`
    assert "SOURCE_NOT_ARCHIVED" in mail
    capsys.readouterr()
    assert main(["show", str(imported["id"]), "--json"]) == 0
    assert [w["code"] for w in json.loads(capsys.readouterr().out)["warnings"]] == ["SOURCE_NOT_ARCHIVED"]
    # and the file is still there, and the next run does not import it again
    assert (sshd.root / tenant / "in" / "add_001.csv").exists()
    assert run(module)["status"] == "skipped"


def test_two_transactions_creating_a_run_of_one_module_see_each_other_s_run(cluster_env, sshd, tmp_path):
    # Given: a module, and a transaction (a scheduler's fire) that found no run going on and created one,
    # not committed yet
    from dx.shared.outbox import active_run, create_queued_run
    from dx.shared.runs import Trigger

    tenant = "fq-race"
    module = f"{tenant}-import"
    apply(config(tenant, sshd, [{"id": module, "mode": "overwrite",
                                 "source": {"path": f"{tenant}/in/add_*.csv", "files": "all"}}]), tmp_path)
    seen: list[Any] = []
    with db.connect() as first:
        assert active_run(first, module) is None
        made = create_queued_run(first, tenant, module, Trigger.SCHEDULE, None)

        # When: another transaction (the end of a files: all run) looks for a run going on meanwhile
        def other() -> None:
            with db.connect() as second:
                seen.append(active_run(second, module))
                second.rollback()
        looking = threading.Thread(target=other)
        looking.start()
        looking.join(1.0)
        # Then: it waits for the first to commit, and then finds its run (both finding none would make
        # two runs, each taking the same file)
        assert looking.is_alive() and not seen, "the second look did not wait for the first transaction"
        first.commit()
    looking.join(10)
    assert seen and seen[0] is not None and seen[0]["id"] == made
