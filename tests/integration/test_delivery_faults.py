"""The delivery loop against a real HTTP server: every status and network fault of the delivery
loop (docs/design.md, section 2), to FakeAmplitude on 127.0.0.1, through both flushes: the
sync one (urllib3) and the async one (`aflush`, httpcore), which must behave identically.

Every case checks invariant I2 (`report.balanced`) and the exact counts and reasons.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from amp_lite import Amplitude, DeliveryReport, RetryHandler
from amp_lite._retry import OfflineRetryHandler
from amp_lite.overflow import LocalSpill
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.doubles import RecordingSink

FAULT_BUDGET_S = 0.5  # flush budget for cases that are meant to run out of time
OK_BUDGET_S = 2.0  # flush budget for cases that are meant to finish
TOLERANCE_S = 0.5  # generous slack for deadline assertions on a loaded CI machine


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture(autouse=True, params=["flush", "aflush"])
def flush_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each case runs twice: `client.flush()` as written, then the same call made through
    `await client.aflush()` on an event loop (which must await, not fall back)."""
    if request.param == "aflush":
        def awaited_flush(self: Amplitude, *, timeout_s: float | None = None) -> DeliveryReport:
            assert self._route.can_await(), "the async flush fell back to the sync one"
            return asyncio.run(self.aflush(timeout_s=timeout_s))

        monkeypatch.setattr(Amplitude, "flush", awaited_flush)
    return str(request.param)


def make_client(url: str, overflow: object, *, budget_s: float = OK_BUDGET_S,
                **kwargs: object) -> Amplitude:
    return Amplitude(API_KEY, server_url=url, overflow=overflow,  # type: ignore[arg-type]
                     flush_timeout_s=budget_s, **kwargs)  # type: ignore[arg-type]


def track_users(client: Amplitude, count: int, *, prefix: str = "user") -> list[str]:
    ids = [client.track("page_view", user_id=f"{prefix}-{i:03d}") for i in range(count)]
    assert all(ids)
    return [i for i in ids if i is not None]


def timed_flush(client: Amplitude) -> tuple[DeliveryReport, float]:
    started = time.monotonic()
    report = client.flush()
    return report, time.monotonic() - started


def nonzero(counts: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def assert_report(report: DeliveryReport, *, tracked: int, delivered: int = 0,
                  rejected: Mapping[str, int] | None = None,
                  overflowed: Mapping[str, int] | None = None,
                  dropped: Mapping[str, int] | None = None, recovered: int = 0) -> None:
    assert report.balanced, report.summary()
    assert report.tracked == tracked, report.summary()
    assert report.recovered == recovered, report.summary()
    assert report.delivered == delivered, report.summary()
    assert nonzero(report.rejected_reasons) == dict(rejected or {}), report.summary()
    assert nonzero(report.overflowed_reasons) == dict(overflowed or {}), report.summary()
    assert nonzero(report.dropped_reasons) == dict(dropped or {}), report.summary()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def error_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("amp_lite") and r.levelno >= logging.ERROR]


def max_jitter(low: float, high: float) -> float:
    return high  # deterministic backoff: always the ceiling


# -- 200 ----------------------------------------------------------------------------------------


def test_200_delivers_every_event_in_one_attempt(fake: FakeAmplitude,
                                                 sink: RecordingSink) -> None:
    # GIVEN five events
    client = make_client(fake.url, sink)
    ids = track_users(client, 5)
    # WHEN the fake answers 200
    report = client.flush()
    # THEN all are delivered at once, in order, and nothing overflows
    assert_report(report, tracked=5, delivered=5)
    assert report.attempts == 1
    assert fake.insert_ids == ids
    assert [r.status for r in fake.requests] == [200]
    assert sink.writes == []


# -- 400 ----------------------------------------------------------------------------------------


