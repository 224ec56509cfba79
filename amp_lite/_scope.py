"""Event buffers and the invocation scopes that own them.

Each invocation scope has its own buffer, found through a ContextVar, so concurrent requests in
one process (Cloud Functions gen2 serves many, in threads) each flush their own events. Events
tracked outside any scope go to the client's own buffer: a thread the handler started (threads
do not inherit contextvars), a callback, code in a decorator around ours. So that none is
stranded there, every scope's flush also takes what reached the client's own buffer in the
meantime (the report counts them as `outside`). A scope's buffer is closed at its exit: events
tracked into it afterwards (a thread that copied the context and outlived the handler) go to the
client's own buffer too, for the next flush.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar, Token
from typing import Protocol

from . import _report as r
from ._deadline import Deadline
from ._report import DeliveryReport, Tally
from ._wire import BufferedEvent

logger = logging.getLogger("amp_lite")

TimeLeft = Callable[[], float]  # seconds the invocation has left, read when the flush starts


class Flusher(Protocol):
    """What a scope flushes with (the client): both never raise."""

    def flush_scope(self, buffer: EventBuffer, deadline: Deadline, *,
                    request_id: str | None = None) -> DeliveryReport: ...

    def aflush_scope(self, buffer: EventBuffer, deadline: Deadline, *,
                     request_id: str | None = None) -> Awaitable[DeliveryReport]: ...


class EventBuffer:
    """A list of encoded events, safe to share between threads (a lock, never a thread).

    `early` counts events that left the buffer before its flush (overflowed because the buffer
    passed its cap); the next flush reports them, so every tracked event is accounted for.
    """

    __slots__ = ("_bytes", "_closed", "_early", "_events", "_lock")

    def __init__(self) -> None:
        self._events: list[BufferedEvent] = []
        self._bytes = 0
        self._early = Tally()
        self._closed = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Accept no more events (the scope exited); what is in it stays to be flushed."""
        with self._lock:
            self._closed = True

    def append(self, event: BufferedEvent) -> tuple[int, int] | None:
        """Add an event; returns the buffer's event count and encoded bytes after it, or None
        (the event not added) when the buffer is closed."""
        with self._lock:
            if self._closed:
                return None
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
        return self.outside if scope is None or scope.closed else scope

    def enter(self, buffer: EventBuffer) -> Token[EventBuffer | None]:
        return self._current.set(buffer)

    def leave(self, token: Token[EventBuffer | None]) -> None:
        with contextlib.suppress(ValueError):  # left in another context: nothing to restore
            self._current.reset(token)


class Invocation:
    """A per-invocation scope (a context manager): its own buffer, flushed at exit.

    Use it with `with` or `async with` (whose exit awaits the async flush, `aflush()`). The
    flush deadline is the smaller of `flush_timeout_s` and what is left of the invocation
    (`time_left()`, or `timeout_s` from the start of the block, when known) minus
    `margin_ms`. The flush at exit never raises: problems are logged and counted in `report`.
    Made by `Amplitude.invocation()`.
    """

    def __init__(self, scopes: Scopes, flusher: Flusher, *, flush_timeout_s: float,
                 time_left: TimeLeft | None, margin_ms: float,
                 timeout_s: float | None = None) -> None:
        self.buffer = EventBuffer()
        self.report: DeliveryReport | None = None
        self._scopes = scopes
        self._flusher = flusher
        self._flush_timeout_s = flush_timeout_s
        self._time_left = time_left
        self._timeout_s = timeout_s  # counted from the start of the `with` block
        self._margin_s = max(0.0, margin_ms) / 1000
        self._token: Token[EventBuffer | None] | None = None
        request_id = getattr(time_left, "request_id", None)  # a Lambda invocation's
        self.request_id: str | None = request_id if isinstance(request_id, str) else None

    def __enter__(self) -> Invocation:
        self.enter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
        self.report = self.flush()

    async def __aenter__(self) -> Invocation:
        self.enter()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        self.report = await self.aflush()

    def enter(self) -> None:
        """Make this scope the current one in this context (what `with` does first). May be
        called again after `leave()`, to track into the scope from elsewhere (a streamed
        body); `timeout_s` counts from the first call."""
        if self._timeout_s is not None and self._time_left is None:
            self._time_left = countdown(self._timeout_s)
        if self._token is None and self._scopes.current() is not self._scopes.outside:
            self.request_id = None  # nested in another scope: the outer one hands off
        self._token = self._scopes.enter(self.buffer)

    def leave(self) -> None:
        """Stop being the current scope in this context; the scope stays open."""
        if self._token is not None:
            self._scopes.leave(self._token)
            self._token = None

    def close(self) -> None:
        """Leave, and accept no more events (what `with` does before its flush): events tracked
        into this scope from now on go to the client's own buffer."""
        self.leave()
        self.buffer.close()

    def flush(self) -> DeliveryReport:
        """Flush this scope's buffer (and the client's own) now, within what is left of the
        invocation."""
        try:
            return self._flusher.flush_scope(self.buffer, self.flush_deadline(),
                                             request_id=self.request_id)
        except Exception:
            return self._failed()

    async def aflush(self) -> DeliveryReport:
        """`flush()`, awaiting the network instead of blocking the event loop (with the
        `amp-lite[async]` extra; without it, the same as `flush()`)."""
        try:
            return await self._flusher.aflush_scope(self.buffer, self.flush_deadline(),
                                                    request_id=self.request_id)
        except Exception:
            return self._failed()

    def _failed(self) -> DeliveryReport:
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


class InvocationTime:
    """What is left of a Lambda invocation, in seconds (a TimeLeft), and the invocation's
    request id, which a hand-off to the amp-lite extension names."""

    __slots__ = ("_seconds_left", "request_id")

    def __init__(self, seconds_left: TimeLeft, request_id: str | None = None) -> None:
        self._seconds_left = seconds_left
        self.request_id = request_id if isinstance(request_id, str) else None

    def __call__(self) -> float:
        return self._seconds_left()


def from_milliseconds(remaining_time_ms: Callable[[], int],
                      request_id: str | None = None) -> TimeLeft:
    """Seconds left, from a function giving milliseconds (Lambda's context method)."""
    return InvocationTime(lambda: remaining_time_ms() / 1000, request_id)
