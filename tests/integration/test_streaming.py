"""Streamed responses on Cloud Functions: events tracked while the body is generated, after the
decorated function returned, are delivered by the time the body has been read (issue 13,
item 5). A real functions-framework server (gunicorn) on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import urllib3

from amp_lite.testing import FakeAmplitude, Fault
from tests.integration.test_gcf import functions_framework_server
from tests.support.lambda_runtime import REPO_ROOT

SOURCE = REPO_ROOT / "tests" / "support" / "gcf_streaming.py"
TOLERANCE_S = 0.5


@pytest.mark.parametrize("target", ["stream_response", "stream_generator"])
def test_events_tracked_while_streaming_are_delivered_when_the_body_is_read(
        fake: FakeAmplitude, tmp_path: Path, target: str) -> None:
    # GIVEN a decorated function whose streamed body tracks one event per chunk
    http = urllib3.PoolManager()
    with functions_framework_server(target, fake, tmp_path, source=SOURCE) as url:
        # WHEN a client reads two responses to the end, one after the other
        bodies = [http.request("GET", f"{url}?user=user-{n}&chunks=4", timeout=10)
                  for n in range(2)]
        # THEN when each body has been read, Amplitude already holds its events, once each
        sent = [reply.data.decode().split() for reply in bodies]
        at_amplitude = list(fake.insert_ids)
    assert [reply.status for reply in bodies] == [200, 200]
    assert [len(ids) for ids in sent] == [4, 4]
    assert sorted(at_amplitude) == sorted(sent[0] + sent[1])
    assert fake.duplicates == 0
    assert {e["user_id"] for e in fake.events} == {"user-0", "user-1"}


def test_a_streamed_body_with_amplitude_hanging_ends_within_the_budget(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN an Amplitude that never answers and a 2 s function timeout (margin 0.5 s)
    fake.script(*[Fault.hang(30)] * 10)
    http = urllib3.PoolManager()
    with functions_framework_server("stream_response", fake, tmp_path, source=SOURCE,
                                    AMP_LITE_TIMEOUT_S="2") as url:
        # WHEN a client reads a streamed body
        started = time.monotonic()
        reply = http.request("GET", f"{url}?chunks=3", timeout=10)
        took = time.monotonic() - started
    # THEN the body is complete within the 1.5 s flush budget, and the events were spilled
    assert reply.status == 200 and len(reply.data.decode().split()) == 3
    assert took <= 1.5 + TOLERANCE_S
    spilled = [line for f in (tmp_path / "spill").rglob("*.jsonl")
               for line in f.read_text().splitlines()[1:]]
    assert len(spilled) == 3
