"""The async flush (`await client.aflush()`, `async with client.invocation()`, an `async def`
handler under `@amplitude_flush`) over real httpcore to FakeAmplitude on 127.0.0.1: it must not
stall the event loop, and must keep every promise of the sync flush. The delivery faults are
run through both flushes in test_delivery_faults.py; this file covers what only an event loop
has: concurrency, loops that come and go, cancellation, and the fallback without the extra.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from amp_lite import Amplitude, DeliveryReport, amplitude_flush
from amp_lite.overflow import LocalSpill
from amp_lite.testing import FakeAmplitude, Fault
from amp_lite.testing.tls import make_tls_files
from tests.conftest import API_KEY

TOLERANCE_S = 0.5  # generous slack for deadline assertions on a loaded CI machine
TICK_S = 0.01
LATE_TICK_S = 0.25  # a tick this late means the loop was blocked (a sync flush: seconds)


def make_client(url: str, spill: LocalSpill, **options: object) -> Amplitude:
    return Amplitude(API_KEY, server_url=url, overflow=spill,
                     **options)  # type: ignore[arg-type]


async def ticker(stop: asyncio.Event) -> float:
    """Sleeps of TICK_S until `stop`; returns the latest any sleep woke (seconds)."""
    worst = 0.0
    while not stop.is_set():
        started = time.monotonic()
        await asyncio.sleep(TICK_S)
        worst = max(worst, time.monotonic() - started - TICK_S)
    return worst


def test_a_flush_waiting_on_a_hanging_amplitude_does_not_stall_other_tasks(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN Amplitude hanging, and an unrelated task sleeping 10 ms at a time on the same loop
    spill = LocalSpill(tmp_path / "spill")
    client = make_client(fake.url, spill)
    fake.script(*[Fault.hang()] * 5)

    async def request_and_neighbour() -> tuple[float, float, DeliveryReport | None]:
        stop = asyncio.Event()
        neighbour = asyncio.create_task(ticker(stop))
        await asyncio.sleep(0)  # let the neighbour start its first sleep
        started = time.monotonic()
        async with client.invocation(timeout_s=2.0, margin_ms=200) as scope:
            for n in range(3):
                client.track("slow_request", user_id=f"user-{n}")
        took = time.monotonic() - started
        stop.set()
        return took, await neighbour, scope.report

    # WHEN one request's scope exits and flushes
    took, worst_lateness, report = asyncio.run(request_and_neighbour())

    # THEN the flush waited until its deadline, spilled the events, and the neighbour's sleeps
    # stayed on time throughout
    assert report is not None and report.balanced
    assert report.overflowed_reasons == {"deadline": 3}
    assert 1.0 < took < 1.8 + TOLERANCE_S
    assert worst_lateness < LATE_TICK_S, f"the loop was blocked for {worst_lateness:.2f} s"


def test_the_sync_flush_would_have_stalled_the_neighbour(fake: FakeAmplitude,
                                                         tmp_path: Path) -> None:
    # GIVEN the same hang, flushed with the blocking flush from a coroutine (what the async
    # wrapper did before the async flush): the test above would catch a regression to it
    client = make_client(fake.url, LocalSpill(tmp_path / "spill"))
    fake.script(*[Fault.hang()] * 5)

    async def blocking_flush() -> float:
        stop = asyncio.Event()
        neighbour = asyncio.create_task(ticker(stop))
        await asyncio.sleep(0)  # let the neighbour start its first sleep
        with client.invocation(timeout_s=1.0, margin_ms=200):
            client.track("slow_request", user_id="user-1")
        stop.set()
        return await neighbour

    # THEN the neighbour's sleep woke about the flush's budget late
    assert asyncio.run(blocking_flush()) > 0.5


def test_concurrent_requests_each_flush_their_own_events_at_once(fake: FakeAmplitude,
                                                                 tmp_path: Path) -> None:
    # GIVEN eight concurrent requests on one loop, each tracking its own events
    client = make_client(fake.url, LocalSpill(tmp_path / "spill"))

    async def one_request(n: int) -> tuple[list[str], DeliveryReport | None]:
        async with client.invocation(timeout_s=5.0) as scope:
            ids = [client.track("page_view", user_id=f"user-{n}-{i}") for i in range(3)]
            await asyncio.sleep(0)  # interleave with the other requests
        return [i for i in ids if i], scope.report

    async def all_requests() -> list[tuple[list[str], DeliveryReport | None]]:
        return await asyncio.gather(*(one_request(n) for n in range(8)))

    # WHEN they all exit
    results = asyncio.run(all_requests())

    # THEN each report balances and counts its own three events; the fake has all 24 once
    for _, report in results:
        assert report is not None and report.balanced
        assert report.tracked == 3 and report.delivered == 3
    assert sorted(fake.insert_ids) == sorted(i for ids, _ in results for i in ids)
    assert fake.duplicates == 0


def test_each_event_loop_gets_its_own_connections(fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN a client flushed from one asyncio.run, whose loop (and connections) then close
    client = make_client(fake.url, LocalSpill(tmp_path / "spill"))
    client.track("first", user_id="user-1")
    first = asyncio.run(client.aflush(timeout_s=5))
    # WHEN a second asyncio.run flushes again (Mangum and asyncio.run per call do this)
    client.track("second", user_id="user-1")
    second = asyncio.run(client.aflush(timeout_s=5))
    # THEN both delivered, the second on a fresh connection of its own loop
    assert (first.delivered, second.delivered) == (1, 1)
    assert second.attempts == 1


def test_a_cancelled_flush_overflows_its_events_and_stays_cancelled(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN a flush waiting on a hanging Amplitude
    spill = LocalSpill(tmp_path / "spill")
    client = make_client(fake.url, spill)
    fake.script(*[Fault.hang()] * 5)

    async def cancel_during_flush() -> None:
        async def request() -> None:
            async with client.invocation(timeout_s=30.0):
                for n in range(4):
                    client.track("cancelled", user_id=f"user-{n}")

        task = asyncio.create_task(request())
        while not fake.requests:  # the flush has sent its request
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    # WHEN its task is cancelled
    asyncio.run(cancel_during_flush())

    # THEN the cancellation propagated, and the four events wait in the spill, not lost
    fake.clear_faults()
    recovered = client.flush(timeout_s=5)
    assert (recovered.recovered, recovered.delivered) == (4, 4)


def test_the_async_flush_verifies_tls(tmp_path: Path) -> None:
    # GIVEN FakeAmplitude over HTTPS with a certificate of a local CA
    tls = make_tls_files(tmp_path / "tls")
    with FakeAmplitude(tls=tls) as secure:
        trusted = make_client(secure.url, LocalSpill(tmp_path / "a"), ca_certs=tls.ca_cert)
        untrusted = make_client(secure.url, LocalSpill(tmp_path / "b"), flush_timeout_s=1.0)
        trusted.track("secure", user_id="user-1")
        untrusted.track("secure", user_id="user-2")
        # WHEN each flushes asynchronously
        ok = asyncio.run(trusted.aflush(timeout_s=5))
        refused = asyncio.run(untrusted.aflush())
    # THEN the trusted CA delivers; the system store refuses the certificate: overflowed
    assert ok.delivered == 1
    assert refused.delivered == 0 and refused.overflowed == 1


def test_an_async_lambda_handler_flushes_within_its_context_budget(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN an async handler with 2 s left on its Lambda context and Amplitude hanging
    client = make_client(fake.url, LocalSpill(tmp_path / "spill"))
    fake.script(*[Fault.hang()] * 5)
    ends_at = time.monotonic() + 2.0
    context = SimpleNamespace(
        get_remaining_time_in_millis=lambda: int((ends_at - time.monotonic()) * 1000))

    @amplitude_flush(client, margin_ms=500)
    async def handler(event: dict[str, str], context: object) -> dict[str, str]:
        client.track("handled", user_id=event["user"])
        return {"ok": event["user"]}

    # WHEN it runs on a loop
    started = time.monotonic()
    result = asyncio.run(handler({"user": "user-1"}, context))
    took = time.monotonic() - started

    # THEN its result is unchanged, and it returned by the context's deadline less the margin
    assert result == {"ok": "user-1"}
    assert took < 1.5 + TOLERANCE_S


def test_without_the_extra_the_async_flush_is_the_sync_one(fake: FakeAmplitude,
                                                          tmp_path: Path) -> None:
    # GIVEN a process where httpcore cannot be imported (amp-lite installed without [async])
    script = f"""
