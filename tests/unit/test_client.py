"""Amplitude and Invocation against FakeAmplitude on 127.0.0.1: scopes, deadlines, overflow,
spill recovery and the accounting of every event (docs/design.md invariants I2, I3, I4)."""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from amp_lite import (
    Amplitude,
    BufferedEvent,
    ConfigError,
    Deadline,
    DeliveryReport,
    Identify,
    Invocation,
    OverflowWriteError,
    Revenue,
    SendOutcome,
)
from amp_lite._delivery import RECOVERY_MIN_BUDGET_S
from amp_lite.overflow import LocalSpill
from amp_lite.overflow._defaults import default_spill
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.doubles import RecordingSink

GENEROUS_S = 1.0  # wall-clock tolerance for "does not hang" (>= 250 ms, per the test standards)


def make_client(fake: FakeAmplitude, **kwargs: object) -> Amplitude:
    return Amplitude(API_KEY, server_url=fake.url, **kwargs)  # type: ignore[arg-type]


def track_n(client: Amplitude, n: int, *, name: str = "clicked",
            user: str = "user-00042") -> list[str]:
    ids = [client.track(name, user_id=user, event_properties={"n": i}) for i in range(n)]
    assert all(isinstance(i, str) for i in ids)
    return [i for i in ids if i is not None]


def spilled_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def spill_events(prefix: str, count: int) -> list[BufferedEvent]:
    """Events as an earlier invocation would have spilled them (valid for FakeAmplitude)."""
    return [
        BufferedEvent.from_json(json.dumps({
            "event_type": "spilled", "user_id": "user-spill", "insert_id": f"{prefix}-{i:04d}",
            "time": 1_700_000_000_000 + i, "library": "amp-lite/test",
        }).encode())
        for i in range(count)
    ]


def assert_balanced(report: DeliveryReport | None) -> DeliveryReport:
    assert report is not None
    assert report.balanced, report.summary()
    return report


class FailingSink:
    reserve_s = 0.01

    def __init__(self, name: str, error: Exception) -> None:
        self.name = name
        self.error = error
        self.calls = 0

    def write(self, events: Sequence[BufferedEvent], *, reason: str, attempts: int,
              deadline: Deadline, min_id_length: int | None = None) -> None:
        self.calls += 1
        raise self.error


def spent_budget(client: Amplitude) -> Invocation:
    """An invocation scope with no time left for the flush (the platform says 50 ms remain,
    the margin is 200 ms)."""
    return client.invocation(remaining_time_ms=lambda: 50, margin_ms=200)


def budget_over_a_hang(client: Amplitude, fake: FakeAmplitude) -> Invocation:
    """A 0.4 s invocation while Amplitude hangs: the events miss the budget and are written
    to the sinks within the time kept back for them."""
    fake.script(*[Fault.hang(30)] * 3)
    return client.invocation(timeout_s=0.4)


# -- scopes ---------------------------------------------------------------------------------


def test_scope_buffers_and_flushes_at_exit(fake: FakeAmplitude) -> None:
    # GIVEN a client
    client = make_client(fake)

    # WHEN events are tracked inside an invocation scope
    with client.invocation(timeout_s=5) as inv:
        ids = track_n(client, 3)
        # THEN nothing is sent while the scope is open: the events wait in its buffer
        assert client.pending == 3
        assert fake.requests == []

    # AND the exit flushed them all, in one request, with a report that says so
    report = assert_balanced(inv.report)
    assert (report.tracked, report.delivered, report.attempts) == (3, 3, 1)
    assert sorted(fake.insert_ids) == sorted(ids)
    assert client.pending == 0


def test_a_scope_exit_also_flushes_events_tracked_outside_any_scope(fake: FakeAmplitude) -> None:
    # GIVEN one event tracked outside any scope (code around the decorator, say)
    client = make_client(fake)
    [outside] = track_n(client, 1, name="outside")

    # WHEN a scope tracks two events and exits
    with client.invocation(timeout_s=5) as inv:
        assert client.pending == 0  # the scope has its own, empty buffer
        inside = track_n(client, 2, name="inside")

    # THEN the exit flushed the scope's events and the one outside, which the report counts
    report = assert_balanced(inv.report)
    assert (report.tracked, report.outside, report.delivered) == (3, 1, 3)
    assert sorted(fake.insert_ids) == sorted([outside, *inside])
    assert report.summary()["outside"] == 1
    assert client.pending == 0


