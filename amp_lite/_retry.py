"""Retry strategies: how a flush turns events into requests until they settle or time runs out.

The `Retry` protocol has one method, `send_events_with_retry(events, deadline)`, as in
Amplitude's Node SDK. Three strategies ship:

- `RetryHandler` (default): the delivery loop of docs/design.md, bounded by the deadline.
- `BaseRetryHandler`: one attempt per batch, no retry; helpers to build your own.
- `OfflineRetryHandler`: one attempt; whatever fails goes straight to the overflow sink.

The shipped strategies are written once, without I/O: `plan()` is a generator that yields the
steps it wants taken (`Attempt` a batch, `Pause` before the next) and is sent each attempt's
`Reply`. Two drivers take the steps: `send_events_with_retry` blocks (time.sleep, the
transport's `post`), `asend_events_with_retry` awaits (asyncio.sleep, the async transport), so
the sync and async flushes retry, classify and give up identically.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar, runtime_checkable

from . import _report as r
from ._checks import positive_int, positive_seconds
from ._deadline import Deadline
from ._errors import ConfigError, brief, redact
from ._reply import Reply, Verdict, classify
from ._sender import Sender
from ._value import FrozenValue, Value
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


class SendOutcome(Value):
    """What a strategy did with the events it was given. Every event lands in exactly one list."""

    _fields = ("delivered", "rejected", "unsettled", "attempts", "refused")
    __slots__ = _fields

    def __init__(self, delivered: list[BufferedEvent] | None = None,
                 rejected: dict[str, list[BufferedEvent]] | None = None,
                 unsettled: dict[str, list[BufferedEvent]] | None = None, attempts: int = 0,
                 refused: str | None = None) -> None:
        self.delivered = delivered if delivered is not None else []
        self.rejected = rejected if rejected is not None else {}
        self.unsettled = unsettled if unsettled is not None else {}
        self.attempts = attempts
        self.refused = refused  # Amplitude refused a whole request: send nothing more

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


class Attempt(FrozenValue):
    """A step of a plan: send `batch` once; the plan is sent the Reply."""

    _fields = ("batch",)
    __slots__ = _fields
    __match_args__ = ("batch",)
    batch: list[BufferedEvent]

    def __init__(self, batch: list[BufferedEvent]) -> None:
        self._set(batch=batch)


class Pause(FrozenValue):
    """A step of a plan: wait `seconds` before the next step (a backoff)."""

    _fields = ("seconds",)
    __slots__ = _fields
    __match_args__ = ("seconds",)
    seconds: float

    def __init__(self, seconds: float) -> None:
        self._set(seconds=seconds)


# A strategy's plan: yields steps, is sent a Reply after each Attempt (None after a Pause).
Plan = Generator["Attempt | Pause", "Reply | None", None]
AttemptPlan = Generator["Attempt | Pause", "Reply | None", "Verdict | None"]
Result = TypeVar("Result")


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
    binds a `Sender` (transport, API key, limits) with `bind()` before each flush. Override
    `plan()` and both the sync and the async flush follow it; a subclass that overrides
    `send_events_with_retry` instead is run by the async flush as it is (blocking)."""

    sender: Sender | None = field(default=None, repr=False)
    unretried_reason: str = r.UNSETTLED_NOT_RETRIED  # why events left after one attempt overflow

    def bind(self, sender: Sender) -> BaseRetryHandler:
        return replace(self, sender=sender)

    def send_events_with_retry(
        self, events: Sequence[BufferedEvent], deadline: Deadline
    ) -> SendOutcome:
        """Run `plan()`, blocking: each attempt through the transport, each pause asleep."""
        outcome = SendOutcome()
        self._run(self.plan(events, deadline, outcome), deadline)
        return outcome

    async def asend_events_with_retry(
        self, events: Sequence[BufferedEvent], deadline: Deadline
    ) -> SendOutcome:
        """Run `plan()` on the event loop: each attempt awaited, each pause an asyncio.sleep."""
        outcome = SendOutcome()
        await self._arun(self.plan(events, deadline, outcome), deadline)
        return outcome

    def plan(self, events: Sequence[BufferedEvent], deadline: Deadline,
             outcome: SendOutcome) -> Plan:
        """The steps to settle `events` into `outcome`: here, one attempt per batch."""
        for batch in self._bound().batches(events):
            if outcome.refused is not None:  # the next request would be refused alike
                outcome.leave(batch, outcome.refused)
                continue
            verdict = yield from self.attempt_plan(batch, deadline, outcome)
            if verdict is not None:
                outcome.leave(verdict.retry, self.unretried_reason)

    def attempt_plan(self, batch: Sequence[BufferedEvent], deadline: Deadline,
                     outcome: SendOutcome) -> AttemptPlan:
        """One attempt of `batch`, settling what the reply settles. Returns the verdict, whose
        `retry` list holds what is still unsettled; None when no attempt fitted the deadline
        (the batch is then left as `deadline`)."""
        if deadline.remaining_s() < MIN_ATTEMPT_S:
            outcome.leave(batch, r.UNSETTLED_DEADLINE)
            return None
        reply = yield Attempt(list(batch))
        assert reply is not None, "a driver sends a Reply after each Attempt"
        verdict = classify(reply, batch)
        outcome.attempts += 1
        outcome.settle(verdict)
        logger.debug("amp_lite: sent %d events: %s", len(batch),
                     redact(verdict.note, self._bound().api_key))  # a reply may echo the key
        return verdict

    def attempt(self, batch: Sequence[BufferedEvent], deadline: Deadline,
                outcome: SendOutcome) -> Verdict | None:
        """`attempt_plan` run at once, blocking: a helper for strategies of your own."""
        return self._run(self.attempt_plan(batch, deadline, outcome), deadline)

    def _run(self, plan: Generator[Attempt | Pause, Reply | None, Result],
             deadline: Deadline) -> Result:
        """The blocking driver: takes the plan's steps until it returns."""
        reply: Reply | None = None
        try:
            while True:
                step = plan.send(reply)
                if isinstance(step, Pause):
                    self.pause(step.seconds)
                    reply = None
                else:
                    reply = self._bound().send(step.batch, deadline)
        except StopIteration as done:
            result: Result = done.value
            return result

    async def _arun(self, plan: Generator[Attempt | Pause, Reply | None, Result],
                    deadline: Deadline) -> Result:
        """The async driver: the same, awaiting each attempt and each pause."""
        reply: Reply | None = None
        try:
            while True:
                step = plan.send(reply)
                if isinstance(step, Pause):
                    await self.apause(step.seconds)
                    reply = None
                else:
                    reply = await self._bound().asend(step.batch, deadline)
        except StopIteration as done:
            result: Result = done.value
            return result

    def pause(self, seconds: float) -> None:
        """How the blocking driver waits between attempts."""
        time.sleep(seconds)

    async def apause(self, seconds: float) -> None:
        """How the async driver waits between attempts: other tasks run meanwhile."""
        import asyncio  # loaded already wherever this runs; not at `import amp_lite`

        await asyncio.sleep(seconds)

    def _bound(self) -> Sender:
        if self.sender is None:
            raise RuntimeError(f"{type(self).__name__} is not bound to a Sender; "
                               "pass it to Amplitude(retry=...), which binds it")
        return self.sender


