"""Middleware ``TenantLimit``: at most DX_TENANT_MAX_CHUNKS chunks of one tenant are processed at once.

Consumes nothing of its own and sends one thing: a ``chunk`` or ``export_chunk`` message that finds
its tenant's slots all taken goes back to ``dx.chunk`` after a short delay (through Dramatiq's delay
queue ``dx.chunk.DQ``), and the worker thread moves on to the next message, another tenant's maybe.
One tenant's big run, whose chunks fill the queue, then takes only its slots, and the other
tenants' chunks behind them are reached and processed meanwhile; no thread ever waits for a slot.

A slot is a lease in Redis (``Leases``): one sorted set per tenant, one member per chunk in process,
scored by its expiry on Redis's own clock. The worker renews its leases while their chunks run and
releases each when its chunk ends (done, failed or killed by its time limit); a worker that dies
stops renewing, and its leases expire after DX_TENANT_LEASE_S. A deferred message is enqueued again
before the delivery in hand is acknowledged (skipped): a worker dying in between leaves two
deliveries of one chunk, and the chunk applies once (``dx.shared.runs.claim_chunk``); a skip does
not count for the group barrier, so a run's reduce is sent by its chunks' real completions. With
Redis out of reach a chunk runs without a slot (fairness lapses, no run fails for it).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, NoReturn
from urllib.parse import urlsplit

import dramatiq
import redis
import structlog
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage
from prometheus_client import Counter, Gauge, Histogram

from dx.shared import db, messages, threads
from dx.shared.settings import Settings

log = structlog.get_logger(__name__)
#: The actors whose messages take one of their tenant's slots.
LIMITED = frozenset({messages.CHUNK.name, messages.EXPORT_CHUNK.name})
#: How long a deferred chunk waits before it is tried again: at first, and at most (it doubles each time).
DEFER_FIRST_MS, DEFER_MAX_MS = 250, 2000
#: Message options: how often the message was deferred, and when first (Unix ms), for its wait.
DEFERRALS, DEFERRED_AT = "dx_deferrals", "dx_deferred_at"
#: Marks the delivery in hand as deferred, so that Dramatiq's "was skipped" warning is not logged for it.
_DEFERRING = "dx_deferring"
#: Runs whose tenant this process remembers, at most (a run's tenant never changes).
_TENANTS_KEPT = 10_000

DEFERRED = Counter("dx_tenant_chunks_deferred", "Chunk messages sent back to wait for a slot of their tenant",
                   ["tenant"])
WAITED = Histogram("dx_tenant_chunk_wait_seconds", "How long a deferred chunk waited for its tenant's slot",
                   ["tenant"], buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf")))
HELD = Gauge("dx_tenant_chunk_slots", "Slots of a tenant this process holds (chunks in process)", ["tenant"])

# KEYS[1]: the tenant's leases; ARGV: limit, lease ms, token. Expired leases go first; 1 if taken.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS[1]: the tenant's leases; ARGV: lease ms, tokens. Extends the tokens still held; returns the others.
_RENEW = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return lost
"""


class Leases:
    """The chunk slots of each tenant, as leases in Redis shared by every worker of one deployment."""

    def __init__(self, client: redis.Redis, namespace: str, limit: int, lease_s: float) -> None:
        self.client, self.limit, self.lease_ms = client, limit, int(lease_s * 1000)
        self.prefix = f"dx:{namespace}:chunk-slots:"
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)

    def key(self, tenant: str) -> str:
        return self.prefix + tenant

    def acquire(self, tenant: str) -> str | None:
        """Take one of the tenant's slots; its token, or None when all are taken."""
        token = f"{time.time_ns()}-{random.getrandbits(64):016x}"
        return token if self._acquire(keys=[self.key(tenant)], args=[self.limit, self.lease_ms, token]) else None

    def renew(self, tenant: str, tokens: list[str]) -> set[str]:
        """Extend the tenant's leases ``tokens``; those that were gone (expired, or released meanwhile)."""
        lost = self._renew(keys=[self.key(tenant)], args=[self.lease_ms, *tokens])
        return {t.decode() if isinstance(t, bytes) else str(t) for t in lost}

    def release(self, tenant: str, token: str) -> None:
        self.client.zrem(self.key(tenant), token)


def leases(settings: Settings) -> Leases:
    """The deployment's leases: in DX_REDIS_URL, named after the control database (deployments that
    share a Redis do not share slots)."""
    assert settings.redis_url is not None and settings.database_url is not None
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    namespace = urlsplit(settings.database_url).path.lstrip("/") or "dx"
    return Leases(client, namespace, settings.tenant_max_chunks, settings.tenant_lease_s)


