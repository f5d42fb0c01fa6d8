"""The read-ahead of source batches: source batches made by a thread of their own, in order, errors and early stops handed on."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from dx.shared.formats import READ_AHEAD, read_ahead
from dx.shared.threads import native_name


def test_items_arrive_in_order_made_by_another_thread() -> None:
    # Given a source that notes which thread makes each item
    makers: list[str] = []

    def source() -> Iterator[int]:
        for i in range(50):
            makers.append(f"{threading.current_thread().name} {native_name()}")
            yield i
    # When read ahead / Then every item arrives once, in order, made by the read-ahead thread
    assert list(read_ahead(source())) == list(range(50))
    assert set(makers) == {"dx-parse dx-parse"}  # its name for the OS too


def test_the_source_s_error_reaches_the_caller_after_the_items_before_it() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad record")
    got: list[int] = []
    with pytest.raises(ValueError, match="bad record"):
        for item in read_ahead(source()):
            got.append(item)
    assert got == [1, 2]


def test_a_caller_that_stops_early_stops_the_thread_and_closes_the_source() -> None:
    # Given an endless source
    closed = threading.Event()
    made = 0

    def source() -> Iterator[int]:
        nonlocal made
        try:
            while True:
                made += 1
                yield made
        finally:
            closed.set()
    # When the caller takes three items and stops
    reader = read_ahead(source())
    assert [next(reader) for _ in range(3)] == [1, 2, 3]
    reader.close()
    # Then the source was closed, at most READ_AHEAD (and the one in hand) made beyond what was taken,
    # and no read-ahead thread is left
    assert closed.is_set()
    assert made <= 3 + READ_AHEAD + 1
    assert not any(t.name == "dx-parse" for t in threading.enumerate())
