"""SQSOverflow against SQS endpoints that misbehave (issue 12, items 2 and 6), all on 127.0.0.1.

A write is bounded as a whole by its deadline, like the Amplitude transport: an endpoint that
accepts and never answers, or trickles its reply a byte at a time (each byte well within any
per-receive timeout), costs the deadline and no more. A 2xx that confirms no entry (an empty
body, `{}`, a proxy's HTML page) writes nothing: the events go to the next sink.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from amp_lite import Amplitude, Deadline, OverflowWriteError
from amp_lite._wire import BufferedEvent
from amp_lite.overflow import LocalSpill, SQSOverflow
from amp_lite.testing import FakeAmplitude, Fault
from amp_lite.testing.tls import make_tls_files
from tests.conftest import API_KEY
from tests.support.raw_server import silent_endpoint
from tests.support.sqs_raw_server import (
    ACCOUNT,
    QUEUE,
    SQSReplyServer,
    http_reply,
    isolate_from_aws,
    success_body,
)

WRITE_DEADLINE_S = 1.0
TOLERANCE_S = 0.5  # generous: CI machines stall
TRICKLE_PAUSE_S = 0.06  # per byte: ~13 s for the whole reply, each byte far within 0.5 s
OUTAGE = [Fault.status_code(503)] * 200

NOT_A_BATCH_RESULT = {
    "empty body": http_reply(b""),
    "empty object": http_reply(b"{}"),
    "proxy html": http_reply(b"<html><body><h1>Welcome to the proxy</h1></body></html>",
                             content_type="text/html"),
}


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No AWS configuration from the machine running tests; each test points AWS_ENDPOINT_URL
    at its own 127.0.0.1 server."""
    isolate_from_aws(monkeypatch, tmp_path)
    yield


