"""Metrics of the control plane: the cluster's gauges from the scheduler's leader, the API's requests.

``ClusterCollector`` reads the whole cluster when Prometheus scrapes a ``dx scheduler`` replica
(DX_PROBE_PORT), and only on the replica that holds the lease: a standby reports
``dx_scheduler_leader 0`` and nothing else, so that every series is counted once however many
replicas run. Queue depth comes from RabbitMQ (a passive ``queue_declare`` per queue on a short
connection of its own; with RabbitMQ's Prometheus plugin, its own series say the same), runs and
modules from PostgreSQL. A service that does not answer shows as ``dx_broker_up 0`` /
``dx_database_up 0``; the scrape itself still succeeds.

``dx serve`` reports only its own process and requests (``api_registry``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pika
import pika.exceptions
import psycopg
import structlog
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dx.scheduler.amqp import DEAD_QUEUE, REQUESTS_QUEUE
from dx.shared import db
from dx.shared.errors import RetriableError
from dx.shared.messages import QUEUES
from dx.shared.runs import RunStatus
from dx.shared.settings import Settings

log = structlog.get_logger(__name__)
#: The exposition format Prometheus asks for by default.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: Every queue watched: each stage with Dramatiq's delay (.DQ: retries waiting out their
#: back-off) and dead-letter (.XQ) queues, and the AMQP run requests with their dead letters.
WATCHED_QUEUES = (*(f"{q}{suffix}" for q in QUEUES for suffix in ("", ".DQ", ".XQ")),
                  REQUESTS_QUEUE, DEAD_QUEUE)
#: Seconds a scrape waits for RabbitMQ before reporting it down.
BROKER_TIMEOUT_S = 3.0


def queue_stats(url: str, queues: tuple[str, ...] = WATCHED_QUEUES) -> dict[str, tuple[int, int]]:
    """(messages ready, consumers) of each existing queue; a queue not declared yet is left out."""
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = params.blocked_connection_timeout = params.stack_timeout = BROKER_TIMEOUT_S
    connection = pika.BlockingConnection(params)
    stats: dict[str, tuple[int, int]] = {}
    try:
        channel = connection.channel()
        for queue in queues:
            try:
                ok = channel.queue_declare(queue, passive=True).method
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                channel = connection.channel()  # a 404 closes the channel
                continue
            stats[queue] = (int(ok.message_count), int(ok.consumer_count))
    finally:
        if connection.is_open:
            connection.close()
    return stats


class ClusterCollector(Collector):
    """The cluster's gauges, collected at each scrape of the scheduler replica that leads."""

    def __init__(self, settings: Settings, leads: Callable[[], bool]) -> None:
        self.settings, self.leads = settings, leads

    def describe(self) -> list[GaugeMetricFamily]:
        """Nothing up front: describing would read the cluster at registration."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        leads = self.leads()
        yield GaugeMetricFamily("dx_scheduler_leader", "1 if this scheduler replica holds the lease",
                                value=1 if leads else 0)
        if leads:
            yield from self._broker()
            yield from self._database()

    def _broker(self) -> Iterator[GaugeMetricFamily]:
        if self.settings.broker_url is None:  # embedded: the queues live in this process only
            return
        up = GaugeMetricFamily("dx_broker_up", "1 if RabbitMQ answered this scrape")
        ready = GaugeMetricFamily("dx_queue_messages", "Messages ready in the queue (not yet delivered)",
                                  labels=["queue"])
        consumers = GaugeMetricFamily("dx_queue_consumers", "Consumers of the queue", labels=["queue"])
        try:
            stats = queue_stats(self.settings.broker_url)
        except pika.exceptions.AMQPError as exc:
            log.warning("metrics.broker_unreachable", error=repr(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for queue, (n_ready, n_consumers) in stats.items():
            ready.add_metric([queue], n_ready)
            consumers.add_metric([queue], n_consumers)
        yield from (up, ready, consumers)

    def _database(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("dx_database_up", "1 if PostgreSQL answered this scrape")
        try:
            with db.connect(self.settings, connect_timeout=int(BROKER_TIMEOUT_S)) as conn:
                counts = {r["status"]: int(r["n"]) for r in conn.execute(
                    "SELECT status, count(*) AS n FROM dx.runs GROUP BY status")}
                oldest = conn.execute(
                    "SELECT coalesce(extract(epoch FROM now() - min(coalesce(started_at, created_at))), 0) AS s"
                    " FROM dx.runs WHERE status = 'running'").fetchone()
                successes = conn.execute(
                    "SELECT m.tenant, m.id AS module, extract(epoch FROM max(r.finished_at)) AS at"
                    " FROM dx.modules m JOIN dx.runs r ON r.module = m.id"
                    " WHERE r.status IN ('completed', 'completed_with_errors') GROUP BY m.tenant, m.id").fetchall()
        except (RetriableError, psycopg.Error) as exc:
            log.warning("metrics.database_unreachable", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        runs = GaugeMetricFamily("dx_runs", "Runs by status (all tenants, all time)", labels=["status"])
        for status in RunStatus:
            runs.add_metric([status.value], counts.get(status.value, 0))
        age = GaugeMetricFamily("dx_run_oldest_running_seconds", "Age of the oldest running run (0: none)",
                                value=float(oldest["s"]) if oldest else 0.0)
        last = GaugeMetricFamily("dx_module_last_success_timestamp_seconds",
                                 "When the module's last completed run ended (Unix time)",
                                 labels=["tenant", "module"])
        for row in successes:
            last.add_metric([row["tenant"], row["module"]], float(row["at"]))
        yield from (up, runs, age, last)


def scheduler_registry(settings: Settings, leads: Callable[[], bool]) -> CollectorRegistry:
    """A scheduler replica's registry: the process's own (its process, the runs it ended: skipped or
    timed out) and the cluster's gauges while it leads."""
    REGISTRY.register(ClusterCollector(settings, leads))
    return REGISTRY


class ApiMetrics:
    """``dx serve``'s own series: its process, and its requests by route and status."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.requests = Counter("dx_http_requests", "HTTP requests answered, by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.duration = Histogram("dx_http_request_duration_seconds", "Time to answer an HTTP request, by route",
                                  ["route"], registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(route).observe(seconds)
