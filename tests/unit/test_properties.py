"""Property tests of the delivery loop: every event is accounted for exactly once (I2) and no
flush runs past its deadline (I3), whatever the server answers."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from amp_lite import Amplitude
from amp_lite._deadline import Deadline
from amp_lite._reply import Reply
from amp_lite._retry import MIN_ATTEMPT_S, RetryHandler, SendOutcome
from amp_lite._scope import EventBuffer
from amp_lite._sender import Sender
from amp_lite._wire import BufferedEvent
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.doubles import FakeClock, RecordingSink, ScriptedTransport, Step
from tests.support.raw_server import RawServer

USERS = ("user-a", "user-b", "user-c")
DEVICES = ("device-a", "device-b", "device-c")
FLOAT_SLACK_S = 1e-9


# -- fake sleep (the clock, transport and sink are in tests.support.doubles) --------------------


@dataclass
class FakeSleep:
    clock: FakeClock

    def __call__(self, seconds: float) -> None:
        self.clock.advance(seconds)


def make_event(i: int) -> BufferedEvent:
    user, device = USERS[i % len(USERS)], DEVICES[i % len(DEVICES)]
    raw = json.dumps({"event_type": "e", "insert_id": f"id-{i}", "user_id": user,
                      "device_id": device}).encode()
    return BufferedEvent(raw=raw, insert_id=f"id-{i}", user_id=user, device_id=device)


# -- strategies ---------------------------------------------------------------------------------

indices = st.lists(st.integers(min_value=-1, max_value=8), max_size=4)
retry_after = st.none() | st.floats(min_value=0.0, max_value=3.0)

replies = st.one_of(
    st.just(Reply(200, {"code": 200})),
    st.just(Reply(200, None)),
    indices.map(lambda i: Reply(400, {"code": 400, "events_with_invalid_fields": {"time": i}})),
    indices.map(lambda i: Reply(400, {"code": 400, "silenced_events": i})),
    st.just(Reply(400, {"code": 400, "error": "Invalid API key: k"})),
    st.just(Reply(400, {"code": 400, "error": "Invalid JSON request body"})),
    st.just(Reply(403, {"code": 403, "error": "Forbidden"})),
    st.just(Reply(404, {"code": 404})),
    st.just(Reply(413, {"code": 413, "error": "Payload too large"})),
    st.builds(lambda thr, qu, qd: Reply(429, {
        "code": 429, "throttled_events": thr,
        "exceeded_daily_quota_users": dict.fromkeys(qu, 500_001),
        "exceeded_daily_quota_devices": dict.fromkeys(qd, 500_001)}),
        indices, st.lists(st.sampled_from(USERS), max_size=2),
        st.lists(st.sampled_from(DEVICES), max_size=2)),
    st.builds(lambda s, ra: Reply(s, None, retry_after_s=ra),
              st.sampled_from([408, 500, 502, 503, 504]), retry_after),
    st.sampled_from(["timeout", "connection", "connection_dropped"]).map(
        lambda e: Reply(None, error=e)),
)
steps = st.lists(st.builds(Step, replies, st.floats(min_value=0.0, max_value=1.5)), max_size=25)


def sender_for(transport: ScriptedTransport, max_events: int) -> Sender:
    return Sender(transport=transport, async_transport=transport, api_key=API_KEY,
                  min_id_length=None,
                  max_events=max_events, max_bytes=1_000_000, request_timeout_s=1.0)


# -- handler level --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(script=steps, count=st.integers(min_value=0, max_value=12),
       max_events=st.integers(min_value=1, max_value=5),
       budget_s=st.floats(min_value=0.0, max_value=4.0),
       max_attempts=st.integers(min_value=1, max_value=6))
def test_handler_accounts_for_every_event_and_never_passes_the_deadline(
        script: list[Step], count: int, max_events: int, budget_s: float,
        max_attempts: int) -> None:
    # GIVEN events, a scripted server, a fake clock and a deadline on it
    clock = FakeClock()
    transport = ScriptedTransport(clock, list(script))
    events = [make_event(i) for i in range(count)]
    deadline = Deadline.after(budget_s, clock)
    strategy = RetryHandler(sleep=FakeSleep(clock), max_attempts=max_attempts).bind(
        sender_for(transport, max_events))
    # WHEN the handler sends them
    outcome = strategy.send_events_with_retry(events, deadline)
    event(f"unsettled reasons: {sorted(outcome.unsettled)}")
    # THEN every event is in exactly one place
    placed = [e.insert_id for e in outcome.delivered]
    for group in [*outcome.rejected.values(), *outcome.unsettled.values()]:
        placed += [e.insert_id for e in group]
    assert Counter(placed) == Counter(e.insert_id for e in events)
    # AND exactly the events the server accepted are delivered
    assert sorted(e.insert_id for e in outcome.delivered) == sorted(transport.accepted)
    # AND no attempt started with less than MIN_ATTEMPT_S left
    assert all(left >= MIN_ATTEMPT_S for left in transport.started_with_s)
    assert outcome.attempts == len(transport.started_with_s)
    # AND the clock never passed the deadline
    assert clock.now <= deadline.expires_at + FLOAT_SLACK_S


@dataclass(frozen=True, kw_only=True)
class FakeClockRetryHandler(RetryHandler):
    """RetryHandler whose async pauses advance the fake clock, as its `sleep` does."""

    clock: FakeClock

    async def apause(self, seconds: float) -> None:
        self.clock.advance(seconds)


def outcome_key(outcome: SendOutcome) -> tuple[object, ...]:
    return ([e.insert_id for e in outcome.delivered],
            {k: [e.insert_id for e in v] for k, v in outcome.rejected.items()},
            {k: [e.insert_id for e in v] for k, v in outcome.unsettled.items()},
            outcome.attempts, outcome.refused)


@settings(max_examples=200, deadline=None)
@given(script=steps, count=st.integers(min_value=0, max_value=12),
       max_events=st.integers(min_value=1, max_value=5),
       budget_s=st.floats(min_value=0.0, max_value=4.0), seed=st.integers())
def test_the_async_driver_sends_and_settles_exactly_as_the_blocking_one(
        script: list[Step], count: int, max_events: int, budget_s: float, seed: int) -> None:
    # GIVEN the same events, script, jitter and fake-clock deadline, twice
    events = [make_event(i) for i in range(count)]
    runs = []
    for driver in ("blocking", "async"):
        clock = FakeClock()
        transport = ScriptedTransport(clock, list(script))
        jitter = random.Random(seed).uniform
        strategy = FakeClockRetryHandler(clock=clock, sleep=FakeSleep(clock), jitter=jitter,
                                         max_attempts=4).bind(sender_for(transport, max_events))
        deadline = Deadline.after(budget_s, clock)
        # WHEN one run blocks and the other is awaited
        outcome = (strategy.send_events_with_retry(events, deadline) if driver == "blocking"
                   else asyncio.run(strategy.asend_events_with_retry(events, deadline)))
        runs.append((outcome_key(outcome), transport.requests, clock.now))
    # THEN they made the same requests at the same times and settled every event alike
    assert runs[0] == runs[1]


# -- client level (fake clock through the public flush_buffer) ------------------------------------


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=steps, count=st.integers(min_value=0, max_value=12),
       budget_s=st.floats(min_value=0.0, max_value=4.0),
       max_events=st.integers(min_value=1, max_value=5))
def test_client_flush_report_is_balanced_and_bounded(
        script: list[Step], count: int, budget_s: float, max_events: int) -> None:
    # GIVEN a client with a scripted transport, a recording sink and a fake-clock deadline
    clock = FakeClock()
    transport = ScriptedTransport(clock, list(script))
    sink = RecordingSink(clock=clock)
    client = Amplitude(API_KEY, transport=transport, overflow=sink,
                       retry=RetryHandler(sleep=FakeSleep(clock)), max_request_events=max_events)
    buffer = EventBuffer()
    events = [make_event(i) for i in range(count)]
    for buffered in events:
        buffer.append(buffered)
    started = clock()
    deadline = Deadline.after(budget_s, clock)
    # WHEN the buffer is flushed (with max_events small enough to make several batches)
    report = client._flush_buffer(buffer, deadline)
    # THEN the report balances (I2) and nothing was dropped: the sink took everything unsettled
    assert report.balanced
    assert report.tracked == count
    assert report.dropped == 0
    assert report.overflowed == len(sink.written)
    assert report.delivered == len(transport.accepted)
    # AND no event is both delivered and overflowed, and none overflowed twice
    assert not set(transport.accepted) & set(sink.insert_ids)
    assert len(set(sink.insert_ids)) == len(sink.insert_ids)
    assert len(set(transport.accepted)) == len(transport.accepted)
    # AND the delivery loop left the overflow reserve untouched (I3): overflow writes begin no
    # later than the deadline minus the sink's reserve (or at once, if the budget was smaller)
    loop_end = max(started, deadline.expires_at - sink.reserve_s)
    assert all(at <= loop_end + FLOAT_SLACK_S for at in sink.written_at)
    assert clock.now <= deadline.expires_at + FLOAT_SLACK_S
    assert report.deadline_hit == any(reason == "deadline" for _, reason in sink.written)
    assert len(buffer) == 0


# -- real time, real urllib3, FakeAmplitude on 127.0.0.1 -----------------------------------------

SCHEDULING_TOLERANCE_MS = 250.0

faults = st.one_of(
    st.sampled_from([500, 502, 503, 504, 408, 413, 429, 403]).map(Fault.status_code),
    st.just(Fault.status_code(500, accept=True)),
    st.just(Fault.status_code(400, {"code": 400, "error": "Invalid JSON request body"})),
    st.floats(min_value=0.05, max_value=1.0).map(Fault.hang),
    st.just(Fault.reset()),
    st.just(Fault.reset_mid_body()),
    st.just(Fault.reply(200, b"<html>ok</html>", "text/html")),
)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(script=st.lists(faults, max_size=6), count=st.integers(min_value=1, max_value=6),
       budget_s=st.floats(min_value=0.3, max_value=0.5))
def test_real_flush_against_fake_amplitude_is_balanced_and_on_time(
        script: list[Fault], count: int, budget_s: float) -> None:
    sink = RecordingSink()
    with FakeAmplitude() as fake:
        # GIVEN a real client against a scripted FakeAmplitude and a recording sink
        fake.script(*script)
        client = Amplitude(API_KEY, server_url=fake.url, overflow=sink,
                           flush_timeout_s=budget_s)
        tracked = [client.track("e", user_id=f"user-{i}", device_id=f"device-{i}")
                   for i in range(count)]
        # WHEN the client flushes with its budget
        started = time.monotonic()
        report = client.flush()
        elapsed_ms = (time.monotonic() - started) * 1000
        client.close()
        accepted = set(fake.insert_ids)
    event(f"deadline_hit={report.deadline_hit}")
    event(f"overflowed={bool(report.overflowed)}, rejected={bool(report.rejected)}")
    # THEN the report balances and nothing is dropped
    assert report.balanced
    assert report.tracked == count
    assert report.dropped == 0
    assert report.overflowed == len(sink.written)
    # AND every event the client counts as delivered reached the server: the events that were
    # neither overflowed nor rejected are all in FakeAmplitude
    kept = [i for i in tracked if i not in set(sink.insert_ids)]
    assert len(kept) == report.delivered + report.rejected
    assert len([i for i in kept if i not in accepted]) <= report.rejected
    # AND the flush kept to its budget
    limit_ms = budget_s * 1000 + SCHEDULING_TOLERANCE_MS
    assert report.elapsed_ms <= limit_ms
    assert elapsed_ms <= limit_ms


class TricklingHeadersServer(RawServer):
    """Reads one request, then sends its reply headers one byte every `pause_s`: a
    slow-loris reply that stays within every per-read socket timeout."""

    def __init__(self, pause_s: float, header_bytes: int) -> None:
        super().__init__()
        self.pause_s = pause_s
        self.head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 13\r\nX-Pad: " + b"a" * header_bytes + b"\r\n\r\n"
                     b'{"code": 200}')

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        conn.recv(65536)
        for i in range(len(self.head)):
            if self.stopping.wait(self.pause_s):
                return
            conn.sendall(self.head[i:i + 1])


def test_real_flush_stays_on_time_when_reply_headers_trickle() -> None:
    # GIVEN a server that takes ~0.9 s to trickle its reply headers, and a 0.3 s flush budget
    sink = RecordingSink()
    with TricklingHeadersServer(pause_s=0.01, header_bytes=10) as server:
        client = Amplitude(API_KEY, server_url=server.url, overflow=sink, flush_timeout_s=0.3)
        client.track("e", user_id="user-1", device_id="device-1")
        # WHEN the client flushes
        started = time.monotonic()
        report = client.flush()
        elapsed_ms = (time.monotonic() - started) * 1000
        client.close()
    # THEN the flush still ends within its budget (plus scheduling tolerance)
    assert report.balanced
    assert elapsed_ms <= 300 + SCHEDULING_TOLERANCE_MS
