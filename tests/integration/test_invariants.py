"""The invariants of docs/design.md (section 1) checked end to end: I1 (no threads), I2 (every
event accounted for across invocations), I6 (import cost) and I7 (the API key never leaks)."""

from __future__ import annotations

import _thread
import asyncio
import atexit
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from amp_lite import Amplitude, ConfigError, DeliveryReport, InvalidEventError, RetryHandler
from amp_lite.overflow import LocalSpill
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY

FAULT_BUDGET_S = 0.5
OK_BUDGET_S = 2.0  # above the 1 s a flush needs before it reads the local spill back


def no_jitter(low: float, high: float) -> float:
    return low


def make_client(url: str, overflow: object, *, budget_s: float = OK_BUDGET_S,
                **kwargs: object) -> Amplitude:
    return Amplitude(API_KEY, server_url=url, overflow=overflow,  # type: ignore[arg-type]
                     flush_timeout_s=budget_s, **kwargs)  # type: ignore[arg-type]


def track_users(client: Amplitude, count: int, *, prefix: str = "user") -> list[str]:
    ids = [client.track("page_view", user_id=f"{prefix}-{i:03d}") for i in range(count)]
    return [i for i in ids if i is not None]


# -- I1: no thread ------------------------------------------------------------------------------


class StartRecorder:
    """Records threads, raw threads and atexit hooks started from the test's own thread
    (atexit hooks: only those amp_lite registers directly).

    FakeAmplitude's server thread starts one handler thread per connection from ITS thread;
    those are the fake's, not amp_lite's, and are not recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.owner = threading.get_ident()
        self.started: list[str] = []
        thread_start = threading.Thread.start
        raw_start = _thread.start_new_thread
        register = atexit.register

        def recording_thread_start(thread: threading.Thread) -> None:
            self._note(f"Thread.start({thread.name})")
            thread_start(thread)

        def recording_raw_start(function: Callable[..., Any], *args: Any) -> int:
            self._note(f"_thread.start_new_thread({function!r})")
            return raw_start(function, *args)

        def recording_register(function: Callable[..., Any], *args: Any,
                               **kwargs: Any) -> Callable[..., Any]:
            # Only hooks amp_lite registers itself: urllib3's pools use weakref.finalize,
            # which registers the stdlib's one finalizer-registry hook on first use.
            caller = str(sys._getframe(1).f_globals.get("__name__", ""))
            if caller.split(".", maxsplit=1)[0] in ("amp_lite", "tests"):
                self._note(f"atexit.register({function!r})")
            return register(function, *args, **kwargs)

        monkeypatch.setattr(threading.Thread, "start", recording_thread_start)
        monkeypatch.setattr(_thread, "start_new_thread", recording_raw_start)
        monkeypatch.setattr(atexit, "register", recording_register)

    def _note(self, what: str) -> None:
        if threading.get_ident() == self.owner:
            self.started.append(what)


def test_i1_no_thread_timer_or_atexit_hook_is_started(
        fake: FakeAmplitude, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a recorder that demonstrably sees a thread started from this test's thread
    recorder = StartRecorder(monkeypatch)
    probe = threading.Timer(0.0, lambda: None)
    probe.start()
    probe.join()
    atexit.unregister(atexit.register(len))
    assert recorder.started == [f"Thread.start({probe.name})", f"atexit.register({len!r})"]
    recorder.started.clear()
    spill = LocalSpill(tmp_path / "spill")
    # WHEN a client is built and flushes through success, retries, overflow and recovery
    client = make_client(fake.url, spill, retry=RetryHandler(jitter=no_jitter))
    track_users(client, 2)
    ok = client.flush()
    track_users(client, 2)
    fake.script(Fault.status_code(503), Fault.reset())
    retried = client.flush()
    track_users(client, 2)
    fake.script(Fault.hang())
    overflowed = client.flush(timeout_s=FAULT_BUDGET_S)
    with client.invocation(timeout_s=OK_BUDGET_S) as invocation:
        track_users(client, 1)
    client.close()
    # THEN everything worked as intended ...
    assert (ok.delivered, retried.delivered, retried.attempts) == (2, 2, 2)
    assert overflowed.overflowed_reasons == {"deadline": 2}
    assert invocation.report is not None
    assert (invocation.report.recovered, invocation.report.delivered) == (2, 3)
    # ... and amp_lite started no thread, timer or atexit hook
    assert recorder.started == []


def test_i1_the_async_flush_starts_no_thread_either(
        fake: FakeAmplitude, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a client whose URL names a host (resolving it is where httpx would start a thread:
    # asyncio's getaddrinfo runs in the loop's default thread pool)
    recorder = StartRecorder(monkeypatch)
    url = fake.url.replace("127.0.0.1", "localhost")
    client = make_client(url, LocalSpill(tmp_path / "spill"), retry=RetryHandler(jitter=no_jitter))

    async def flushes() -> list[DeliveryReport]:
        track_users(client, 2)
        ok = await client.aflush()
        track_users(client, 2)
        fake.script(Fault.status_code(503), Fault.reset())
        retried = await client.aflush()
        track_users(client, 2)
        fake.script(Fault.hang())
        overflowed = await client.aflush(timeout_s=FAULT_BUDGET_S)
        async with client.invocation(timeout_s=OK_BUDGET_S) as scope:
            track_users(client, 1)
        assert scope.report is not None
        return [ok, retried, overflowed, scope.report]

    # WHEN it flushes on an event loop through success, retries, overflow and recovery
    ok, retried, overflowed, recovered = asyncio.run(flushes())
    # THEN everything worked as intended, and amp_lite (nor the loop for it) started no thread
    assert (ok.delivered, retried.delivered, retried.attempts) == (2, 2, 2)
    assert overflowed.overflowed_reasons == {"deadline": 2}
    assert (recovered.recovered, recovered.delivered) == (2, 3)
    assert recorder.started == []


# -- I6: import cost ----------------------------------------------------------------------------


def test_i6_import_loads_no_cloud_or_web_framework() -> None:
    # GIVEN a fresh interpreter
    heavy = ["boto3", "botocore", "aws_lambda_powertools", "functions_framework", "flask",
             "werkzeug", "starlette", "django", "mangum"]
    code = ("import json, sys\n"
            "import amp_lite, amp_lite.overflow, amp_lite.testing, amp_lite.asgi, amp_lite.wsgi\n"
            f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
            "print(json.dumps('amp_lite.testing' in sys.modules))\n")
    # WHEN it imports amp_lite, its overflow package, its testing helpers and the middleware
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, check=False)
    # THEN none of the heavy optional dependencies was loaded
    assert result.returncode == 0, result.stderr
    loaded, imported = (json.loads(line) for line in result.stdout.splitlines())
    assert imported is True
    assert loaded == []


# -- I7: the API key never leaks ----------------------------------------------------------------


def test_i7_key_absent_from_reprs(fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN a client with a key, and the objects it builds around it
    client = make_client(fake.url, LocalSpill(tmp_path / "spill"))
    sender = client._route.sender()
    retry = RetryHandler().bind(sender)
    track_users(client, 1)
    report = client.flush()
    objects: list[object] = [client, client.config, sender, retry, report, report.summary(),
                             client.invocation(timeout_s=1.0)]
    # WHEN they are rendered
    rendered = [repr(o) for o in objects] + [str(o) for o in objects]
    # THEN the key appears in none of them
    assert client.config.api_key == API_KEY
    assert [r for r in rendered if API_KEY in r] == []


def _config_errors(tmp_path: Path) -> list[Callable[[], object]]:
    def bad_flush() -> object:
        return Amplitude(API_KEY, overflow=()).flush(timeout_s=-1)

    return [
        lambda: Amplitude(API_KEY, server_url="ftp://example.invalid/2/httpapi"),
        lambda: Amplitude(API_KEY, server_zone="MARS"),
        lambda: Amplitude(API_KEY, flush_timeout_s=0),
        lambda: Amplitude(API_KEY, request_timeout_s=float("nan")),
        lambda: Amplitude(API_KEY, min_id_length=0),
        lambda: Amplitude(API_KEY, ca_certs=str(tmp_path / "missing.pem")),
        lambda: Amplitude(API_KEY, overflow=object()),  # type: ignore[arg-type]
        lambda: Amplitude(API_KEY, retry=object()),  # type: ignore[arg-type]
        lambda: Amplitude(API_KEY, middleware=[42]),  # type: ignore[list-item]
        lambda: Amplitude(API_KEY, plan={"colour": "blue"}),
        bad_flush,
    ]


def _event_errors() -> list[Callable[[], object]]:
    client = Amplitude(API_KEY, overflow=())
    return [
        lambda: client.track("page_view"),
        lambda: client.track("", user_id="user-001"),
        lambda: client.track("page_view", user_id="abc"),
        lambda: client.track("page_view", user_id="user-001", time=5),
        lambda: client.track("page_view", user_id="user-001", colour="blue"),
        lambda: client.track("page_view", user_id="user-001", event_properties={"b": b"x"}),
    ]


def test_i7_key_absent_from_exception_messages(tmp_path: Path) -> None:
    # GIVEN misconfigurations and invalid events, each with the key configured
    cases = _config_errors(tmp_path) + _event_errors()
    # WHEN each raises
    messages = []
    for case in cases:
        with pytest.raises((ConfigError, InvalidEventError)) as info:
            case()
        exc: BaseException | None = info.value
        while exc is not None:
            messages += [str(exc), repr(exc)]
            exc = exc.__cause__ or exc.__context__
    # THEN no message, nor any chained one, names the key
    assert len(messages) >= len(cases) * 2
    assert [m for m in messages if API_KEY in m] == []


def test_i7_key_absent_from_logs_and_spill_files_across_faults(
        tmp_path: Path, clean_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    spill_dir = tmp_path / "spill"
    with FakeAmplitude(api_keys=[API_KEY]) as fake:
        # GIVEN a client using an explicit spill, and one using the default spill directory
        client = make_client(fake.url, LocalSpill(spill_dir),
                             retry=RetryHandler(jitter=no_jitter))
        default = Amplitude(API_KEY, server_url=fake.url, flush_timeout_s=FAULT_BUDGET_S)
        # WHEN they flush through retries, rejections, splits, throttling, hangs and recovery
        track_users(client, 4)
        fake.script(Fault.status_code(503), Fault.reset(), Fault.reset_mid_body(),
                    Fault.status_code(400, {"code": 400, "events_with_invalid_fields": {"x": [0]}}),
                    Fault.status_code(413), Fault.reply(200, b"OK", "text/plain"))
        reports = [client.flush()]
        fake.throttle(users=["user-001"])
        track_users(client, 3)
        reports.append(client.flush())
        fake.clear_throttles()
        fake.script(Fault.hang())
        track_users(default, 2)
        reports.append(default.flush())
        track_users(client, 1, prefix="later")
        reports.append(client.flush())
        track_users(client, 2)
        fake.script(Fault.status_code(403))
        reports.append(client.flush())
    with FakeAmplitude(api_keys=["another-project-key-000000"]) as refusing:
        wrong = make_client(refusing.url, LocalSpill(spill_dir))
        track_users(wrong, 2)
        reports.append(wrong.flush())
    # THEN the faults really happened: overflow files were written and read back ...
    assert all(r.balanced for r in reports)
    assert reports[1].overflowed_reasons == {"throttled": 1}
    assert reports[2].overflowed_reasons == {"deadline": 2}
    assert reports[3].recovered == 1
    # the refused key's two, and the two the 403 left in the shared spill, kept for later
    assert reports[5].overflowed_reasons == {"invalid_api_key": 4}
    spilled = [p for p in clean_env.rglob("*") if p.is_file()]
    assert spilled, "the default spill should hold the hung flush's events"
    # ... and the key is in no log record at any level and in no spill file name or content
    assert caplog.records
    assert [r.getMessage() for r in caplog.records if API_KEY in r.getMessage()] == []
    assert API_KEY not in caplog.text
    files = [p for root in (spill_dir, clean_env) for p in root.rglob("*")]
    assert [p for p in files if API_KEY in str(p)] == []
    assert [p for p in files if p.is_file() and API_KEY.encode() in p.read_bytes()] == []


# -- I2: accounting across invocations ----------------------------------------------------------


def test_i2_every_event_is_accounted_for_across_invocations(fake: FakeAmplitude,
                                                            tmp_path: Path) -> None:
    # GIVEN a warm client serving a sequence of invocations with a local spill
    spill = LocalSpill(tmp_path / "spill")
    client = make_client(fake.url, spill, retry=RetryHandler(jitter=no_jitter))
    outside = client.track("background", user_id="user-outside")
    tracked: list[str] = []
    reports: list[DeliveryReport] = []

    def invocation(count: int, prefix: str, *faults: Fault,
                   timeout_s: float = OK_BUDGET_S) -> None:
        fake.script(*faults)
        with client.invocation(timeout_s=timeout_s) as scope:
            tracked.extend(track_users(client, count, prefix=prefix))
        assert scope.report is not None
        reports.append(scope.report)

    # WHEN the invocations meet a clean run, a rejection, an outage and a throttle
    invocation(3, "first")
    invocation(3, "second", Fault.status_code(400, {
        "code": 400, "error": "Invalid field values on some events",
        "events_with_invalid_fields": {"time": [1]}}))
    invocation(4, "third", Fault.hang(), timeout_s=FAULT_BUDGET_S)
    fake.throttle(users=["fourth-000"])
    invocation(2, "fourth")
    fake.clear_throttles()
    invocation(1, "fifth")
    # THEN every report balances, with the counts each situation calls for ...
    assert all(r.balanced for r in reports)
    summary = [(r.tracked, r.recovered, r.delivered, r.rejected, r.overflowed, r.dropped)
               for r in reports]
    assert summary == [
        (4, 0, 4, 0, 0, 0),  # the first scope's exit also takes the event tracked outside
        (3, 0, 2, 1, 0, 0),
        (4, 0, 0, 0, 4, 0),  # the outage: spilled for "deadline"
        (2, 4, 5, 0, 1, 0),  # recovers the 4, delivers them and 1 new; 1 throttled is spilled
        (1, 1, 2, 0, 0, 0),  # recovers the throttled one
    ]
    assert reports[1].rejected_reasons == {"invalid_event": 1}
    assert reports[2].overflowed_reasons == {"deadline": 4}
    assert reports[3].overflowed_reasons == {"throttled": 1}
    # ... across the sequence, tracked == delivered + rejected (the spill ends empty) ...
    assert sum(r.tracked for r in reports) == len(tracked) + 1 == 14
    assert [r.outside for r in reports] == [1, 0, 0, 0, 0]
    settled = sum(r.delivered + r.rejected for r in reports)
    assert settled == len(tracked) + 1
    assert spill.pending_files() == []
    assert sorted(fake.insert_ids) == sorted([outside, *(i for i in tracked if i != tracked[4])])
    assert fake.duplicates == 0
    assert client.pending == 0
