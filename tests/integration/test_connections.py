"""Connections and request shaping against FakeAmplitude on 127.0.0.1: keep-alive reuse, stale
keep-alive connections, gzip, the /batch endpoint, empty flushes and batch splitting."""

from __future__ import annotations

import time
from pathlib import Path

from amp_lite import Amplitude, DeliveryReport, RetryHandler
from amp_lite.overflow import LocalSpill
from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY

BUDGET_S = 5.0
FAST_S = 0.25  # "no backoff / no work": well under any backoff ceiling, generous for CI


def make_client(fake_url: str, tmp_path: Path, **kwargs: object) -> Amplitude:
    return Amplitude(API_KEY, server_url=fake_url, overflow=LocalSpill(tmp_path / "spill"),
                     flush_timeout_s=BUDGET_S, **kwargs)  # type: ignore[arg-type]


def track_users(client: Amplitude, count: int, **properties: object) -> list[str]:
    ids = [client.track("page_view", user_id=f"user-{i:05d}",
                        event_properties=properties or None) for i in range(count)]
    return [i for i in ids if i is not None]


def all_delivered(report: DeliveryReport, count: int) -> bool:
    return (report.balanced and report.tracked == count and report.delivered == count
            and report.attempts >= 1)


def test_several_flushes_reuse_one_kept_alive_connection(fake: FakeAmplitude,
                                                         tmp_path: Path) -> None:
    # GIVEN a client
    client = make_client(fake.url, tmp_path)
    # WHEN it flushes three times
    reports = []
    for _ in range(3):
        track_users(client, 2)
        reports.append(client.flush())
    # THEN every flush delivered, over a single TCP connection
    assert all(all_delivered(r, 2) for r in reports)
    assert len(fake.requests) == 3
    assert fake.connections_opened == 1
    assert {r.connection for r in fake.requests} == {1}


def test_stale_keep_alive_connection_is_replaced_without_backoff(fake: FakeAmplitude,
                                                                 tmp_path: Path) -> None:
    # (Here the close reaches the client before the next send. A server that drops the
    # connection only when the request arrives is test_delivery_faults' reset case.)
    # GIVEN a kept-alive connection from a first flush, then closed by the server while idle
    sleeps: list[float] = []
    client = make_client(fake.url, tmp_path, retry=RetryHandler(sleep=sleeps.append))
    track_users(client, 1)
    assert all_delivered(client.flush(), 1)
    assert fake.close_idle_connections() == 1
    assert fake.wait_until(lambda: fake.open_connections == 0)
    # WHEN the next flush runs
    ids = track_users(client, 2)
    started = time.monotonic()
    report = client.flush()
    elapsed = time.monotonic() - started
    # THEN it delivers in one counted attempt, on a new connection, without any backoff
    assert all_delivered(report, 2)
    assert report.attempts == 1
    assert sleeps == []
    assert elapsed < FAST_S
    assert fake.connections_opened == 2
    assert fake.insert_ids[-2:] == ids


def test_gzip_compresses_bodies_over_the_threshold(fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN gzip on and about 6 KB of events
    client = make_client(fake.url, tmp_path, gzip=True)
    ids = track_users(client, 30, note="x" * 100)
    # WHEN flushed
    report = client.flush()
    # THEN the request is gzipped and the fake decodes and accepts every event
    assert all_delivered(report, 30)
    assert fake.requests[-1].gzip
    assert fake.insert_ids == ids


def test_gzip_off_sends_large_bodies_uncompressed(fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN gzip off and the same volume of events
    client = make_client(fake.url, tmp_path, gzip=False)
    track_users(client, 30, note="x" * 100)
    # WHEN flushed
    report = client.flush()
    # THEN the request is not gzipped
    assert all_delivered(report, 30)
    assert not fake.requests[-1].gzip


def test_gzip_defaults_to_off_for_a_non_amplitude_host(fake: FakeAmplitude,
                                                      tmp_path: Path) -> None:
    # GIVEN no gzip argument and a server URL that is not Amplitude's
    client = make_client(fake.url, tmp_path)
    track_users(client, 30, note="x" * 100)
    # WHEN flushed
    report = client.flush()
    # THEN the body goes uncompressed
    assert all_delivered(report, 30)
    assert not fake.requests[-1].gzip


def test_small_bodies_are_never_gzipped(fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN gzip on and one small event (well under 2048 bytes)
    client = make_client(fake.url, tmp_path, gzip=True)
    track_users(client, 1)
    # WHEN flushed
    report = client.flush()
    # THEN it is sent as plain JSON
    assert all_delivered(report, 1)
    assert not fake.requests[-1].gzip


def test_batch_endpoint_delivers(fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN a client pointed at /batch
    client = make_client(fake.batch_url, tmp_path)
    ids = track_users(client, 3)
    # WHEN flushed
    report = client.flush()
    # THEN the request goes to /batch and is accepted
    assert all_delivered(report, 3)
    assert [r.path for r in fake.requests] == ["/batch"]
    assert fake.insert_ids == ids


def test_empty_flush_makes_no_request(fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN a client with nothing buffered, after one real flush
    client = make_client(fake.url, tmp_path)
    track_users(client, 1)
    assert all_delivered(client.flush(), 1)
    before = len(fake.requests)
    # WHEN flushed again
    started = time.monotonic()
    report = client.flush()
    elapsed = time.monotonic() - started
    # THEN no request is made, quickly, and the report is empty
    assert len(fake.requests) == before
    assert elapsed < FAST_S
    assert report.balanced
    assert (report.tracked, report.delivered, report.attempts) == (0, 0, 0)


def test_2500_events_go_in_two_requests_of_at_most_2000(fake: FakeAmplitude,
                                                        tmp_path: Path) -> None:
    # GIVEN 2500 buffered events
    client = make_client(fake.url, tmp_path)
    ids = track_users(client, 2500)
    # WHEN flushed
    report = client.flush()
    # THEN they go in two requests, 2000 then 500, all accepted
    assert all_delivered(report, 2500)
    assert report.attempts == 2
    assert [(r.status, r.events) for r in fake.requests] == [(200, 2000), (200, 500)]
    assert fake.insert_ids == ids


def test_big_events_are_split_into_requests_under_one_megabyte(fake: FakeAmplitude,
                                                               tmp_path: Path) -> None:
    # GIVEN 25 events of about 90 KB each (about 2.3 MB in all)
    client = make_client(fake.url, tmp_path)
    properties = {f"p{i:02d}": "v" * 1000 for i in range(90)}
    ids = track_users(client, 25, **properties)
    # WHEN flushed
    report = client.flush()
    # THEN they are cut into at least three requests, none of which the fake refuses as over
    # 1,000,000 bytes (it answers 413 at that size), and no request was split after the fact
    assert all_delivered(report, 25)
    assert len(fake.requests) >= 3
    assert all(r.status == 200 for r in fake.requests)
    assert report.attempts == len(fake.requests)
    assert max(r.events for r in fake.requests) <= 1_000_000 // (90 * 1000)
    assert sum(r.events for r in fake.requests) == 25
    assert fake.insert_ids == ids
