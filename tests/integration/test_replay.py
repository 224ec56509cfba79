"""The replay consumer (`amp_lite.replay.make_handler`) against moto in server mode and
FakeAmplitude, in process: SQS messages become Lambda SQS events (tests/support/sqs_events.py
plays the event source mapping), the handler answers with a partial batch response.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

import pytest

from amp_lite import Amplitude
from amp_lite._deadline import Deadline
from amp_lite._redelivery import Backoff
from amp_lite._retry import RetryHandler
from amp_lite.overflow._sqs import SQSOverflow
from amp_lite.replay import make_handler
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.sqs_events import (
    ReplayContext,
    create_queue,
    decoded_events,
    esm_round,
    failed_ids,
    lambda_sqs_event,
    overflow_bodies,
    queue_arn,
    queue_depth,
    receive,
    receive_all,
    send_bodies,
    sqs_client,
    wire_event,
)

MARGIN_MS = 500  # amp_lite._wrap.DEFAULT_MARGIN_MS, make_handler's default
TOLERANCE_S = 0.6


@pytest.fixture
def sqs(aws_env: str) -> Any:
    return sqs_client(aws_env)


@pytest.fixture
def queue_url(sqs: Any) -> str:
    return create_queue(sqs, f"overflow-{uuid.uuid4().hex[:8]}", visibility_timeout_s=0)


# Failed records are shown again at once (visibility 0 instead of 30 s doubling), so a test can
# play the next poll of the event source mapping; test_replay_backoff.py tests the schedule.
AT_ONCE = Backoff(base_s=0, cap_s=0)


def _replay_handler(fake: FakeAmplitude) -> Any:
    return make_handler(Amplitude(API_KEY, server_url=fake.url, overflow=()), backoff=AT_ONCE)


def _summaries(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(m) for r in caplog.records
            for m in re.findall(r"amp_lite replay (\{.*\})", r.getMessage())]


def test_outage_then_replay_delivers_all_tracked_minus_rejected(
        fake: FakeAmplitude, sqs: Any, queue_url: str) -> None:
    # GIVEN a client overflowing to SQS while Amplitude answers 503 to everything
    fake.script(*[Fault.status_code(503)] * 20)
    producer = Amplitude(API_KEY, server_url=fake.url, overflow=SQSOverflow(queue_url),
                         retry=RetryHandler(max_attempts=3, sleep=lambda _s: None))
    tracked = {producer.track("Item Purchased", user_id=f"user-{n:04d}",
                              event_properties={"n": n}) for n in range(25)}
    report = producer.flush(timeout_s=5)
    assert report.overflowed == 25 and report.overflowed_to == {"sqs": 25}, report
    assert fake.events == []
    # ...and one hand-made overflow message holding an event Amplitude will refuse (2-char id)
    invalid = wire_event("ab")
    send_bodies(sqs, queue_url, overflow_bodies([invalid]))
    visible, _ = queue_depth(sqs, queue_url)
    messages = receive_all(sqs, queue_url, visible)
    assert {e["insert_id"] for e in decoded_events(messages)} == tracked | {invalid.insert_id}

    # WHEN Amplitude is back and the replay handler gets the messages as an SQS event
    fake.clear_faults()
    event = lambda_sqs_event(messages, event_source_arn=queue_arn(sqs, queue_url))
    response = _replay_handler(fake)(event, ReplayContext(30_000))

    # THEN every record succeeded, and Amplitude holds exactly the tracked events
    assert response == {"batchItemFailures": []}
    assert set(fake.insert_ids) == tracked
    assert len(fake.insert_ids) == len(tracked)
    assert invalid.insert_id not in fake.insert_ids


def test_redelivered_record_delivers_nothing_twice(
        fake: FakeAmplitude, sqs: Any, queue_url: str) -> None:
    # GIVEN one overflow message with five events on the queue
    events = [wire_event(f"user-dup-{n}") for n in range(5)]
    send_bodies(sqs, queue_url, overflow_bodies(events))
    handler = _replay_handler(fake)
    arn = queue_arn(sqs, queue_url)

    # WHEN it is replayed, its delete is lost, and SQS delivers it a second time
    first = receive(sqs, queue_url)
    assert handler(lambda_sqs_event(first, event_source_arn=arn), ReplayContext(30_000)) == {
        "batchItemFailures": []}
    second, response, deleted = esm_round(
        sqs, queue_url, lambda e: handler(e, ReplayContext(30_000)), event_source_arn=arn)

    # THEN the second delivery was the same message, it succeeded again...
    assert [m["MessageId"] for m in second] == [m["MessageId"] for m in first]
    assert second[0]["Attributes"]["ApproximateReceiveCount"] == "2"
    assert failed_ids(response) == set() and deleted == [first[0]["MessageId"]]
    # ...and was sent with the same insert_ids, so Amplitude counted each event once
    assert sorted(fake.insert_ids) == sorted(e.insert_id for e in events)
    assert fake.duplicates == 5
    assert queue_depth(sqs, queue_url) == (0, 0)


def test_duplicate_messages_in_one_batch_are_sent_once(
        fake: FakeAmplitude, sqs: Any, queue_url: str) -> None:
    # GIVEN the same overflow message twice on the queue (a producer resend)
    events = [wire_event(f"user-twice-{n}") for n in range(3)]
    body = overflow_bodies(events)[0]
    send_bodies(sqs, queue_url, [body, body])
    messages = receive_all(sqs, queue_url, 2)
    assert len(messages) == 2

    # WHEN both arrive in one batch
    response = _replay_handler(fake)(
        lambda_sqs_event(messages, event_source_arn=queue_arn(sqs, queue_url)),
        ReplayContext(30_000))

    # THEN both records succeed and each event reached Amplitude in one request, once
    assert response == {"batchItemFailures": []}
    assert sorted(fake.insert_ids) == sorted(e.insert_id for e in events)
    assert fake.duplicates == 0
    assert sum(r.events for r in fake.requests) == 3


def test_throttled_users_fail_their_records_until_the_throttle_lifts(
        fake: FakeAmplitude, sqs: Any, queue_url: str) -> None:
    # GIVEN three messages: a throttled user's, another user's, and one mixing both
    hot = [wire_event("user-hot-1") for _ in range(3)]
    calm = [wire_event("user-calm-1") for _ in range(3)]
    mixed = [wire_event("user-hot-1"), wire_event("user-calm-2")]
    hot_id, calm_id, mixed_id = send_bodies(
        sqs, queue_url, [overflow_bodies(hot)[0], overflow_bodies(calm)[0],
                         overflow_bodies(mixed)[0]])
    fake.throttle(users=["user-hot-1"])
    handler = _replay_handler(fake)
    arn = queue_arn(sqs, queue_url)

    def invoke(event: dict[str, Any]) -> Any:
        return handler(event, ReplayContext(30_000))

    # WHEN the event source mapping delivers them while the user is throttled
    received, response, deleted = esm_round(sqs, queue_url, invoke, event_source_arn=arn)

    # THEN the records holding the throttled user's events come back; the other one is done
    assert len(received) == 3
    assert failed_ids(response) == {hot_id, mixed_id}
    assert deleted == [calm_id]
    assert set(fake.insert_ids) == {e.insert_id for e in [*calm, mixed[1]]}

    # WHEN the throttle lifts and SQS redelivers the failed records
    fake.clear_throttles()
    received, response, deleted = esm_round(sqs, queue_url, invoke, event_source_arn=arn)

    # THEN they settle, the queue is empty, and every event is at Amplitude once
    assert {m["MessageId"] for m in received} == {hot_id, mixed_id}
    assert failed_ids(response) == set()
    assert queue_depth(sqs, queue_url) == (0, 0)
    assert sorted(fake.insert_ids) == sorted(e.insert_id for e in [*hot, *calm, *mixed])


def test_hostile_batch_fails_only_the_bad_records(
        fake: FakeAmplitude, sqs: Any, queue_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a batch with a non-JSON body, a version-2 body, a body without an events list,
    # a good message, and a good message also holding unreadable events
    caplog.set_level(logging.INFO, logger="amp_lite")
    good = [wire_event("user-good-1"), wire_event("user-good-2")]
    partly = wire_event("user-partly-1")
    partly_body = json.loads(overflow_bodies([partly])[0])
    partly_body["events"] += [{"event_type": "no insert id", "user_id": "user-x-1"},
                              "not an event"]
    bad_ids = send_bodies(sqs, queue_url, [
        "this is {not json",
        json.dumps({"v": 2, "events": [json.loads(good[0].raw)]}),
        json.dumps({"v": 1, "source": "amp-lite/0.1.0", "reason": "deadline"}),
    ])
    good_id, partly_id = send_bodies(sqs, queue_url,
                                     [overflow_bodies(good)[0], json.dumps(partly_body)])
    messages = receive_all(sqs, queue_url, 5)
    assert len(messages) == 5

    # WHEN the handler gets them in one event
    response = _replay_handler(fake)(
        lambda_sqs_event(messages, event_source_arn=queue_arn(sqs, queue_url)),
        ReplayContext(30_000))

    # THEN no exception escaped, only the three bad records are listed as failures...
    assert failed_ids(response) == set(bad_ids)
    assert not {good_id, partly_id} & failed_ids(response)
    # ...the readable events were delivered, and the unreadable ones counted as rejected
    assert sorted(fake.insert_ids) == sorted(e.insert_id for e in [*good, partly])
    (summary,) = _summaries(caplog)
    assert summary["unreadable_messages"] == 3
    assert summary["rejected"] == {"unreadable_event": 2}
    assert summary["delivered"] == 3


def test_tiny_deadline_returns_quickly_and_fails_records_with_events(
        fake: FakeAmplitude, sqs: Any, queue_url: str) -> None:
    # GIVEN an Amplitude that hangs, and a replay invocation with 600 ms left (margin 500 ms)
    import aws_lambda_powertools.utilities.batch  # noqa: F401 - warm the import, not timed

    fake.script(*[Fault.hang(10)] * 5)
    with_events = send_bodies(sqs, queue_url, [overflow_bodies([wire_event("user-late-1")])[0],
                                               overflow_bodies([wire_event("user-late-2")])[0]])
    empty = send_bodies(sqs, queue_url, [json.dumps(
        {"v": 1, "source": "amp-lite/0.1.0", "reason": "deadline", "attempts": 1,
         "overflowed_at_ms": 0, "events": []})])
    messages = receive_all(sqs, queue_url, 3)
    event = lambda_sqs_event(messages, event_source_arn=queue_arn(sqs, queue_url))
    handler = make_handler(Amplitude(API_KEY, server_url=fake.url, overflow=()),
                           margin_ms=MARGIN_MS)

    # WHEN it runs
    started = time.monotonic()
    response = handler(event, ReplayContext(600))
    took = time.monotonic() - started

    # THEN it returned within its 100 ms budget (plus tolerance), failing the records with events
    assert took < 0.1 + TOLERANCE_S, took
    assert failed_ids(response) == set(with_events)
    assert not set(empty) & failed_ids(response)
    assert fake.events == []


def test_poison_message_reaches_the_dead_letter_queue(
        fake: FakeAmplitude, sqs: Any) -> None:
    # GIVEN a queue redriving to a DLQ after 2 receives, holding a good message and a poison one
    dlq_url = create_queue(sqs, f"replay-dlq-{uuid.uuid4().hex[:8]}")
    source_url = create_queue(sqs, f"replay-src-{uuid.uuid4().hex[:8]}", visibility_timeout_s=0,
                              dead_letter_arn=queue_arn(sqs, dlq_url), max_receive_count=2)
    good = [wire_event("user-dlq-1")]
    good_id, poison_id = send_bodies(sqs, source_url, [overflow_bodies(good)[0], "poison!"])
    handler = _replay_handler(fake)
    arn = queue_arn(sqs, source_url)

    # WHEN the event source mapping polls until the source queue gives nothing more
    failures: list[set[str]] = []
    for _ in range(6):
        received, response, _deleted = esm_round(
            sqs, source_url, lambda e: handler(e, ReplayContext(30_000)), event_source_arn=arn)
        if not received:
            break
        failures.append(failed_ids(response))

    # THEN the poison message failed on each of its 2 receives, then moved to the DLQ...
    assert failures == [{poison_id}, {poison_id}]
    dead = receive_all(sqs, dlq_url, 1)
    assert [(m["MessageId"], m["Body"]) for m in dead] == [(poison_id, "poison!")]
    assert queue_depth(sqs, source_url) == (0, 0)
    # ...while the good message was delivered and deleted on the first poll
    assert fake.insert_ids == [good[0].insert_id]
    assert good_id not in set().union(*failures)


@pytest.fixture
def default_replay_handler(fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`amp_lite.replay.handler` configured from the environment, as template.yaml deploys it."""
    from amp_lite import replay

    monkeypatch.setenv("AMPLITUDE_API_KEY", API_KEY)
    monkeypatch.setenv("AMPLITUDE_SERVER_URL", fake.url)
    replay._default_handler.cache_clear()  # built once per process; this test needs a fresh one
    replay._replay_client.cache_clear()
    yield replay.handler
    replay._default_handler.cache_clear()
    replay._replay_client.cache_clear()


