"""Event buffers and invocation scopes.

Each invocation scope has its own buffer, found through a ContextVar, so concurrent requests in
one process (Cloud Functions gen2 serves many, in threads) each flush their own events. Events
tracked outside any scope go to the client's own buffer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ._report import Tally
from ._wire import BufferedEvent


class EventBuffer:
    """A list of encoded events, safe to share between threads (a lock, never a thread).

    `early` counts events that left the buffer before its flush (overflowed because the buffer
    passed its cap); the next flush reports them, so every tracked event is accounted for.
    """

    __slots__ = ("_bytes", "_early", "_events", "_lock")

    def __init__(self) -> None:
        self._events: list[BufferedEvent] = []
        self._bytes = 0
        self._early = Tally()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def append(self, event: BufferedEvent) -> tuple[int, int]:
        """Add an event; returns the buffer's event count and encoded bytes after it."""
        with self._lock:
            self._events.append(event)
            self._bytes += len(event.raw)
            return len(self._events), self._bytes

    def take_oldest(self, *, keep_events: int, keep_bytes: int) -> list[BufferedEvent]:
        """Remove the oldest events until at most `keep_events` and `keep_bytes` remain."""
        with self._lock:
            cut = 0
            size = self._bytes
            while cut < len(self._events) and (len(self._events) - cut > keep_events
                                               or size > keep_bytes):
                size -= len(self._events[cut].raw)
                cut += 1
            taken, self._events = self._events[:cut], self._events[cut:]
            self._bytes = size
        return taken

    def drain(self) -> list[BufferedEvent]:
        """Take every event out, atomically."""
        with self._lock:
            events, self._events, self._bytes = self._events, [], 0
        return events

    def put_back(self, events: Sequence[BufferedEvent]) -> None:
        """Return events taken by `drain()` ahead of any tracked since (order kept)."""
        with self._lock:
            self._events[:0] = events
            self._bytes += sum(len(e.raw) for e in events)

    def record_early(self, tally: Tally) -> None:
        with self._lock:
            self._early.merge(tally)

    def take_early(self) -> Tally:
        with self._lock:
            early, self._early = self._early, Tally()
        return early
