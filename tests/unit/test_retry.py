"""Retry strategies driven by a scripted in-memory transport on a fake clock."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from amp_lite import _report as r
from amp_lite._deadline import Deadline
from amp_lite._reply import Reply
from amp_lite._retry import (
    MIN_ATTEMPT_S,
    BaseRetryHandler,
    OfflineRetryHandler,
    Retry,
    RetryHandler,
    SendOutcome,
)
from amp_lite._sender import Sender
from amp_lite._wire import BufferedEvent
from tests.conftest import API_KEY
from tests.support.doubles import FakeClock, ScriptedTransport

OK = Reply(200, {"code": 200})


@dataclass
class FakeSleep:
    clock: FakeClock
    calls: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append(seconds)
        self.clock.advance(seconds)


def make_events(n: int) -> list[BufferedEvent]:
    events = []
    for i in range(n):
        raw = json.dumps({"event_type": "e", "insert_id": f"id-{i}", "user_id": f"user-{i}",
                          "device_id": f"device-{i}"}).encode()
        events.append(BufferedEvent(raw=raw, insert_id=f"id-{i}", user_id=f"user-{i}",
                                    device_id=f"device-{i}"))
    return events


def make_sender(transport: ScriptedTransport, *, max_events: int = 2000,
                max_bytes: int = 1_000_000, request_timeout_s: float = 10.0) -> Sender:
    return Sender(transport=transport, api_key=API_KEY, min_id_length=None,
                  max_events=max_events, max_bytes=max_bytes,
                  request_timeout_s=request_timeout_s)


def max_jitter(low: float, high: float) -> float:
    """A deterministic 'full jitter' that always picks the ceiling."""
    return high


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


@pytest.fixture
def sleep(clock: FakeClock) -> FakeSleep:
    return FakeSleep(clock)


def handler(sleep: FakeSleep, **kwargs: Any) -> RetryHandler:
    return RetryHandler(sleep=sleep, jitter=kwargs.pop("jitter", max_jitter), **kwargs)


def run(strategy: BaseRetryHandler, transport: ScriptedTransport, events: Sequence[BufferedEvent],
        deadline: Deadline, **sender_kwargs: Any) -> SendOutcome:
    bound = strategy.bind(make_sender(transport, **sender_kwargs))
    outcome = bound.send_events_with_retry(events, deadline)
    assert_accounted(outcome, events)
    return outcome


def assert_accounted(outcome: SendOutcome, events: Sequence[BufferedEvent]) -> None:
    """Every input event is in exactly one list of the outcome (invariant I2)."""
    placed = [e.insert_id for e in outcome.delivered]
    for group in outcome.rejected.values():
        placed += [e.insert_id for e in group]
    for group in outcome.unsettled.values():
        placed += [e.insert_id for e in group]
    duplicates = [i for i, n in Counter(placed).items() if n > 1]
    assert not duplicates, f"events in more than one place: {duplicates}"
    assert sorted(placed) == sorted(e.insert_id for e in events)


def ids(events: Sequence[BufferedEvent]) -> list[str]:
    return [e.insert_id for e in events]


# -- RetryHandler -------------------------------------------------------------------------------


def test_success_on_first_try(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN a server that accepts
    transport = ScriptedTransport(clock, [OK])
    events = make_events(3)
    # WHEN the events are sent
    outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock))
    # THEN all are delivered in one attempt, without sleeping
    assert ids(outcome.delivered) == ids(events)
    assert outcome.attempts == 1
    assert sleep.calls == []
    assert transport.sizes == [3]


def test_5xx_then_200_retries_after_a_backoff(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN a server that answers 503 once, then 200
    transport = ScriptedTransport(clock, [Reply(503, {"code": 503}), OK])
    events = make_events(2)
    # WHEN the events are sent
    outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock))
    # THEN they are delivered on the second attempt after one backoff sleep
    assert ids(outcome.delivered) == ids(events)
    assert outcome.attempts == 2
    assert sleep.calls == [pytest.approx(0.1)]
    # AND the second request resent the same insert_ids
    assert transport.requests[0].insert_ids == transport.requests[1].insert_ids


@pytest.mark.parametrize("failure", [Reply(None, error="timeout"),
                                     Reply(None, error="connection"),
                                     Reply(408, None), Reply(500, None), Reply(502, None)])
def test_transient_failures_are_retried(clock: FakeClock, sleep: FakeSleep,
                                        failure: Reply) -> None:
    # GIVEN one transient failure then success
    transport = ScriptedTransport(clock, [failure, OK])
    events = make_events(1)
    # WHEN the events are sent
    outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock))
    # THEN the retry delivers them
    assert ids(outcome.delivered) == ["id-0"]
    assert outcome.attempts == 2
    assert len(sleep.calls) == 1


def test_backoff_is_exponential_and_capped(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN a server that fails 7 times, and a jitter that always picks its ceiling
    transport = ScriptedTransport(clock, [Reply(500, None)] * 7, duration_s=0.0)
    events = make_events(1)
    strategy = handler(sleep, backoff_base_s=0.1, backoff_cap_s=1.0, max_attempts=20)
    # WHEN the events are sent with plenty of time
    outcome = run(strategy, transport, events, Deadline.after(60.0, clock))
    # THEN the sleeps double from the base and stop growing at the cap
    assert sleep.calls == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert ids(outcome.delivered) == ["id-0"]
    assert outcome.attempts == 8


def test_backoff_uses_full_jitter_between_zero_and_the_ceiling(clock: FakeClock,
                                                               sleep: FakeSleep) -> None:
    # GIVEN a jitter that records the range it is asked for and picks its lower half
    asked: list[tuple[float, float]] = []

    def jitter(low: float, high: float) -> float:
        asked.append((low, high))
        return (low + high) / 4

    transport = ScriptedTransport(clock, [Reply(503, None)] * 3, duration_s=0.0)
    # WHEN three failures happen
    outcome = run(handler(sleep, jitter=jitter), transport, make_events(1),
                  Deadline.after(60.0, clock))
    # THEN the jitter is asked for [0, ceiling] each time, and its answer is slept
    assert asked == [(0.0, pytest.approx(0.1)), (0.0, pytest.approx(0.2)),
                     (0.0, pytest.approx(0.4))]
    assert sleep.calls == pytest.approx([0.025, 0.05, 0.1])
    assert outcome.attempts == 4


def test_backoff_never_sleeps_past_the_deadline(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN a server that always fails and a deadline of 1 s
    transport = ScriptedTransport(clock, [Reply(500, None)] * 100, duration_s=0.05)
    deadline = Deadline.after(1.0, clock)
    # WHEN the events are sent
    outcome = run(handler(sleep, max_attempts=100), transport, make_events(2), deadline)
    # THEN every sleep ends with at least MIN_ATTEMPT_S left, and the clock never passes the
    # deadline
    assert sleep.calls
    assert clock.now <= deadline.expires_at
    for request in transport.requests:
        assert request.remaining_s >= MIN_ATTEMPT_S
    # AND the events are left for overflow because the deadline came
    assert set(outcome.unsettled) == {r.UNSETTLED_DEADLINE}


def test_max_attempts_leaves_events_as_retries_exhausted(clock: FakeClock,
                                                         sleep: FakeSleep) -> None:
    # GIVEN a server that always fails and max_attempts=3
    transport = ScriptedTransport(clock, [Reply(502, None)] * 10, duration_s=0.0)
    events = make_events(4)
    # WHEN the events are sent with plenty of time
    outcome = run(handler(sleep, max_attempts=3), transport, events, Deadline.after(60.0, clock))
    # THEN exactly 3 attempts are made, with a sleep between each, and the events are unsettled
    assert outcome.attempts == 3
    assert len(transport.requests) == 3
    assert len(sleep.calls) == 2
    assert outcome.unsettled == {r.UNSETTLED_RETRIES_EXHAUSTED: events}
    assert not outcome.delivered


def test_deadline_leaves_remaining_events_unsettled(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN requests that take 0.3 s each, two batches of 2, a 0.5 s deadline, and a server that
    # accepts everything
    transport = ScriptedTransport(clock, [], duration_s=0.3)
    events = make_events(4)
    deadline = Deadline.after(0.5, clock)
    # WHEN the events are sent
    outcome = run(handler(sleep), transport, events, deadline, max_events=2)
    # THEN the first batch is delivered; the second does not fit (0.2 s left is enough to start,
    # the transport times out at the deadline) and is left as "deadline"
    assert ids(outcome.delivered) == ["id-0", "id-1"]
    assert ids(outcome.unsettled[r.UNSETTLED_DEADLINE]) == ["id-2", "id-3"]
    assert clock.now <= deadline.expires_at


def test_no_attempt_starts_with_less_than_min_attempt_left(clock: FakeClock,
                                                           sleep: FakeSleep) -> None:
    # GIVEN a deadline with just under MIN_ATTEMPT_S left
    transport = ScriptedTransport(clock, [OK])
    deadline = Deadline.after(MIN_ATTEMPT_S * 0.99, clock)
    events = make_events(3)
    # WHEN the events are sent
    outcome = run(handler(sleep), transport, events, deadline)
    # THEN no request is made and every event is left as "deadline"
    assert transport.requests == []
    assert outcome.attempts == 0
    assert outcome.unsettled == {r.UNSETTLED_DEADLINE: events}


def test_later_batches_are_not_started_once_time_is_short(clock: FakeClock,
                                                          sleep: FakeSleep) -> None:
    # GIVEN 3 batches of one, requests of 0.2 s, and 0.44 s of budget
    transport = ScriptedTransport(clock, [], duration_s=0.2)
    deadline = Deadline.after(0.44, clock)
    events = make_events(3)
    # WHEN the events are sent
    outcome = run(handler(sleep), transport, events, deadline, max_events=1)
    # THEN two batches go out; the third would start with 0.04 s (< MIN_ATTEMPT_S) left, so it
    # is not started and is left as "deadline"
    assert transport.sizes == [1, 1]
    assert ids(outcome.delivered) == ["id-0", "id-1"]
    assert outcome.unsettled == {r.UNSETTLED_DEADLINE: [events[2]]}
    assert clock.now <= deadline.expires_at


def test_each_request_is_given_at_most_the_time_left(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN a request timeout of 10 s and a 0.4 s deadline, and a server that hangs
    transport = ScriptedTransport(clock, [], duration_s=30.0)
    deadline = Deadline.after(0.4, clock)
    # WHEN the events are sent
    outcome = run(handler(sleep), transport, make_events(1), deadline)
    # THEN the one request times out exactly at the deadline, and nothing more is tried
    assert len(transport.requests) == 1
    assert transport.requests[0].timeout_s == 10.0
    assert clock.now == pytest.approx(deadline.expires_at)
    assert outcome.unsettled == {r.UNSETTLED_DEADLINE: make_events(1)}
    assert sleep.calls == []


def test_413_halves_until_delivered(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN a server that answers 413 to anything bigger than one event
    too_large = Reply(413, {"code": 413, "error": "Payload too large"})
    transport = ScriptedTransport(clock, [too_large, too_large, OK, OK, too_large, OK, OK])
    events = make_events(4)
    # WHEN 4 events are sent
    outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock))
    # THEN the batch is halved (4 -> 2 -> 1+1, then 2 -> 1+1), without sleeping
    assert transport.sizes == [4, 2, 1, 1, 2, 1, 1]
    assert [req.insert_ids for req in transport.requests[2:4]] == [["id-0"], ["id-1"]]
    assert sorted(ids(outcome.delivered)) == ids(events)
    assert sleep.calls == []
    assert not outcome.rejected


def test_413_halves_then_first_half_is_accepted(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN a 413 on 4 events, then acceptance of halves
    too_large = Reply(413, {"code": 413})
    transport = ScriptedTransport(clock, [too_large, OK, OK])
    events = make_events(4)
    # WHEN sent
    outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock))
    # THEN two requests of 2 follow, in order
    assert transport.sizes == [4, 2, 2]
    assert transport.requests[1].insert_ids == ["id-0", "id-1"]
    assert transport.requests[2].insert_ids == ["id-2", "id-3"]
    assert ids(outcome.delivered) == ids(events)


def test_413_on_a_single_event_rejects_it(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN a server that always answers 413
    transport = ScriptedTransport(clock, [Reply(413, {"code": 413})] * 10)
    events = make_events(2)
    # WHEN 2 events are sent
    outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock))
    # THEN each ends up alone and is rejected as too_large
    assert transport.sizes == [2, 1, 1]
    assert outcome.rejected == {r.REJECTED_TOO_LARGE: events}


def test_400_with_index_rejects_it_and_resends_rest_at_once(clock: FakeClock,
                                                            sleep: FakeSleep) -> None:
    # GIVEN a 400 naming event 1, then acceptance
    bad = Reply(400, {"code": 400, "events_with_invalid_fields": {"time": [1]}})
    transport = ScriptedTransport(clock, [bad, OK])
    events = make_events(3)
    # WHEN sent
    outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock))
    # THEN event 1 is rejected, the other two resent at once (no sleep) and delivered
    assert outcome.rejected == {r.REJECTED_INVALID: [events[1]]}
    assert transport.requests[1].insert_ids == ["id-0", "id-2"]
    assert ids(outcome.delivered) == ["id-0", "id-2"]
    assert sleep.calls == []
    assert outcome.attempts == 2


def test_400_invalid_api_key_leaves_all_for_overflow_and_logs(clock: FakeClock, sleep: FakeSleep,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a server that refuses the key
    transport = ScriptedTransport(clock, [Reply(400, {"error": f"Invalid API key: {API_KEY}"})])
    events = make_events(2)
    # WHEN sent
    with caplog.at_level("ERROR", logger="amp_lite"):
        outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock))
    # THEN all are left for overflow after one attempt, loudly, without the key in the log
    assert outcome.unsettled == {r.REFUSED_API_KEY: events}
    assert outcome.rejected == {}
    assert outcome.attempts == 1
    assert "API key" in caplog.text
    assert API_KEY not in caplog.text


def test_400_naming_nothing_halves_to_the_bad_event(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN a server that answers a bare 400 to any request containing id-2
    class Picky(ScriptedTransport):
        def post(self, body: bytes, *, timeout_s: float, deadline: Deadline) -> Reply:
            self.replies = [Reply(400, {"code": 400}) if b'"id-2"' in body else OK]
            return super().post(body, timeout_s=timeout_s, deadline=deadline)

    transport = Picky(clock)
    events = make_events(4)
    # WHEN 4 events are sent
    outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock))
    # THEN halving isolates id-2, rejected as bad_request; the others are delivered
    assert outcome.rejected == {r.REJECTED_BAD_REQUEST: [events[2]]}
    assert sorted(ids(outcome.delivered)) == ["id-0", "id-1", "id-3"]
    assert sleep.calls == []


def test_403_leaves_all_for_overflow_without_retry(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN a WAF that answers 403
    transport = ScriptedTransport(clock, [Reply(403, {"code": 403})] * 5)
    events = make_events(2)
    # WHEN sent
    outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock))
    # THEN one attempt, all left for overflow as forbidden (nothing lost, nothing rejected)
    assert outcome.attempts == 1
    assert outcome.unsettled == {r.REFUSED_FORBIDDEN: events}
    assert outcome.rejected == {}


def test_429_mixed_throttled_quota_and_others(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN events: 0 throttled, 1 throttled and over quota, 2 and 3 fine
    events = make_events(4)
    reply = Reply(429, {"code": 429, "throttled_events": [0, 1],
                        "exceeded_daily_quota_users": {"user-1": 500001}})
    transport = ScriptedTransport(clock, [reply, OK])
    # WHEN sent
    outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock))
    # THEN 0 is unsettled (throttled), 1 rejected (quota), 2 and 3 resent at once and delivered
    assert outcome.unsettled == {r.UNSETTLED_THROTTLED: [events[0]]}
    assert outcome.rejected == {r.REJECTED_DAILY_QUOTA: [events[1]]}
    assert transport.requests[1].insert_ids == ["id-2", "id-3"]
    assert ids(outcome.delivered) == ["id-2", "id-3"]
    assert sleep.calls == []


def test_unexpected_status_leaves_events_as_http_error(clock: FakeClock,
                                                       sleep: FakeSleep) -> None:
    # GIVEN a wrong URL answering 404
    transport = ScriptedTransport(clock, [Reply(404, {"code": 404})] * 3)
    events = make_events(2)
    # WHEN sent
    outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock))
    # THEN one attempt; the events are left for overflow as http_error
    assert outcome.attempts == 1
    assert outcome.unsettled == {r.UNSETTLED_HTTP_ERROR: events}


def test_batches_are_split_by_max_events(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN 7 events and max_events=3
    transport = ScriptedTransport(clock)
    events = make_events(7)
    # WHEN sent
    outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock), max_events=3)
    # THEN requests of 3, 3 and 1 go out in order
    assert transport.sizes == [3, 3, 1]
    assert [i for req in transport.requests for i in req.insert_ids] == ids(events)
    assert outcome.attempts == 3
    assert ids(outcome.delivered) == ids(events)


def test_batches_are_split_by_max_bytes(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN events and a byte limit that fits about two of them per request
    events = make_events(5)
    limit = len(events[0].raw) * 2 + 120
    transport = ScriptedTransport(clock)
    # WHEN sent
    run(handler(sleep), transport, events, Deadline.after(5.0, clock), max_bytes=limit)
    # THEN no request body reaches the limit, requests hold two events, and every event was
    # sent once, in order
    assert all(req.body_bytes < limit for req in transport.requests)
    assert transport.sizes == [2, 2, 1]
    assert [i for req in transport.requests for i in req.insert_ids] == ids(events)


def test_a_failing_batch_does_not_stop_later_batches(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN 2 batches; the first is answered with an unexpected 404
    transport = ScriptedTransport(clock, [Reply(404, {"code": 404}), OK])
    events = make_events(4)
    # WHEN sent
    outcome = run(handler(sleep), transport, events, Deadline.after(5.0, clock), max_events=2)
    # THEN the second batch is still delivered
    assert outcome.unsettled == {r.UNSETTLED_HTTP_ERROR: events[:2]}
    assert ids(outcome.delivered) == ["id-2", "id-3"]


@pytest.mark.parametrize("strategy", ["retry", "base"])
def test_a_refused_request_stops_the_flush_and_keeps_every_batch(
        clock: FakeClock, sleep: FakeSleep, strategy: str) -> None:
    # GIVEN 3 batches; the first request is refused (403), later ones would succeed
    transport = ScriptedTransport(clock, [Reply(403, {"code": 403}), OK, OK])
    events = make_events(6)
    chosen = handler(sleep) if strategy == "retry" else BaseRetryHandler()
    # WHEN sent
    outcome = run(chosen, transport, events, Deadline.after(5.0, clock), max_events=2)
    # THEN nothing more is sent after the refusal, and every event is left for overflow
    assert outcome.attempts == 1 and len(transport.requests) == 1
    assert outcome.unsettled == {r.REFUSED_FORBIDDEN: events}
    assert outcome.refused == r.REFUSED_FORBIDDEN


def test_retry_after_is_honoured_when_it_fits(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN a 503 asking for 0.7 s, then success
    transport = ScriptedTransport(clock, [Reply(503, None, retry_after_s=0.7), OK])
    # WHEN sent with 5 s of budget
    outcome = run(handler(sleep), transport, make_events(1), Deadline.after(5.0, clock))
    # THEN the handler waits the Retry-After (longer than the 0.1 s backoff) and delivers
    assert sleep.calls == pytest.approx([0.7])
    assert len(outcome.delivered) == 1


def test_retry_after_longer_than_time_left_is_deadline_without_sleeping(
        clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN a 503 asking for 30 s and a 2 s deadline
    transport = ScriptedTransport(clock, [Reply(503, None, retry_after_s=30.0), OK])
    events = make_events(3)
    deadline = Deadline.after(2.0, clock)
    # WHEN sent
    outcome = run(handler(sleep), transport, events, deadline)
    # THEN the handler does not sleep, does not retry, and leaves the events as "deadline"
    assert sleep.calls == []
    assert len(transport.requests) == 1
    assert outcome.unsettled == {r.UNSETTLED_DEADLINE: events}
    assert clock.now < deadline.expires_at


def test_handler_satisfies_the_retry_protocol(sleep: FakeSleep) -> None:
    # GIVEN / THEN every shipped strategy is a Retry
    assert isinstance(handler(sleep), Retry)
    assert isinstance(BaseRetryHandler(), Retry)
    assert isinstance(OfflineRetryHandler(), Retry)


def test_bind_returns_a_bound_copy(clock: FakeClock, sleep: FakeSleep) -> None:
    # GIVEN an unbound handler
    strategy = handler(sleep)
    # WHEN it is bound
    bound = strategy.bind(make_sender(ScriptedTransport(clock)))
    # THEN the copy has the sender and keeps the settings; the original is still unbound
    assert bound.sender is not None
    assert strategy.sender is None
    assert isinstance(bound, RetryHandler)
    assert bound.sleep is sleep


# -- BaseRetryHandler and OfflineRetryHandler ----------------------------------------------------


@pytest.mark.parametrize(("strategy", "reason"), [
    (BaseRetryHandler(), r.UNSETTLED_NOT_RETRIED),
    (OfflineRetryHandler(), r.UNSETTLED_OFFLINE),
])
def test_one_attempt_strategies_leave_failures_unretried(
        clock: FakeClock, strategy: BaseRetryHandler, reason: str) -> None:
    # GIVEN a server that fails with 500, then would accept
    transport = ScriptedTransport(clock, [Reply(500, None), OK])
    events = make_events(3)
    # WHEN sent
    outcome = run(strategy, transport, events, Deadline.after(5.0, clock))
    # THEN one attempt only, and the events are left with the strategy's reason
    assert outcome.attempts == 1
    assert len(transport.requests) == 1
    assert outcome.unsettled == {reason: events}


@pytest.mark.parametrize(("strategy", "reason"), [
    (BaseRetryHandler(), r.UNSETTLED_NOT_RETRIED),
    (OfflineRetryHandler(), r.UNSETTLED_OFFLINE),
])
def test_one_attempt_strategies_settle_what_the_reply_settles(
        clock: FakeClock, strategy: BaseRetryHandler, reason: str) -> None:
    # GIVEN a 400 naming event 0 and a 429 throttling event 3, over two batches
    transport = ScriptedTransport(clock, [
        Reply(400, {"events_with_invalid_fields": {"time": [0]}}),
        Reply(429, {"throttled_events": [1]}),
    ])
    events = make_events(4)
    # WHEN sent
    outcome = run(strategy, transport, events, Deadline.after(5.0, clock), max_events=2)
    # THEN the named event is rejected, the throttled one unsettled as throttled, and the
    # untouched ones left with the strategy's reason (not resent)
    assert outcome.rejected == {r.REJECTED_INVALID: [events[0]]}
    assert outcome.unsettled == {reason: [events[1], events[2]],
                                 r.UNSETTLED_THROTTLED: [events[3]]}
    assert outcome.attempts == 2


def test_one_attempt_strategy_delivers_on_success(clock: FakeClock) -> None:
    # GIVEN a server that accepts
    transport = ScriptedTransport(clock)
    events = make_events(5)
    # WHEN sent with the base strategy over two batches
    outcome = run(BaseRetryHandler(), transport, events, Deadline.after(5.0, clock),
                  max_events=3)
    # THEN everything is delivered
    assert ids(outcome.delivered) == ids(events)
    assert outcome.attempts == 2


def test_one_attempt_strategy_respects_the_deadline(clock: FakeClock) -> None:
    # GIVEN no time left
    transport = ScriptedTransport(clock)
    events = make_events(2)
    # WHEN sent
    outcome = run(OfflineRetryHandler(), transport, events, Deadline.after(0.0, clock))
    # THEN nothing is sent; events are left as "deadline"
    assert transport.requests == []
    assert outcome.unsettled == {r.UNSETTLED_DEADLINE: events}


@pytest.mark.parametrize("strategy", [BaseRetryHandler(), OfflineRetryHandler(),
                                      RetryHandler()])
def test_unbound_handler_raises_a_clear_error(clock: FakeClock,
                                              strategy: BaseRetryHandler) -> None:
    # GIVEN a strategy that was never bound to a Sender
    # WHEN it is asked to send
    # THEN it raises a RuntimeError that says what to do
    with pytest.raises(RuntimeError, match=r"not bound to a Sender.*Amplitude\(retry=") as info:
        strategy.send_events_with_retry(make_events(1), Deadline.after(5.0, clock))
    assert type(strategy).__name__ in str(info.value)
