"""Google Cloud Functions: functions-framework in process and as a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import urllib3
from functions_framework import create_app

import amp_lite
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.lambda_runtime import REPO_ROOT

SOURCE = REPO_ROOT / "examples" / "gcf_main.py"
FUNCTIONS_FRAMEWORK = Path(sys.executable).parent / "functions-framework"
TOLERANCE_S = 0.5


@pytest.fixture
def env_for(fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAmplitude]:
    monkeypatch.setenv("AMPLITUDE_API_KEY", API_KEY)
    monkeypatch.setenv("AMPLITUDE_SERVER_URL", fake.url)
    amp_lite.set_client(None)
    yield fake
    amp_lite.set_client(None)


# -- in process --------------------------------------------------------------------------------


def test_http_function_flushes_before_the_response(env_for: FakeAmplitude) -> None:
    # GIVEN the example HTTP function under functions-framework's test client
    client = create_app(target="track", source=str(SOURCE)).test_client()
    # WHEN a request tracks three page views
    response = client.post("/", json={"user_id": "user-http", "pages": ["a", "b", "c"]})
    # THEN the response carries their insert_ids, and Amplitude already has them
    assert response.status_code == 200
    ids = response.get_json()["insert_ids"]
    assert len(ids) == 3
    assert set(ids) == set(env_for.insert_ids)


def test_http_function_error_still_flushes(env_for: FakeAmplitude) -> None:
    client = create_app(target="track", source=str(SOURCE)).test_client()
    response = client.post("/", json={"user_id": "user-fail", "pages": ["x"], "fail": True})
    assert response.status_code == 500  # the function's own failure, as functions-framework
    assert len(env_for.events) == 1  # ...and its event was flushed anyway


def test_cloud_event_binary_mode(env_for: FakeAmplitude) -> None:
    client = create_app(target="on_event", source=str(SOURCE),
                        signature_type="cloudevent").test_client()
    response = client.post("/", json={"user_id": "user-binary"}, headers={
        "ce-id": "evt-1", "ce-specversion": "1.0",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-source": "//pubsub.googleapis.com/projects/p/topics/t"})
    assert response.status_code == 200
    [event] = env_for.events
    assert event["user_id"] == "user-binary"
    assert event["event_properties"] == {
        "type": "google.cloud.pubsub.topic.v1.messagePublished", "id": "evt-1"}


def test_cloud_event_structured_mode(env_for: FakeAmplitude) -> None:
    client = create_app(target="on_event", source=str(SOURCE),
                        signature_type="cloudevent").test_client()
    body = {"specversion": "1.0", "id": "evt-2", "type": "com.example.signup",
            "source": "//example/app", "data": {"user_id": "user-structured"}}
    response = client.post("/", data=json.dumps(body),
                           headers={"Content-Type": "application/cloudevents+json"})
    assert response.status_code == 200
    assert [e["user_id"] for e in env_for.events] == ["user-structured"]


def test_explicit_http_adapter_is_the_same_as_the_decorator(fake: FakeAmplitude) -> None:
    # GIVEN a function wrapped with amp_lite.gcp.http and a client of its own
    client = amp_lite.Amplitude(API_KEY, server_url=fake.url, overflow=())

    @amp_lite.gcp.http(client=client, timeout_s=5)
    def handler(request: Any) -> str:
        """Docstring kept."""
        client.track("Adapter", user_id="user-adapter")
        return "ok"

    assert handler(object()) == "ok"
    assert handler.__doc__ == "Docstring kept."
    assert [e["event_type"] for e in fake.events] == ["Adapter"]


def test_single_argument_call_uses_the_function_timeout(fake: FakeAmplitude) -> None:
    # GIVEN a hanging Amplitude and a function whose timeout is 1.2 s (margin 0.5 s)
    fake.script(*[Fault.hang(30)] * 5)
    client = amp_lite.Amplitude(API_KEY, server_url=fake.url, overflow=(),
                                flush_timeout_s=60)

    @amp_lite.amplitude_flush(client, timeout_s=1.2)
    def handler(request: Any) -> str:
        client.track("Slow", user_id="user-slow")
        return "ok"

    # WHEN it is called the Cloud Functions way, with one argument
    started = time.monotonic()
    assert handler(object()) == "ok"
    # THEN the flush ended 0.5 s before the 1.2 s budget from the start of the request
    assert time.monotonic() - started <= 0.7 + TOLERANCE_S


# -- a real functions-framework server ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def functions_framework_server(target: str, fake: FakeAmplitude, tmp_path: Path,
                               source: Path = SOURCE, **env: str) -> Iterator[str]:
    port = _free_port()
    log = open(tmp_path / f"ff-{port}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(FUNCTIONS_FRAMEWORK), "--target", target, "--source", str(source),
         "--host", "127.0.0.1", "--port", str(port)],
        env={"PATH": os.environ["PATH"], "AMPLITUDE_API_KEY": API_KEY,
             "AMPLITUDE_SERVER_URL": fake.url, "AMP_LITE_SPILL_DIR": str(tmp_path / "spill"),
             "PYTHONPATH": str(REPO_ROOT), **env},
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until it accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / f"ff-{port}.log").read_text()) from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_concurrent_requests_each_flush_their_own_events(fake: FakeAmplitude,
                                                         tmp_path: Path) -> None:
    # GIVEN a real functions-framework server running the example (gunicorn, many threads)
    http = urllib3.PoolManager(maxsize=20)
    late: list[str] = []
    with functions_framework_server("track", fake, tmp_path) as url:

        def one_client(worker: int) -> list[str]:
            seen: list[str] = []
            for n in range(10):
                pages = [f"w{worker}-r{n}-p{p}" for p in range(3)]
                reply = http.request("POST", url, json={"user_id": f"user-{worker:03d}",
                                                        "pages": pages})
                assert reply.status == 200, reply.data
                ids = reply.json()["insert_ids"]
                # THEN when each response arrives, Amplitude already holds its events
                missing = set(ids) - set(fake.insert_ids)
                late.extend(missing)
                seen.extend(ids)
            return seen

        # WHEN 20 threads send 10 requests each, every request tracking distinct events
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(one_client, range(20)))
    # THEN no response came before its events, and the totals match exactly
    assert late == []
    sent = [i for ids in results for i in ids]
    assert len(sent) == len(set(sent)) == 600
    assert sorted(fake.insert_ids) == sorted(sent)
    assert fake.duplicates == 0
    pages = {e["event_properties"]["page"]: e["user_id"] for e in fake.events}
    assert all(pages[f"w{w}-r{n}-p{p}"] == f"user-{w:03d}"
               for w in range(20) for n in range(10) for p in range(3))


def test_hanging_amplitude_still_answers_within_the_budget(fake: FakeAmplitude,
                                                            tmp_path: Path) -> None:
    # GIVEN an Amplitude that never answers and a 2 s function timeout
    fake.script(*[Fault.hang(30)] * 50)
    durations: list[float] = []
    lock = threading.Lock()
    with functions_framework_server("track", fake, tmp_path, AMP_LITE_TIMEOUT_S="2") as url:
        http = urllib3.PoolManager(maxsize=5)

        def request(n: int) -> None:
            started = time.monotonic()
            reply = http.request("POST", url, json={"user_id": f"user-hang{n}",
                                                    "pages": ["a", "b"]}, timeout=10)
            assert reply.status == 200
            with lock:
                durations.append(time.monotonic() - started)

        # WHEN five requests arrive at once
        with ThreadPoolExecutor(max_workers=5) as pool:
            list(pool.map(request, range(5)))
    # THEN every response arrived within timeout - margin (1.5 s), give or take scheduling
    assert len(durations) == 5
    assert max(durations) <= 1.5 + TOLERANCE_S
    # AND the events were spilled, not lost: ten events in the spill directory
    spilled = [line for f in (tmp_path / "spill").rglob("*.jsonl")
               for line in f.read_text().splitlines()[1:]]
    assert len(spilled) == 10