class _QuietDeferrals(logging.Filter):
    """Drops Dramatiq's "Message ... was skipped." warning for a deferred chunk: ``chunk.deferred`` says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and isinstance(args[0], MessageProxy) and args[0].options.get(_DEFERRING))


class TenantLimit(dramatiq.Middleware):
    """Each chunk message takes a slot of its tenant before it is processed, or is deferred."""

    def __init__(self, leases: Leases) -> None:
        self.leases = leases
        self._held: dict[int, tuple[str, str]] = {}  # worker thread -> (tenant, token)
        self._tenants: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_QuietDeferrals())

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        if message.actor_name not in LIMITED:
            return
        tenant = self._tenant(int(message.kwargs["run_id"]))
        if tenant is None:  # the run is gone: the chunk finds nothing to do
            return
        try:
            token = self.leases.acquire(tenant)
        except redis.RedisError as exc:
            log.warning("chunk.slot_unavailable", tenant=tenant, error=str(exc),
                        reason="Redis is out of reach: the chunk runs without its tenant's slot")
            return
        if token is None:
            self._defer(broker, message, tenant)
        with self._lock:
            self._held[threading.get_ident()] = (tenant, token)
            self._start_renewer()
        HELD.labels(tenant).inc()
        if DEFERRED_AT in message.options:
            waited_s = max(0.0, time.time() - message.options[DEFERRED_AT] / 1000)
            WAITED.labels(tenant).observe(waited_s)
            log.info("chunk.slot_taken", tenant=tenant, waited_s=round(waited_s, 3),
                     deferrals=message.options.get(DEFERRALS, 0))

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        with self._lock:
            held = self._held.pop(threading.get_ident(), None)
        if held is None:
            return
        tenant, token = held
        HELD.labels(tenant).dec()
        try:
            self.leases.release(tenant, token)
        except redis.RedisError as exc:  # the lease expires by itself
            log.warning("chunk.slot_not_released", tenant=tenant, error=str(exc))

    after_skip_message = after_process_message

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()

    def _defer(self, broker: dramatiq.Broker, message: MessageProxy, tenant: str) -> NoReturn:
        """Send the message back to the queue after a delay and skip this delivery (SkipMessage)."""
        deferrals = int(message.options.get(DEFERRALS, 0))
        delay_ms = int(min(DEFER_MAX_MS, DEFER_FIRST_MS * 2 ** deferrals) * random.uniform(0.75, 1.25))
        first = message.options.get(DEFERRED_AT) or int(time.time() * 1000)
        broker.enqueue(message.copy(options={DEFERRALS: deferrals + 1, DEFERRED_AT: first}), delay=delay_ms)
        message.options[_DEFERRING] = True
        DEFERRED.labels(tenant).inc()
        (log.info if deferrals == 0 else log.debug)(
            "chunk.deferred", tenant=tenant, limit=self.leases.limit, deferrals=deferrals + 1, delay_ms=delay_ms,
            reason="every slot of the tenant is taken (DX_TENANT_MAX_CHUNKS)")
        raise SkipMessage

    def _tenant(self, run_id: int) -> str | None:
        tenant = self._tenants.get(run_id)
        if tenant is None:
            with db.connect() as conn:
                row = conn.execute("SELECT tenant FROM dx.runs WHERE id = %s", (run_id,)).fetchone()
            if row is None:
                return None
            if len(self._tenants) >= _TENANTS_KEPT:
                self._tenants.clear()
            tenant = self._tenants[run_id] = str(row["tenant"])
        return tenant

    def _start_renewer(self) -> None:
        """Start the thread renewing this process's leases, once (the caller holds the lock)."""
        if self._renewer is None:
            self._renewer = threads.Thread(self._renew_loop, "dx-leases")
            self._renewer.start()

    def _renew_loop(self) -> None:
        """Every third of the lease, extend the leases held by this process's chunks in process."""
        while not self._stop.wait(self.leases.lease_ms / 3000):
            with self._lock:
                by_tenant: dict[str, list[str]] = {}
                for tenant, token in self._held.values():
                    by_tenant.setdefault(tenant, []).append(token)
            for tenant, tokens in by_tenant.items():
                try:
                    lost = self.leases.renew(tenant, tokens)
                except redis.RedisError as exc:
                    log.warning("chunk.slot_not_renewed", tenant=tenant, error=str(exc))
                    continue
                with self._lock:  # a lease released meanwhile is not lost
                    expired = lost & {token for _, token in self._held.values()}
                if expired:  # this process stalled past the lease: the tenant may briefly exceed its limit
                    log.warning("chunk.slot_expired", tenant=tenant, leases=len(expired))
