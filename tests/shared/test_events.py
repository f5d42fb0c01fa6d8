"""Generated event streams: realistic, consistent, the same for a seed."""

from __future__ import annotations

import polars as pl

from dx.devkit.events import EventType, generate_events

KEYS = [f"c{i}@x.io" for i in range(500)]


def test_every_message_is_sent_once_then_delivered_or_bounced():
    # Given a stream of 4 deliveries to 500 contacts
    events = generate_events(4, KEYS, seed=1, first_delivery=10)
    per = events.group_by("delivery_id", "contact_key").agg(
        *((pl.col("type") == t.value).sum().alias(t.value) for t in EventType))
    # Then each (delivery, contact) is sent once and has exactly one fate
    assert per.height == 4 * 500
    assert per["sent"].to_list() == [1] * per.height
    assert ((per["delivered"] + per["bounce_hard"] + per["bounce_soft"]) == 1).all()
    # And only delivered messages are opened, clicked, unsubscribed from or complained about
    reactions = per["open"] + per["click"] + per["unsubscribe"] + per["complaint"]
    assert (reactions.filter(per["delivered"] == 0) == 0).all()
    # And only opened messages are clicked
    assert (per.filter(pl.col("click") > 0)["open"] > 0).all()
    assert sorted(events["delivery_id"].unique().to_list()) == [10, 11, 12, 13]


def test_rates_are_realistic_and_details_are_filled_where_they_belong():
    events = generate_events(2, KEYS, seed=2)
    counts = dict(events.group_by("type").len().iter_rows())
    # Then about 95% are delivered and about a third of those opened at least once
    assert 0.9 < counts["delivered"] / counts["sent"] < 0.99
    opened = events.filter(pl.col("type") == "open").select("delivery_id", "contact_key").unique().height
    assert 0.25 < opened / counts["delivered"] < 0.45
    # And clicks carry a URL, bounces a reason, the others nothing
    detail = events.group_by("type").agg(pl.col("detail").is_null().all().alias("none"),
                                         pl.col("detail").is_not_null().all().alias("all"))
    flags = {t: (n, a) for t, n, a in detail.iter_rows()}
    assert flags["click"][1] and flags["bounce_hard"][1] and flags["bounce_soft"][1]
    assert flags["sent"][0] and flags["open"][0] and flags["delivered"][0]


def test_events_come_in_time_order_and_a_seed_repeats_the_stream():
    events = generate_events(3, KEYS[:50], seed=3)
    assert events["occurred_at"].is_sorted()
    assert events.equals(generate_events(3, KEYS[:50], seed=3))
    assert not events.equals(generate_events(3, KEYS[:50], seed=4))
