"""The replay consumer backs failed records off by their receive count (issue 14, item 10):
against moto in server mode (ChangeMessageVisibilityBatch for real: a record is not receivable
before its backoff and is after), and against an SQS endpoint that never answers.

The schedule's base is injected (whole seconds: SQS's unit) so that the tests wait seconds, not
the 30 s doubling of the default; they wait on SQS long polls, not sleeps.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amp_lite import Amplitude
from amp_lite._redelivery import Backoff
from amp_lite.replay import make_handler
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.raw_server import silent_endpoint
from tests.support.sqs_events import (
    ReplayContext,
    create_queue,
    failed_ids,
    lambda_record,
    lambda_sqs_event,
    overflow_bodies,
    queue_arn,
    queue_depth,
    receive,
    receive_all,
    send_bodies,
    settle,
    sqs_client,
    wire_event,
)
from tests.support.sqs_raw_server import isolate_from_aws

TOLERANCE_S = 0.6  # generous: two shared cores, and moto's long poll checks every few ms
BASE_S = 2  # the injected schedule: 2 s after the first receive, 4 s after the second...


@pytest.fixture
def sqs(aws_env: str) -> Any:
    return sqs_client(aws_env)


@pytest.fixture
def queue_url(sqs: Any) -> str:
    # Visibility 0: a record the handler leaves alone is receivable again at once, so any record
    # that is hidden afterwards was hidden by the handler.
    return create_queue(sqs, f"backoff-{uuid.uuid4().hex[:8]}", visibility_timeout_s=0)


def _client(fake: FakeAmplitude) -> Amplitude:
    return Amplitude(API_KEY, server_url=fake.url, overflow=())


def _receive_ids(sqs: Any, queue_url: str, *, wait_s: int) -> list[str]:
    return [m["MessageId"] for m in receive(sqs, queue_url, wait_s=wait_s)]


def _until_received(sqs: Any, queue_url: str, message_id: str, *, within_s: float,
                    others: set[str]) -> float:
    """Long-poll until `message_id` is received; the monotonic time it came. Any message of
    `others` received before it fails the test (it was meant to come back later)."""
    give_up = time.monotonic() + within_s
    while time.monotonic() < give_up:
        got = _receive_ids(sqs, queue_url, wait_s=1)
        at = time.monotonic()
        early = others.intersection(got)
        assert not early, f"{early} came back before {message_id}"
        if message_id in got:
            return at
    raise AssertionError(f"{message_id} did not come back within {within_s} s")


def test_a_failed_record_is_hidden_instead_of_coming_back_at_the_queue_default(
        fake: FakeAmplitude, sqs: Any, queue_url: str) -> None:
    # (fails on the code before the backoff: the record was left the queue's visibility timeout)
    # GIVEN a record of a throttled user, received once, on a queue whose visibility timeout is 0
    (message_id,) = send_bodies(sqs, queue_url, overflow_bodies([wire_event("user-hot-1")]))
    messages = receive_all(sqs, queue_url, 1)
    fake.throttle(users=["user-hot-1"])
    handler = make_handler(_client(fake))  # the default schedule: 30 s after a first receive

    # WHEN the replay handler fails it
    response = handler(lambda_sqs_event(messages, event_source_arn=queue_arn(sqs, queue_url)),
                       ReplayContext(30_000))

    # THEN it is reported as failed, and SQS keeps it hidden rather than showing it again at once
    assert failed_ids(response) == {message_id}
    assert _receive_ids(sqs, queue_url, wait_s=1) == []
    assert queue_depth(sqs, queue_url) == (0, 1)


def test_failed_records_come_back_by_receive_count_and_others_are_untouched(
        fake: FakeAmplitude, sqs: Any, queue_url: str) -> None:
    # GIVEN four records in one batch: `twice` (a throttled user's, on its second receive),
    # `once` (a throttled user's, first receive), `good` (delivered) and `poison` (not an
    # overflow message)
    (twice,) = send_bodies(sqs, queue_url, overflow_bodies([wire_event("user-hot-2")]))
    assert [m["MessageId"] for m in receive_all(sqs, queue_url, 1)] == [twice]  # 1st receive
    once, good, poison = send_bodies(sqs, queue_url, [
        overflow_bodies([wire_event("user-hot-1")])[0],
        overflow_bodies([wire_event("user-calm-1")])[0], "poison!"])
    messages = receive_all(sqs, queue_url, 4)
    counts = {m["MessageId"]: m["Attributes"]["ApproximateReceiveCount"] for m in messages}
    assert counts == {twice: "2", once: "1", good: "1", poison: "1"}
    fake.throttle(users=["user-hot-1", "user-hot-2"])
    handler = make_handler(_client(fake), backoff=Backoff(base_s=BASE_S, cap_s=60))

    # WHEN the replay handler gets the batch
    event = lambda_sqs_event(messages, event_source_arn=queue_arn(sqs, queue_url))
    response = handler(event, ReplayContext(30_000))
    changed_at = time.monotonic()  # the change was made before the handler returned

    # THEN the throttled records and the poison one failed...
    assert failed_ids(response) == {twice, once, poison}
    # ...the delivered one and the poison one kept the queue's visibility (0: receivable at
    # once), and the event source mapping deletes the delivered one
    assert sorted(_receive_ids(sqs, queue_url, wait_s=0)) == sorted([good, poison])
    assert settle(sqs, queue_url, [m for m in messages if m["MessageId"] == good],
                  response) == [good]
    # ...the first-receive record is hidden for BASE_S and no longer, the second-receive one
    # for twice that, and the one with fewer receives comes back first
    back_once = _until_received(sqs, queue_url, once, within_s=BASE_S + 3, others={twice})
    assert BASE_S - TOLERANCE_S <= back_once - changed_at <= BASE_S + TOLERANCE_S
    back_twice = _until_received(sqs, queue_url, twice, within_s=BASE_S * 2 + 3, others=set())
    assert 2 * BASE_S - TOLERANCE_S <= back_twice - changed_at <= 2 * BASE_S + TOLERANCE_S


def test_the_visibility_change_keeps_its_time_when_amplitude_hangs(
        fake: FakeAmplitude, sqs: Any, queue_url: str) -> None:
    # GIVEN an Amplitude that never answers, and a record on a queue with visibility 0
    import aws_lambda_powertools.utilities.batch  # noqa: F401 - warm the import, not timed

    fake.script(*[Fault.hang(10)] * 10)
    (message_id,) = send_bodies(sqs, queue_url, overflow_bodies([wire_event("user-late-1")]))
    messages = receive_all(sqs, queue_url, 1)
    handler = make_handler(_client(fake), backoff=Backoff(base_s=30))

    # WHEN the handler runs with 2.5 s left (a 2 s deadline after the 500 ms margin)
    started = time.monotonic()
    response = handler(lambda_sqs_event(messages, event_source_arn=queue_arn(sqs, queue_url)),
                       ReplayContext(2_500))
    took = time.monotonic() - started

    # THEN it kept its deadline, and the send left the visibility change its reserve: the
    # record is hidden
    assert took <= 2.0 + TOLERANCE_S, took
    assert failed_ids(response) == {message_id}
    assert queue_depth(sqs, queue_url) == (0, 1)


@pytest.fixture
def hanging_sqs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """boto3 pointed at a 127.0.0.1 socket that accepts connections and never answers."""
    isolate_from_aws(monkeypatch, tmp_path)
    with silent_endpoint() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        yield endpoint


def test_a_hanging_sqs_during_the_visibility_change_keeps_the_handler_within_its_deadline(
        fake: FakeAmplitude, hanging_sqs: str, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN 12 records of a throttled user (two ChangeMessageVisibilityBatch calls' worth) and
    # an SQS endpoint that never answers
    import aws_lambda_powertools.utilities.batch  # noqa: F401 - warm the import, not timed

    fake.throttle(users=["user-hot-1"])
    arn = "arn:aws:sqs:us-east-1:123456789012:amp-lite-overflow"
    bodies = [overflow_bodies([wire_event("user-hot-1")])[0] for _ in range(12)]
    event = {"Records": [lambda_record(
        {"MessageId": f"m-{n}", "ReceiptHandle": f"handle-{n}", "Body": body,
         "Attributes": {"ApproximateReceiveCount": str(n + 1)}}, event_source_arn=arn)
        for n, body in enumerate(bodies)]}
    handler = make_handler(_client(fake))
    caplog.set_level(logging.WARNING, logger="amp_lite")

    # WHEN the handler runs with 2 s left (a 1.5 s deadline after the 500 ms margin)
    started = time.monotonic()
    response = handler(event, ReplayContext(2_000))
    took = time.monotonic() - started

    # THEN it returned by its deadline, every record reported failed (SQS redelivers them after
    # the queue's own visibility timeout), and a WARNING says the change failed; no exception
    assert took <= 1.5 + TOLERANCE_S, took
    assert failed_ids(response) == {f"m-{n}" for n in range(12)}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ChangeMessageVisibilityBatch failed" in w for w in warnings), warnings
    assert any("12 failed records keep the queue's visibility timeout" in w for w in warnings)
