"""When the API key cannot be had: a secret store that never answers, an HTTP stack that
cannot be built, an overflow variable that names no queue. The flush still ends by its
deadline, and no event is dropped: they are overflowed, and delivered once the cause is gone.
(Issue 12, items 1, 5 and 7.)"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

import amp_lite._key_sources as key_sources
from amp_lite import Amplitude, ConfigError, Deadline, DeliveryReport
from amp_lite._key_sources import SecretFetcher, api_key_from_environment
from amp_lite.overflow import LocalSpill
from amp_lite.replay import make_handler
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.raw_server import silent_endpoint
from tests.support.sqs_events import failed_ids, lambda_sqs_event, overflow_bodies, wire_event
from tests.support.sqs_raw_server import SQSReplyServer, http_reply

TOLERANCE_S = 0.75  # scheduling slack on a loaded 2-core machine
SECRET = "amp/api-key"


class Remaining:
    """Lambda's context: what is left of an invocation of `budget_ms`, counted from now."""

    def __init__(self, budget_ms: int) -> None:
        self._ends = time.monotonic() + budget_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._ends - time.monotonic()) * 1000))


@pytest.fixture
def silent_secrets(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """AWS calls go to a server that never answers; the key is named by its secret."""
    monkeypatch.setenv("AMPLITUDE_API_KEY_SECRET", SECRET)
    with silent_endpoint() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        yield aws_env


def invoke(client: Amplitude, users: list[str], budget_ms: int = 3000,
           margin_ms: int = 500) -> tuple[DeliveryReport, float]:
    started = time.monotonic()
    with client.invocation(remaining_time_ms=Remaining(budget_ms).get_remaining_time_in_millis,
                           margin_ms=margin_ms) as scope:
        for user in users:
            client.track("Signed In", user_id=user)
    assert scope.report is not None and scope.report.balanced
    return scope.report, time.monotonic() - started


def test_an_unreachable_secret_costs_the_flush_its_budget_once_and_loses_nothing(
        silent_secrets: str, fake: FakeAmplitude, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a client whose key is in a secret store that never answers
    monkeypatch.setattr(key_sources, "RETRY_AFTER_FAILURE_S", (0.5, 0.5))
    spill = LocalSpill(tmp_path / "spill")
    client = Amplitude(api_key_from_environment(), server_url=fake.url, overflow=spill)
    # WHEN a 3 s invocation (500 ms margin) tracks three events
    first, first_s = invoke(client, ["user-a1", "user-a2", "user-a3"])
    # THEN it ends within its 2.5 s budget, and the events are overflowed, not dropped
    assert first_s < 2.5 + TOLERANCE_S, first_s
    assert dict(first.overflowed_reasons) == {"key_unavailable": 3}, first.summary()
    assert first.dropped == 0
    # WHEN the next invocation runs at once / THEN it does not wait for the store again
    second, second_s = invoke(client, ["user-b1"])
    assert second_s < TOLERANCE_S, second_s
    assert dict(second.overflowed_reasons) == {"key_unavailable": 1}
    # WHEN the secret can be read again and the backoff has passed
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_secrets)
    boto3.client("secretsmanager").create_secret(Name=SECRET, SecretString=API_KEY)
    time.sleep(0.6)  # the backoff itself is what is waited for
    third, _ = invoke(client, ["user-c1"], budget_ms=10_000)
    # THEN the key is fetched and every event is delivered, the overflowed ones included
    assert (third.recovered, third.delivered) == (4, 5), third.summary()
    assert sorted(e["user_id"] for e in fake.events) == [
        "user-a1", "user-a2", "user-a3", "user-b1", "user-c1"]


def test_replay_keeps_its_records_while_the_key_is_unavailable(
        silent_secrets: str, fake: FakeAmplitude) -> None:
    # GIVEN the replay consumer of a function whose secret store never answers
    client = Amplitude(api_key_from_environment(), server_url=fake.url, overflow=())
    handler = make_handler(client)
    messages = [{"MessageId": f"m-{n}", "ReceiptHandle": f"r-{n}", "Body": body,
                 "Attributes": {}, "MessageAttributes": {}}
                for n, body in enumerate(overflow_bodies(
                    [wire_event(f"user-r{n}") for n in range(3)]))]
    event = lambda_sqs_event(messages, event_source_arn="arn:aws:sqs:us-east-1:1:q")
    # WHEN it runs with 3 s left
    started = time.monotonic()
    response = handler(event, Remaining(3000))
    # THEN it returns in time and every record comes back (none is deleted)
    assert time.monotonic() - started < 2.5 + TOLERANCE_S
    assert failed_ids(response) == {m["MessageId"] for m in messages}
    assert fake.requests == []


def test_the_buffer_cap_overflows_even_before_the_key_is_known(tmp_path: Path) -> None:
    # GIVEN a provider that fails, and a scope capped at 10 events
    def provider() -> str:
        raise RuntimeError("store unreachable")

    spill = LocalSpill(tmp_path / "spill")
    client = Amplitude(provider, server_url="http://127.0.0.1:9/never", overflow=spill,
                       max_buffered_events=10, flush_timeout_s=1)
    # WHEN 12 events are tracked in one invocation
    with client.invocation(timeout_s=2) as scope:
        for n in range(12):
            client.track("Capped", user_id=f"user-cap{n}")
    # THEN the excess went to the spill early, the rest at the end: none dropped
    assert scope.report is not None and scope.report.balanced
    assert scope.report.dropped == 0
    assert scope.report.overflowed == 12, scope.report.summary()
    assert set(scope.report.overflowed_reasons) == {"buffer_cap", "key_unavailable"}


def test_an_http_stack_that_cannot_be_built_overflows_the_events(
        fake: FakeAmplitude, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a client whose HTTP module cannot be imported (an OpenSSL mismatch, say)
    spill = LocalSpill(tmp_path / "spill")
    client = Amplitude(API_KEY, server_url=fake.url, overflow=spill)
    monkeypatch.setitem(sys.modules, "amp_lite._http", None)
    # WHEN a plain flush and a scope's flush run
    client.track("Plain", user_id="user-plain")
    plain = client.flush()
    with client.invocation(timeout_s=2) as scope:
        client.track("Scoped", user_id="user-scoped")
    # THEN neither raised nor lost anything: the events are overflowed, and the cause logged
    assert dict(plain.overflowed_reasons) == {"transport_unavailable": 1}
    assert scope.report is not None
    assert dict(scope.report.overflowed_reasons) == {"transport_unavailable": 1}
    assert "cannot send" in caplog.text
    # AND once the stack can be built, the next flush delivers both
    monkeypatch.delitem(sys.modules, "amp_lite._http")
    assert client.flush().delivered == 2


def test_an_overflow_variable_naming_no_queue_is_reported_once_and_delivery_goes_on(
        fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN AMP_LITE_OVERFLOW_QUEUE_URL set to the queue's ARN instead of its URL
    monkeypatch.setenv("AMP_LITE_OVERFLOW_QUEUE_URL", "arn:aws:sqs:us-east-1:123456789012:q")
    with caplog.at_level(logging.ERROR, logger="amp_lite"):
        client = Amplitude(API_KEY, server_url=fake.url)
        # THEN building the client says so, naming the variable
        errors = [r.getMessage() for r in caplog.records]
        assert len(errors) == 1 and "AMP_LITE_OVERFLOW_QUEUE_URL" in errors[0], errors
        # AND with Amplitude healthy every event is delivered (not dropped as internal_error)
        client.track("Healthy", user_id="user-healthy")
        assert client.flush().delivered == 1
        # AND with Amplitude down they go to the local spill
        fake.script(*[Fault.status_code(503)] * 40)
        client.track("Down", user_id="user-down")
        down = client.flush(timeout_s=1)
    assert dict(down.overflowed_to) == {"local_spill": 1}, json.dumps(down.summary())
    assert len(caplog.records) == 1  # reported once, not per flush


def test_a_secret_store_trickling_its_reply_is_given_up_at_the_deadline(
        aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a store that answers a byte every 50 ms (the whole reply would take about 10 s)
    body = json.dumps({"ARN": "arn:aws:secretsmanager:us-east-1:1:secret:amp", "Name": SECRET,
                       "SecretString": API_KEY, "VersionId": "v1"}).encode()
    with SQSReplyServer(http_reply(body), pause_s=0.05) as store:
        monkeypatch.setenv("AWS_ENDPOINT_URL", store.endpoint)
        fetcher = SecretFetcher("AMPLITUDE_API_KEY_SECRET", SECRET)
        # WHEN the key is fetched within 1 s
        started = time.monotonic()
        with pytest.raises(ConfigError, match="could not fetch the API key"):
            fetcher(Deadline.after(1.0))
        # THEN the whole request, not each receive, was bounded by that second
        assert time.monotonic() - started < 1.0 + TOLERANCE_S