def serve(server: SQSReplyServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 at `server`; return its queue URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    return server.queue_url


@pytest.fixture
def hanging_queue_url(fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A 127.0.0.1 socket that accepts connections (kernel backlog) and never answers."""
    with silent_endpoint() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        yield f"{endpoint}/{ACCOUNT}/{QUEUE}"


def small_events(count: int) -> list[BufferedEvent]:
    return [BufferedEvent(json.dumps({"event_type": "E", "user_id": "u1",
                                      "insert_id": f"ev-{i}"}).encode(), f"ev-{i}", "u1", None)
            for i in range(count)]


def timed_write(sink: SQSOverflow, events: Sequence[BufferedEvent],
                deadline_s: float) -> tuple[float, OverflowWriteError | None]:
    """Write `events` within `deadline_s`; return the time taken and the error raised."""
    started = time.monotonic()
    try:
        sink.write(events, reason="deadline", attempts=1, deadline=Deadline.after(deadline_s))
    except OverflowWriteError as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def spilled_ids(spill: LocalSpill) -> list[str]:
    claim = spill.claim(max_events=100_000)
    return [] if claim is None else [e.insert_id for e in claim.events]


# -- the write is bounded as a whole by its deadline (item 2) ----------------------------------

def test_a_trickled_sqs_reply_is_given_up_at_the_write_deadline(
        fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN SQS trickling a proper result a byte at a time (~13 s for the whole reply)
    reply = http_reply(success_body(["m0"]))
    with SQSReplyServer(reply, pause_s=TRICKLE_PAUSE_S) as server:
        sink = SQSOverflow(serve(server, monkeypatch))
        events = small_events(5)

        # WHEN events are written with 1 s left
        elapsed, error = timed_write(sink, events, WRITE_DEADLINE_S)

    # THEN the write gave up at the deadline, with every event unwritten (for the next sink)
    assert len(reply) * TRICKLE_PAUSE_S > 10
    assert elapsed <= WRITE_DEADLINE_S + TOLERANCE_S
    assert error is not None and list(error.unwritten or []) == events
    assert len(server.requests) == 1  # it was the reply that took too long


def test_a_hanging_sqs_endpoint_is_given_up_at_the_write_deadline(
        hanging_queue_url: str) -> None:
    # GIVEN SQS accepting connections and never answering
    sink = SQSOverflow(hanging_queue_url)
    events = small_events(5)

    # WHEN events are written with 1 s left
    elapsed, error = timed_write(sink, events, WRITE_DEADLINE_S)

    # THEN the write gave up by the deadline, with every event unwritten
    assert elapsed <= WRITE_DEADLINE_S + TOLERANCE_S
    assert error is not None and list(error.unwritten or []) == events


def test_a_trickling_sqs_keeps_the_flush_within_its_budget(
        fake: FakeAmplitude, fake_aws: None, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    # GIVEN an Amplitude outage, SQS trickling its replies, then a local spill
    fake.script(*OUTAGE)
    spill = LocalSpill(tmp_path / "spill")
    with SQSReplyServer(http_reply(success_body(["m0"])), pause_s=TRICKLE_PAUSE_S) as server:
        client = Amplitude(API_KEY, server_url=fake.url, flush_timeout_s=WRITE_DEADLINE_S,
                           overflow=[SQSOverflow(serve(server, monkeypatch)), spill])
        tracked = [client.track("E", user_id="user-1") for _ in range(6)]

        # WHEN the client flushes
        started = time.monotonic()
        report = client.flush()
        elapsed = time.monotonic() - started

    # THEN the flush kept its budget and the spill took every event
    assert elapsed <= WRITE_DEADLINE_S + TOLERANCE_S
    assert report.overflowed_to == {"local_spill": 6}
    assert sorted(spilled_ids(spill)) == sorted(i for i in tracked if i)


def test_a_prompt_proper_result_writes_the_events(
        fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN SQS answering at once with a result that confirms the one entry sent
    with SQSReplyServer(http_reply(success_body(["m0"]))) as server:
        queue_url = serve(server, monkeypatch)
        sink = SQSOverflow(queue_url)

        # WHEN events (one message) are written
        elapsed, error = timed_write(sink, small_events(3), WRITE_DEADLINE_S)

    # THEN they count as written, and the request was a signed SendMessageBatch for the queue
    assert error is None and elapsed <= WRITE_DEADLINE_S
    (request,) = server.requests
    assert request.entry_ids() == ["m0"]
    assert json.loads(request.body)["QueueUrl"] == queue_url
    assert request.header("X-Amz-Target") == "AmazonSQS.SendMessageBatch"
    assert (request.header("Authorization") or "").startswith("AWS4-HMAC-SHA256 ")



def test_a_connection_closed_before_any_reply_is_replaced_once_at_once(
        fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN SQS closing the first connection after reading the request (as a kept-alive one
    # closed while the sandbox was frozen fails), then answering properly
    with SQSReplyServer(http_reply(success_body(["m0"])), drop_first=1) as server:
        sink = SQSOverflow(serve(server, monkeypatch))

        # WHEN events are written
        elapsed, error = timed_write(sink, small_events(2), WRITE_DEADLINE_S)

    # THEN the request was resent on a new connection, and the events are written
    assert error is None and elapsed < WRITE_DEADLINE_S
    assert len(server.requests) == 2
    assert server.requests[0].body == server.requests[1].body


@pytest.mark.parametrize("trusted", [True, False], ids=["ca-bundle", "untrusted"])
def test_https_is_verified_against_the_ca_bundle_botocore_would_use(
        trusted: bool, fake_aws: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # GIVEN SQS over HTTPS with a certificate from a private CA, trusted through AWS_CA_BUNDLE
    # or not at all
    tls = make_tls_files(tmp_path / "tls")
    if trusted:
        monkeypatch.setenv("AWS_CA_BUNDLE", tls.ca_cert)
    else:
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    with SQSReplyServer(http_reply(success_body(["m0"])), tls=tls.server_context()) as server:
        sink = SQSOverflow(serve(server, monkeypatch))
        events = small_events(2)

        # WHEN events are written
        _, error = timed_write(sink, events, WRITE_DEADLINE_S)

    # THEN they are written when the CA is trusted; otherwise no request was ever made
    if trusted:
        assert error is None and len(server.requests) == 1
    else:
        assert error is not None and list(error.unwritten or []) == events
        assert server.requests == []

# -- a 2xx that confirms nothing writes nothing (item 6) ---------------------------------------

@pytest.mark.parametrize("reply", list(NOT_A_BATCH_RESULT.values()),
                         ids=list(NOT_A_BATCH_RESULT))
def test_a_2xx_without_entry_results_leaves_every_event_unwritten(
        reply: bytes, fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN SQS (or a proxy before it) answering 200 with no per-entry results
    with SQSReplyServer(reply) as server:
        sink = SQSOverflow(serve(server, monkeypatch))
        events = small_events(4)

        # WHEN events are written
        _, error = timed_write(sink, events, WRITE_DEADLINE_S)

    # THEN none counts as written: all are handed back for the next sink
    assert len(server.requests) >= 1
    assert error is not None and list(error.unwritten or []) == events


def test_a_2xx_without_entry_results_falls_through_to_the_spill(
        fake: FakeAmplitude, fake_aws: None, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    # GIVEN an Amplitude outage, SQS answering 200 `{}`, then a local spill
    fake.script(*OUTAGE)
    spill = LocalSpill(tmp_path / "spill")
    with SQSReplyServer(NOT_A_BATCH_RESULT["empty object"]) as server:
        client = Amplitude(API_KEY, server_url=fake.url, flush_timeout_s=WRITE_DEADLINE_S,
                           overflow=[SQSOverflow(serve(server, monkeypatch)), spill])
        tracked = [client.track("E", user_id="user-1") for _ in range(6)]

        # WHEN the client flushes
        report = client.flush()

    # THEN the spill took every event, and the report says so
    assert report.overflowed_to == {"local_spill": 6}
    assert sorted(spilled_ids(spill)) == sorted(i for i in tracked if i)
    assert report.balanced and report.dropped == 0


# -- behind a proxy, botocore sends itself -----------------------------------------------------

def test_behind_a_proxy_botocore_sends_and_the_warning_says_the_bound_is_per_receive(
        fake_aws: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN HTTP_PROXY set (to a 127.0.0.1 server answering a proper result), and an SQS
    # endpoint that only the proxy could reach (a closed 127.0.0.1 port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with SQSReplyServer(http_reply(success_body(["m0"]))) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.endpoint)
        sink = SQSOverflow(f"{endpoint}/{ACCOUNT}/{QUEUE}")

        # WHEN events are written
        with caplog.at_level("WARNING", logger="amp_lite"):
            _, error = timed_write(sink, small_events(2), WRITE_DEADLINE_S)

    # THEN they went through the proxy (botocore's own sending), and a warning says so
    assert error is None
    assert [r.head.split(b" ")[1] for r in proxy.requests] == [f"{endpoint}/".encode()]
    assert any("proxy" in r.getMessage() and "per receive" in r.getMessage()
               for r in caplog.records)
