"""Event buffers and the invocation scopes that own them.

Each invocation scope has its own buffer, found through a ContextVar, so concurrent requests in
one process (Cloud Functions gen2 serves many, in threads) each flush their own events. Events
tracked outside any scope go to the client's own buffer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar, Token

from . import _report as r
from ._deadline import Deadline
from ._report import DeliveryReport, Tally
from ._wire import BufferedEvent

logger = logging.getLogger("amp_lite")

TimeLeft = Callable[[], float]  # seconds the invocation has left, read when the flush starts
FlushBuffer = Callable[["EventBuffer", Deadline], DeliveryReport]  # must never raise


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

    def take_all(self) -> list[BufferedEvent]:
        """Take every event out, atomically."""
        with self._lock:
            events, self._events, self._bytes = self._events, [], 0
        return events

    def put_back(self, events: Sequence[BufferedEvent]) -> None:
        """Return events taken by `take_all()` ahead of any tracked since (order kept)."""
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


class Scopes:
    """Which buffer `track()` appends to: the innermost open invocation scope in this context,
    else the client's own buffer."""

    def __init__(self, name: str) -> None:
        self.outside = EventBuffer()
        self._current: ContextVar[EventBuffer | None] = ContextVar(name, default=None)

    def current(self) -> EventBuffer:
        scope = self._current.get()
        return self.outside if scope is None else scope

    def enter(self, buffer: EventBuffer) -> Token[EventBuffer | None]:
        return self._current.set(buffer)

    def leave(self, token: Token[EventBuffer | None]) -> None:
        with contextlib.suppress(ValueError):  # left in another context: nothing to restore
            self._current.reset(token)


class Invocation:
    """A per-invocation scope (a context manager): its own buffer, flushed at exit.

    The flush deadline is the smaller of `flush_timeout_s` and what is left of the invocation
    (`time_left()`, or `timeout_s` from the start of the block, when known) minus
    `margin_ms`. The flush at exit never raises: problems
    are logged and counted in `report`. Made by `Amplitude.invocation()`.
    """

    def __init__(self, scopes: Scopes, flush_buffer: FlushBuffer, *, flush_timeout_s: float,
                 time_left: TimeLeft | None, margin_ms: float,
                 timeout_s: float | None = None) -> None:
        self.buffer = EventBuffer()
        self.report: DeliveryReport | None = None
        self._scopes = scopes
        self._flush_buffer = flush_buffer
        self._flush_timeout_s = flush_timeout_s
        self._time_left = time_left
        self._timeout_s = timeout_s  # counted from the start of the `with` block
        self._margin_s = max(0.0, margin_ms) / 1000
        self._token: Token[EventBuffer | None] | None = None

    def __enter__(self) -> Invocation:
        if self._timeout_s is not None:
            self._time_left = countdown(self._timeout_s)
        self._token = self._scopes.enter(self.buffer)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            self._scopes.leave(self._token)
        self.report = self.flush()

    def flush(self) -> DeliveryReport:
        """Flush this scope's buffer now, within what is left of the invocation."""
        try:
            return self._flush_buffer(self.buffer, self.flush_deadline())
        except Exception:
            logger.exception("amp_lite: flush at the end of an invocation failed")
            lost = len(self.buffer.take_all())
            return DeliveryReport(tracked=lost, dropped=lost,
                                  dropped_reasons={r.DROPPED_INTERNAL: lost} if lost else {})

    def flush_deadline(self) -> Deadline:
        budget = self._flush_timeout_s
        if self._time_left is not None:
            budget = min(budget, self._time_left() - self._margin_s)
        return Deadline.after(max(0.0, budget))


def countdown(seconds: float) -> TimeLeft:
    """What is left of `seconds` counted from now."""
    ends_at = time.monotonic() + seconds
    return lambda: ends_at - time.monotonic()


def from_milliseconds(remaining_time_ms: Callable[[], int]) -> TimeLeft:
    """Seconds left, from a function giving milliseconds (Lambda's context method)."""
    return lambda: remaining_time_ms() / 1000
