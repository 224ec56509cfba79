"""@amplitude_flush in process, with a Lambda context whose remaining time the test controls."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import amp_lite
from amp_lite import Amplitude, amplitude_flush
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.doubles import LambdaContext

TOLERANCE_S = 0.4


@pytest.fixture(autouse=True)
def fresh_default_client() -> Iterator[None]:
    amp_lite.set_client(None)
    yield
    amp_lite.set_client(None)


@pytest.fixture
def env_client(fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch) -> FakeAmplitude:
    monkeypatch.setenv("AMPLITUDE_API_KEY", API_KEY)
    monkeypatch.setenv("AMPLITUDE_SERVER_URL", fake.url)
    return fake


def test_bare_decorator_flushes_the_default_client(env_client: FakeAmplitude) -> None:
    # GIVEN a handler decorated bare, tracking through the module-level helper
    @amplitude_flush
    def handler(event: dict[str, Any], context: Any) -> str:
        amp_lite.track("Bare", user_id="user-bare")
        return "ok"

    # WHEN it runs
    result = handler({}, LambdaContext(3000))
    # THEN its event was delivered before it returned
    assert result == "ok"
    assert [e["event_type"] for e in env_client.events] == ["Bare"]


def test_decorator_with_a_client_positionally_and_by_keyword(fake: FakeAmplitude) -> None:
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())

    @amplitude_flush(client)
    def positional(event: Any, context: Any) -> None:
        client.track("Positional", user_id="user-one")

    @amplitude_flush(client=client, margin_ms=200, flush_timeout_s=2)
    def keyword(event: Any, context: Any) -> None:
        client.track("Keyword", user_id="user-two")

    positional({}, LambdaContext(3000))
    keyword({}, LambdaContext(3000))
    assert [e["event_type"] for e in fake.events] == ["Positional", "Keyword"]


def test_decorator_keeps_name_docstring_and_signature(fake: FakeAmplitude) -> None:
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())

    def handler(event: dict[str, Any], context: Any, *, extra: int = 1) -> dict[str, Any]:
        """Handle an order."""
        return event

    wrapped = amplitude_flush(client)(handler)
    assert wrapped.__name__ == "handler"
    assert wrapped.__doc__ == "Handle an order."
    assert inspect.signature(wrapped) == inspect.signature(handler)
    assert wrapped.__wrapped__ is handler  # type: ignore[attr-defined]


def test_return_value_and_exception_pass_through_unchanged(fake: FakeAmplitude) -> None:
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())
    sentinel = object()
    error = KeyError("the handler's own")

    @amplitude_flush(client)
    def returns(event: Any, context: Any) -> object:
        client.track("Returns", user_id="user-ret")
        return sentinel

    @amplitude_flush(client)
    def raises(event: Any, context: Any) -> None:
        client.track("Raises", user_id="user-rai")
        raise error

    assert returns({}, LambdaContext(3000)) is sentinel
    with pytest.raises(KeyError) as caught:
        raises({}, LambdaContext(3000))
    assert caught.value is error
    assert [e["event_type"] for e in fake.events] == ["Returns", "Raises"]


def test_a_failing_flush_changes_neither_result_nor_exception(
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a client with no API key: its flush cannot send anything
    client = Amplitude(overflow=())

    @amplitude_flush(client)
    def handler(event: Any, context: Any) -> str:
        client.track("Lost", user_id="user-nokey")
        if event.get("fail"):
            raise RuntimeError("handler failure")
        return "result"

    # WHEN the handler returns and when it raises
    with caplog.at_level(logging.ERROR, logger="amp_lite"):
        assert handler({}, LambdaContext(3000)) == "result"
        with pytest.raises(RuntimeError, match="handler failure"):
            handler({"fail": True}, LambdaContext(3000))
    # THEN the failures were logged (naming the variable), not raised
    assert "AMPLITUDE_API_KEY" in caplog.text


def test_flush_is_bounded_by_remaining_time_minus_margin(fake: FakeAmplitude) -> None:
    # GIVEN Amplitude hangs and the invocation has 1.5 s left
    fake.script(*[Fault.hang(30)] * 5)
    client = Amplitude(API_KEY, server_url=fake.url, overflow=(), flush_timeout_s=60)

    @amplitude_flush(client, margin_ms=500)
    def handler(event: Any, context: Any) -> None:
        client.track("Hangs", user_id="user-hang")

    # WHEN the handler runs
    started = time.monotonic()
    handler({}, LambdaContext(1500))
    took = time.monotonic() - started
    # THEN the flush gave up at remaining - margin (1.0 s), not at flush_timeout_s
    assert 0.5 <= took <= 1.0 + TOLERANCE_S


def test_flush_timeout_caps_a_long_invocation(fake: FakeAmplitude) -> None:
    # GIVEN a 900 s function whose Amplitude hangs, and flush_timeout_s=0.8
    fake.script(*[Fault.hang(30)] * 5)
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())

    @amplitude_flush(client, flush_timeout_s=0.8)
    def handler(event: Any, context: Any) -> None:
        client.track("Long", user_id="user-long")

    started = time.monotonic()
    handler({}, LambdaContext(900_000))
    # THEN the handler returned after about flush_timeout_s, not 899.5 s
    assert time.monotonic() - started <= 0.8 + TOLERANCE_S


def test_no_context_falls_back_to_flush_timeout_and_says_so(
        fake: FakeAmplitude, caplog: pytest.LogCaptureFixture) -> None:
    fake.script(*[Fault.hang(30)] * 5)
    client = Amplitude(API_KEY, server_url=fake.url, overflow=(), flush_timeout_s=0.6)

    @amplitude_flush(client)
    def handler(event: Any, context: Any) -> str:
        client.track("Local", user_id="user-local")
        return "done"

    started = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="amp_lite"):
        assert handler({}, None) == "done"
    assert time.monotonic() - started <= 0.6 + TOLERANCE_S
    assert "no context.get_remaining_time_in_millis()" in caplog.text


def test_context_passed_by_keyword_is_used(fake: FakeAmplitude) -> None:
    fake.script(*[Fault.hang(30)] * 5)
    client = Amplitude(API_KEY, server_url=fake.url, overflow=(), flush_timeout_s=60)

    @amplitude_flush(client, margin_ms=100)
    def handler(event: Any, context: Any) -> None:
        client.track("Kw", user_id="user-kwarg")

    started = time.monotonic()
    handler(event={}, context=LambdaContext(700))
    assert time.monotonic() - started <= 0.6 + TOLERANCE_S


def test_margin_larger_than_remaining_sends_nothing_and_counts_everything(
        fake: FakeAmplitude, tmp_path: Any) -> None:
    # GIVEN an invocation with 300 ms left and a 500 ms margin
    spill = amp_lite.overflow.LocalSpill(tmp_path / "spill")
    client = Amplitude(API_KEY, server_url=fake.url, overflow=spill)
    scope_reports: list[Any] = []

    def handler(event: Any, context: Any) -> None:
        client.track("Late", user_id="user-late")
        client.track("Late", user_id="user-late")

    wrapped = amplitude_flush(client)(handler)
    # WHEN it runs
    with client.invocation(remaining_time_ms=LambdaContext(300).get_remaining_time_in_millis,
                           margin_ms=500) as inv:
        handler({}, None)
    scope_reports.append(inv.report)
    wrapped({}, LambdaContext(300))
    # THEN no request was sent, and with no time left not even the spill could be written:
    # both events are counted, dropped as sink_failed (the flush keeps its deadline, I3)
    assert fake.requests == []
    report = scope_reports[0]
    assert report.balanced and report.dropped_reasons == {"sink_failed": 2}
    assert list((tmp_path / "spill").rglob("*.jsonl")) == []


def test_unbuildable_default_client_is_logged_and_the_handler_still_runs(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN an environment with an invalid zone: the default client cannot be built
    monkeypatch.setenv("AMPLITUDE_SERVER_ZONE", "MARS")

    @amplitude_flush
    def handler(event: Any, context: Any) -> str:
        return "still served"

    with caplog.at_level(logging.ERROR, logger="amp_lite"):
        assert handler({}, LambdaContext(3000)) == "still served"
    assert "AMPLITUDE_SERVER_ZONE" in caplog.text


def test_module_helpers_delegate_to_one_default_client(env_client: FakeAmplitude) -> None:
    # WHEN every helper is called outside any scope, then the default client is flushed
    amp_lite.track("Helper", user_id="user-help")
    amp_lite.identify(amp_lite.Identify().set("plan", "pro"), user_id="user-help")
    amp_lite.group_identify("org", "acme", amp_lite.Identify().set("size", 10),
                            user_id="user-help")
    amp_lite.set_group("org", "acme", user_id="user-help")
    amp_lite.revenue(amp_lite.Revenue(price=9.5), user_id="user-help")
    report = amp_lite.flush(timeout_s=5)
    # THEN one client built from the environment sent them all
    assert amp_lite.get_client() is amp_lite.get_client()
    assert report.delivered == 5
    assert [e["event_type"] for e in env_client.events] == [
        "Helper", "$identify", "$groupidentify", "$identify", "revenue_amount"]


@pytest.mark.parametrize("options", [{"margin_ms": -1}, {"margin_ms": "500"},
                                     {"flush_timeout_s": 0}, {"timeout_s": float("nan")}])
def test_bad_decorator_options_fail_at_decoration(fake: FakeAmplitude,
                                                  options: dict[str, Any]) -> None:
    # GIVEN a bad option, WHEN a handler is decorated (at import: the init phase)
    # THEN a ConfigError names the option at once, not at the first invocation
    with pytest.raises(amp_lite.ConfigError, match=f"^{next(iter(options))}: "):
        amplitude_flush(client=Amplitude(API_KEY, server_url=fake.url), **options)(
            lambda event, context: None)


def test_bad_timeout_environment_still_flushes_the_invocation(
        fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a Cloud Functions handler and an unreadable AMP_LITE_TIMEOUT_S
    monkeypatch.setenv("AMP_LITE_TIMEOUT_S", "soon")
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())

    @amplitude_flush(client)
    def handler(request: Any) -> str:
        client.track("Still flushed", user_id="user-env")
        return "ok"

    # WHEN it runs
    result = handler(object())
    # THEN the result is the handler's, the error is logged, and the event was flushed by the
    # invocation (bounded by the client's flush_timeout_s), not left in the client's buffer
    assert result == "ok"
    assert "AMP_LITE_TIMEOUT_S" in caplog.text
    assert len(fake.events) == 1 and client.pending == 0


def test_bad_timeout_environment_keeps_the_decorators_flush_cap(
        fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a Cloud Functions handler capped at 0.5 s, an unreadable AMP_LITE_TIMEOUT_S, a
    # client allowing 4 s, and an Amplitude that hangs
    monkeypatch.setenv("AMP_LITE_TIMEOUT_S", "soon")
    client = Amplitude(API_KEY, server_url=fake.url, overflow=(), flush_timeout_s=4.0)
    fake.script(Fault.hang(10))

    @amplitude_flush(client, flush_timeout_s=0.5)
    def handler(request: Any) -> str:
        client.track("Capped", user_id="user-env")
        return "ok"

    # WHEN it runs / THEN the flush still ends within the decorator's cap
    started = time.monotonic()
    assert handler(object()) == "ok"
    assert time.monotonic() - started < 0.5 + TOLERANCE_S



def test_bad_timeout_environment_is_reported_once_at_decoration_not_per_request(
        fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN an unreadable AMP_LITE_TIMEOUT_S when a Cloud Functions handler is decorated
    monkeypatch.setenv("AMP_LITE_TIMEOUT_S", "soon")
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())
    with caplog.at_level(logging.ERROR, logger="amp_lite"):
        @amplitude_flush(client)
        def handler(request: Any) -> str:
            client.track("Served", user_id="user-env")
            return "ok"

        # WHEN it serves three requests
        results = [handler(object()) for _ in range(3)]
    # THEN the variable was read once: one error naming it, without a traceback, and every
    # request's event was still flushed by its own invocation
    assert results == ["ok"] * 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "AMP_LITE_TIMEOUT_S" in errors[0].getMessage()
    assert len(fake.events) == 3 and client.pending == 0


def test_a_method_handler_flushes_within_its_lambda_context(fake: FakeAmplitude) -> None:
    # GIVEN a handler that is a method, (self, event, context), and an Amplitude that hangs
    fake.script(*[Fault.hang(30)] * 5)
    client = Amplitude(API_KEY, server_url=fake.url, overflow=(), flush_timeout_s=60)

    class Service:
        @amplitude_flush(client, margin_ms=100)
        def handle(self, event: Any, context: Any) -> str:
            client.track("Method", user_id="user-method")
            return "served"

    # WHEN it runs with 700 ms left / THEN the context's deadline bounds the flush (it used to
    # read the event as the context, and only flush_timeout_s bounded it)
    started = time.monotonic()
    assert Service().handle({}, LambdaContext(700)) == "served"
    assert time.monotonic() - started <= 0.6 + TOLERANCE_S


class BackgroundContext:
    """Cloud Functions 1st gen's context for background functions: no remaining time."""

    event_id = "1234567890"
    timestamp = "2026-12-01T00:00:00.000Z"
    event_type = "google.pubsub.topic.publish"
    resource = "projects/p/topics/t"


