"""`_body.ScopedBody`: a response body generated inside its request's scope and flushed once,
when it is exhausted, fails or is closed; and which handler results keep their scope open."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from amp_lite import Amplitude, Invocation, amplitude_flush
from amp_lite._body import ScopedBody, keep_open_for_body
from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY


@pytest.fixture
def client(fake: FakeAmplitude) -> Amplitude:
    return Amplitude(API_KEY, server_url=fake.url, overflow=())


class Body:
    """A body that tracks one event per chunk and records whether it was closed."""

    def __init__(self, client: Amplitude, chunks: int, *, fail_at: int | None = None) -> None:
        self.client = client
        self.chunks = chunks
        self.fail_at = fail_at
        self.closed = False
        self.error = RuntimeError("the body failed")

    def __iter__(self) -> Iterator[bytes]:
        for n in range(self.chunks):
            if n == self.fail_at:
                raise self.error
            self.client.track("Chunk", user_id="user-body", event_properties={"n": n})
            yield b"chunk"

    def close(self) -> None:
        self.client.track("Closed", user_id="user-body")  # cleanup may track too
        self.closed = True


def open_scope(client: Amplitude) -> Invocation:
    scope = client.invocation(timeout_s=5)
    scope.enter()
    scope.leave()  # as a handler leaves it when it returns its body
    return scope


def test_an_exhausted_body_is_flushed_before_stop_iteration_reaches_the_server(
        client: Amplitude, fake: FakeAmplitude) -> None:
    # GIVEN a body of three chunks in an open scope
    body = ScopedBody(Body(client, 3), open_scope(client))
    # WHEN the server reads the three chunks, nothing is sent yet
    assert [next(body) for _ in range(3)] == [b"chunk"] * 3
    assert fake.events == []
    # THEN the end of the body flushes the three events, before StopIteration is raised
    with pytest.raises(StopIteration):
        next(body)
    assert [e["event_properties"]["n"] for e in fake.events] == [0, 1, 2]


def test_close_after_exhaustion_closes_the_inner_body_and_does_not_flush_again(
        client: Amplitude, fake: FakeAmplitude) -> None:
    # GIVEN a body read to its end
    inner = Body(client, 2)
    scope = open_scope(client)
    body = ScopedBody(inner, scope)
    assert list(body) == [b"chunk"] * 2
    # WHEN the server closes it
    body.close()
    # THEN the inner body was closed; its late event waits in the client's own buffer
    assert inner.closed
    assert len(fake.requests) == 1 and len(fake.events) == 2
    assert client.pending == 1
    assert scope.report is not None and scope.report.delivered == 2


def test_close_without_exhaustion_flushes_what_was_tracked_including_the_cleanup(
        client: Amplitude, fake: FakeAmplitude) -> None:
    # GIVEN a body of five chunks of which the server reads two (the client went away)
    inner = Body(client, 5)
    body = ScopedBody(inner, open_scope(client))
    next(body), next(body)
    # WHEN the server closes it
    body.close()
    # THEN the inner body was closed inside the scope, and all three events were flushed
    assert inner.closed
    assert [e["event_type"] for e in fake.events] == ["Chunk", "Chunk", "Closed"]
    # AND a later next() ends the body without flushing again
    with pytest.raises(StopIteration):
        next(body)
    assert len(fake.requests) == 1


def test_a_failure_mid_stream_propagates_unchanged_after_the_flush(
        client: Amplitude, fake: FakeAmplitude) -> None:
    # GIVEN a body that fails at its third chunk
    inner = Body(client, 5, fail_at=2)
    body = ScopedBody(inner, open_scope(client))
    next(body), next(body)
    # WHEN the server asks for the third chunk
    with pytest.raises(RuntimeError) as raised:
        next(body)
    # THEN the body's own exception comes out, and the two events were already flushed
    assert raised.value is inner.error
    assert len(fake.events) == 2
    # AND the server's close() still closes the inner body, without a second flush
    body.close()
    assert inner.closed and len(fake.requests) == 1


def test_an_inner_close_that_raises_still_flushes(client: Amplitude,
                                                   fake: FakeAmplitude) -> None:
    # GIVEN a body whose close() fails
    class Failing(Body):
        def close(self) -> None:
            raise OSError("close failed")

    body = ScopedBody(Failing(client, 3), open_scope(client))
    next(body)
    # WHEN the server closes it / THEN the error propagates and the event was flushed anyway
    with pytest.raises(OSError, match="close failed"):
        body.close()
    assert len(fake.events) == 1


def test_a_body_without_close_is_fine(client: Amplitude, fake: FakeAmplitude) -> None:
    # GIVEN a plain list as the body / WHEN it is closed before being read
    ScopedBody([b"a", b"b"], open_scope(client)).close()
    # THEN nothing fails and nothing was sent (there was nothing to send)
    assert fake.requests == []


class StreamedResponse:
    """Shaped like werkzeug's Response: `is_streamed` and a `response` body."""

    def __init__(self, body: Any) -> None:
        self.response = body
        self.is_streamed = not hasattr(body, "__len__")


def _generator() -> Iterator[bytes]:
    yield b"x"


@pytest.mark.parametrize("result", [
    "ok", {"statusCode": 200}, None, [b"a"], ("ok", 200), StreamedResponse([b"sized"]),
])
def test_results_that_are_not_streamed_are_flushed_at_once(client: Amplitude,
                                                           result: Any) -> None:
    assert keep_open_for_body(result, open_scope(client), flask_view=True) is None


def test_streamed_results_keep_the_scope_open(client: Amplitude) -> None:
    # a streamed Response gets its body wrapped, in place
    response = StreamedResponse(_generator())
    assert keep_open_for_body(response, open_scope(client), flask_view=False) is response
    assert isinstance(response.response, ScopedBody)
    # from a Flask view, a bare generator, and one in a (body, status, headers) tuple, too
    assert isinstance(keep_open_for_body(_generator(), open_scope(client), flask_view=True),
                      ScopedBody)
    wrapped = keep_open_for_body((_generator(), 201, {"X": "1"}), open_scope(client),
                                 flask_view=True)
    assert isinstance(wrapped, tuple) and isinstance(wrapped[0], ScopedBody)
    assert wrapped[1:] == (201, {"X": "1"})


def test_a_generator_returned_by_a_lambda_handler_is_flushed_at_once(fake: FakeAmplitude) -> None:
    # GIVEN a Lambda-shaped handler that returns a generator (nobody will iterate it)
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())
    context = SimpleNamespace(get_remaining_time_in_millis=lambda: 5000)

    @amplitude_flush(client)
    def handler(event: dict[str, Any], context: object) -> Iterator[bytes]:
        client.track("returned_a_generator", user_id="user-1")
        return _generator()

    # WHEN it returns
    result = handler({}, context)
    # THEN the result is unchanged and its event was flushed already, not left in an open scope
    assert inspect.isgenerator(result)
    assert len(fake.insert_ids) == 1
