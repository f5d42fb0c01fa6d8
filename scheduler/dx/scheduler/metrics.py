"""``/metrics``: queue depth per queue, runs by status, the scheduler leader.

Everything is read when Prometheus scrapes (a custom collector), so the
numbers are those of the whole cluster whichever API replica answers:
queue depth from RabbitMQ (a passive ``queue_declare`` per queue on a short
connection of its own), runs and the lease from PostgreSQL. A service that
does not answer shows as ``dx_broker_up 0`` / ``dx_database_up 0``; the
scrape itself still succeeds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pika.exceptions
import psycopg
import structlog
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, ProcessCollector
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


class DxCollector(Collector):
    """Collects the cluster's gauges at each scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
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
                lease = conn.execute("SELECT holder FROM dx.scheduler_lease"
                                     " WHERE name = 'scheduler' AND expires_at > now()").fetchone()
        except (RetriableError, psycopg.Error) as exc:
            log.warning("metrics.database_unreachable", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        runs = GaugeMetricFamily("dx_runs", "Runs by status (all tenants, all time)", labels=["status"])
        for status in RunStatus:
            runs.add_metric([status.value], counts.get(status.value, 0))
        leader = GaugeMetricFamily("dx_scheduler_leader", "1 for the scheduler replica holding the lease",
                                   labels=["holder"])
        if lease is not None and lease["holder"]:
            leader.add_metric([lease["holder"]], 1)
        yield from (up, runs, leader)


def registry(settings: Settings) -> CollectorRegistry:
    """A registry of this process's and the cluster's metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DxCollector(settings))
    ProcessCollector(registry=reg)
    return reg

