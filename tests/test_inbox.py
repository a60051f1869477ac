"""The daemon's inbox: order, batch limit, timeout and backpressure with real threads."""

from __future__ import annotations

import threading

import pytest

from spmwatch.inbox import Inbox
from tests.polling import wait_for


def test_take_returns_items_in_order_up_to_the_limit() -> None:
    inbox: Inbox[int] = Inbox(10)
    for i in range(7):
        inbox.put(i)
    assert inbox.take(5, timeout=0) == [0, 1, 2, 3, 4]
    assert inbox.take(5, timeout=0) == [5, 6]
    assert inbox.take(5, timeout=0.01) == []
    assert len(inbox) == 0


def test_a_full_inbox_holds_the_producer_back_until_taken() -> None:
    inbox: Inbox[int] = Inbox(3)
    done = threading.Event()

    def produce() -> None:
        for i in range(10):
            inbox.put(i)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    wait_for(lambda: len(inbox) == 3, timeout=10)
    assert not done.is_set()  # waiting for room, not dropping
    taken: list[int] = []
    while len(taken) < 10:
        taken += inbox.take(2, timeout=10)
        assert len(inbox) <= 3
    producer.join(timeout=10)
    assert done.is_set() and taken == list(range(10))


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Inbox(0)


def test_weight_counts_against_the_capacity_and_a_heavy_item_waits_for_an_empty_inbox() -> None:
    inbox: Inbox[str] = Inbox(8)
    inbox.put("a", 5)
    assert len(inbox) == 5
    done = threading.Event()

    def produce() -> None:
        inbox.put("block", 4)  # 5 + 4 > 8: waits
        inbox.put("huge", 20)  # heavier than the capacity: waits until the inbox is empty
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not done.wait(0.2) and len(inbox) == 5
    assert inbox.take(1, timeout=1) == ["a"]
    wait_for(lambda: len(inbox) == 4, timeout=10)  # "block" went in, "huge" still waits
    assert not done.is_set()
    assert inbox.take(5, timeout=1) == ["block"]
    producer.join(timeout=10)
    assert done.is_set() and len(inbox) == 20 and inbox.take(5, timeout=1) == ["huge"]
    assert len(inbox) == 0
