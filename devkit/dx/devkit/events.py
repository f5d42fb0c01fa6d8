"""The platform's feedback events: their types, and realistic streams of them.

``platform.events`` (migration 0003) holds what the platform records about
its deliveries: each contact of a delivery is ``sent``, then ``delivered`` or
bounced (hard or soft); a delivered message may be opened (several times),
clicked, unsubscribed from, reported as spam. ``generate_events`` draws such
a stream with NumPy (vectorised, repeatable for a seed) and ``insert_events``
loads it with COPY, for demos, tests and benchmarks (``dx generate events``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

import numpy as np
import polars as pl
from psycopg import sql

from dx.shared.catalog import table_ident
from dx.shared.db import Conn


class EventType(StrEnum):
    """What happened to one message of a delivery (the CHECK of platform.events)."""

    SENT = "sent"
    DELIVERED = "delivered"
    OPEN = "open"
    CLICK = "click"
    BOUNCE_HARD = "bounce_hard"
    BOUNCE_SOFT = "bounce_soft"
    UNSUBSCRIBE = "unsubscribe"
    COMPLAINT = "complaint"


#: Probabilities of a message's fate, and of what a delivered message's reader does.
P_BOUNCE_HARD, P_BOUNCE_SOFT = 0.02, 0.03
P_OPEN, P_CLICK_GIVEN_OPEN, P_UNSUBSCRIBE, P_COMPLAINT = 0.35, 0.3, 0.004, 0.001
#: Mean hours from delivery to an open.
OPEN_DELAY_MEAN_H = 6.0
URLS = ["https://shop.example/offers?utm_source=newsletter&utm_medium=email", "https://shop.example/it/novità",
        "https://blog.example/post/\"quoted\"", "https://shop.example/cart?id=1,2,3"]
BOUNCE_REASONS = {EventType.BOUNCE_HARD: ["550 5.1.1 <{}>: mailbox unavailable", "550 5.1.2 domain not found"],
                  EventType.BOUNCE_SOFT: ["452 4.2.2 mailbox full", "421 4.7.0 try again later"]}
#: Columns of a generated stream, as COPY writes them into platform.events.
COLUMNS = ("delivery_id", "campaign_id", "contact_key", "type", "occurred_at", "detail")


def _repeat(frame: pl.DataFrame, counts: np.ndarray) -> pl.DataFrame:
    """Each row ``counts[i]`` times."""
    return frame.select(pl.all().repeat_by(pl.Series(counts, dtype=pl.UInt32))).explode(frame.columns)


def generate_events(deliveries: int, contact_keys: list[str], *, seed: int = 7, first_delivery: int = 1,
                    start: datetime | None = None) -> pl.DataFrame:
    """A realistic event stream of ``deliveries`` sends to every contact, in time order."""
    rng = np.random.default_rng(seed)
    start = start or datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    n_contacts = len(contact_keys)
    n = deliveries * n_contacts
    delivery = np.repeat(np.arange(first_delivery, first_delivery + deliveries), n_contacts)
    base = pl.DataFrame({
        "delivery_id": delivery, "campaign_id": 1000 + delivery // 3,
        "contact_key": np.tile(np.asarray(contact_keys, dtype=object), deliveries),
        # each delivery starts a day after the previous one and takes up to 10 minutes to send
        "t": (delivery - first_delivery) * 86_400.0 + rng.uniform(0, 600, n),
    })
    fate = rng.random(n)
    hard, soft = fate < P_BOUNCE_HARD, (fate >= P_BOUNCE_HARD) & (fate < P_BOUNCE_HARD + P_BOUNCE_SOFT)
    delivered = ~(hard | soft)
    parts = [base.with_columns(pl.lit(EventType.SENT.value).alias("type"), pl.lit(None, pl.String).alias("detail"))]
    for kind, mask in ((EventType.BOUNCE_HARD, hard), (EventType.BOUNCE_SOFT, soft)):
        reasons = np.asarray(BOUNCE_REASONS[kind], dtype=object)[rng.integers(0, 2, int(mask.sum()))]
        rows = base.filter(pl.Series(mask))
        rows = rows.with_columns(pl.col("t") + rng.uniform(1, 30, rows.height), pl.lit(kind.value).alias("type"),
                                 pl.Series("detail", reasons, dtype=pl.String))
        parts.append(rows.with_columns(pl.col("detail").str.replace("{}", pl.col("contact_key"), literal=True)))
    got = base.filter(pl.Series(delivered)).with_columns(pl.col("t") + rng.uniform(1, 30, int(delivered.sum())))
    parts.append(got.with_columns(pl.lit(EventType.DELIVERED.value).alias("type"), pl.lit(None, pl.String).alias("detail")))
    opens_n = np.where(rng.random(got.height) < P_OPEN, rng.geometric(0.5, got.height), 0)
    opens = _repeat(got, opens_n)
    opens = opens.with_columns(pl.col("t") + rng.exponential(OPEN_DELAY_MEAN_H * 3600, opens.height))
    parts.append(opens.with_columns(pl.lit(EventType.OPEN.value).alias("type"), pl.lit(None, pl.String).alias("detail")))
    opened = got.filter(pl.Series(opens_n > 0))
    clicks_n = np.where(rng.random(opened.height) < P_CLICK_GIVEN_OPEN, rng.geometric(0.6, opened.height), 0)
    clicks = _repeat(opened, clicks_n)
    urls = np.asarray(URLS, dtype=object)[rng.integers(0, len(URLS), clicks.height)]
    parts.append(clicks.with_columns(pl.col("t") + rng.exponential(OPEN_DELAY_MEAN_H * 3600, clicks.height) + 60,
                                     pl.lit(EventType.CLICK.value).alias("type"),
                                     pl.Series("detail", urls, dtype=pl.String)))
    for kind, p in ((EventType.UNSUBSCRIBE, P_UNSUBSCRIBE), (EventType.COMPLAINT, P_COMPLAINT)):
        rows = got.filter(pl.Series(rng.random(got.height) < p))
        parts.append(rows.with_columns(pl.col("t") + rng.uniform(600, 86_400, rows.height),
                                       pl.lit(kind.value).alias("type"), pl.lit(None, pl.String).alias("detail")))
    events = pl.concat([p.select("delivery_id", "campaign_id", "contact_key", "t", "type", "detail") for p in parts])
    epoch_us = int(start.timestamp() * 1_000_000)
    return events.sort("t", maintain_order=True).select(
        pl.col("delivery_id").cast(pl.Int64), pl.col("campaign_id").cast(pl.Int64), "contact_key", "type",
        (pl.lit(epoch_us) + (pl.col("t") * 1_000_000).cast(pl.Int64)).cast(pl.Datetime("us", "UTC")).alias("occurred_at"),
        "detail")


def contact_keys(conn: Conn, tenant: str, database: str, primary_key: str, limit: int) -> list[str]:
    """Up to ``limit`` keys of the database's contacts, else made-up addresses."""
    keys = [r["k"] for r in conn.execute(sql.SQL("SELECT {k}::text AS k FROM {t} ORDER BY {k} LIMIT %s").format(
        k=sql.Identifier(primary_key), t=table_ident(tenant, database)), (limit,))]
    return keys or [f"user{i}@example.com" for i in range(limit)]


def next_delivery_id(conn: Conn, tenant: str, database: str) -> int:
    """The first delivery id not yet used by the database's events."""
    row = conn.execute("SELECT coalesce(max(delivery_id), 0) + 1 AS n FROM platform.events"
                       " WHERE tenant = %s AND database = %s", (tenant, database)).fetchone()
    return int(row["n"]) if row else 1


def insert_events(conn: Conn, tenant: str, database: str, events: pl.DataFrame) -> int:
    """COPY a generated stream into platform.events (in the caller's transaction); returns the count."""
    if events.is_empty():
        return 0
    conn.execute("SET LOCAL TIME ZONE 'UTC'")
    data = events.select(pl.lit(tenant).alias("tenant"), pl.lit(database).alias("database"), *COLUMNS).with_columns(
        pl.col("occurred_at").dt.replace_time_zone(None)).write_csv(include_header=False, null_value="",
                                                                     quote_style="non_numeric")
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in ("tenant", "database", *COLUMNS))
    with conn.cursor().copy(sql.SQL("COPY platform.events ({}) FROM STDIN (FORMAT csv)").format(cols)) as copy:
        copy.write(data)
    return events.height
