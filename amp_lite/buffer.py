"""Event buffers and invocation scopes.

Each invocation scope has its own buffer, found through a ContextVar, so concurrent requests in
one process (Cloud Functions gen2 serves many, in threads) each flush their own events. Events
tracked outside any scope go to the client's own buffer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .wire import BufferedEvent


class EventBuffer:
    """A list of encoded events, safe to share between threads (a lock, never a thread)."""

    __slots__ = ("_events", "_lock")

    def __init__(self) -> None:
        self._events: list[BufferedEvent] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._events)

    def append(self, event: BufferedEvent) -> None:
        with self._lock:
            self._events.append(event)

    def drain(self) -> list[BufferedEvent]:
        """Take every event out, atomically."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def put_back(self, events: Sequence[BufferedEvent]) -> None:
        """Return events taken by `drain()` ahead of any tracked since (order kept)."""
        with self._lock:
            self._events[:0] = events
