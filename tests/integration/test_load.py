"""Load: 50 small runs of 10 tenants requested at once beside another tenant's 10,000,000-row
overwrite, on three ``dx worker`` processes. Every run completes exactly, and the per-tenant chunk
limit (DX_TENANT_MAX_CHUNKS) keeps each small run's wait, request to end, far below the big run's.

The waits are printed and written to ``load-report.md`` in the test's folder (docs/reliability.md,
"Load", keeps a measured table).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from dx.cli import wait_for
from dx.devkit.generate import contact_blocks, contacts
from dx.scheduler.requests import request_run
from dx.shared import db
from dx.shared.runs import Trigger
from tests.integration.helpers import apply, config, seed, table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BIG_ROWS = 10_000_000
SMALL_TENANTS, SMALL_RUNS = 10, 5
#: Chunks of one tenant at once in this test: on 6 worker threads and 2 cores, the big run's plan and one
#: chunk leave 4 threads, and most of the CPU, to the others (the default, 4, suits larger clusters).
TENANT_MAX_CHUNKS = 1
COLUMNS = ["email", "first_name", "points", "birth_date"]
#: A fingerprint of a contact table that ties each value to its key (``userN@...``), equal for the same
#: records in any order: (records, sum of points × N, of days since 1970 of birth_date × N, of the
#: first name's length × N).
FINGERPRINT_SQL = """SELECT count(*) AS n, sum(points::numeric * k) AS points,
  sum((birth_date - DATE '1970-01-01')::numeric * k) AS birth, sum(length(first_name)::numeric * k) AS names
FROM (SELECT *, substring(email FROM '^user([0-9]+)@')::numeric AS k FROM "tenant_loadbig".contacts) c"""


def _write_big(path: Path) -> tuple[int, int, int, int]:
    """Write the big source block by block (memory stays flat); its records' fingerprint."""
    n = points = birth = names = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        for i, block in enumerate(contact_blocks(BIG_ROWS, seed=41)):
            block = block.select(COLUMNS)
            block.write_csv(out, include_header=i == 0)
            k = block["email"].str.extract(r"^user(\d+)@").cast(pl.Int64)
            days = block["birth_date"].str.to_date("%d/%m/%Y").cast(pl.Int64)
            n += block.height
            points += int((block["points"].cast(pl.Int64) * k).sum())
            birth += int((days * k).sum())
            names += int((block["first_name"].str.len_chars().cast(pl.Int64) * k).sum())
    return n, points, birth, names


def _wait(run: dict[str, Any]) -> float:
    return (run["finished_at"] - run["created_at"]).total_seconds()


def _stages(runs: list[dict[str, Any]]) -> str:
    """The median time of the runs in each stage: queued for a plan, planning, chunks and reduce."""
    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    queued = median([(r["started_at"] - r["created_at"]).total_seconds() for r in runs])
    planning = median([(r["planned_at"] - r["started_at"]).total_seconds() for r in runs])
    rest = median([(r["finished_at"] - r["planned_at"]).total_seconds() for r in runs])
    return f"queued {queued:.2f} s, plan {planning:.2f} s, chunks and reduce {rest:.2f} s"


def _cpu() -> str:
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")]
    return f"{models[0]} × {len(models)}" if models else platform.processor()


def _deferrals(logs: list[Path]) -> tuple[int, float]:
    """Chunk messages deferred at least once (all tenants), and the longest wait for a slot, from the logs."""
    deferred, longest = 0, 0.0
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if '"chunk.' not in line:
                continue
            event = json.loads(line)
            if event.get("event") == "chunk.deferred":
                deferred += 1
            elif event.get("event") == "chunk.slot_taken":
                longest = max(longest, float(event["waited_s"]))
    return deferred, longest


