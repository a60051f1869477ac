"""The daemon's inbox: a bounded FIFO that the sources fill and the scoring thread empties in
batches.

`queue.Queue` wakes a waiting producer on every single `get`; with the inbox full (a burst)
that was a GIL round trip per line, about a sixth of the scoring thread's time. Here the
consumer takes everything waiting (up to a limit) under one lock and wakes the producers once.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """Bounded: `put` waits while `capacity` items are queued (backpressure, never loss)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"inbox capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def put(self, item: T) -> None:
        with self._not_full:
            while len(self._items) >= self.capacity:
                self._not_full.wait()
            self._items.append(item)
            self._not_empty.notify()

    def take(self, most: int, timeout: float) -> list[T]:
        """Up to `most` items in arrival order, waiting up to `timeout` s for the first; []
        when none came."""
        with self._not_empty:
            if not self._items and not self._not_empty.wait_for(lambda: self._items, timeout):
                return []
            items = self._items
            batch = [items.popleft() for _ in range(min(most, len(items)))]
            self._not_full.notify_all()
            return batch

    def __len__(self) -> int:
        return len(self._items)