def test_events_from_a_thread_the_handler_starts_are_flushed_at_its_exit(
        fake: FakeAmplitude) -> None:
    # GIVEN a scope whose code tracks from a thread pool (threads do not inherit contextvars)
    client = make_client(fake)
    with client.invocation(timeout_s=5) as inv, ThreadPoolExecutor(max_workers=2) as pool:
        ids = list(pool.map(lambda n: client.track("threaded", user_id=f"user-{n}"),
                            range(6)))

    # THEN the scope's exit delivered them all
    report = assert_balanced(inv.report)
    assert (report.tracked, report.outside, report.delivered) == (6, 6, 6)
    assert sorted(fake.insert_ids) == sorted(ids)


def test_events_tracked_into_a_closed_scope_wait_in_the_client_buffer(
        fake: FakeAmplitude) -> None:
    # GIVEN a context copied inside a scope (as a thread started with copy_context().run)
    client = make_client(fake)
    with client.invocation(timeout_s=5) as inv:
        copied = contextvars.copy_context()
    assert inv.report is not None and inv.report.tracked == 0

    # WHEN it tracks after the scope exited
    late = copied.run(client.track, "late", user_id="user-1")

    # THEN the event is not stranded in the closed scope: the next flush sends it
    assert client.pending == 1
    flushed = assert_balanced(client.flush(timeout_s=5))
    assert (flushed.tracked, flushed.delivered) == (1, 1)
    assert fake.insert_ids == [late]


def test_nested_scopes_flush_their_own_events(fake: FakeAmplitude) -> None:
    # GIVEN an outer scope with one event
    client = make_client(fake)
    with client.invocation(timeout_s=5) as outer:
        [a] = track_n(client, 1, name="outer-before")

        # WHEN an inner scope tracks its own event and exits
        with client.invocation(timeout_s=5) as inner:
            [b] = track_n(client, 1, name="inner")

        # THEN only the inner event was flushed, and tracking goes to the outer scope again
        inner_report = assert_balanced(inner.report)
        assert (inner_report.tracked, inner_report.delivered) == (1, 1)
        assert fake.insert_ids == [b]
        assert client.pending == 1
        [c] = track_n(client, 1, name="outer-after")

    # AND the outer scope flushed exactly its two events
    outer_report = assert_balanced(outer.report)
    assert (outer_report.tracked, outer_report.delivered) == (2, 2)
    assert sorted(fake.insert_ids) == sorted([a, b, c])


