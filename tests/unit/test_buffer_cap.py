"""The per-invocation buffer cap: past `max_buffered_events` or `max_buffered_bytes`, the oldest
events overflow at once from inside track(), with reason "buffer_cap" (client._overflow_excess)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from amp_lite import Amplitude, ConfigError
from amp_lite.overflow import LocalSpill
from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY
from tests.support.doubles import RecordingSink

EVENT_CAP = 10
PAD = "x" * 1000  # makes each event ~1.1 KB


def track_padded(client: Amplitude, i: int) -> str:
    insert_id = client.track("Capped", user_id=f"user-{i % 3}",
                             event_properties={"i": i, "pad": PAD})
    assert insert_id is not None
    return insert_id


def test_event_cap_overflows_the_oldest_excess_early_and_the_report_counts_everything(
        fake: FakeAmplitude) -> None:
    # GIVEN a client whose buffer holds at most 10 events, overflowing to a recording sink
    sink = RecordingSink("recorder", fake=fake)
    client = Amplitude(API_KEY, server_url=fake.url, overflow=sink,
                       max_buffered_events=EVENT_CAP, flush_timeout_s=5.0)

    # WHEN 25 events are tracked inside an invocation
    tracked: list[str] = []
    with client.invocation() as scope:
        for i in range(25):
            tracked.append(track_padded(client, i))
            # THEN the buffer never holds more than the cap
            assert client.pending <= EVENT_CAP
            assert len(scope.buffer) <= EVENT_CAP
        # THEN the excess reached the sink during track(), before any flush
        assert sink.writes
        assert all(w.delivered_before == 0 for w in sink.writes)
        early = sink.insert_ids
        assert fake.events == []

    # THEN the oldest events overflowed ("buffer_cap"), the newest were delivered
    assert all(w.reason == "buffer_cap" for w in sink.writes)
    assert early == tracked[:len(early)]
    assert sorted(fake.insert_ids) == sorted(tracked[len(early):])
    report = scope.report
    assert report is not None
    assert report.tracked == 25
    assert report.overflowed == len(early) > 0
    assert report.delivered == 25 - len(early)
    assert report.tracked == report.delivered + report.overflowed
    assert report.overflowed_reasons == {"buffer_cap": len(early)}
    assert report.overflowed_to == {"recorder": len(early)}
    assert report.balanced


def test_byte_cap_overflows_the_oldest_excess_early(fake: FakeAmplitude) -> None:
    # GIVEN a client whose buffer holds at most 10,000 bytes (about 9 padded events)
    sink = RecordingSink("recorder", fake=fake)
    cap = 10_000
    client = Amplitude(API_KEY, server_url=fake.url, overflow=sink, max_buffered_bytes=cap,
                       flush_timeout_s=5.0)

    # WHEN 25 padded events are tracked inside an invocation
    tracked: list[str] = []
    with client.invocation() as scope:
        for i in range(25):
            tracked.append(track_padded(client, i))
            # THEN the buffer's encoded size never passes the cap
            assert scope.buffer.size_bytes <= cap
        assert sink.writes and fake.events == []
        early = sink.insert_ids

    # THEN the oldest overflowed early with reason buffer_cap; everything is accounted for
    assert all(w.reason == "buffer_cap" for w in sink.writes)
    assert early == tracked[:len(early)]
    assert sorted(fake.insert_ids) == sorted(tracked[len(early):])
    report = scope.report
    assert report is not None
    assert report.tracked == 25 == report.delivered + report.overflowed
    assert report.overflowed_reasons == {"buffer_cap": len(early)}
    assert report.balanced


def test_event_cap_with_local_spill_writes_early_and_balances(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN a client with an event cap of 10 and a local spill
    spill = LocalSpill(tmp_path / "spill")
    client = Amplitude(API_KEY, server_url=fake.url, overflow=spill,
                       max_buffered_events=EVENT_CAP, flush_timeout_s=5.0)

    # WHEN 25 events are tracked inside an invocation
    tracked: list[str] = []
    with client.invocation() as scope:
        for i in range(25):
            tracked.append(track_padded(client, i))
            assert client.pending <= EVENT_CAP
        # THEN spill files exist before the flush
        assert spill.pending_files()
        assert fake.events == []

    # THEN the report balances and every tracked event reached Amplitude exactly once (the
    # spilled ones read back by the same flush)
    report = scope.report
    assert report is not None
    assert report.tracked == 25
    assert report.overflowed_reasons.get("buffer_cap", 0) > 0
    assert report.balanced
    assert sorted(fake.insert_ids) == sorted(tracked)
    assert fake.duplicates == 0


def test_without_api_key_the_excess_is_dropped_as_config_error_and_counted(
        fake: FakeAmplitude, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a client with no API key anywhere and an event cap of 10
    sink = RecordingSink("recorder", fake=fake)
    client = Amplitude(server_url=fake.url, overflow=sink, max_buffered_events=EVENT_CAP)

    # WHEN 25 events are tracked inside an invocation
    with caplog.at_level(logging.ERROR, logger="amp_lite"), client.invocation() as scope:
        for i in range(25):
            track_padded(client, i)
            assert client.pending <= EVENT_CAP

    # THEN nothing was written or sent; all 25 are dropped as config_error and counted
    assert sink.writes == []
    assert fake.events == []
    report = scope.report
    assert report is not None
    assert report.tracked == 25
    assert report.dropped == 25
    assert report.dropped_reasons == {"config_error": 25}
    assert report.balanced
    assert any(rec.levelno == logging.ERROR and "buffer cap" in rec.getMessage()
               for rec in caplog.records)


@pytest.mark.parametrize("argument", ["max_buffered_events", "max_buffered_bytes"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "10", True, None])
def test_invalid_cap_values_raise_config_error_naming_the_argument(
        argument: str, value: Any) -> None:
    # GIVEN / WHEN a client is built with an invalid cap
    # THEN ConfigError names the argument
    with pytest.raises(ConfigError, match=argument):
        Amplitude(API_KEY, server_url="http://127.0.0.1:9/2/httpapi", **{argument: value})


def test_event_cap_applies_to_the_client_buffer_outside_any_scope(fake: FakeAmplitude) -> None:
    # GIVEN a capped client used outside any invocation scope
    sink = RecordingSink("recorder", fake=fake)
    client = Amplitude(API_KEY, server_url=fake.url, overflow=sink,
                       max_buffered_events=EVENT_CAP, flush_timeout_s=5.0)

    # WHEN 25 events are tracked, then flushed
    tracked = [track_padded(client, i) for i in range(25)]
    assert client.pending <= EVENT_CAP
    early = sink.insert_ids
    report = client.flush()

    # THEN the early overflow is counted in the flush's report
    assert early == tracked[:len(early)] and early
    assert report.tracked == 25 == report.delivered + report.overflowed
    assert report.overflowed_reasons == {"buffer_cap": len(early)}
    assert sorted(fake.insert_ids) == sorted(tracked[len(early):])
