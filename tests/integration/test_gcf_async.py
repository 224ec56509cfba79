"""Async Cloud Functions (functions-framework's `aio` API) under a real functions-framework
server in ASGI mode (gunicorn with a uvicorn worker: one event loop serving many requests).

The issue these guard (13, item 3): with `@amplitude_flush`, an `aio.http` function answered
500 (`'coroutine' object is not callable`) and an `aio.cloud_event` function answered 200
without running the user's code (`coroutine was never awaited`): a Pub/Sub push acknowledged
and its events lost.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
import urllib3
from cloudevents.http import CloudEvent
from starlette.requests import Request

import amp_lite
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.integration.test_gcf import functions_framework_server, server_log
from tests.support.lambda_runtime import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "gcf_async" / "main.py"
FUNCTIONS = REPO_ROOT / "tests" / "support" / "gcf_async_functions.py"
TOGETHER = 8  # requests in flight at once
TOLERANCE_S = 0.5
T = TypeVar("T")


def _at_once(count: int, call: Callable[[int], T]) -> list[T]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))


def _flush_summaries(log: str) -> list[dict[str, Any]]:
    return [json.loads(m) for m in re.findall(r"amp_lite flush (\{.*\})", log)]


def _balanced(summary: dict[str, Any]) -> bool:
    return bool(summary["tracked"] + summary["recovered"] == summary["delivered"]
                + summary["rejected"] + summary["overflowed"] + summary["dropped"])


def _binary(event_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"body": json.dumps(data), "headers": {
        "Content-Type": "application/json", "ce-id": event_id, "ce-specversion": "1.0",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-source": "//pubsub.googleapis.com/projects/p/topics/t"}}


def _structured(event_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"body": json.dumps({"specversion": "1.0", "id": event_id, "type": "com.example.signup",
                                "source": "//example/app", "data": data}),
            "headers": {"Content-Type": "application/cloudevents+json"}}


# -- the worked example ------------------------------------------------------------------------


def test_example_http_function_flushes_before_its_response(fake: FakeAmplitude,
                                                          tmp_path: Path) -> None:
    # GIVEN examples/gcf_async served by functions-framework, which picks ASGI for aio functions
    with functions_framework_server("track", fake, tmp_path, source=EXAMPLE) as url:
        # WHEN a request tracks three page views
        reply = urllib3.request("POST", url, json={"user_id": "user-aio", "pages": ["a", "b", "c"]})
        # THEN uvicorn answered 200, and Amplitude held the three events before it did
        assert reply.status == 200, reply.data
        assert reply.headers["server"] == "uvicorn"
        assert sorted(reply.json()["insert_ids"]) == sorted(fake.insert_ids)
        assert len(fake.events) == 3


@pytest.mark.parametrize("mode", [_binary, _structured], ids=["binary", "structured"])
def test_example_cloud_event_runs_and_flushes_before_the_ack(
        fake: FakeAmplitude, tmp_path: Path, mode: Callable[[str, dict[str, Any]],
                                                           dict[str, Any]]) -> None:
    # GIVEN the example's aio CloudEvent function
    with functions_framework_server("on_event", fake, tmp_path, source=EXAMPLE) as url:
        # WHEN a Pub/Sub-like push arrives
        reply = urllib3.request("POST", url, **mode("evt-1", {"user_id": "user-push"}))
        # THEN the function ran (its event is at Amplitude) before the push was acknowledged
        assert reply.status == 200, reply.data
        [event] = fake.events
        assert event["user_id"] == "user-push"
        assert event["event_properties"]["id"] == "evt-1"


# -- concurrency, both decorator orders --------------------------------------------------------


@pytest.mark.parametrize("target", ["http_under", "http_over"])
def test_concurrent_http_requests_each_flush_their_own_events(
        fake: FakeAmplitude, tmp_path: Path, target: str) -> None:
    # GIVEN an aio HTTP function whose requests wait until eight are inside it at once
    http = urllib3.PoolManager(maxsize=TOGETHER)
    with functions_framework_server(target, fake, tmp_path, source=FUNCTIONS,
                                    AMP_LITE_LOG_LEVEL="INFO") as url:

        def one(n: int) -> tuple[list[str], set[str]]:
            pages = [f"r{n}-p{p}" for p in range(3)]
            reply = http.request("POST", url, json={"user_id": f"user-{n:03d}", "pages": pages,
                                                    "together": TOGETHER}, timeout=20)
            assert reply.status == 200, reply.data
            ids: list[str] = reply.json()["insert_ids"]
            return ids, set(ids) - set(fake.insert_ids)  # missing when the response came

        # WHEN eight requests, each tracking three distinct events, run interleaved on one loop
        results = _at_once(TOGETHER, one)
        log = server_log(tmp_path, url)
    # THEN every response came after its own events were accepted...
    assert [missing for _, missing in results] == [set()] * TOGETHER
    # ...every event reached Amplitude exactly once, under its own request's user...
    sent = [i for ids, _ in results for i in ids]
    assert len(sent) == len(set(sent)) == 3 * TOGETHER
    assert sorted(fake.insert_ids) == sorted(sent) and fake.duplicates == 0
    assert all(e["user_id"] == f"user-{e['event_properties']['page'][1:].split('-')[0]:0>3}"
               for e in fake.events)
    # ...and each request's flush took its own three events, none from another, balanced
    summaries = _flush_summaries(log)
    assert [(s["tracked"], s["outside"], s["delivered"]) for s in summaries] == [(3, 0, 3)] * 8
    assert all(map(_balanced, summaries))


@pytest.mark.parametrize("target", ["event_under", "event_over", "event_sync"])
def test_concurrent_cloud_events_binary_and_structured(fake: FakeAmplitude, tmp_path: Path,
                                                       target: str) -> None:
    # GIVEN an aio CloudEvent function (async in both decorator orders, or a plain def)
    http = urllib3.PoolManager(maxsize=TOGETHER)
    with functions_framework_server(target, fake, tmp_path, source=FUNCTIONS,
                                    AMP_LITE_LOG_LEVEL="INFO") as url:

        def one(n: int) -> bool:
            mode = _binary if n % 2 else _structured
            reply = http.request("POST", url, **mode(f"evt-{n}", {"user_id": f"user-{n:03d}"}),
                                 timeout=20)
            assert reply.status == 200, reply.data
            return f"evt-{n}" in {e["event_properties"]["id"] for e in fake.events}

        # WHEN eight pushes arrive at once, half binary, half structured
        flushed_before_ack = _at_once(TOGETHER, one)
        log = server_log(tmp_path, url)
    # THEN each was acknowledged only once its event was at Amplitude, each event exactly once
    assert flushed_before_ack == [True] * TOGETHER
    assert sorted(e["event_properties"]["id"] for e in fake.events) == sorted(
        f"evt-{n}" for n in range(TOGETHER))
    assert fake.duplicates == 0
    summaries = _flush_summaries(log)
    assert [(s["tracked"], s["outside"], s["delivered"]) for s in summaries] == [(1, 0, 1)] * 8
    assert all(map(_balanced, summaries))


def test_background_task_events_go_out_with_the_next_request(fake: FakeAmplitude,
                                                             tmp_path: Path) -> None:
    # GIVEN an aio HTTP function whose response carries a Starlette background task that tracks
    with functions_framework_server("http_background", fake, tmp_path, source=FUNCTIONS,
                                    AMP_LITE_LOG_LEVEL="INFO") as url:
        # WHEN a first request is answered
        assert urllib3.request("POST", url, json={"user_id": "user-bg", "n": 0}).status == 200
        # THEN only the function's own event was sent: the task ran after the scope's exit
        assert [e["event_properties"]["page"] for e in fake.events] == ["0-in-function"]
        # WHEN the next request is answered (once the first one's task has run)
        assert urllib3.request("POST", url, json={"user_id": "user-bg", "n": 1,
                                                  "after_background": True}).status == 200
        log = server_log(tmp_path, url)
    # THEN its flush also took the first request's late event, from the client's own buffer
    assert sorted(e["event_properties"]["page"] for e in fake.events) == [
        "0-in-background", "0-in-function", "1-in-function"]
    assert [(s["tracked"], s["outside"]) for s in _flush_summaries(log)] == [(1, 0), (2, 1)]


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["http_under", "http_over"])
def test_http_function_exception_passes_through_and_events_are_flushed(
        fake: FakeAmplitude, tmp_path: Path, target: str) -> None:
    # GIVEN an aio HTTP function that tracks three events, then raises
    with functions_framework_server(target, fake, tmp_path, source=FUNCTIONS) as url:
        # WHEN it is called
        reply = urllib3.request("POST", url, json={"user_id": "user-fail", "pages": ["a", "b", "c"],
                                                   "fail": True})
        log = server_log(tmp_path, url)
    # THEN functions-framework answered 500 for the function's own exception, logged as raised...
    assert reply.status == 500
    assert reply.headers["X-Google-Status"] == "crash"
    assert "ValueError: boom requested" in log
    # ...and the three events were flushed anyway
    assert len(fake.events) == 3


def test_cloud_event_exception_is_not_acknowledged_and_events_are_flushed(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN an aio CloudEvent function that tracks, then raises
    with functions_framework_server("event_under", fake, tmp_path, source=FUNCTIONS) as url:
        # WHEN a push arrives
        reply = urllib3.request("POST", url, **_binary("evt-fail", {"user_id": "user-fail",
                                                                   "fail": True}))
        log = server_log(tmp_path, url)
    # THEN it is answered 500 (Pub/Sub redelivers it), with the function's own error...
    assert reply.status == 500
    assert "ValueError: boom requested" in log
    # ...and its event was flushed anyway
    assert [e["event_properties"]["id"] for e in fake.events] == ["evt-fail"]


# -- the Cloud Functions budget ----------------------------------------------------------------


def test_hanging_amplitude_answers_within_the_function_timeout(fake: FakeAmplitude,
                                                               tmp_path: Path) -> None:
    # GIVEN an Amplitude that never answers and a 2 s function timeout (1st gen's variable)
    fake.script(*[Fault.hang(30)] * 20)
    with functions_framework_server("http_under", fake, tmp_path, source=FUNCTIONS,
                                    FUNCTION_TIMEOUT_SEC="2") as url:
        # WHEN a request tracks two events
        started = time.monotonic()
        reply = urllib3.request("POST", url, json={"user_id": "user-hang", "pages": ["a", "b"]},
                                timeout=20)
        took = time.monotonic() - started
    # THEN the response came within timeout - margin (1.5 s), give or take scheduling...
    assert reply.status == 200
    assert took <= 1.5 + TOLERANCE_S
    # ...and the events were spilled, not lost
    spilled = [line for f in (tmp_path / "spill").rglob("*.jsonl")
               for line in f.read_text().splitlines()[1:]]
    assert len(spilled) == 2


def _starlette_request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": [],
                    "query_string": b""})


def _cloud_event() -> CloudEvent:
    return CloudEvent({"type": "com.example.signup", "source": "//example/app"}, {})


@pytest.mark.parametrize(("decorator", "argument"), [
    (amp_lite.amplitude_flush, _starlette_request),
    (amp_lite.gcp.http, _starlette_request),
    (amp_lite.amplitude_flush, _cloud_event),
    (amp_lite.gcp.cloud_event, _cloud_event),
], ids=["decorator-request", "gcp.http", "decorator-cloud_event", "gcp.cloud_event"])
def test_aio_call_shapes_get_the_function_timeout(fake: FakeAmplitude, decorator: Any,
                                                  argument: Callable[[], Any]) -> None:
    # GIVEN a hanging Amplitude, a 60 s flush cap, and an async function whose timeout is 1.2 s
    fake.script(*[Fault.hang(30)] * 5)
    client = amp_lite.Amplitude(API_KEY, server_url=fake.url, overflow=(), flush_timeout_s=60)

    @decorator(client=client, timeout_s=1.2)
    async def function(request_or_event: Any) -> str:
        client.track("Slow", user_id="user-slow")
        return "ok"

    # WHEN it is awaited the way functions-framework's aio API calls it: one argument
    started = time.monotonic()
    assert asyncio.run(function(argument())) == "ok"
    # THEN it is a Cloud Functions call: the flush ended 0.5 s before the 1.2 s budget
    assert time.monotonic() - started <= 0.7 + TOLERANCE_S


def test_concurrent_requests_with_hanging_amplitude_answer_within_the_function_timeout(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN an Amplitude that never answers and a 2 s function timeout
    fake.script(*[Fault.hang(30)] * 50)
    durations: list[float] = []
    lock = threading.Lock()
    http = urllib3.PoolManager(maxsize=4)
    with functions_framework_server("http_under", fake, tmp_path, source=FUNCTIONS,
                                    FUNCTION_TIMEOUT_SEC="2") as url:

        def one(n: int) -> None:
            started = time.monotonic()
            reply = http.request("POST", url, json={"user_id": f"user-hang{n}",
                                                    "pages": ["a", "b"]}, timeout=20)
            assert reply.status == 200
            with lock:
                durations.append(time.monotonic() - started)

        # WHEN four requests arrive at once
        _at_once(4, one)
    # THEN every response came within timeout - margin (1.5 s), give or take scheduling
    assert len(durations) == 4
    assert max(durations) <= 1.5 + TOLERANCE_S, durations
    spilled = [line for f in (tmp_path / "spill").rglob("*.jsonl")
               for line in f.read_text().splitlines()[1:]]
    assert len(spilled) == 8