import asyncio, logging, sys
sys.modules["httpcore"] = None  # import httpcore raises ImportError
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
from amp_lite import Amplitude
client = Amplitude({API_KEY!r}, server_url={fake.url!r}, flush_timeout_s=5)
client.track("fallback", user_id="user-1")
report = asyncio.run(client.aflush())
client.track("fallback", user_id="user-2")
again = asyncio.run(client.aflush())
print("delivered", report.delivered + again.delivered)
"""
    # WHEN it flushes asynchronously, twice
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    # THEN the events are delivered by the sync flush, and the log says so once, naming the fix
    assert "delivered 2" in done.stdout
    notes = [line for line in done.stderr.splitlines() if "blocks the event loop" in line]
    assert len(notes) == 1 and "amp-lite[async]" in notes[0] and notes[0].startswith("INFO")
    assert len(fake.insert_ids) == 2


def test_a_transport_of_yours_without_apost_is_flushed_synchronously(
        fake: FakeAmplitude, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a client with a sync-only transport of the user's
    from amp_lite._http import HttpTransport

    transport = HttpTransport(fake.url, gzip=False)
    client = make_client(fake.url, LocalSpill(tmp_path / "spill"), transport=transport)
    client.track("own_transport", user_id="user-1")
    # WHEN flushed asynchronously
    with caplog.at_level(logging.INFO, logger="amp_lite"):
        report = asyncio.run(client.aflush(timeout_s=5))
    # THEN it is sent through that transport, and the log names why it blocked
    assert report.delivered == 1
    assert "has no apost() method" in caplog.text