def runs_async(retry: Retry) -> bool:
    """Whether the async flush can await `retry`: it has `asend_events_with_retry`, and does not
    override `send_events_with_retry` below where that is defined (its own logic would be
    bypassed)."""
    cls = type(retry)
    if not callable(getattr(cls, "asend_events_with_retry", None)):
        return False
    sync = next(k for k in cls.__mro__ if "send_events_with_retry" in vars(k))
    asynchronous = next(k for k in cls.__mro__ if "asend_events_with_retry" in vars(k))
    return issubclass(asynchronous, sync)


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

    def plan(self, events: Sequence[BufferedEvent], deadline: Deadline,
             outcome: SendOutcome) -> Plan:
        pending = deque(self._bound().batches(events))
        while pending:
            batch = pending.popleft()
            if outcome.refused is not None:  # the next request would be refused alike
                outcome.leave(batch, outcome.refused)
            else:
                yield from self._settle_batch(batch, pending, deadline, outcome)

    def pause(self, seconds: float) -> None:
        self.sleep(seconds)

    def _settle_batch(self, batch: list[BufferedEvent], pending: deque[list[BufferedEvent]],
                      deadline: Deadline, outcome: SendOutcome) -> Plan:
        failures = 0
        while batch:
            verdict = yield from self.attempt_plan(batch, deadline, outcome)
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
                yield Pause(delay)

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
