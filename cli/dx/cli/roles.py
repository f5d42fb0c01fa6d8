"""``dx worker``, ``dx scheduler`` and ``dx serve``: the long-running roles, stopped by SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import structlog

from dx.cli.command import EXIT_OK, EXIT_USAGE, Command
from dx.shared import db, probes
from dx.shared.messages import QUEUES
from dx.shared.settings import Settings, get_settings

if TYPE_CHECKING:
    import dramatiq

log = structlog.get_logger(__name__)

#: Worker threads of the worker a command starts in its own process on the embedded broker.
EMBEDDED_THREADS = 2


@contextmanager
def embedded_worker(settings: Settings) -> Iterator[dramatiq.Worker | None]:
    """With the embedded broker (DX_BROKER_URL unset), a worker in this process for the block, which
    works on the runs the block requests or fires; else None, and the workers are elsewhere. Only
    here does a command other than `dx worker` import the workers."""
    if not settings.embedded_broker:
        yield None
        return
    from dx.workers.broker import start_worker

    worker = start_worker(EMBEDDED_THREADS)
    try:
        yield worker
    finally:
        worker.stop()


def _stop_on_signals() -> threading.Event:
    """An event that SIGTERM (Kubernetes stopping the pod) or SIGINT sets."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _mail_undeliverable(settings: Settings) -> str | None:
    """Why the reports' e-mails could not go out: DX_SMTP_URL unset in a cluster (each pod would keep
    them as files of its own) while a tenant or module names recipients; else None."""
    if settings.smtp_url or settings.embedded_broker:
        return None
    with db.connect() as conn:
        due = conn.execute("SELECT EXISTS (SELECT 1 FROM dx.tenants WHERE notify <> '{}')"
                           " OR EXISTS (SELECT 1 FROM dx.modules WHERE config->'notify' <> '[]')"
                           " AS due").fetchone()
    if due is not None and due["due"]:
        return ("DX_SMTP_URL is unset, and tenants or modules have e-mail recipients: set "
                "DX_SMTP_URL=smtp://HOST:PORT (or smtps://) so that run reports reach them")
    return None


def cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.embedded_broker:
        print("dx worker: DX_BROKER_URL is unset; with the embedded broker the worker runs inside "
              "`dx run` and `dx demo`. Set DX_BROKER_URL=amqp://... to run a separate worker.", file=sys.stderr)
        return EXIT_USAGE
    from dx.workers import metrics
    from dx.workers.broker import start_worker, stop_timeout_ms

    db.ensure_schema()
    problem = settings.worker_problem() or metrics.staging_writable() or _mail_undeliverable(settings)
    if problem:
        print(f"dx worker: {problem}", file=sys.stderr)
        return EXIT_USAGE
    stop = _stop_on_signals()
    queues = args.queues or QUEUES
    worker = start_worker(args.threads or settings.worker_threads, queues)
    if settings.probe_port:
        probes.serve(settings.probe_port, metrics.registry(worker.worker_threads),
                     lambda: metrics.live(worker), metrics.ready)
    log.info("worker.started", threads=worker.worker_threads, queues=list(queues))
    stop.wait()
    wait_ms = stop_timeout_ms(queues)
    log.info("worker.stopping", wait_s=wait_ms // 1000)
    # finishes the messages in hand (a plan may take its whole time limit), returns the prefetched ones
    worker.stop(wait_ms)
    return EXIT_OK


def cmd_scheduler(args: argparse.Namespace) -> int:
    from dx.scheduler.amqp import RequestConsumer
    from dx.scheduler.loop import Scheduler

    settings = get_settings()
    db.ensure_schema()
    stop = _stop_on_signals()
    with embedded_worker(settings) as worker:
        consumer = None
        if worker is not None:  # the runs it fires are worked on in this process
            log.info("scheduler.embedded", note="DX_BROKER_URL is unset: no dx.requests consumer; "
                   "fired runs are worked on in this process")
        else:
            assert settings.broker_url is not None
            consumer = RequestConsumer(settings.broker_url, stop)
            consumer.start()
        scheduler = Scheduler(settings)
        if settings.probe_port:
            from dx.scheduler.metrics import scheduler_registry

            probes.serve(settings.probe_port, scheduler_registry(settings, lambda: scheduler.leader),
                         scheduler.live, scheduler.ready)
        scheduler.run(stop)
        if consumer is not None:
            consumer.join(10)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from dx.scheduler.http import serve

    with embedded_worker(get_settings()):  # the runs the API requests are worked on in this process
        return serve(args.host, args.port)


def _queue_list(value: str) -> tuple[str, ...]:
    """The queues of ``--queues``: known names, comma-separated, each once."""
    names = tuple(dict.fromkeys(q.strip() for q in value.split(",") if q.strip()))
    unknown = [q for q in names if q not in QUEUES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or value!r}: expected one or more of "
                                         f"{', '.join(QUEUES)}, comma-separated")
    return names


def _worker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--queues", type=_queue_list, default=None, metavar="QUEUE[,QUEUE...]",
                   help=f"consume only these queues ({', '.join(QUEUES)}; default: all), e.g. so that the "
                        "long plan messages get pods with a grace period longer than their time limit")


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8080)


COMMANDS = (
    Command("scheduler", cmd_scheduler,
            "fire schedules and consume dx.requests until SIGTERM (run 1+ replicas)", role=True),
    Command("serve", cmd_serve, "serve the HTTP API, the web console and /metrics until SIGTERM", _serve_arguments,
            role=True),
    Command("worker", cmd_worker, "consume jobs from RabbitMQ until SIGTERM", _worker_arguments, role=True),
)
