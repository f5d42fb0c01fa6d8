"""Metrics and probes of every role, scraped from the real processes during a run.

Two ``dx scheduler`` replicas, a ``dx worker`` and ``dx serve`` run as OS processes, each with its
own DX_PROBE_PORT (the API on its own port). The leading scheduler reports the cluster's gauges (queue
depth, runs by status, the oldest running run, each module's last success) and the standby only that it
does not lead; the worker reports Dramatiq's message series and the run it ended, and is scraped while
its chunks are in flight; the API reports its requests by route. The dashboard and the alert rules in
deploy/monitoring name only series that these scrapes, or RabbitMQ's Prometheus plugin, expose.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dx.cli import wait_for
from dx.devkit.generate import contacts
from dx.devkit.sshd import free_port
from dx.scheduler.requests import create_queued_run
from dx.shared import db
from dx.shared.runs import Trigger
from tests.integration.helpers import apply, config
from tests.integration.procs import answers, start, stop, until

pytestmark = pytest.mark.timeout(300)
TENANT = "metrics"
MONITORING = Path(__file__).parents[2] / "deploy" / "monitoring"
RABBITMQ_PLUGIN = "http://127.0.0.1:15692/metrics/detailed?family=queue_coarse_metrics"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, path: str = "/metrics") -> Samples:
    """Every sample at ``path`` as {(name, labels): value}."""
    response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


#: The names of a family's samples, by its type.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


def names(port: int, path: str = "/metrics") -> set[str]:
    """The sample names a role declares at ``path``, a labelled series without samples yet included."""
    text = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10).text
    return {family.name + suffix for family in text_string_to_metric_families(text)
            for suffix in SUFFIXES.get(family.type, ("",))}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def probe(port: int, path: str) -> tuple[int, dict[str, str]]:
    response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    return response.status_code, response.json()


def _status(run_id: int) -> str:
    with db.connect() as conn:
        return str(conn.execute("SELECT status FROM dx.runs WHERE id = %s", (run_id,)).fetchone()["status"])


def _oldest_running_age() -> float:
    with db.connect() as conn:
        row = conn.execute("SELECT coalesce(extract(epoch FROM now() - min(coalesce(started_at, created_at))), 0)"
                           " AS s FROM dx.runs WHERE status = 'running'").fetchone()
    return float(row["s"])


def test_every_role_reports_its_own_series_and_the_leader_the_cluster_s(cluster_env, sshd, api, tmp_path):
    # Given: an importer of 300,000 contacts, two scheduler replicas with probes, and no worker yet
    apply(config(TENANT, sshd, [{"id": "metrics-import", "mode": "overwrite",
                                 "source": {"path": "metrics/contacts.csv", "after": "keep"}}]), tmp_path)
    frame = contacts(300_000, seed=5).select("email", "first_name", "points")
    sshd.put("metrics/contacts.csv", frame.write_csv().encode())
    ports = {name: free_port() for name in ("scheduler-a", "scheduler-b", "worker")}
    env = {**cluster_env, "DX_SCHEDULER_TICK_S": "0.2", "DX_SCHEDULER_LEASE_S": "2", "DX_CHUNK_BYTES": "1000000"}
    logs = {name: tmp_path / f"{name}.log" for name in ports}
    procs = {name: start(["scheduler"], {**env, "DX_PROBE_PORT": str(ports[name])}, logs[name])
             for name in ("scheduler-a", "scheduler-b")}
    try:
        until(lambda: all(answers(f"http://127.0.0.1:{ports[n]}/healthz") for n in procs), "both schedulers answer")
        until(lambda: sum(value(scrape(ports[n]), "dx_scheduler_leader") for n in procs) == 1, "one replica leads")
        leader, standby = sorted(procs, key=lambda n: -value(scrape(ports[n]), "dx_scheduler_leader"))

        # When: a run is queued while no worker runs
        with db.transaction() as conn:
            run_id = create_queued_run(conn, TENANT, "metrics-import", Trigger.MANUAL, "pytest")
        until(lambda: value(scrape(ports[leader]), "dx_queue_messages", queue="dx.plan") == 1, "the plan waits")
        waiting = scrape(ports[leader])

        # Then: the leader reports the cluster (the plan waiting, the run running), the standby only itself
        assert value(waiting, "dx_broker_up") == 1 and value(waiting, "dx_database_up") == 1
        assert value(waiting, "dx_runs", status="queued") + value(waiting, "dx_runs", status="running") >= 1
        assert ("dx_queue_messages", (("queue", "dx.plan.XQ"),)) in waiting  # dead letters are watched too
        idle = scrape(ports[standby])
        assert value(idle, "dx_scheduler_leader") == 0
        assert not [k for k in idle if k[0].startswith(("dx_runs", "dx_queue", "dx_module"))], "a standby repeats"
        assert probe(ports[leader], "/readyz") == (200, {"status": "ok"})

        # When: a worker with probes starts, and is scraped while its chunks are in flight
        procs["worker"] = start(["worker", "--threads", "1"], {**env, "DX_PROBE_PORT": str(ports["worker"])},
                                logs["worker"])
        until(lambda: answers(f"http://127.0.0.1:{ports['worker']}/readyz"), "the worker is ready")
        busy: Samples = {}
        deadline = time.monotonic() + 120
        while not busy and time.monotonic() < deadline and _status(run_id) in ("queued", "running"):
            sample = scrape(ports["worker"])
            if value(sample, "dx_worker_threads_busy") == 1 and value(
                    sample, "dramatiq_messages_inprogress", actor_name="chunk") == 1:
                busy = sample
        run = wait_for(run_id, 180)
        until(lambda: value(scrape(ports["worker"]), "dx_worker_threads_busy") == 0, "the reduce's tail ends")
        after = scrape(ports["worker"])
        until(lambda: value(scrape(ports[leader]), "dx_queue_messages", queue="dx.plan") == 0, "the queue empties")
        done = scrape(ports[leader])
        others = _oldest_running_age()
        served = scrape(int(api.url.rsplit(":", 1)[1]))
        exposed = set().union(names(ports["worker"]), names(ports[leader]), names(int(api.url.rsplit(":", 1)[1])),
                              names(15692, RABBITMQ_PLUGIN.split(":15692", 1)[1]))
    finally:
        outs = {name: stop(proc, logs[name]) for name, proc in procs.items()}

    # Then: the worker was seen busy with a chunk, and counted the run and its rows once it ended
    assert run["status"] == "completed", (run["error_message"], outs["worker"][-2000:])
    assert busy, "never scraped the worker while a chunk was in flight"
    assert value(after, "dx_worker_threads") == 1
    assert value(after, "dramatiq_messages_total", actor_name="chunk") == run["n_chunks"] >= 2
    assert value(after, "dramatiq_message_duration_milliseconds_count", actor_name="plan") == 1
    assert value(after, "dx_runs_ended_total", module="metrics-import", status="completed") == 1
    assert value(after, "dx_rows_total", module="metrics-import", outcome="inserted") == 300_000
    # and the leader saw the plan taken, the worker consuming, the module's success
    assert value(done, "dx_queue_consumers", queue="dx.chunk") >= 1
    assert value(done, "dx_module_last_success_timestamp_seconds", module="metrics-import") > time.time() - 300
    # and the oldest running run is another test's (the suite leaves some running), never this ended one
    assert value(done, "dx_run_oldest_running_seconds") == pytest.approx(others, abs=10)
    # and the API reports its own requests by route template, none of the cluster's series
    assert value(served, "dx_http_requests_total", route="/healthz", status="200") >= 1
    assert not [k for k in served if k[0].startswith(("dx_runs", "dx_queue", "dx_scheduler"))]

    # Then: the dashboard's and the alert rules' queries name only series that exist
    for expression in _queries():
        for name in _metric_names(expression):
            assert name in exposed, f"{name!r} (in {expression!r}) is exposed by no role"


def test_a_worker_without_writable_staging_does_not_start(cluster_env, tmp_path):
    # Given: a staging folder that cannot be made (its parent is a file)
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = tmp_path / "worker.log"
    # When: a worker starts
    proc = start(["worker"], {**cluster_env, "DX_STAGING_DIR": str(blocker / "staging")}, log)
    # Then: it exits at once with a usage error that names the folder
    assert proc.wait(60) == 2
    assert f"staging folder {blocker / 'staging'} is not writable" in log.read_text()


def _queries() -> list[str]:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    exprs += [r["expr"] for group in rules["groups"] for r in group["rules"]]
    assert len(exprs) >= 8, exprs
    return exprs


#: PromQL's words that look like metric names.
PROMQL = {"sum", "max", "min", "avg", "count", "rate", "irate", "increase", "by", "without", "on", "ignoring",
          "histogram_quantile", "time", "absent", "and", "or", "unless", "le", "offset", "bool", "clamp_min",
          "delta", "deriv", "vector", "topk", "sort_desc", "max_over_time", "label_replace"}


def _metric_names(expression: str) -> set[str]:
    """The metric names in a PromQL expression (label matchers, strings and durations left out)."""
    bare = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', " ", expression)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare)) - PROMQL
    grouped = set(re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", bare))
    labels = {w.strip() for g in grouped for w in g.split(",")}
    return {w for w in words - labels if "_" in w}
