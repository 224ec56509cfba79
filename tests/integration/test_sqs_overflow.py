"""SQSOverflow against moto in server mode (a real SQS endpoint on 127.0.0.1) and FakeAmplitude:
outages and throttles overflow to SQS, an unreachable SQS falls back to the local spill or is
dropped loudly, per-entry `Failed` replies are resent or passed on, and boto3 loads lazily."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from amp_lite import Amplitude, Deadline, OfflineRetryHandler, OverflowWriteError
from amp_lite._wire import BufferedEvent
from amp_lite.overflow import LocalSpill, SQSOverflow
from amp_lite.overflow._defaults import default_sinks
from amp_lite.overflow._message import decode_message
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.raw_server import silent_endpoint

FLUSH_TIMEOUT_S = 1.0
LOADED_SQS_RESERVE_S = 2.0
TOLERANCE_S = 0.6  # generous: CI machines stall
ENTRY_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
OUTAGE = [Fault.status_code(503)] * 200


# -- helpers -----------------------------------------------------------------------------------

@pytest.fixture
def queue_url(aws_env: str) -> str:
    import boto3

    return str(boto3.client("sqs").create_queue(QueueName="amp-lite-overflow")["QueueUrl"])


@pytest.fixture
def closed_endpoint(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS_ENDPOINT_URL pointing at a 127.0.0.1 port nothing listens on. Returns a queue URL."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    return f"{url}/123456789012/amp-lite-overflow"


def receive_all(queue_url: str) -> list[dict[str, Any]]:
    import boto3

    sqs = boto3.client("sqs")
    messages: list[dict[str, Any]] = []
    while True:
        reply = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                    MessageAttributeNames=["All"], WaitTimeSeconds=0,
                                    VisibilityTimeout=300)
        batch = reply.get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)


def ids_in(messages: list[dict[str, Any]]) -> list[str]:
    return [e.insert_id for m in messages for e in decode_message(m["Body"]).events]


def track_many(client: Amplitude, count: int, *, user: str = "user-1",
               big: bool = False) -> list[str]:
    """Track `count` events; `big`: ~300 KB each (75 properties of 1000 4-byte characters,
    as strings are truncated at 1024 characters), so an Amplitude request holds 3."""
    padding = {f"pad{k}": "😀" * 1000 for k in range(75)} if big else {}
    ids = []
    for i in range(count):
        insert_id = client.track("Overflowed", user_id=user,
                                 event_properties={"i": i, "text": "é€😀", **padding})
        assert insert_id is not None
        ids.append(insert_id)
    return ids


def spilled_ids(spill: LocalSpill) -> list[str]:
    claim = spill.claim(max_events=100_000)
    return [] if claim is None else [e.insert_id for e in claim.events]


class StubSQS:
    """A stand-in boto3 SQS client: records every call; `fail` decides each entry's fate."""

    def __init__(self, *, fail_first_rounds: int = 0, sender_fault: bool = False,
                 fail_calls: Sequence[int] = ()) -> None:
        self.calls: list[dict[str, Any]] = []
        self.written: list[str] = []  # bodies accepted
        self.fail_first_rounds = fail_first_rounds
        self.sender_fault = sender_fault
        self.fail_calls = set(fail_calls)

    def send_message_batch(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(kw)
        number = len(self.calls) - 1
        failing = number < self.fail_first_rounds or number in self.fail_calls
        successful, failed = [], []
        for entry in kw["Entries"]:
            if failing:
                failed.append({"Id": entry["Id"], "SenderFault": self.sender_fault,
                               "Code": "InternalError" if not self.sender_fault
                               else "InvalidParameterValue", "Message": "stub says no"})
            else:
                self.written.append(entry["MessageBody"])
                successful.append({"Id": entry["Id"], "MessageId": f"mid-{number}",
                                   "MD5OfMessageBody": "x"})
        reply: dict[str, Any] = {"Successful": successful}
        if failed:
            reply["Failed"] = failed
        return reply

    @property
    def written_ids(self) -> list[str]:
        return [e.insert_id for body in self.written for e in decode_message(body).events]


def big_events(count: int) -> list[BufferedEvent]:
    """~300 KB events: three to a message, so `count` events make several messages."""
    return [BufferedEvent(json.dumps({"event_type": "Big", "user_id": "u1",
                                      "insert_id": f"big-{i:03d}",
                                      "event_properties": {"p": "😀" * 75_000}},
                                     ensure_ascii=False).encode(), f"big-{i:03d}", "u1", None)
            for i in range(count)]


@pytest.fixture
def outage(fake: FakeAmplitude) -> Iterator[FakeAmplitude]:
    fake.script(*OUTAGE)
    yield fake


# -- outage and throttling ---------------------------------------------------------------------

def test_an_outage_puts_every_event_in_sqs(outage: FakeAmplitude, queue_url: str,
                                          tmp_path: Path) -> None:
    # GIVEN Amplitude answering 503 to everything, and SQS then a local spill as overflow
    # (the first SQS write of a process builds the boto3 client, 0.2-0.3 s of CPU: a loaded
    # machine needs more than the default 0.5 s reserve, or the events go to the spill)
    spill = LocalSpill(tmp_path / "spill")
    client = Amplitude(API_KEY, server_url=outage.url,
                       overflow=[SQSOverflow(queue_url, reserve_s=LOADED_SQS_RESERVE_S), spill],
                       flush_timeout_s=FLUSH_TIMEOUT_S + LOADED_SQS_RESERVE_S)
    tracked = track_many(client, 30)

    # WHEN the client flushes
    report = client.flush()

    # THEN every event is in SQS, exactly once, and nowhere else
    messages = receive_all(queue_url)
    assert sorted(ids_in(messages)) == sorted(tracked)
    assert report.overflowed_to == {"sqs": 30}
    assert report.overflowed == 30 and report.delivered == 0 and report.balanced
    assert outage.events == []
    assert spilled_ids(spill) == []
    # and each message carries the format and reason attributes, and no API key
    for message in messages:
        attributes = message["MessageAttributes"]
        assert attributes["amp_lite_format"] == {"DataType": "String", "StringValue": "1"}
        reason = attributes["amp_lite_reason"]["StringValue"]
        assert reason in report.overflowed_reasons
        assert decode_message(message["Body"]).reason == reason
        assert API_KEY not in message["Body"]
        assert API_KEY not in json.dumps(attributes)


def test_throttled_users_overflow_to_sqs_and_the_others_are_delivered(
        fake: FakeAmplitude, queue_url: str, tmp_path: Path) -> None:
    # GIVEN Amplitude throttling one user, and SQS as overflow
    fake.throttle(users=["user-hot"])
    client = Amplitude(API_KEY, server_url=fake.url,
                       overflow=[SQSOverflow(queue_url), LocalSpill(tmp_path / "spill")],
                       flush_timeout_s=5.0)
    hot = track_many(client, 8, user="user-hot")
    calm = track_many(client, 12, user="user-calm")

    # WHEN the client flushes
    report = client.flush()

    # THEN only the throttled user's events are in SQS, with reason "throttled"
    messages = receive_all(queue_url)
    assert sorted(ids_in(messages)) == sorted(hot)
    assert all(m["MessageAttributes"]["amp_lite_reason"]["StringValue"] == "throttled"
               for m in messages)
    assert all(decode_message(m["Body"]).reason == "throttled" for m in messages)
    # and the others were delivered
    assert sorted(fake.insert_ids) == sorted(calm)
    assert report.delivered == 12
    assert report.overflowed_reasons == {"throttled": 8}
    assert report.overflowed_to == {"sqs": 8}
    assert report.balanced


# -- SQS unreachable ---------------------------------------------------------------------------

def test_unreachable_sqs_falls_back_to_the_local_spill_within_the_budget(
        outage: FakeAmplitude, closed_endpoint: str, tmp_path: Path) -> None:
    # GIVEN an outage, and an SQS endpoint nobody listens on, then a local spill
    spill = LocalSpill(tmp_path / "spill")
    client = Amplitude(API_KEY, server_url=outage.url,
                       overflow=[SQSOverflow(closed_endpoint), spill],
                       flush_timeout_s=FLUSH_TIMEOUT_S)
    tracked = track_many(client, 20)

    # WHEN the client flushes
    started = time.monotonic()
    report = client.flush()
    elapsed = time.monotonic() - started

    # THEN every event is in the local spill, counted there, and the flush kept its budget
    assert report.overflowed_to == {"local_spill": 20}
    assert report.balanced and report.dropped == 0
    assert sorted(spilled_ids(spill)) == sorted(tracked)
    assert elapsed <= FLUSH_TIMEOUT_S + TOLERANCE_S


def test_unreachable_sqs_as_the_only_sink_drops_with_an_error_log(
        outage: FakeAmplitude, closed_endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN an outage and only an unreachable SQS as overflow
    client = Amplitude(API_KEY, server_url=outage.url, overflow=[SQSOverflow(closed_endpoint)],
                       flush_timeout_s=FLUSH_TIMEOUT_S)
    track_many(client, 7)

    # WHEN the client flushes
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="amp_lite"):
        report = client.flush()
    elapsed = time.monotonic() - started

    # THEN the events are dropped as sink_failed, counted, with an ERROR log naming the count
    assert report.dropped == 7
    assert report.dropped_reasons == {"sink_failed": 7}
    assert report.overflowed == 0 and report.balanced
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("7 events dropped" in m and "sink_failed" in m for m in errors)
    assert elapsed <= FLUSH_TIMEOUT_S + TOLERANCE_S
    assert all(API_KEY not in r.getMessage() for r in caplog.records)


# -- per-entry Failed replies (stub client) ----------------------------------------------------

def test_entries_failed_without_sender_fault_are_resent_until_written() -> None:
    # GIVEN a stub SQS client that fails every entry of its first call (SenderFault false)
    stub = StubSQS(fail_first_rounds=1)
    sink = SQSOverflow("https://sqs.us-east-1.amazonaws.com/123456789012/q", sqs_client=stub)
    events = big_events(9)

    # WHEN events making several messages are written
    sink.write(events, reason="deadline", attempts=2, deadline=Deadline.after(5.0))

    # THEN the failed entry was resent (same Id) and every event was written exactly once
    assert sorted(stub.written_ids) == sorted(e.insert_id for e in events)
    assert stub.calls[1]["Entries"][0]["Id"] == stub.calls[0]["Entries"][0]["Id"]
    assert stub.calls[1]["Entries"][0]["MessageBody"] == stub.calls[0]["Entries"][0][
        "MessageBody"]
    assert len(stub.calls) == 4  # three messages, one of them sent twice


def test_entry_ids_are_unique_and_valid_and_calls_hold_at_most_10_entries() -> None:
    # GIVEN a stub SQS client
    stub = StubSQS()
    sink = SQSOverflow("https://sqs.us-east-1.amazonaws.com/123456789012/q", sqs_client=stub)

    # WHEN large and small events are written
    sink.write(big_events(12), reason="deadline", attempts=1, deadline=Deadline.after(5.0))
    small = [BufferedEvent(json.dumps({"event_type": "S", "user_id": "u", "insert_id": f"s{i}"})
                           .encode(), f"s{i}", "u", None) for i in range(500)]
    sink.write(small, reason="throttled", attempts=1, deadline=Deadline.after(5.0))

    # THEN every call has 1-10 entries with unique ids matching SQS's pattern, the batch fits
    # 1 MiB, and each entry carries the queue URL and the format attributes
    assert stub.calls
    for call in stub.calls:
        entries = call["Entries"]
        assert 1 <= len(entries) <= 10
        ids = [entry["Id"] for entry in entries]
        assert len(set(ids)) == len(ids)
        assert all(ENTRY_ID.match(i) for i in ids)
        assert call["QueueUrl"] == "https://sqs.us-east-1.amazonaws.com/123456789012/q"
        assert sum(len(e["MessageBody"].encode()) for e in entries) <= 1_048_576
        for entry in entries:
            assert entry["MessageAttributes"]["amp_lite_format"]["StringValue"] == "1"
    assert len(stub.written_ids) == 512


def test_entries_failed_with_sender_fault_are_not_resent_and_fall_through(
        outage: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN a stub SQS client that refuses the first call's entries for good (SenderFault
    # true), a local spill behind it, and ~300 KB events: Amplitude requests of ~3 events, each
    # overflowed with its own SendMessageBatch call
    stub = StubSQS(fail_calls=[0], sender_fault=True)
    spill = LocalSpill(tmp_path / "spill")
    client = Amplitude(API_KEY, server_url=outage.url, retry=OfflineRetryHandler(),
                       overflow=[SQSOverflow("https://sqs.us-east-1.amazonaws.com/123456789012/q",
                                             sqs_client=stub), spill],
                       flush_timeout_s=5.0)
    tracked = track_many(client, 9, big=True)

    # WHEN the flush overflows everything
    report = client.flush()

    # THEN the refused entry was not resent; its events are in the spill, the rest in SQS
    in_sqs, in_spill = stub.written_ids, spilled_ids(spill)
    refused_body = stub.calls[0]["Entries"][0]["MessageBody"]
    refused = [e.insert_id for e in decode_message(refused_body).events]
    assert refused and sorted(in_spill) == sorted(refused)
    sent = [e["MessageBody"] for c in stub.calls for e in c["Entries"]]
    assert sent.count(refused_body) == 1
    assert sorted(in_sqs + in_spill) == sorted(tracked)
    assert len(in_sqs) == 6 and len(in_spill) == 3
    assert report.overflowed_to == {"sqs": 6, "local_spill": 3}
    assert report.overflowed == 9 and report.balanced


def test_entries_failed_without_sender_fault_are_resent_through_the_client(
        outage: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN a stub SQS client whose first call fails its entries transiently
    stub = StubSQS(fail_first_rounds=1, sender_fault=False)
    spill = LocalSpill(tmp_path / "spill")
    client = Amplitude(API_KEY, server_url=outage.url, retry=OfflineRetryHandler(),
                       overflow=[SQSOverflow("https://sqs.us-east-1.amazonaws.com/123456789012/q",
                                             sqs_client=stub), spill],
                       flush_timeout_s=5.0)
    tracked = track_many(client, 9, big=True)

    # WHEN the flush overflows everything
    report = client.flush()

    # THEN every event was written to SQS, none to the spill
    assert sorted(stub.written_ids) == sorted(tracked)
    assert spilled_ids(spill) == []
    assert report.overflowed_to == {"sqs": 9}
    assert len(stub.calls) == 4  # three requests' worth of events, the first sent twice
    assert stub.calls[1]["Entries"] == stub.calls[0]["Entries"]


@pytest.mark.parametrize("reply", [
    {}, {"Successful": []}, {"Successful": [], "Failed": []},
    {"Successful": [{"Id": "m7", "MessageId": "x"}]}, {"Successful": "m0"},
    {"Successful": [None, "m0", {"MessageId": "x"}]}, {"message": "<html>proxy</html>"}, None,
], ids=["empty", "no-successful", "neither", "other-id", "not-a-list", "junk-entries",
        "html", "none"])
def test_entries_the_reply_does_not_confirm_are_unwritten_and_not_resent(reply: Any) -> None:
    # GIVEN a (user-supplied) SQS client whose reply confirms none of the entries sent
    class Unconfirming(StubSQS):
        def send_message_batch(self, **kw: Any) -> Any:
            self.calls.append(kw)
            return reply

    stub = Unconfirming()
    sink = SQSOverflow("https://sqs.us-east-1.amazonaws.com/123456789012/q", sqs_client=stub)
    events = big_events(6)  # two messages, one SendMessageBatch call each

    # WHEN events are written
    with pytest.raises(OverflowWriteError) as caught:
        sink.write(events, reason="deadline", attempts=1, deadline=Deadline.after(5.0))

    # THEN every event is unwritten, for the next sink; SQS is not asked again
    assert list(caught.value.unwritten or []) == events
    assert len(stub.calls) == 1


# -- configuration and lazy import -------------------------------------------------------------

def test_queue_url_env_var_makes_sqs_the_first_sink_and_the_spill_the_second(
        monkeypatch: pytest.MonkeyPatch, clean_env: Path) -> None:
    # GIVEN AMP_LITE_OVERFLOW_QUEUE_URL
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/overflow"
    monkeypatch.setenv("AMP_LITE_OVERFLOW_QUEUE_URL", url)

    # WHEN the default sinks are built
    sinks = default_sinks(API_KEY, "https://api2.amplitude.com/2/httpapi")

    # THEN SQS on that queue comes first, the local spill under AMP_LITE_SPILL_DIR second
    assert [type(s) for s in sinks] == [SQSOverflow, LocalSpill]
    assert isinstance(sinks[0], SQSOverflow) and sinks[0].queue_url == url
    assert isinstance(sinks[1], LocalSpill) and sinks[1].directory.parent == clean_env


def test_queue_url_env_var_on_a_default_client_overflows_to_sqs(
        outage: FakeAmplitude, queue_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a client with default overflow and AMP_LITE_OVERFLOW_QUEUE_URL set
    monkeypatch.setenv("AMP_LITE_OVERFLOW_QUEUE_URL", queue_url)
    client = Amplitude(API_KEY, server_url=outage.url, flush_timeout_s=FLUSH_TIMEOUT_S)
    tracked = track_many(client, 5)

    # WHEN an outage makes it overflow
    report = client.flush()

    # THEN the events are in that queue
    assert report.overflowed_to == {"sqs": 5}
    assert sorted(ids_in(receive_all(queue_url))) == sorted(tracked)


def test_queue_url_env_var_falls_back_to_the_default_spill_when_sqs_is_down(
        outage: FakeAmplitude, closed_endpoint: str, monkeypatch: pytest.MonkeyPatch,
        clean_env: Path) -> None:
    # GIVEN a default client whose queue (from the environment) is unreachable
    monkeypatch.setenv("AMP_LITE_OVERFLOW_QUEUE_URL", closed_endpoint)
    client = Amplitude(API_KEY, server_url=outage.url, flush_timeout_s=FLUSH_TIMEOUT_S)
    track_many(client, 4)

    # WHEN an outage makes it overflow
    report = client.flush()

    # THEN the default local spill (second sink) took the events
    assert report.overflowed_to == {"local_spill": 4}
    assert any(p.name.endswith(".jsonl") for p in clean_env.rglob("*"))


def test_boto3_loads_only_at_the_first_sqs_write(queue_url: str) -> None:
    # GIVEN a fresh interpreter pointed at moto
    script = f"""
import sys
import amp_lite
from amp_lite import Amplitude, BufferedEvent, Deadline
from amp_lite.overflow import SQSOverflow
loaded = lambda: sorted(m for m in ("boto3", "botocore") if m in sys.modules)
after_import = loaded()
sink = SQSOverflow({queue_url!r})
client = Amplitude("k" * 32, server_url="http://127.0.0.1:9/2/httpapi", overflow=[sink])
after_client = loaded()
event = BufferedEvent(b'{{"event_type":"E","user_id":"u","insert_id":"i1"}}', "i1", "u", None)
sink.write([event], reason="deadline", attempts=1, deadline=Deadline.after(5.0))
print(after_import, after_client, loaded())
"""
    # WHEN amp_lite is imported, a client with SQSOverflow built, then the sink writes
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env=dict(os.environ), check=False)

    # THEN boto3 and botocore appear only after the write
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] [] ['boto3', 'botocore']"
    assert ids_in(receive_all(queue_url)) == ["i1"]


# -- deadlines and refusals inside the sink ----------------------------------------------------

@pytest.fixture
def hanging_endpoint(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """AWS_ENDPOINT_URL at a 127.0.0.1 socket that accepts connections (kernel backlog) and never
    answers. Returns a queue URL."""
    with silent_endpoint() as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        yield f"{url}/123456789012/amp-lite-overflow"


def test_a_hanging_sqs_endpoint_still_leaves_the_flush_within_its_budget(
        outage: FakeAmplitude, hanging_endpoint: str, tmp_path: Path) -> None:
    # GIVEN an outage, an SQS endpoint that never answers, then a local spill
    spill = LocalSpill(tmp_path / "spill")
    client = Amplitude(API_KEY, server_url=outage.url,
                       overflow=[SQSOverflow(hanging_endpoint), spill],
                       flush_timeout_s=FLUSH_TIMEOUT_S)
    tracked = track_many(client, 6)

    # WHEN the client flushes
    started = time.monotonic()
    report = client.flush()
    elapsed = time.monotonic() - started

    # THEN the SQS write gave up in time, the spill took the events, the budget held
    assert elapsed <= FLUSH_TIMEOUT_S + TOLERANCE_S
    assert report.overflowed_to == {"local_spill": 6}
    assert sorted(spilled_ids(spill)) == sorted(tracked)


class SteppingClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_batches_left_when_the_deadline_passes_are_returned_as_unwritten() -> None:
    # GIVEN a stub SQS client whose every call uses up the rest of the deadline (fake clock)
    from amp_lite import OverflowWriteError

    clock = SteppingClock()
    deadline = Deadline.after(1.0, clock)

    class SlowStub(StubSQS):
        def send_message_batch(self, **kw: Any) -> dict[str, Any]:
            clock.now += 2.0
            return super().send_message_batch(**kw)

    stub = SlowStub()
    sink = SQSOverflow("https://sqs.us-east-1.amazonaws.com/123456789012/q", sqs_client=stub)
    events = big_events(9)  # three messages, one SendMessageBatch call each

    # WHEN they are written
    with pytest.raises(OverflowWriteError) as caught:
        sink.write(events, reason="deadline", attempts=1, deadline=deadline)

    # THEN only the first call was made; the other events are reported unwritten, in order
    assert len(stub.calls) == 1
    assert stub.written_ids == [e.insert_id for e in events[:3]]
    assert caught.value.unwritten is not None
    assert list(caught.value.unwritten) == events[3:]


def test_no_sqs_call_starts_without_time_for_it() -> None:
    # GIVEN an SQS sink on a stub client, and less than MIN_CALL_S left (fake clock)
    from amp_lite.overflow._sqs import MIN_CALL_S

    stub = StubSQS()
    sink = SQSOverflow("https://sqs.us-east-1.amazonaws.com/123456789012/q", sqs_client=stub)
    events = big_events(3)

    # WHEN it writes
    with pytest.raises(OverflowWriteError) as caught:
        sink.write(events, reason="deadline", attempts=1,
                   deadline=Deadline.after(MIN_CALL_S * 0.8, SteppingClock()))

    # THEN no call was made, and every event is handed back
    assert stub.calls == []
    assert list(caught.value.unwritten or []) == events


def test_one_client_of_ours_serves_every_write(
        queue_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an SQS sink whose botocore clients are counted as they are built
    import amp_lite.overflow._sqs as sqs_module

    built: list[str | None] = []
    real_build = sqs_module._build_client

    def spy(region: str | None, reserve_s: float) -> Any:
        built.append(region)
        return real_build(region, reserve_s)

    monkeypatch.setattr(sqs_module, "_build_client", spy)
    sink = SQSOverflow(queue_url)

    # WHEN it writes three times, with different time left
    for i, left in enumerate((5.0, 0.4, 1.5)):
        event = BufferedEvent(json.dumps({"event_type": "E", "user_id": "user-1",
                                          "insert_id": f"w{i}"}).encode(), f"w{i}", "user-1",
                              None)
        sink.write([event], reason="deadline", attempts=1, deadline=Deadline.after(left))

    # THEN one client was built (timeouts no longer depend on the time left) and all arrived
    assert len(built) == 1
    assert sorted(ids_in(receive_all(queue_url))) == ["w0", "w1", "w2"]


def test_writing_through_our_own_client_starts_no_thread(
        queue_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN Thread.start and _thread.start_new_thread recorded when called from this thread
    # (moto's server starts its handler threads from its own)
    import _thread
    import threading

    owner, started = threading.get_ident(), []
    thread_start, raw_start = threading.Thread.start, _thread.start_new_thread

    def recording_start(thread: threading.Thread) -> None:
        if threading.get_ident() == owner:
            started.append(thread.name)
        thread_start(thread)

    def recording_raw(function: Any, *args: Any) -> int:
        if threading.get_ident() == owner:
            started.append(repr(function))
        return raw_start(function, *args)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    monkeypatch.setattr(_thread, "start_new_thread", recording_raw)
    sink = SQSOverflow(queue_url)

    # WHEN it builds its client and writes (through the bounded transport)
    sink.write(big_events(1), reason="deadline", attempts=1, deadline=Deadline.after(5.0))

    # THEN the event arrived and no thread was started (I1)
    assert ids_in(receive_all(queue_url)) == ["big-000"]
    assert started == []


def test_a_user_supplied_boto3_client_is_used_as_it_is(
        queue_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a boto3 client of the user's own
    import boto3

    import amp_lite.overflow._sqs as sqs_module

    monkeypatch.setattr(sqs_module, "_build_client", None)  # building one of ours would fail
    own = boto3.client("sqs")
    sink = SQSOverflow(queue_url, sqs_client=own)
    event = big_events(1)

    # WHEN the sink writes
    sink.write(event, reason="deadline", attempts=1, deadline=Deadline.after(5.0))

    # THEN it went through that client, to the queue
    assert ids_in(receive_all(queue_url)) == [event[0].insert_id]


def test_an_event_too_large_for_sqs_is_unwritten_and_the_others_are_written() -> None:
    # GIVEN a normal event and one of ~600 KB of U+FFFE (~1.2 MB once escaped for SQS)
    from amp_lite import OverflowWriteError

    stub = StubSQS()
    sink = SQSOverflow("https://sqs.us-east-1.amazonaws.com/123456789012/q", sqs_client=stub)
    normal = big_events(1)[0]
    huge_raw = json.dumps({"event_type": "Huge", "user_id": "u1", "insert_id": "huge",
                           "event_properties": {"p": "\ufffe" * 200_000}},
                          ensure_ascii=False).encode()
    huge = BufferedEvent(huge_raw, "huge", "u1", None)

    # WHEN both are written
    # THEN the sink reports only the huge one as unwritten (the sink contract), and wrote the other
    with pytest.raises(OverflowWriteError) as caught:
        sink.write([normal, huge], reason="deadline", attempts=1,
                   deadline=Deadline.after(5.0))
    assert list(caught.value.unwritten or []) == [huge]
    assert stub.written_ids == [normal.insert_id]