def test_400_listing_indices_rejects_those_events_and_resends_the_rest(
        fake: FakeAmplitude, sink: RecordingSink) -> None:
    # GIVEN four events and a 400 naming events 1 and 3 as invalid
    client = make_client(fake.url, sink)
    ids = track_users(client, 4)
    fake.script(Fault.status_code(400, {
        "code": 400, "error": "Invalid field values on some events",
        "events_with_invalid_fields": {"time": [1]},
        "events_with_missing_fields": {"event_type": [3]}}))
    # WHEN flushed
    report = client.flush()
    # THEN 1 and 3 are rejected, 0 and 2 are resent at once and delivered
    assert_report(report, tracked=4, delivered=2, rejected={"invalid_event": 2})
    assert report.attempts == 2
    assert fake.insert_ids == [ids[0], ids[2]]
    assert [(r.status, r.events) for r in fake.requests] == [(400, 4), (200, 2)]
    assert sink.writes == []


def test_min_id_length_option_is_sent_so_the_fake_accepts_short_ids(
        fake: FakeAmplitude, sink: RecordingSink) -> None:
    # GIVEN a client allowing 3-character ids (the server default is 5)
    client = make_client(fake.url, sink, min_id_length=3)
    insert_id = client.track("page_view", user_id="abc")
    # WHEN flushed
    report = client.flush()
    # THEN options.min_id_length travels with the request and the short id is accepted
    assert_report(report, tracked=1, delivered=1)
    assert fake.insert_ids == [insert_id]