def test_a_cloud_functions_background_function_uses_the_function_timeout(
        fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a 1st gen background function, (data, context), with a 1 s timeout
    monkeypatch.setenv("FUNCTION_TIMEOUT_SEC", "1")
    fake.script(*[Fault.hang(30)] * 5)
    client = Amplitude(API_KEY, server_url=fake.url, overflow=(), flush_timeout_s=60)

    @amplitude_flush(client)
    def on_message(data: Any, context: Any) -> None:
        client.track("Background", user_id="user-background")

    # WHEN it runs while Amplitude hangs / THEN the flush ends by 1 s minus the 500 ms margin
    started = time.monotonic()
    on_message({"data": "e30="}, BackgroundContext())
    assert time.monotonic() - started <= 0.5 + TOLERANCE_S


def test_an_async_handler_is_awaited_then_flushed(fake: FakeAmplitude) -> None:
    import asyncio

    client = Amplitude(API_KEY, server_url=fake.url, overflow=())

    # GIVEN an async def handler that tracks after an await
    @amplitude_flush(client)
    async def handler(event: Any, context: Any) -> str:
        await asyncio.sleep(0)
        client.track("Async", user_id="user-async")
        return "async ok"

    # THEN it is still a coroutine function with the handler's name
    assert inspect.iscoroutinefunction(handler) and handler.__name__ == "handler"
    # WHEN it runs / THEN its result passes through and its event was flushed by its scope
    # (it used to stay in memory: the wrapper returned the coroutine before it ran)
    assert asyncio.run(handler({}, LambdaContext(3000))) == "async ok"
    assert [e["event_type"] for e in fake.events] == ["Async"]
    assert client.pending == 0


def test_an_async_handlers_exception_passes_through_after_the_flush(fake: FakeAmplitude) -> None:
    import asyncio

    client = Amplitude(API_KEY, server_url=fake.url, overflow=())

    @amplitude_flush(client)
    async def handler(event: Any, context: Any) -> None:
        client.track("Before Failing", user_id="user-async")
        raise KeyError("the handler's own")

    with pytest.raises(KeyError, match="the handler's own"):
        asyncio.run(handler({}, LambdaContext(3000)))
    assert [e["event_type"] for e in fake.events] == ["Before Failing"]


def test_a_coroutine_returned_by_a_plain_def_decorator_is_flushed_when_awaited(
        fake: FakeAmplitude) -> None:
    import asyncio

    client = Amplitude(API_KEY, server_url=fake.url, overflow=())

    def plain(function: Callable[..., Any]) -> Callable[..., Any]:
        # a decorator that does not mark itself async: it returns the coroutine unawaited
        @functools.wraps(function)
        def call(*args: Any) -> Any:
            return function(*args)

        return call

    # GIVEN an async handler under such a decorator, with @amplitude_flush outermost
    @amplitude_flush(client)
    @plain
    async def handler(event: Any, context: Any) -> str:
        await asyncio.sleep(0)
        client.track("Awaited Later", user_id="user-async")
        if event.get("fail"):
            raise KeyError("the handler's own")
        return "awaited ok"

    # WHEN the caller awaits what the call returned / THEN its result passes through, and the
    # event tracked while it ran was flushed by its scope (it waited for the next flush)
    assert asyncio.run(handler({}, LambdaContext(3000))) == "awaited ok"
    assert [e["event_type"] for e in fake.events] == ["Awaited Later"]
    assert client.pending == 0
    # AND an exception passes through unchanged, after its event was flushed
    with pytest.raises(KeyError, match="the handler's own"):
        asyncio.run(handler({"fail": True}, LambdaContext(3000)))
    assert len(fake.events) == 2
