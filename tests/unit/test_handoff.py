"""The hand-off to the Lambda extension, in one process: the function's client on one side,
the extension's `Extension` (serving its real Unix socket from a test thread) on the other,
FakeAmplitude behind both. The extension as Lambda runs it: tests/integration/test_extension.py.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import amp_lite
from amp_lite import _extension as ext
from amp_lite import _handoff as h
from amp_lite._deadline import Deadline
from amp_lite._scope import from_milliseconds
from amp_lite.testing import FakeAmplitude

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


def extension_serving(path: Path, hand_offs: int = 1) -> tuple[ext.Extension, threading.Thread]:
    extension = ext.Extension(ext._client_from_environment(), ext.listen(str(path)),
                              margin_s=0.5)

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
    b'{"v": 1, "request_id": "r", "identity": "i", "count": 1}\n[1, 2]',
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
    # AND they wait in the extension's spill, readable by this user only
    files = [p for p in Path(os.environ["AMP_LITE_SPILL_DIR"]).rglob("*") if p.is_file()]
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    # WHEN the extension delivers (after the response)
    delivered = extension.deliver(Deadline.after(5))
    # THEN Amplitude has all ten, and the spill is empty
    assert (delivered.recovered, delivered.delivered) == (10, 10)
    assert len(fake.insert_ids) == 10
    assert not [p for p in Path(os.environ["AMP_LITE_SPILL_DIR"]).rglob("*.jsonl")]


def test_an_invocation_without_events_hands_off_too(environment: Path) -> None:
    # the extension learns that the invocation's events are complete
    extension, thread = extension_serving(environment)
    report = invocation(amp_lite.Amplitude(), "req-empty", events=0)
    thread.join(5)
    assert report.handed_off == 0 and report.balanced
    assert extension.handed == {"req-empty": 0}


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


def test_a_full_spill_refuses_and_nothing_is_lost(environment: Path,
                                                  fake: FakeAmplitude) -> None:
    # GIVEN an extension whose spill cannot take the hand-off
    extension, thread = extension_serving(environment)
    assert extension.spill is not None
    extension.spill.max_bytes = 10
    # WHEN the scope ends / THEN the function delivers the events itself
    report = invocation(amp_lite.Amplitude())
    thread.join(5)
    assert (report.delivered, report.handed_off) == (10, 0)
    assert len(fake.insert_ids) == 10


def test_an_extension_too_slow_to_answer_leaves_the_events_to_the_function(
        environment: Path, fake: FakeAmplitude) -> None:
    # GIVEN an extension that does not accept the connection in time (blocked elsewhere)
    extension = ext.Extension(ext._client_from_environment(), ext.listen(str(environment)),
                              margin_s=0.5)
    client = amp_lite.Amplitude()
    # WHEN the scope ends / THEN the function waits for the answer only briefly, then
    # delivers in the function
    report = invocation(client)
    assert (report.delivered, report.handed_off) == (10, 0)
    # WHEN the extension gets to the hand-off later / THEN it takes it without failing: the
    # events are delivered twice, which Amplitude de-duplicates on insert_id
    extension.accept()
    extension.deliver(Deadline.after(5))
    assert len(fake.insert_ids) == 10 and fake.duplicates == 10


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