def test_recovered_events_are_sent_with_the_min_id_length_they_were_tracked_with(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN a spill holding a 3-character user id, written by a client with min_id_length=3
    spill = LocalSpill(tmp_path / "spill")
    writer = make_client(fake.url, spill, min_id_length=3, retry=OfflineRetryHandler())
    short_id = writer.track("page_view", user_id="abc")
    long_id = writer.track("page_view", user_id="user-long")
    fake.script(Fault.status_code(503))
    assert_report(writer.flush(), tracked=2, overflowed={"offline": 2})
    # WHEN a client with the server's default min_id_length (5) recovers and sends them
    reader = make_client(fake.url, spill)
    report = reader.flush()
    # THEN they go out with the option they were valid under (min_id_length=3): both are
    # delivered, none rejected (the request used to go without it, and the short id was
    # rejected for good), and the spill is emptied
    assert_report(report, tracked=0, recovered=2, delivered=2)
    assert [r.status for r in fake.requests] == [503, 200]
    assert sorted(fake.insert_ids) == sorted([short_id, long_id])
    assert spill.pending_files() == []


def test_400_invalid_api_key_overflows_all_loudly_without_logging_the_key(
        sink: RecordingSink, caplog: pytest.LogCaptureFixture) -> None:
    with FakeAmplitude(api_keys=["another-project-key-000000"]) as fake:
        # GIVEN a fake that refuses our key and echoes it in its reply, as Amplitude does
        conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
        payload = json.dumps({"api_key": API_KEY, "events": [{"event_type": "x"}]})
        conn.request("POST", "/2/httpapi", payload, {"Content-Type": "application/json"})
        echoed = conn.getresponse().read().decode()
        conn.close()
        assert API_KEY in echoed
        fake.reset()
        client = make_client(fake.url, sink)
        track_users(client, 3)
        caplog.set_level(logging.DEBUG)
        # WHEN flushed
        report = client.flush()
    # THEN every event is overflowed (not retried, not rejected: a fixed key delivers them),
    # with an ERROR log line ...
    assert_report(report, tracked=3, overflowed={"invalid_api_key": 3})
    assert report.attempts == 1
    assert fake.events == []
    assert len(sink.insert_ids) == 3
    assert any("API key" in m for m in error_messages(caplog))
    # ... and the key itself appears in no log record, at any level, from any logger
    assert caplog.records
    assert all(API_KEY not in r.getMessage() for r in caplog.records)
    assert API_KEY not in caplog.text


def test_400_missing_field_overflows_the_whole_batch_loudly(
        fake: FakeAmplitude, sink: RecordingSink, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN three events and a 400 naming a missing request field
    client = make_client(fake.url, sink)
    track_users(client, 3)
    fake.script(Fault.status_code(400, {"code": 400, "error": "Request missing required field",
                                        "missing_field": "api_key"}))
    # WHEN flushed
    report = client.flush()
    # THEN all three are overflowed at once (the request was refused, not the events), loudly
    assert_report(report, tracked=3, overflowed={"missing_field": 3})
    assert report.attempts == 1
    assert len(fake.requests) == 1
    assert fake.events == []
    assert any("missing" in m for m in error_messages(caplog))


# -- 403 / 413 ----------------------------------------------------------------------------------


def test_403_is_not_retried_and_overflows_loudly(
        fake: FakeAmplitude, sink: RecordingSink, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN three events and a WAF block
    client = make_client(fake.url, sink)
    track_users(client, 3)
    fake.script(Fault.status_code(403))
    # WHEN flushed
    report = client.flush()
    # THEN all are overflowed as forbidden after one attempt, with an ERROR log
    assert_report(report, tracked=3, overflowed={"forbidden": 3})
    assert report.attempts == 1
    assert len(fake.requests) == 1
    assert len(sink.insert_ids) == 3
    assert any("403" in m for m in error_messages(caplog))


@pytest.mark.parametrize("refusal", ["forbidden", "invalid_api_key"])
def test_a_refused_request_keeps_the_spilled_backlog(fake: FakeAmplitude, tmp_path: Path,
                                                     refusal: str) -> None:
    # GIVEN three events in the local spill from an earlier outage
    spill = LocalSpill(tmp_path / "spill")
    client = make_client(fake.url, spill)
    backlog = track_users(client, 3, prefix="backlog")
    fake.script(*[Fault.status_code(503)] * 40)
    assert client.flush(timeout_s=1.5).overflowed == 3
    fake.clear_faults()
    # WHEN the next flush reads them back and Amplitude refuses the whole request
    fake.script(Fault.status_code(403) if refusal == "forbidden" else Fault.status_code(
        400, {"code": 400, "error": f"Invalid API key: {API_KEY}"}))
    fresh = track_users(client, 2, prefix="fresh")
    refused = client.flush()
    # THEN the recovered and the new events are overflowed again, none rejected
    assert_report(refused, tracked=2, recovered=3, overflowed={refusal: 5})
    assert fake.events == []
    # AND once the cause is gone, a later flush delivers every one of them
    assert client.flush().delivered == 5
    assert sorted(fake.insert_ids) == sorted(backlog + fresh)
    assert spill.pending_files() == []


def test_413_on_a_batch_splits_it_in_half_and_delivers_everything(
        fake: FakeAmplitude, sink: RecordingSink) -> None:
    # GIVEN six events and one 413
    client = make_client(fake.url, sink)
    ids = track_users(client, 6)
    fake.script(Fault.status_code(413))
    # WHEN flushed
    report = client.flush()
    # THEN the batch is sent again as two halves of three, both delivered
    assert_report(report, tracked=6, delivered=6)
    assert report.attempts == 3
    assert [(r.status, r.events) for r in fake.requests] == [(413, 6), (200, 3), (200, 3)]
    assert sorted(fake.insert_ids) == sorted(ids)
    assert fake.duplicates == 0


def test_413_on_a_single_event_rejects_it_as_too_large(
        fake: FakeAmplitude, sink: RecordingSink) -> None:
    # GIVEN one event and a 413
    client = make_client(fake.url, sink)
    track_users(client, 1)
    fake.script(Fault.status_code(413))
    # WHEN flushed
    report = client.flush()
    # THEN it cannot be split: rejected too_large, not retried
    assert_report(report, tracked=1, rejected={"too_large": 1})
    assert report.attempts == 1
    assert len(fake.requests) == 1


# -- 429 ----------------------------------------------------------------------------------------


def test_429_overflows_throttled_events_and_delivers_the_others(
        fake: FakeAmplitude, sink: RecordingSink) -> None:
    # GIVEN five events, two of them from users the fake throttles
    client = make_client(fake.url, sink)
    ids = track_users(client, 5)
    fake.throttle(users=["user-000", "user-003"])
    # WHEN flushed
    report = client.flush()
    # THEN the throttled ones overflow ("throttled"), the rest are resent at once and delivered
    assert_report(report, tracked=5, delivered=3, overflowed={"throttled": 2})
    assert report.attempts == 2
    assert [(r.status, r.events) for r in fake.requests] == [(429, 5), (200, 3)]
    assert sink.ids("throttled") == [ids[0], ids[3]]
    assert fake.insert_ids == [ids[1], ids[2], ids[4]]


def test_429_over_daily_quota_rejects_those_events(
        fake: FakeAmplitude, sink: RecordingSink) -> None:
    # GIVEN four events, one from a user over its daily quota
    client = make_client(fake.url, sink)
    ids = track_users(client, 4)
    fake.throttle(users=["user-002"], daily_quota=True)
    # WHEN flushed
    report = client.flush()
    # THEN that one is rejected (daily_quota), not overflowed; the others are delivered
    assert_report(report, tracked=4, delivered=3, rejected={"daily_quota": 1})
    assert report.attempts == 2
    assert sink.writes == []
    assert fake.insert_ids == [ids[0], ids[1], ids[3]]


# -- 5xx ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried_and_then_delivered(fake: FakeAmplitude, sink: RecordingSink,
                                           status: int) -> None:
    # GIVEN three events and one server error
    client = make_client(fake.url, sink)
    ids = track_users(client, 3)
    fake.script(Fault.status_code(status))
    # WHEN flushed
    report = client.flush()
    # THEN the batch is retried and delivered by the next 200
    assert_report(report, tracked=3, delivered=3)
    assert report.attempts == 2
    assert [r.status for r in fake.requests] == [status, 200]
    assert fake.insert_ids == ids
    assert sink.writes == []


def test_500_after_acceptance_is_retried_and_deduplicated_by_insert_id(
        fake: FakeAmplitude, sink: RecordingSink) -> None:
    # GIVEN one event and a 500 sent after the fake already ingested it
    client = make_client(fake.url, sink)
    [insert_id] = track_users(client, 1)
    fake.script(Fault.status_code(500, accept=True))
    # WHEN flushed
    report = client.flush()
    # THEN the retry reuses the insert_id, so the fake counts it once and sees one duplicate
    assert_report(report, tracked=1, delivered=1)
    assert report.attempts == 2
    assert fake.duplicates == 1
    assert fake.insert_ids == [insert_id]


# -- network faults -----------------------------------------------------------------------------


def test_connection_refused_overflows_within_the_budget(tmp_path: Path) -> None:
    # GIVEN a server URL where nothing listens
    spill = LocalSpill(tmp_path / "spill")
    client = make_client(f"http://127.0.0.1:{closed_port()}/2/httpapi", spill,
                         budget_s=FAULT_BUDGET_S, retry=RetryHandler(jitter=max_jitter))
    ids = track_users(client, 3)
    # WHEN flushed
    report, elapsed = timed_flush(client)
    # THEN it retries until the budget is spent, then spills every event ("deadline")
    assert_report(report, tracked=3, overflowed={"deadline": 3})
    assert dict(report.overflowed_to) == {"local_spill": 3}
    assert report.deadline_hit
    assert report.attempts >= 2
    assert elapsed < FAULT_BUDGET_S + TOLERANCE_S
    claim = spill.claim(max_events=100)
    assert claim is not None
    assert [e.insert_id for e in claim.events] == ids


def test_reset_before_the_reply_is_resent_at_once_and_delivered(
        fake: FakeAmplitude, sink: RecordingSink) -> None:
    # GIVEN three events and a connection reset after the request was read
    sleeps: list[float] = []
    client = make_client(fake.url, sink, retry=RetryHandler(sleep=sleeps.append))
    ids = track_users(client, 3)
    fake.script(Fault.reset())
    # WHEN flushed
    report = client.flush()
    # THEN the transport resends on a new connection at once (no backoff) and it is delivered
    assert_report(report, tracked=3, delivered=3)
    assert sleeps == []
    assert [r.fault for r in fake.requests] == ["reset", None]
    assert fake.connections_opened == 2
    assert fake.insert_ids == ids


def test_reset_mid_body_is_retried_and_deduplicated(
        fake: FakeAmplitude, sink: RecordingSink) -> None:
    # GIVEN three events, ingested by the fake, whose 200 reply is cut mid-body by a reset
    client = make_client(fake.url, sink)
    ids = track_users(client, 3)
    fake.script(Fault.reset_mid_body(accept=True))
    # WHEN flushed
    report = client.flush()
    # THEN the truncated reply is not trusted: the batch is retried and delivered once
    assert_report(report, tracked=3, delivered=3)
    assert report.attempts == 2
    assert [r.fault for r in fake.requests] == ["reset_mid_body", None]
    assert fake.duplicates == 3
    assert fake.insert_ids == ids


def test_hang_overflows_with_reason_deadline_within_the_budget(
        fake: FakeAmplitude, sink: RecordingSink) -> None:
    # GIVEN a server that reads the request and never answers
    client = make_client(fake.url, sink, budget_s=FAULT_BUDGET_S)
    ids = track_users(client, 3)
    fake.script(Fault.hang(), Fault.hang(), Fault.hang())
    # WHEN flushed with a 0.5 s budget
    report, elapsed = timed_flush(client)
    # THEN flush returns in time and every event overflows for "deadline"
    assert elapsed < FAULT_BUDGET_S + TOLERANCE_S
    assert_report(report, tracked=3, overflowed={"deadline": 3})
    assert report.deadline_hit
    assert report.attempts == 1
    assert sink.ids("deadline") == ids
    assert fake.events == []


def test_slow_trickling_body_overflows_within_the_budget(
        fake: FakeAmplitude, sink: RecordingSink) -> None:
    # GIVEN a 200 whose body trickles out over 2 s, four times the flush budget
    client = make_client(fake.url, sink, budget_s=FAULT_BUDGET_S)
    ids = track_users(client, 3)
    fake.script(Fault.slow_body(2.0, accept=False), Fault.slow_body(2.0, accept=False))
    # WHEN flushed with a 0.5 s budget
    report, elapsed = timed_flush(client)
    # THEN reading the body is bounded by the deadline: in time, events overflow for "deadline"
    assert elapsed < FAULT_BUDGET_S + TOLERANCE_S
    assert_report(report, tracked=3, overflowed={"deadline": 3})
    assert report.deadline_hit
    assert sink.ids("deadline") == ids


def test_non_json_200_is_retried_then_delivered_once(
        fake: FakeAmplitude, sink: RecordingSink) -> None:
    # GIVEN three events, ingested by the fake, answered with a plain-text "OK"
    client = make_client(fake.url, sink)
    ids = track_users(client, 3)
    fake.script(Fault.reply(200, b"OK", "text/plain", accept=True))
    # WHEN flushed
    report = client.flush()
    # THEN a 2xx without Amplitude's JSON is not trusted: retried, delivered by the next 200,
    # and the fake's dedup on insert_id keeps one copy of each
    assert_report(report, tracked=3, delivered=3)
    assert report.attempts == 2
    assert [r.status for r in fake.requests] == [200, 200]
    assert fake.duplicates == 3
    assert fake.insert_ids == ids


def test_huge_reply_body_is_treated_as_a_failure(
        fake: FakeAmplitude, sink: RecordingSink) -> None:
    # GIVEN a 200 whose otherwise valid JSON body is over 64 KiB
    client = make_client(fake.url, sink)
    ids = track_users(client, 3)
    huge = json.dumps({"code": 200, "padding": "x" * (70 * 1024)}).encode()
    fake.script(Fault.reply(200, huge))
    # WHEN flushed
    report = client.flush()
    # THEN the first attempt counts as failed (not delivered); the retry delivers them
    assert_report(report, tracked=3, delivered=3)
    assert report.attempts == 2
    assert len(fake.requests) == 2
    assert fake.insert_ids == ids


def test_repeated_5xx_until_the_deadline_overflows_every_event(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN a server answering 503 to every request
    spill = LocalSpill(tmp_path / "spill")
    client = make_client(fake.url, spill, budget_s=FAULT_BUDGET_S,
                         retry=RetryHandler(jitter=max_jitter))
    track_users(client, 4)
    fake.script(*[Fault.status_code(503)] * 50)
    # WHEN flushed
    report, elapsed = timed_flush(client)
    # THEN retries stop at the deadline and the events are spilled, in time
    assert_report(report, tracked=4, overflowed={"deadline": 4})
    assert report.attempts == len(fake.requests) >= 2
    assert elapsed < FAULT_BUDGET_S + TOLERANCE_S
    assert len(spill.pending_files()) == 1