def test_fifty_small_runs_beside_a_ten_million_row_run_all_complete_with_bounded_waits(
        cluster_env, sshd, smtp, workers, tmp_path, capsys):
    # Given: tenant loadbig's overwrite of a 10,000,000-row file; 10 tenants with 5 append modules each,
    # each module's file of 100-1,000 records; three workers of two threads, a tenant holding at most
    # TENANT_MAX_CHUNKS chunks at once
    free_gb = shutil.disk_usage(tmp_path).free / 1e9
    assert free_gb > 8, f"the load test needs about 8 GB of disk (source, staging, tables); {free_gb:.1f} GB free"
    started = time.monotonic()
    big_path = sshd.root / "loadbig" / "contacts.csv"
    fingerprint = _write_big(big_path)
    sshd.adopt(big_path)
    big_mb = big_path.stat().st_size / 1e6  # the run archives the file
    generated_s = time.monotonic() - started
    apply(config("loadbig", sshd, [{"id": "loadbig-overwrite", "mode": "overwrite",
                                    "source": {"path": "loadbig/contacts.csv"}}]), tmp_path)
    seed("loadbig", [("old@x.it", "Old", 1)])
    small: dict[str, pl.DataFrame] = {}
    for t in range(SMALL_TENANTS):
        tenant = f"load{t}"
        modules = []
        for r in range(SMALL_RUNS):
            module = f"{tenant}-append{r}"
            rows = 100 + (t * SMALL_RUNS + r) * 900 // (SMALL_TENANTS * SMALL_RUNS - 1)
            small[module] = contacts(rows, seed=100 + t * SMALL_RUNS + r, start=(t * SMALL_RUNS + r) * 10_000
                                     ).select(COLUMNS)
            sshd.put(f"{tenant}/in_{r}.csv", small[module].write_csv().encode())
            modules.append({"id": module, "mode": "append", "source": {"path": f"{tenant}/in_{r}.csv"}})
        apply(config(tenant, sshd, modules), tmp_path)
    workers.env["DX_TENANT_MAX_CHUNKS"] = str(TENANT_MAX_CHUNKS)
    workers.start(3, threads=2)

    # When: the big run is requested, then the 50 small ones at once while its chunks fill the queue
    big_id = request_run("loadbig-overwrite", Trigger.MANUAL, "pytest")
    deadline = time.monotonic() + 300
    while True:
        with db.connect() as conn:
            done = conn.execute("SELECT count(*) AS n FROM dx.chunk_results WHERE run_id = %s",
                                (big_id,)).fetchone()["n"]
        if done:
            break
        assert time.monotonic() < deadline, "the big run applied no chunk within 300 s"
        time.sleep(0.05)
    small_ids = {module: request_run(module, Trigger.MANUAL, "pytest") for module in small}
    small_runs = {module: wait_for(run_id, 600) for module, run_id in small_ids.items()}
    big = wait_for(big_id, 900)

    # Then: every run completed and every table is exact
    assert big["status"] == "completed", big["error_message"]
    assert (big["rows_read"], big["inserted"], big["not_inserted"]) == (BIG_ROWS, BIG_ROWS, 0)
    with db.connect() as conn:
        got = conn.execute(FINGERPRINT_SQL).fetchone()
    assert (got["n"], got["points"], got["birth"], got["names"]) == fingerprint
    for t in range(SMALL_TENANTS):
        expected = {}
        for r in range(SMALL_RUNS):
            module = f"load{t}-append{r}"
            run = small_runs[module]
            assert run["status"] == "completed", (module, run["error_message"])
            assert run["inserted"] == run["rows_read"] == small[module].height
            expected.update({row["email"]: (row["first_name"], int(row["points"]), row["birth_date"])
                             for row in small[module].iter_rows(named=True)})
        assert {k: (v[0], v[1], v[2].strftime("%d/%m/%Y")) for k, v in table(f"load{t}").items()} == expected

    # Then: each small run's wait, request to end, is reported; the longest stays far below the big run's
    waits = sorted(_wait(run) for run in small_runs.values())
    big_s = _wait(big)
    deferred, longest_slot_wait = _deferrals(sorted(workers.logdir.glob("worker-*.log")))
    report = "\n".join([
        f"## Load: {SMALL_TENANTS * SMALL_RUNS} small runs beside a {BIG_ROWS:,}-row overwrite",
        "",
        f"`pytest -m slow tests/integration/test_load.py` — CPU {_cpu()}, {os.cpu_count()} cores; 3 workers × 2 threads, DX_TENANT_MAX_CHUNKS={TENANT_MAX_CHUNKS}",
        "",
        "| measure | s |",
        "| --- | ---: |",
        f"| source generated (10M rows, {big_mb:,.0f} MB) | {generated_s:.1f} |",
        f"| big run, request to end ({big['n_chunks']} chunks) | {big_s:.1f} |",
        f"| small run wait, min | {waits[0]:.2f} |",
        f"| small run wait, median | {waits[len(waits) // 2]:.2f} |",
        f"| small run wait, 90th percentile | {waits[int(len(waits) * 0.9)]:.2f} |",
        f"| small run wait, max | {waits[-1]:.2f} |",
        f"| longest wait of a chunk for its tenant's slot | {longest_slot_wait:.2f} |",
        "",
        f"Chunk messages deferred at least once: {deferred}. Small runs' stages (medians): "
        f"{_stages(list(small_runs.values()))}.",
        "",
        "Every small run's wait (s), request to end: " + ", ".join(f"{w:.2f}" for w in waits),
    ])
    (tmp_path / "load-report.md").write_text(report + "\n")
    with capsys.disabled():
        print(f"\n{report}\n(report: {tmp_path / 'load-report.md'})")
    assert waits[-1] <= big_s / 3, f"a small run waited {waits[-1]:.1f} s beside a big run of {big_s:.1f} s"
