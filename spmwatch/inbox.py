"""The daemon's inbox: a bounded FIFO that the sources fill and the scoring thread empties in
batches.

`queue.Queue` wakes a waiting producer on every single `get`; with the inbox full (a burst)
that was a GIL round trip per line, about a sixth of the scoring thread's time. Here the
consumer takes everything waiting (up to a limit) under one lock, and wakes a held-back
producer only once the inbox has drained to half: each wake-up hands the GIL to the other
thread for up to a switch interval, so fewer, larger refills leave more time for scoring.

Capacity is counted in weight (the daemon weighs an item by its lines), so a block of lines
takes the room of its lines and memory stays bounded whatever the producers send.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """Bounded: `put` waits while the item would not fit (backpressure, never loss)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"inbox capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._weights: deque[int] = deque()
        self._load = 0
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def put(self, item: T, weight: int = 1) -> None:
        """Queue `item`; wait while it would overflow the capacity (an item heavier than the
        whole capacity is taken once the inbox is empty)."""
        with self._not_full:
            while self._load and self._load + weight > self.capacity:
                self._not_full.wait()
            self._items.append(item)
            self._weights.append(weight)
            self._load += weight
            self._not_empty.notify()

    def take(self, most: int, timeout: float) -> list[T]:
        """Up to `most` items in arrival order, waiting up to `timeout` s for the first; []
        when none came."""
        with self._not_empty:
            if not self._items and not self._not_empty.wait_for(lambda: self._items, timeout):
                return []
            items, weights = self._items, self._weights
            count = min(most, len(items))
            batch = [items.popleft() for _ in range(count)]
            self._load -= sum(weights.popleft() for _ in range(count))
            if 2 * self._load <= self.capacity:
                self._not_full.notify_all()
            return batch

    def __len__(self) -> int:
        """The weight waiting (the daemon's lines, counting each item as its lines)."""
        return self._load
