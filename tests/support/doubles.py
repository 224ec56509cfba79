"""Test doubles shared by the unit and integration tests.

- `FakeClock`: a monotonic clock that only moves when told to.
- `ScriptedTransport`: an in-memory `Transport` on a `FakeClock` that answers from a script.
- `RecordingSink`: an `OverflowSink` that takes every write and remembers it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from amp_lite import BufferedEvent, Deadline
from amp_lite._reply import Reply

if TYPE_CHECKING:
    from amp_lite.testing import FakeAmplitude

_ACCEPTED = Reply(200, {"code": 200})


# -- clock ----------------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that only moves when told to, and never backwards.

    Call it for the time (`clock()`, as `Deadline` does); `now` is the same reading.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, f"a monotonic clock cannot go back {seconds} s"
        self.now += seconds


# -- Lambda's context object ---------------------------------------------------------------------


class LambdaContext:
    """Lambda's context: remaining time counts down from `remaining_ms` at construction."""

    function_name = "amp-test"
    function_version = "$LATEST"
    memory_limit_in_mb = "256"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:amp-test"
    aws_request_id = "00000000-1111-2222-3333-444444444444"
    log_group_name = "/aws/lambda/amp-test"
    log_stream_name = "test"

    def __init__(self, remaining_ms: int) -> None:
        self._deadline = time.monotonic() + remaining_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


# -- transport ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One scripted exchange: the reply and how long the server takes to give it."""

    reply: Reply
    duration_s: float


@dataclass(frozen=True)
class Request:
    """One request as `ScriptedTransport` saw it."""

    insert_ids: list[str]
    started_at: float  # the clock when the request began
    remaining_s: float  # time left on the deadline the attempt was given
    timeout_s: float
    body_bytes: int


class ScriptedTransport:
    """An in-memory transport that answers from `replies` in order, then 200 `{"code": 200}`.

    Each scripted item is a `Reply`, which takes `duration_s` on the fake clock, or a `Step`
    with its own duration. It honours the time it is allowed like a socket would: a request
    allowed less time (`deadline.clamp(timeout_s)`) than the reply takes advances the clock by
    the allowed time and returns a timeout. `replies` is a plain list and may be replaced
    between requests (by a subclass, say).

    It records every request in `requests`, and in `accepted` the insert_ids of every request
    answered 2xx with a body.
    """

    def __init__(self, clock: FakeClock, replies: Iterable[Reply | Step] = (), *,
                 duration_s: float = 0.01) -> None:
        self.clock = clock
        self.replies: list[Reply | Step] = list(replies)
        self.duration_s = duration_s
        self.requests: list[Request] = []
        self.accepted: list[str] = []

    def post(self, body: bytes, *, timeout_s: float, deadline: Deadline) -> Reply:
        insert_ids = [e["insert_id"] for e in json.loads(body)["events"]]
        self.requests.append(Request(insert_ids, self.clock(), deadline.remaining_s(),
                                     timeout_s, len(body)))
        step = self._next_step()
        allowed = deadline.clamp(timeout_s)
        if step.duration_s > allowed:
            self.clock.advance(allowed)
            return Reply(None, error="timeout")
        self.clock.advance(step.duration_s)
        reply = step.reply
        if reply.status is not None and 200 <= reply.status < 300 and reply.body is not None:
            self.accepted += insert_ids
        return reply

    async def apost(self, body: bytes, *, timeout_s: float, deadline: Deadline) -> Reply:
        """`post` for the async flush: the same script, the same fake clock."""
        return self.post(body, timeout_s=timeout_s, deadline=deadline)

    def _next_step(self) -> Step:
        item = self.replies.pop(0) if self.replies else _ACCEPTED
        return item if isinstance(item, Step) else Step(item, self.duration_s)

    @property
    def sizes(self) -> list[int]:
        """The number of events in each request, in order."""
        return [len(request.insert_ids) for request in self.requests]

    @property
    def started_with_s(self) -> list[float]:
        """The time left on the deadline at the start of each request, in order."""
        return [request.remaining_s for request in self.requests]


# -- overflow sink --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One call of `RecordingSink.write`."""

    events: list[BufferedEvent]
    reason: str
    attempts: int
    deadline: Deadline
    min_id_length: int | None
    at: float  # the sink's clock when the write happened
    delivered_before: int  # events the sink's FakeAmplitude had accepted by then (0 if none)


class RecordingSink:
    """An overflow sink that takes every write and keeps it, in order, in `writes`.

    `clock` times the writes (`written_at`); give it the test's `FakeClock`. With `fake`, each
    write also notes how many events that FakeAmplitude had accepted before it.

    `written` lists `(insert_id, reason)` per event, or, with `by_write=True`,
    `([insert_id, ...], reason)` per write.
    """

    def __init__(self, name: str = "recording", *, reserve_s: float = 0.05,
                 clock: Callable[[], float] = time.monotonic,
                 fake: FakeAmplitude | None = None, by_write: bool = False) -> None:
        self.name = name
        self.reserve_s = reserve_s
        self.clock = clock
        self.fake = fake
        self.by_write = by_write
        self.writes: list[Write] = []

    def write(self, events: Sequence[BufferedEvent], *, reason: str, attempts: int,
              deadline: Deadline, min_id_length: int | None = None) -> None:
        delivered = len(self.fake.events) if self.fake is not None else 0
        self.writes.append(Write(list(events), reason, attempts, deadline, min_id_length,
                                 self.clock(), delivered))

    @property
    def written(self) -> list[tuple[str, str]] | list[tuple[list[str], str]]:
        if self.by_write:
            return [([e.insert_id for e in w.events], w.reason) for w in self.writes]
        return [(e.insert_id, w.reason) for w in self.writes for e in w.events]

    @property
    def written_at(self) -> list[float]:
        """The clock at each write, in order."""
        return [w.at for w in self.writes]

    @property
    def insert_ids(self) -> list[str]:
        """Every event written, in order."""
        return [e.insert_id for w in self.writes for e in w.events]

    def ids(self, reason: str) -> list[str]:
        """The events written with `reason`, in order."""
        return [e.insert_id for w in self.writes if w.reason == reason for e in w.events]
