"""The hand-off to the Lambda extension, in one process: the function's client on one side,
the extension's `Extension` (serving its real Unix socket from a test thread) on the other,
FakeAmplitude behind both. The extension as Lambda runs it: tests/integration/test_extension.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import amp_lite
from amp_lite import _extension as ext
from amp_lite import _handoff as h
from amp_lite._deadline import Deadline
from amp_lite._scope import from_milliseconds
from amp_lite.asgi import AmplitudeMiddleware
from amp_lite.testing import FakeAmplitude
from tests.support.doubles import LambdaContext

API_KEY = "handoff-key-0123456789"


@pytest.fixture
def fake() -> Iterator[FakeAmplitude]:
    with FakeAmplitude(api_keys=[API_KEY]) as server:
        yield server


@pytest.fixture
def environment(fake: FakeAmplitude, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Path:
    """The function's (and the extension's) environment: the extension on; its socket path."""
    path = tmp_path / "ext" / "handoff.sock"
    for name, value in {"AMPLITUDE_API_KEY": API_KEY, "AMPLITUDE_SERVER_URL": fake.url,
                        "AMP_LITE_EXTENSION": "on", "AMP_LITE_EXTENSION_SOCKET": str(path),
                        "AMP_LITE_SPILL_DIR": str(tmp_path / "spill")}.items():
        monkeypatch.setenv(name, value)
    return path


def make_extension(path: Path) -> ext.Extension:
    listener = ext.listen(str(path))
    journal = ext.Journal(str(path.parent / ext.JOURNAL_NAME))
    return ext.Extension(ext._client_from_environment(), listener, journal, margin_s=0.5)


def extension_serving(path: Path, hand_offs: int = 1) -> tuple[ext.Extension, threading.Thread]:
    extension = make_extension(path)

    def serve() -> None:
        for _ in range(hand_offs):
            extension.accept()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return extension, thread


def invocation(client: amp_lite.Amplitude, request_id: str | None = "req-1",
               events: int = 10) -> amp_lite.DeliveryReport:
    with client.invocation(time_left=from_milliseconds(lambda: 3000, request_id)) as scope:
        for i in range(events):
            client.track("Handed", user_id="user-0001", event_properties={"i": i})
    assert scope.report is not None
    return scope.report


def test_the_message_round_trips() -> None:
    client = amp_lite.Amplitude(API_KEY, overflow=())
    for i in range(3):
        client.track("E", user_id="user-0001", event_properties={"i": i, "text": "a\nb"})
    events = client._scopes.outside.take_all()
    for given in (events, []):
        data = h.encode(h.Message("req-7", "digest", 5, given))
        (length,) = h.LENGTH.unpack(data[:4])
        assert length == len(data) - 4
        message = h.decode(data[4:])
        assert (message.request_id, message.identity, message.min_id_length) == (
            "req-7", "digest", 5)
        assert [e.raw for e in message.events] == [e.raw for e in given]


@pytest.mark.parametrize("body", [
    b"not json",
    b'{"v": 2, "request_id": "r", "identity": "i", "count": 0}',
    b'{"v": 1, "request_id": 7, "identity": "i", "count": 0}',
    b'{"v": 1, "request_id": "r", "identity": "i", "count": 2}\n{"insert_id": "a"}',
    b'{"v": 1, "request_id": "r", "identity": "i", "count": true}',
    b'{"v": 1, "request_id": "r", "identity": "i", "count": 1}\n',
])
def test_a_flawed_message_is_refused_whole(body: bytes) -> None:
    with pytest.raises(h.BadMessageError):
        h.decode(body)


def test_the_extension_takes_the_events_and_delivers_them_after(
        environment: Path, fake: FakeAmplitude) -> None:
    # GIVEN the extension listening, and the function's client with the extension enabled
    extension, thread = extension_serving(environment)
    client = amp_lite.Amplitude()
    # WHEN an invocation's scope ends
    report = invocation(client)
    thread.join(5)
    # THEN its events are handed off, not sent by the function
    assert (report.tracked, report.handed_off, report.delivered) == (10, 10, 0)
    assert report.balanced
    assert fake.insert_ids == []
    assert extension.handed == {"req-1": 10}
    # AND they are in the extension's journal, readable by this user only
    journal = Path(extension.journal.path)
    assert journal.stat().st_size > 0 and stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert [len(m.events) for m in extension.journal.recover()] == [10]
    # WHEN the extension delivers (after the response)
    delivered = extension.deliver(Deadline.after(5))
    # THEN Amplitude has all ten, and the journal is empty
    assert (delivered.tracked, delivered.delivered) == (10, 10) and delivered.balanced
    assert len(fake.insert_ids) == 10
    assert journal.stat().st_size == 0


def test_an_invocation_without_events_hands_off_too(
        environment: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the extension learns that the invocation's events are complete, and accepts: the
    # function has nothing more to do (no fallback, no flush of its own)
    caplog.set_level(logging.INFO, logger="amp_lite")
    extension, thread = extension_serving(environment)
    report = invocation(amp_lite.Amplitude(), "req-empty", events=0)
    thread.join(5)
    assert report.handed_off == 0 and report.balanced and report.attempts == 0
    assert extension.handed == {"req-empty": 0}
    assert not [r for r in caplog.records if "failed" in r.getMessage()]


def test_without_the_extension_the_function_delivers_and_warns_once(
        environment: Path, fake: FakeAmplitude, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN AMP_LITE_EXTENSION=on but no extension listening
    client = amp_lite.Amplitude()
    caplog.set_level(logging.INFO, logger="amp_lite")
    # WHEN two invocations end
    reports = [invocation(client, f"req-{n}") for n in range(2)]
    # THEN each delivered its own events, in the function
    assert [(r.delivered, r.handed_off) for r in reports] == [(10, 0), (10, 0)]
    assert len(fake.insert_ids) == 20
    # AND the fallback was said at WARNING once, then at INFO
    fallbacks = [r for r in caplog.records if "hand-off to the extension" in r.getMessage()]
    assert [r.levelno for r in fallbacks] == [logging.WARNING, logging.INFO]


def test_a_scope_outside_a_lambda_invocation_does_not_hand_off(
        environment: Path, fake: FakeAmplitude) -> None:
    # no request id (a plain `with client.invocation(timeout_s=...)`): nothing to match
    extension, _ = extension_serving(environment)
    client = amp_lite.Amplitude()
    with client.invocation(timeout_s=3) as scope:
        client.track("Local", user_id="user-0001")
    assert scope.report is not None and scope.report.delivered == 1
    assert extension.handed == {}


def test_a_client_with_another_key_is_refused_and_delivers_itself(
        environment: Path, fake: FakeAmplitude) -> None:
    # GIVEN the extension serving the environment's key, and a client with another
    other_key = "another-key-9876543210"
    fake.reset()
    extension, thread = extension_serving(environment)
    with FakeAmplitude(api_keys=[other_key]) as other:
        client = amp_lite.Amplitude(other_key, server_url=other.url)
        # WHEN its scope ends
        report = invocation(client)
        thread.join(5)
        # THEN the extension refused (and still counts the invocation complete) ...
        assert extension.handed == {"req-1": 0}
        # AND the function delivered its own events, with its own key
        assert (report.delivered, report.handed_off) == (10, 0)
        assert len(other.insert_ids) == 10


def test_a_journal_that_cannot_be_written_refuses_and_nothing_is_lost(
        environment: Path, fake: FakeAmplitude) -> None:
    # GIVEN an extension whose journal cannot take the hand-off (a full disk, say)
    extension, thread = extension_serving(environment)

    def disk_full(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    extension.journal.append = disk_full  # type: ignore[method-assign]
    # WHEN the scope ends / THEN the function delivers the events itself
    report = invocation(amp_lite.Amplitude())
    thread.join(5)
    assert (report.delivered, report.handed_off) == (10, 0)
    assert len(fake.insert_ids) == 10


def test_an_extension_too_slow_to_answer_leaves_the_events_to_the_function(
        environment: Path, fake: FakeAmplitude) -> None:
    # GIVEN an extension that does not accept the connection in time (blocked elsewhere)
    extension = make_extension(environment)
    client = amp_lite.Amplitude()
    # WHEN the scope ends / THEN the function waits for the answer only briefly, then
    # delivers in the function
    report = invocation(client)
    assert (report.delivered, report.handed_off) == (10, 0)
    # WHEN the extension gets to the hand-off later / THEN it cannot answer, so it leaves the
    # events to the function: nothing is sent twice
    extension.accept()
    assert extension.pending == [] and extension.handed == {"req-1": 0}
    assert Path(extension.journal.path).stat().st_size == 0  # its record rolled back
    extension.deliver(Deadline.after(5))
    assert len(fake.insert_ids) == 10 and fake.duplicates == 0


@pytest.mark.parametrize("build", ["own_transport", "disabled", "own_retry"])
def test_a_client_the_extension_cannot_serve_still_ends_its_wait(
        environment: Path, fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch,
        build: str) -> None:
    # GIVEN clients the extension cannot stand in for
    extension, thread = extension_serving(environment)
    if build == "own_transport":
        from amp_lite._http import HttpTransport

        client = amp_lite.Amplitude(transport=HttpTransport(fake.url, gzip=False))
    elif build == "own_retry":
        client = amp_lite.Amplitude(retry=amp_lite.OfflineRetryHandler())
    else:
        monkeypatch.setenv("AMP_LITE_ENABLED", "false")
        client = amp_lite.Amplitude()
    # WHEN the scope ends
    report = invocation(client)
    thread.join(5)
    # THEN the extension heard the invocation end (it does not wait for its deadline) and
    # took nothing: the function delivered its own events
    assert extension.handed == {"req-1": 0} and extension.pending == []
    expected = 0 if build == "disabled" else 10
    assert report.delivered == expected and len(fake.insert_ids) == expected


def test_a_bad_acknowledgement_timeout_names_the_variable(
        environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMP_LITE_EXTENSION_ACK_MS", "20ms")
    with pytest.raises(amp_lite.ConfigError, match="AMP_LITE_EXTENSION_ACK_MS"):
        amp_lite.Amplitude()


def test_an_extension_without_a_client_holds_no_invocation(
        environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # no key in the environment: it refuses every hand-off and finishes each INVOKE at once
    monkeypatch.delenv("AMPLITUDE_API_KEY")
    extension = make_extension(environment)
    assert extension.client is None
    client = amp_lite.Amplitude("another-key-9876543210")
    thread = threading.Thread(target=extension.accept, daemon=True)
    thread.start()
    report = invocation(client)
    thread.join(5)
    assert report.handed_off == 0 and extension.pending == []


def test_a_killed_extension_leaves_its_hand_offs_to_the_next(
        environment: Path, fake: FakeAmplitude) -> None:
    # GIVEN an extension that took a hand-off and was gone before it flushed
    first, thread = extension_serving(environment)
    invocation(amp_lite.Amplitude())
    thread.join(5)
    first.listener.close()
    # WHEN the next extension starts on the same journal, torn tail included
    with open(first.journal.path, "ab") as journal:
        journal.write(h.LENGTH.pack(500) + b'{"v": 1')  # a kill in the middle of a write
    second = make_extension(environment)
    # THEN it holds the ten, and delivers them with its first flush
    assert len(second.pending) == 10
    report = second.deliver(Deadline.after(5))
    assert report.delivered == 10 and len(fake.insert_ids) == 10


def test_the_socket_directory_must_be_private(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(OSError, match="mode 0700"):
        ext.listen(str(shared / "handoff.sock"))
    own = tmp_path / "own"
    listener = ext.listen(str(own / "handoff.sock"))
    try:
        assert stat.S_IMODE(own.stat().st_mode) == 0o700
        assert stat.S_IMODE((own / "handoff.sock").stat().st_mode) == 0o600
        assert listener.family == socket.AF_UNIX
    finally:
        listener.close()


def test_the_asgi_middleware_under_mangum_hands_off(environment: Path) -> None:
    # GIVEN an ASGI app behind the middleware, called as Mangum calls it (aws.context)
    extension, thread = extension_serving(environment)
    client = amp_lite.Amplitude()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        client.track("Page", user_id="user-0001")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = AmplitudeMiddleware(app, client=client)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [],
             "aws.context": LambdaContext(3000)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # WHEN a request is served
    asyncio.run(wrapped(scope, receive, send))
    thread.join(5)
    # THEN its event went to the extension, under the context's request id
    assert extension.handed == {LambdaContext.aws_request_id: 1}
    assert sent[-1]["body"] == b"ok"


def test_an_async_handler_hands_off(environment: Path) -> None:
    extension, thread = extension_serving(environment)
    client = amp_lite.Amplitude()

    @amp_lite.amplitude_flush(client=client)
    async def handler(event: dict[str, Any], context: Any) -> str:
        client.track("Async", user_id="user-0001")
        return "done"

    assert asyncio.run(handler({}, LambdaContext(3000))) == "done"
    thread.join(5)
    assert extension.handed == {LambdaContext.aws_request_id: 1}


def test_a_scope_from_the_context_method_hands_off_and_a_nested_one_does_not(
        environment: Path, fake: FakeAmplitude) -> None:
    # GIVEN a scope opened with the context's method (no decorator), and one inside it
    extension, thread = extension_serving(environment)
    client = amp_lite.Amplitude()
    context = LambdaContext(3000)
    with client.invocation(remaining_time_ms=context.get_remaining_time_in_millis) as outer:
        with client.invocation(remaining_time_ms=context.get_remaining_time_in_millis) as inner:
            client.track("Inner", user_id="user-0001")
        client.track("Outer", user_id="user-0001")
    thread.join(5)
    # THEN the inner scope delivered in the function, the outer one handed off (one hand-off
    # per invocation: the first one ends the extension's wait)
    assert inner.report is not None and inner.report.delivered == 1
    assert outer.report is not None and outer.report.handed_off == 1
    assert extension.handed == {LambdaContext.aws_request_id: 1}


def test_a_disabled_client_says_nothing_but_that_its_scope_ended(
        environment: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # AMP_LITE_ENABLED=false: no fallback warning in the function, no refusal in the extension
    monkeypatch.setenv("AMP_LITE_ENABLED", "false")
    caplog.set_level(logging.INFO, logger="amp_lite")
    extension, thread = extension_serving(environment)
    report = invocation(amp_lite.Amplitude())
    thread.join(5)
    assert report.tracked == 0 and extension.handed == {"req-1": 0}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_hand_off_that_raises_leaves_the_events_to_the_function(
        environment: Path, fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a hand-off that fails in a way nobody planned for (out of descriptors, a bug)
    client = amp_lite.Amplitude()

    def broken(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("unplanned")

    monkeypatch.setattr(h.HandOff, "send", broken)
    # WHEN the scope ends / THEN the function delivered the events: none lost
    report = invocation(client)
    assert (report.delivered, report.dropped) == (10, 0)
    assert len(fake.insert_ids) == 10