def test_events_of_a_client_with_min_id_length_survive_replay(
        fake: FakeAmplitude, sqs: Any, queue_url: str, default_replay_handler: Any) -> None:
    # GIVEN a client configured for short ids (min_id_length=2), overflowing during an outage
    fake.script(*[Fault.status_code(503)] * 10)
    producer = Amplitude(API_KEY, server_url=fake.url, min_id_length=2,
                         overflow=SQSOverflow(queue_url),
                         retry=RetryHandler(max_attempts=2, sleep=lambda _s: None))
    short_id = producer.track("Signed Up", user_id="ab")
    report = producer.flush(timeout_s=5)
    assert report.overflowed == 1, report
    fake.clear_faults()
    # (sent by that client to a healthy Amplitude, the same kind of event is accepted)
    with FakeAmplitude() as control:
        direct = Amplitude(API_KEY, server_url=control.url, min_id_length=2, overflow=())
        direct.track("Signed Up", user_id="ab")
        assert direct.flush(timeout_s=5).delivered == 1
    messages = receive_all(sqs, queue_url, 1)

    # WHEN the replay consumer delivers it
    response = default_replay_handler(
        lambda_sqs_event(messages, event_source_arn=queue_arn(sqs, queue_url)),
        ReplayContext(30_000))

    # THEN the event reaches Amplitude instead of being rejected as an invalid id length
    assert response == {"batchItemFailures": []}
    assert fake.insert_ids == [short_id]


