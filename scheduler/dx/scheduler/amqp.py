"""Run-now over AMQP: JSON requests on the durable queue ``dx.requests``.

A message ``{"tenant": "acme", "module": "acme-nightly-import",
"requested_by": "crm"}`` becomes a run exactly as ``dx run`` makes one
(``request_run``, trigger ``amqp``). A malformed body, an unknown module, a
tenant that does not own the module or a module of a disabled tenant is
logged with its reason and dead-lettered: republished (publisher confirms)
to the durable queue ``dx.requests.dead`` with headers ``x-dx-error-code``
and ``x-dx-reason``, then acknowledged. The queues carry no arguments, so any client may declare
them as plain durable queues. A database that is down requeues the message;
nothing crashes the consumer, which reconnects after a broker restart.
Delivery is at least once: a consumer dying between the run's commit and the
ack gets the message redelivered to another replica. A message that carries a
``message_id`` (the AMQP property) is made into a run once per tenant: a
redelivery or a client's re-send finds that run and makes no other.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import structlog

from dx.scheduler.requests import RequestIdReused, TenantDisabled, UnknownModule, request_run
from dx.shared.config import ID_PATTERN
from dx.shared.errors import ErrorCode, RetriableError
from dx.shared.runs import Trigger

log = structlog.get_logger(__name__)
REQUESTS_QUEUE = "dx.requests"
DEAD_QUEUE = "dx.requests.dead"
#: Keys a request may carry.
REQUEST_KEYS = {"tenant", "module", "requested_by"}
#: The largest request body read: a request is a few names.
MAX_BODY_BYTES = 64 * 1024
#: The longest requested_by and message_id.
MAX_NAME_CHARS = 200
#: Characters no name of a request may hold (PostgreSQL's text cannot store NUL).
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
IDENTIFIER = re.compile(ID_PATTERN)
#: Seconds between reconnection attempts, and the pause after a transient failure.
RETRY_S = 2.0


class Rejected(Exception):
    """A request that will never succeed: dead-letter it with this code and reason."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class RunRequest:
    """A well-formed request."""

    tenant: str
    module: str
    requested_by: str | None


def _name(value: object) -> bool:
    """Whether ``value`` is a name a request may carry: text of at most MAX_NAME_CHARS, no control
    character, valid Unicode."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS or CONTROL.search(value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800")
        return False
    return True


def parse_request(body: bytes) -> RunRequest:
    """Decode and check a request body; Rejected(REQUEST_MALFORMED) says what is wrong."""
    if len(body) > MAX_BODY_BYTES:
        raise Rejected(ErrorCode.REQUEST_MALFORMED, f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON's, and too long a number
        raise Rejected(ErrorCode.REQUEST_MALFORMED, f"not UTF-8 JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise Rejected(ErrorCode.REQUEST_MALFORMED, "expected a JSON object with tenant and module")
    unknown = sorted(set(doc) - REQUEST_KEYS)
    if unknown:
        raise Rejected(ErrorCode.REQUEST_MALFORMED,
                       f"unknown keys {[k[:50] for k in unknown[:5]]}; expected {sorted(REQUEST_KEYS)}")
    for key in ("tenant", "module"):
        if not isinstance(doc.get(key), str) or not IDENTIFIER.fullmatch(doc[key]):
            raise Rejected(ErrorCode.REQUEST_MALFORMED, f"{key} must be a non-empty string, an id: a lower-case "
                           "letter, then at most 39 lower-case letters, digits, _ or -")
    by = doc.get("requested_by")
    if by is not None and not _name(by):
        raise Rejected(ErrorCode.REQUEST_MALFORMED, f"requested_by must be a string of 1 to {MAX_NAME_CHARS} "
                       "characters, without control characters")
    return RunRequest(doc["tenant"], doc["module"], by)


def handle(body: bytes, message_id: str | None = None) -> int:
    """Turn one request body into a run (once per ``message_id``); Rejected if it never can."""
    req = parse_request(body)
    if message_id is not None and not _name(message_id):
        raise Rejected(ErrorCode.REQUEST_MALFORMED, f"the message_id property must be text of 1 to "
                       f"{MAX_NAME_CHARS} characters, without control characters")
    try:
        return request_run(req.module, Trigger.AMQP, req.requested_by, tenant=req.tenant, request_id=message_id)
    except UnknownModule as exc:
        raise Rejected(ErrorCode.UNKNOWN_MODULE, str(exc)) from None
    except (TenantDisabled, RequestIdReused) as exc:
        raise Rejected(exc.code, exc.message) from None


class RequestConsumer(threading.Thread):
    """Consumes ``dx.requests`` on its own connection until ``stop`` is set."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        super().__init__(name="dx.requests", daemon=True)
        self.url, self.stop = url, stop

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._consume()
            except pika.exceptions.AMQPError as exc:
                log.warning("requests.disconnected", error=repr(exc))
                self.stop.wait(RETRY_S)

    def _consume(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            channel = connection.channel()
            for queue in (REQUESTS_QUEUE, DEAD_QUEUE):
                channel.queue_declare(queue, durable=True)
            channel.confirm_delivery()
            channel.basic_qos(prefetch_count=1)
            log.info("requests.consuming", queue=REQUESTS_QUEUE)
            for method, properties, body in channel.consume(REQUESTS_QUEUE, inactivity_timeout=0.5):
                if self.stop.is_set():
                    break
                if method is not None:
                    self._one(channel, method, properties, body)
            channel.cancel()
        finally:
            if connection.is_open:
                connection.close()

    def _one(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            run_id = handle(body, properties.message_id)
        except Rejected as exc:
            self._dead_letter(channel, properties, body, exc.code, exc.reason)
        except RetriableError as exc:  # e.g. PostgreSQL restarting: try again later, keep the message
            log.warning("requests.retry", error=str(exc))
            channel.basic_nack(method.delivery_tag, requeue=True)
            self.stop.wait(RETRY_S)
            return
        except Exception as exc:  # unexpected: never crash the consumer, never lose the message
            log.exception("requests.failed")
            self._dead_letter(channel, properties, body, ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        else:
            log.info("requests.accepted", run=run_id)
        channel.basic_ack(method.delivery_tag)

    def _dead_letter(self, channel: Any, properties: Any, body: bytes, code: ErrorCode, reason: str) -> None:
        log.warning("requests.rejected", code=code.value, reason=reason, body=body[:200].decode("utf-8", "replace"))
        headers = dict(properties.headers or {}) | {"x-dx-error-code": code.value, "x-dx-reason": reason[:500]}
        channel.basic_publish("", DEAD_QUEUE, body, pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, content_type=properties.content_type,
            message_id=properties.message_id, headers=headers), mandatory=True)