def test_concurrent_scopes_each_flush_exactly_their_own_events(fake: FakeAmplitude) -> None:
    # GIVEN one client shared by 8 request threads whose scopes are all open at the same time
    client = make_client(fake)
    threads_n, per_thread = 8, 6
    barrier = threading.Barrier(threads_n, timeout=10)
    reports: dict[int, DeliveryReport | None] = {}
    tracked: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def handle_request(n: int) -> None:
        try:
            with client.invocation(timeout_s=5) as inv:
                tracked[n] = track_n(client, per_thread + n, name=f"req-{n}",
                                     user=f"user-thread-{n}")
                barrier.wait()  # every scope holds its events before any flushes
                assert client.pending == per_thread + n
            reports[n] = inv.report
        except BaseException as exc:
            errors.append(exc)

    # WHEN each thread tracks a distinct number of events and its scope exits
    threads = [threading.Thread(target=handle_request, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)

    # THEN each report counts exactly its own events, all delivered
    assert errors == []
    for n in range(threads_n):
        report = assert_balanced(reports[n])
        assert (report.tracked, report.delivered) == (per_thread + n, per_thread + n)
    # AND the fake holds every event exactly once, with each thread's events under its user
    everything = [i for ids in tracked.values() for i in ids]
    assert sorted(fake.insert_ids) == sorted(everything)
    assert fake.duplicates == 0
    by_user = {e["insert_id"]: e["user_id"] for e in fake.events}
    for n, ids in tracked.items():
        assert {by_user[i] for i in ids} == {f"user-thread-{n}"}
    assert client.pending == 0


def test_exception_in_scope_propagates_unchanged_and_events_are_flushed(
    fake: FakeAmplitude,
) -> None:
    # GIVEN a handler body that tracks events then fails
    client = make_client(fake)

    class HandlerError(Exception):
        pass

    error = HandlerError("boom")

    # WHEN it raises inside the scope
    with pytest.raises(HandlerError) as excinfo, client.invocation(timeout_s=5) as inv:
        ids = track_n(client, 2)
        raise error

    # THEN the very same exception comes out (I4) and the events were still delivered
    assert excinfo.value is error
    assert excinfo.value.__context__ is None
    report = assert_balanced(inv.report)
    assert report.delivered == 2
    assert sorted(fake.insert_ids) == sorted(ids)


# -- spent budgets and the scope's flush never raising --------------------------------------


@pytest.mark.parametrize("scope_kwargs", [
    pytest.param({"timeout_s": 1e-6}, id="timeout_s-tiny"),
    pytest.param({"remaining_time_ms": lambda: 50, "margin_ms": 200}, id="remaining-under-margin"),
    pytest.param({"remaining_time_ms": lambda: 0}, id="remaining-zero"),
])
def test_spent_budget_returns_at_once_and_drops_what_no_sink_can_take_in_time(
    fake: FakeAmplitude, clean_env: Path, scope_kwargs: dict[str, object]
) -> None:
    # GIVEN a scope whose flush budget is already spent, and an Amplitude that would hang
    client = make_client(fake)
    fake.script(Fault.hang(30))
    started = time.monotonic()

    # WHEN events are tracked and the scope exits
    with client.invocation(**scope_kwargs) as inv:  # type: ignore[arg-type]
        ids = track_n(client, 4)

    # THEN the flush returned at once and sent nothing; with no time left, not even the spill
    # can be written (invariant I3), so the events are dropped, counted and logged
    assert time.monotonic() - started < GENEROUS_S
    report = assert_balanced(inv.report)
    assert len(ids) == 4 and report.overflowed == 0
    assert dict(report.dropped_reasons) == {"sink_failed": 4}
    assert report.deadline_hit
    assert fake.requests == []
    assert default_spill(API_KEY, client.config.server_url).claim(max_events=100) is None


def test_spent_budget_without_a_sink_drops_events_as_no_sink(
    fake: FakeAmplitude, clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a client with overflow disabled and a scope with no time left
    client = make_client(fake, overflow=())

    # WHEN events are tracked and the scope exits
    with caplog.at_level(logging.ERROR, logger="amp_lite"), spent_budget(client) as inv:
        track_n(client, 3)

    # THEN they are dropped as no_sink, logged at ERROR, and nothing was written anywhere
    report = assert_balanced(inv.report)
    assert dict(report.dropped_reasons) == {"no_sink": 3}
    assert report.overflowed == 0
    assert any(r.levelno == logging.ERROR and "no_sink" in r.getMessage()
               and "3 events" in r.getMessage() for r in caplog.records)
    assert spilled_files(clean_env) == []


def test_overflow_none_means_the_default_spill(fake: FakeAmplitude, clean_env: Path) -> None:
    # GIVEN overflow=None said explicitly (the documented default)
    client = make_client(fake, overflow=None)
    # WHEN events miss the budget / THEN they are spilled, as with no argument at all
    with budget_over_a_hang(client, fake) as inv:
        track_n(client, 2)
    assert dict(assert_balanced(inv.report).overflowed_to) == {"local_spill": 2}


def test_a_lone_sink_that_fails_falls_back_to_the_default_spill(
    fake: FakeAmplitude, clean_env: Path
) -> None:
    # GIVEN a single overflow sink, which is down
    client = make_client(fake, overflow=FailingSink("sqs", OverflowWriteError("unreachable")))
    # WHEN events miss the budget
    with budget_over_a_hang(client, fake) as inv:
        ids = track_n(client, 3)
    # THEN they went to the local spill instead, counted as overflowed there
    report = assert_balanced(inv.report)
    assert dict(report.overflowed_to) == {"local_spill": 3} and report.dropped == 0
    claim = default_spill(API_KEY, client.config.server_url).claim(max_events=100)
    assert claim is not None and sorted(e.insert_id for e in claim.events) == sorted(ids)


class RecoverableFailingSink(FailingSink):
    """A sink of the user's own that reads back what it holds (like LocalSpill), failing."""

    def claim(self, *, max_events: int, deadline: Deadline | None = None) -> None:
        return None


def test_a_lone_recoverable_sink_gets_no_second_spill(fake: FakeAmplitude,
                                                      clean_env: Path) -> None:
    # GIVEN a lone sink that is a spill of its own (it can be read back), which fails
    client = make_client(fake, overflow=RecoverableFailingSink("mine", OverflowWriteError("x")))
    with spent_budget(client) as inv:
        track_n(client, 2)
    # THEN no default spill was put behind it (nothing would read that one back): dropped
    assert dict(assert_balanced(inv.report).dropped_reasons) == {"sink_failed": 2}
    assert spilled_files(clean_env) == []


def test_a_list_of_sinks_is_taken_exactly(fake: FakeAmplitude, clean_env: Path) -> None:
    # GIVEN a list holding only the failing sink: no fallback was asked for
    client = make_client(fake, overflow=[FailingSink("sqs", OverflowWriteError("down"))])
    with spent_budget(client) as inv:
        track_n(client, 2)
    # THEN the events are dropped as sink_failed, and nothing was spilled
    assert dict(assert_balanced(inv.report).dropped_reasons) == {"sink_failed": 2}
    assert spilled_files(clean_env) == []


def test_scope_without_api_key_drops_events_with_an_error_log(
    fake: FakeAmplitude, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a client with no API key anywhere (clean_env removed AMPLITUDE_API_KEY)
    client = Amplitude(server_url=fake.url)

    # WHEN a scope tracks events and exits
    with caplog.at_level(logging.ERROR, logger="amp_lite"), \
            client.invocation(timeout_s=5) as inv:
        track_n(client, 2)

    # THEN the exit did not raise: the events are dropped as config_error, loudly
    report = assert_balanced(inv.report)
    assert dict(report.dropped_reasons) == {"config_error": 2}
    assert report.tracked == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("AMPLITUDE_API_KEY" in m and "2 events" in m for m in errors), errors
    assert fake.requests == []


def test_scope_flush_never_raises_even_if_remaining_time_fails(fake: FakeAmplitude) -> None:
    # GIVEN a platform callback that raises when the flush asks for the remaining time
    client = make_client(fake)

    def broken_remaining_time_ms() -> int:
        raise RuntimeError("context is gone")

    # WHEN the scope exits
    with client.invocation(remaining_time_ms=broken_remaining_time_ms) as inv:
        track_n(client, 2)

    # THEN no exception escapes; the events are counted as dropped internal_error
    report = assert_balanced(inv.report)
    assert dict(report.dropped_reasons) == {"internal_error": 2}


def test_flush_outside_a_scope_without_api_key_raises_and_keeps_events(
    fake: FakeAmplitude,
) -> None:
    # GIVEN a client with no API key and three buffered events
    client = Amplitude(server_url=fake.url)
    track_n(client, 3)

    # WHEN flush() is called explicitly
    with pytest.raises(ConfigError, match="AMPLITUDE_API_KEY"):
        client.flush(timeout_s=5)

    # THEN the events are still buffered and nothing was sent
    assert client.pending == 3
    assert fake.requests == []


# -- spill recovery -------------------------------------------------------------------------


def test_outage_spills_and_the_next_flush_recovers(fake: FakeAmplitude, clean_env: Path) -> None:
    # GIVEN Amplitude answering 503 to everything, and a short flush budget
    client = make_client(fake)
    fake.script(*[Fault.status_code(503)] * 200)
    lost = track_n(client, 4, name="during-outage")

    # WHEN the first flush runs out of time
    first = assert_balanced(client.flush(timeout_s=0.5))

    # THEN its events went to the default spill
    assert first.overflowed == 4 and first.delivered == 0
    assert dict(first.overflowed_to) == {"local_spill": 4}
    assert spilled_files(clean_env) != []
    assert fake.insert_ids == []

    # WHEN Amplitude is back and the next flush has a budget of >= 1.5 s
    fake.clear_faults()
    fresh = track_n(client, 2, name="after-outage")
    second = assert_balanced(client.flush(timeout_s=2.0))

    # THEN it recovered the spilled events and delivered them with its own
    assert (second.tracked, second.recovered, second.delivered) == (2, 4, 6)
    assert sorted(fake.insert_ids) == sorted(lost + fresh)
    assert fake.duplicates == 0
    # AND the spill directory is empty
    assert spilled_files(clean_env) == []


def test_recovery_is_skipped_when_the_budget_is_short(fake: FakeAmplitude) -> None:
    # GIVEN three events spilled by an earlier invocation, and one fresh event
    client = make_client(fake)
    spill = default_spill(API_KEY, client.config.server_url)
    spill.write(spill_events("old", 3), reason="deadline", attempts=2,
                deadline=Deadline.after(5))
    [fresh] = track_n(client, 1)

    # WHEN a flush runs with less than RECOVERY_MIN_BUDGET_S
    short = assert_balanced(client.flush(timeout_s=RECOVERY_MIN_BUDGET_S / 2))

    # THEN it sends only the fresh event and leaves the spill alone
    assert (short.tracked, short.recovered, short.delivered) == (1, 0, 1)
    assert fake.insert_ids == [fresh]
    assert len(spill.pending_files()) == 1

    # AND a later flush with enough time recovers them
    later = assert_balanced(client.flush(timeout_s=RECOVERY_MIN_BUDGET_S + 1))
    assert (later.tracked, later.recovered, later.delivered) == (0, 3, 3)
    assert spill.pending_files() == []


def test_flush_with_nothing_to_send_makes_no_request(fake: FakeAmplitude) -> None:
    # GIVEN a client with an empty buffer and an empty spill
    client = make_client(fake)

    # WHEN it flushes, outside and inside a scope
    report = client.flush(timeout_s=2)
    with client.invocation(timeout_s=2) as inv:
        pass

    # THEN nothing was sent and the reports are empty
    assert fake.requests == []
    for r in (report, inv.report):
        assert r is not None
        assert (r.tracked, r.recovered, r.delivered, r.attempts) == (0, 0, 0, 0)


def test_recovered_and_tracked_events_balance_over_several_spill_files(
    fake: FakeAmplitude, clean_env: Path
) -> None:
    # GIVEN three spill files (2, 3 and 1 events) and four fresh events
    client = make_client(fake)
    spill = default_spill(API_KEY, client.config.server_url)
    spilled: list[str] = []
    for prefix, count in (("f1", 2), ("f2", 3), ("f3", 1)):
        events = spill_events(prefix, count)
        spill.write(events, reason="throttled", attempts=1, deadline=Deadline.after(5))
        spilled += [e.insert_id for e in events]
    fresh = track_n(client, 4)

    # WHEN a flush with time to recover runs
    report = assert_balanced(client.flush(timeout_s=3))

    # THEN recovered + tracked == delivered, and the fake holds each event once
    assert (report.recovered, report.tracked, report.delivered) == (6, 4, 10)
    assert sorted(fake.insert_ids) == sorted(spilled + fresh)
    assert spilled_files(clean_env) == []


# -- overflow sinks -------------------------------------------------------------------------


def test_failing_sink_falls_through_to_the_next(fake: FakeAmplitude, clean_env: Path) -> None:
    # GIVEN a failing sink ahead of a working one, and no time left to send
    bad = FailingSink("bad", OverflowWriteError("disk full"))
    good = RecordingSink("good", reserve_s=0.01, by_write=True)
    client = make_client(fake, overflow=[bad, good])

    # WHEN the scope exits
    with spent_budget(client) as inv:
        ids = track_n(client, 3)

    # THEN the good sink took the events after the bad one failed
    report = assert_balanced(inv.report)
    assert bad.calls == 1
    assert good.written == [(ids, "deadline")]
    assert dict(report.overflowed_to) == {"good": 3}
    assert report.dropped == 0
    # AND the default spill was not used
    assert spilled_files(clean_env) == []


def test_all_sinks_failing_drops_events_as_sink_failed(
    fake: FakeAmplitude, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN two sinks that both fail (one cleanly, one with an unexpected error)
    first = FailingSink("first", OverflowWriteError("full"))
    second = FailingSink("second", RuntimeError("bug in a custom sink"))
    client = make_client(fake, overflow=[first, second])

    # WHEN a scope with no time left exits
    with caplog.at_level(logging.WARNING, logger="amp_lite"), spent_budget(client) as inv:
        track_n(client, 2)

    # THEN both were tried, and the events are dropped as sink_failed with an ERROR log
    report = assert_balanced(inv.report)
    assert (first.calls, second.calls) == (1, 1)
    assert dict(report.dropped_reasons) == {"sink_failed": 2}
    assert report.overflowed == 0
    assert any(r.levelno == logging.ERROR and "sink_failed" in r.getMessage()
               for r in caplog.records)


def test_custom_local_spill_is_used_instead_of_the_default(
    fake: FakeAmplitude, clean_env: Path, tmp_path: Path
) -> None:
    # GIVEN a client with its own LocalSpill directory
    spill = LocalSpill(tmp_path / "my-spill")
    client = make_client(fake, overflow=spill)

    # WHEN a scope's events miss its budget
    with budget_over_a_hang(client, fake) as inv:
        ids = track_n(client, 2)

    # THEN the events are in that directory, not in the default one
    assert dict(assert_balanced(inv.report).overflowed_to) == {"local_spill": 2}
    claim = spill.claim(max_events=10)
    assert claim is not None
    assert sorted(e.insert_id for e in claim.events) == sorted(ids)
    assert spilled_files(clean_env) == []


# -- custom retry strategy ------------------------------------------------------------------


class ForgetfulRetry:
    """A plain object implementing the Retry protocol that loses track of two events."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def send_events_with_retry(self, events: Sequence[BufferedEvent],
                               deadline: Deadline) -> SendOutcome:
        self.seen = [e.insert_id for e in events]
        return SendOutcome(delivered=list(events[:-2]), attempts=1)


def test_custom_retry_that_forgets_events_is_counted_as_internal_error(
    fake: FakeAmplitude, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a client whose retry strategy forgets the last two events it is given
    retry = ForgetfulRetry()
    client = make_client(fake, retry=retry)

    # WHEN a scope with five events exits
    with caplog.at_level(logging.ERROR, logger="amp_lite"), \
            client.invocation(timeout_s=5) as inv:
        ids = track_n(client, 5)

    # THEN the strategy saw all five, and the two it lost are dropped as internal_error
    assert retry.seen == ids
    report = assert_balanced(inv.report)
    assert (report.tracked, report.delivered) == (5, 3)
    assert dict(report.dropped_reasons) == {"internal_error": 2}
    assert any("accounted for 3 of 5" in r.getMessage() for r in caplog.records)


# -- other event kinds and the client lifecycle ---------------------------------------------


def test_identify_group_identify_set_group_and_revenue_reach_amplitude(
    fake: FakeAmplitude,
) -> None:
    # GIVEN a client
    client = make_client(fake)

    # WHEN each kind of special event is recorded in a scope
    with client.invocation(timeout_s=5) as inv:
        identify = client.identify(Identify().set("plan", "pro"), user_id="user-00042")
        group = client.group_identify("org", "acme-corp", Identify().set("tier", "gold"),
                                      user_id="user-00042")
        set_group = client.set_group("org", "acme-corp", user_id="user-00042")
        revenue = client.revenue(Revenue(price=9.99, quantity=2, product_id="sku-1"),
                                 user_id="user-00042")

    # THEN each returned its insert_id and arrived with the right event_type and fields
    assert assert_balanced(inv.report).delivered == 4
    ids = [identify, group, set_group, revenue]
    assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == 4
    by_id = {e["insert_id"]: e for e in fake.events}
    assert by_id[identify]["event_type"] == "$identify"
    assert by_id[identify]["user_properties"] == {"$set": {"plan": "pro"}}
    assert by_id[group]["event_type"] == "$groupidentify"
    assert by_id[group]["groups"] == {"org": "acme-corp"}
    assert by_id[group]["group_properties"] == {"$set": {"tier": "gold"}}
    assert by_id[set_group]["event_type"] == "$identify"
    assert by_id[set_group]["user_properties"] == {"$set": {"org": "acme-corp"}}
    assert by_id[revenue]["event_type"] == "revenue_amount"
    assert by_id[revenue]["event_properties"]["$price"] == 9.99
    assert by_id[revenue]["event_properties"]["$quantity"] == 2


def test_client_keeps_working_after_close(fake: FakeAmplitude) -> None:
    # GIVEN a client that has sent once and was then closed
    client = make_client(fake)
    [first] = track_n(client, 1)
    assert client.flush(timeout_s=5).delivered == 1
    client.close()

    # WHEN it tracks and flushes again (and is closed twice more in between)
    [second] = track_n(client, 1)
    client.close()
    report = client.flush(timeout_s=5)
    with client.invocation(timeout_s=5) as inv:
        [third] = track_n(client, 1)

    # THEN every flush still delivered
    assert report.delivered == 1
    assert assert_balanced(inv.report).delivered == 1
    assert sorted(fake.insert_ids) == sorted([first, second, third])


def test_timeout_is_counted_from_the_start_of_the_block(fake: FakeAmplitude) -> None:
    # GIVEN a scope made with a 10 s timeout, entered one second later
    client = make_client(fake)
    scope = client.invocation(timeout_s=10, flush_timeout_s=60)
    time.sleep(1.0)
    # WHEN the block starts / THEN the whole 10 s are still ahead of it (not 9 s)
    with scope:
        assert scope.flush_deadline().remaining_s() > 9.5  # 0.5 s for a slow scheduler


class _OldStyleSpill:
    """A recoverable sink of a user's own, written before `claim` took a deadline."""

    name = "old_style"
    reserve_s = 0.01

    def __init__(self, events: list[BufferedEvent]) -> None:
        self.held = events
        self.completed = 0

    def write(self, events: Sequence[BufferedEvent], *, reason: str, attempts: int,
              deadline: Deadline, min_id_length: int | None = None) -> None:
        self.held.extend(events)

    def claim(self, *, max_events: int) -> object:
        sink = self

        class Claim:
            def __init__(self) -> None:
                self.events = list(sink.held)
                self.min_id_length = None

            def complete(self) -> None:
                sink.completed += 1
                sink.held.clear()

        return Claim() if self.held else None


def test_a_recoverable_sink_of_the_old_signature_is_still_read_back(fake: FakeAmplitude) -> None:
    # GIVEN a user's own spill holding an event, with claim(*, max_events) and complete()
    source = make_client(fake, overflow=())
    source.track("Held", user_id="user-held")
    held = source._scopes.current().take_all()
    sink = _OldStyleSpill(held)
    client = make_client(fake, overflow=sink)
    # WHEN a flush with time runs
    report = client.flush(timeout_s=5)
    # THEN the event was read back, delivered, and its claim completed once
    assert (report.recovered, report.delivered) == (1, 1), report.summary()
    assert sink.completed == 1 and sink.held == []