def test_same_insert_id_for_different_users_is_not_collapsed(
        fake: FakeAmplitude, sqs: Any, queue_url: str) -> None:
    # GIVEN two users' events sharing a caller-chosen insert_id (a per-user daily key), which a
    # normal flush delivers both of
    shared = "daily-check-in-2025-05-01"
    first, second = wire_event("user-one-1", insert_id=shared), wire_event(
        "user-two-2", insert_id=shared)
    with FakeAmplitude() as control:
        direct = Amplitude(API_KEY, server_url=control.url, overflow=())
        assert len(direct.send_events([first, second], Deadline.after(5)).delivered) == 2
        assert len(control.events) == 2
    send_bodies(sqs, queue_url, overflow_bodies([first, second]))
    messages = receive_all(sqs, queue_url, 1)

    # WHEN they are replayed
    response = _replay_handler(fake)(
        lambda_sqs_event(messages, event_source_arn=queue_arn(sqs, queue_url)),
        ReplayContext(30_000))

    # THEN both users' events reach Amplitude (or the record is not reported as settled)
    assert response == {"batchItemFailures": []}
    assert sorted(e["user_id"] for e in fake.events) == ["user-one-1", "user-two-2"]


@pytest.mark.parametrize("refusal", ["invalid_api_key", "forbidden"])
def test_a_refused_request_keeps_the_backlog_queued(
        fake: FakeAmplitude, sqs: Any, queue_url: str, refusal: str,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN overflow messages on the queue, and a replay function whose key Amplitude refuses
    # (a mistyped or rotated key) or that Amplitude forbids (403)
    events = [wire_event(f"user-refused-{n}") for n in range(4)]
    send_bodies(sqs, queue_url, overflow_bodies(events))
    with FakeAmplitude(api_keys={"another-projects-key"}) as wrong_key:
        server = wrong_key if refusal == "invalid_api_key" else fake
        if refusal == "forbidden":
            fake.script(*[Fault.status_code(403)] * 3)
        handler = _replay_handler(server)
        caplog.set_level(logging.WARNING, logger="amp_lite")

        # WHEN the replay consumer handles the batch
        messages, response, deleted = esm_round(
            sqs, queue_url, lambda e: handler(e, ReplayContext(30_000)),
            event_source_arn=queue_arn(sqs, queue_url))

    # THEN every record failed (SQS keeps it, then moves it to the dead-letter queue) and
    # nothing was deleted or delivered; the log says why
    assert failed_ids(response) == {m["MessageId"] for m in messages} and deleted == []
    assert fake.insert_ids == [] and server.insert_ids == []
    assert any(refusal in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    fake.clear_faults()
    # AND once the configuration is fixed, the same messages are delivered
    _, response, _ = esm_round(sqs, queue_url,
                               lambda e: _replay_handler(fake)(e, ReplayContext(30_000)),
                               event_source_arn=queue_arn(sqs, queue_url))
    assert failed_ids(response) == set()
    assert sorted(fake.insert_ids) == sorted(e.insert_id for e in events)
