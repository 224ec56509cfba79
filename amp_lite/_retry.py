"""Retry strategies: how a flush turns events into requests until they settle or time runs out.

The `Retry` protocol has one method, `send_events_with_retry(events, deadline)`, as in
Amplitude's Node SDK. Three strategies ship:

- `RetryHandler` (default): the delivery loop of docs/design.md, bounded by the deadline.
- `BaseRetryHandler`: one attempt per batch, no retry; helpers to build your own.
- `OfflineRetryHandler`: one attempt; whatever fails goes straight to the overflow sink.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from . import _report as r
from ._checks import positive_int, positive_seconds
from ._deadline import Deadline
from ._errors import ConfigError, brief, redact
from ._reply import Verdict, classify
from ._sender import Sender
from ._wire import BufferedEvent

logger = logging.getLogger("amp_lite")

MIN_ATTEMPT_S = 0.05  # an attempt with less time than this left is not started (invariant I3)
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 2.0
DEFAULT_MAX_ATTEMPTS = 10
# The default jitter's own generator, not the global `random` (the user's to seed): environments
# restored from one SnapStart snapshot would share its state, so `_snapstart` reseeds it.
JITTER_RNG = random.Random()

_REFUSALS = {
    r.REFUSED_API_KEY: "Amplitude refused the API key (400 Invalid API key)",
    r.REFUSED_FORBIDDEN: "Amplitude answered 403 Forbidden (a WAF or IP block)",
    r.REFUSED_MISSING_FIELD: "Amplitude answered 400 missing a request-level field",
}


@dataclass
class SendOutcome:
    """What a strategy did with the events it was given. Every event lands in exactly one list."""

    delivered: list[BufferedEvent] = field(default_factory=list)
    rejected: dict[str, list[BufferedEvent]] = field(default_factory=dict)
    unsettled: dict[str, list[BufferedEvent]] = field(default_factory=dict)
    attempts: int = 0
    refused: str | None = None  # Amplitude refused a whole request: send nothing more

    @property
    def settled(self) -> int:
        """Events in any list: each event given to the strategy must be in exactly one."""
        return (len(self.delivered) + sum(map(len, self.rejected.values()))
                + sum(map(len, self.unsettled.values())))

    def settle(self, verdict: Verdict) -> None:
        self.delivered.extend(verdict.delivered)
        for reason, events in verdict.rejected.items():
            self.rejected.setdefault(reason, []).extend(events)
        if verdict.refused is not None:
            self.refused = verdict.refused
            logger.error("amp_lite: %s; the events are overflowed, not lost: fix the cause and "
                         "they are delivered later", _REFUSALS.get(verdict.refused,
                                                                   verdict.refused))
        for reason, events in verdict.unsettled.items():
            self.leave(events, reason)

    def leave(self, events: Sequence[BufferedEvent], reason: str) -> None:
        """Record events that will not be delivered in this flush (they go to overflow)."""
        if events:
            self.unsettled.setdefault(reason, []).extend(events)


@runtime_checkable
class Retry(Protocol):
    """A delivery strategy. It must put every event into exactly one list of the outcome and
    never run past `deadline`."""

    def send_events_with_retry(
        self, events: Sequence[BufferedEvent], deadline: Deadline
    ) -> SendOutcome: ...


@dataclass(frozen=True, kw_only=True)
class BaseRetryHandler:
    """One attempt per batch, no retry. Subclass it to write a strategy of your own: the client
    binds a `Sender` (transport, API key, limits) with `bind()` before each flush."""

    sender: Sender | None = field(default=None, repr=False)
    unretried_reason: str = r.UNSETTLED_NOT_RETRIED  # why events left after one attempt overflow

    def bind(self, sender: Sender) -> BaseRetryHandler:
        return replace(self, sender=sender)

    def send_events_with_retry(
        self, events: Sequence[BufferedEvent], deadline: Deadline
    ) -> SendOutcome:
        outcome = SendOutcome()
        for batch in self._bound().batches(events):
            if outcome.refused is not None:  # the next request would be refused alike
                outcome.leave(batch, outcome.refused)
                continue
            verdict = self.attempt(batch, deadline, outcome)
            if verdict is not None:
                outcome.leave(verdict.retry, self.unretried_reason)
        return outcome

    def attempt(self, batch: Sequence[BufferedEvent], deadline: Deadline,
                outcome: SendOutcome) -> Verdict | None:
        """Send `batch` once and settle what the reply settles. Returns the verdict, whose
        `retry` list holds what is still unsettled; None when no attempt fitted the deadline
        (the batch is then left as `deadline`)."""
        if deadline.remaining_s() < MIN_ATTEMPT_S:
            outcome.leave(batch, r.UNSETTLED_DEADLINE)
            return None
        verdict = classify(self._bound().send(batch, deadline), batch)
        outcome.attempts += 1
        outcome.settle(verdict)
        logger.debug("amp_lite: sent %d events: %s", len(batch),
                     redact(verdict.note, self._bound().api_key))  # a reply may echo the key
        return verdict

    def _bound(self) -> Sender:
        if self.sender is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a Sender; "
                               "pass it to Amplitude(retry=...), which binds it")
        return self.sender


@dataclass(frozen=True, kw_only=True)
class RetryHandler(BaseRetryHandler):
    """The default strategy: the delivery loop (docs/design.md, section 2).

    400 drops the named events and resends the rest at once; 413 halves the batch; 429 sends
    throttled events to overflow and resends the rest at once; 5xx, timeouts and connection
    errors back off (exponential, full jitter, clamped to the deadline) up to `max_attempts`.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_cap_s: float = BACKOFF_CAP_S
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    jitter: Callable[[float, float], float] = field(default=JITTER_RNG.uniform, repr=False)

    def __post_init__(self) -> None:  # at construction, not inside a flush
        positive_int(self.max_attempts, "RetryHandler max_attempts")
        positive_seconds(self.backoff_base_s, "RetryHandler backoff_base_s")
        positive_seconds(self.backoff_cap_s, "RetryHandler backoff_cap_s")
        for name in ("sleep", "jitter"):
            if not callable(getattr(self, name)):
                raise ConfigError(f"RetryHandler {name}: must be callable, "
                                  f"got {brief(getattr(self, name))}")

    def send_events_with_retry(
        self, events: Sequence[BufferedEvent], deadline: Deadline
    ) -> SendOutcome:
        outcome = SendOutcome()
        pending = deque(self._bound().batches(events))
        while pending:
            batch = pending.popleft()
            if outcome.refused is not None:  # the next request would be refused alike
                outcome.leave(batch, outcome.refused)
            else:
                self._settle_batch(batch, pending, deadline, outcome)
        return outcome

    def _settle_batch(self, batch: list[BufferedEvent], pending: deque[list[BufferedEvent]],
                      deadline: Deadline, outcome: SendOutcome) -> None:
        failures = 0
        while batch:
            verdict = self.attempt(batch, deadline, outcome)
            if verdict is None:
                return
            batch = verdict.retry
            if verdict.split and len(batch) > 1:
                half = len(batch) // 2
                pending.appendleft(batch[half:])
                batch = batch[:half]
            elif batch and verdict.backoff:
                failures += 1
                if failures >= self.max_attempts:
                    outcome.leave(batch, r.UNSETTLED_RETRIES_EXHAUSTED)
                    return
                delay = self._delay(failures, verdict.retry_after_s)
                if deadline.remaining_s() - delay < MIN_ATTEMPT_S:
                    outcome.leave(batch, r.UNSETTLED_DEADLINE)
                    return
                self.sleep(delay)

    def _delay(self, failures: int, retry_after_s: float | None) -> float:
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (failures - 1))
        delay = self.jitter(0.0, ceiling)
        return max(delay, retry_after_s or 0.0)


@dataclass(frozen=True, kw_only=True)
class OfflineRetryHandler(BaseRetryHandler):
    """One attempt per batch; whatever is not settled goes straight to the overflow sink.

    For functions that must return fast, or run where the network is often absent: the next
    flush (local spill) or the replay consumer (SQS) delivers the rest later.
    """

    unretried_reason: str = r.UNSETTLED_OFFLINE
