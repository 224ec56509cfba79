"""`amp-lite replay` as a user runs it after an incident: a subprocess against moto in server
mode and FakeAmplitude, draining an overflow queue written by SQSOverflow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from typing import Any

import pytest

from amp_lite._deadline import Deadline
from amp_lite._wire import BufferedEvent
from amp_lite.overflow._sqs import SQSOverflow
from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY
from tests.support.lambda_runtime import REPO_ROOT
from tests.support.sqs_events import (
    REGION,
    create_queue,
    decoded_events,
    queue_depth,
    receive_all,
    send_bodies,
    sqs_client,
    wire_event,
)

CLI_TIMEOUT_S = 30


@pytest.fixture
def sqs(aws_env: str) -> Any:
    return sqs_client(aws_env)


@pytest.fixture
def queue_url(sqs: Any) -> str:
    return create_queue(sqs, f"overflow-{uuid.uuid4().hex[:8]}")


def _write_overflow(queue_url: str, messages: int, per_message: int) -> list[BufferedEvent]:
    """`messages` overflow messages written by SQSOverflow, `per_message` events each."""
    sink = SQSOverflow(queue_url)
    written: list[BufferedEvent] = []
    for m in range(messages):
        events = [wire_event(f"user-cli-{m:02d}", n=n) for n in range(per_message)]
        sink.write(events, reason="deadline", attempts=3, deadline=Deadline.after(10))
        written += events
    return written


def _run(moto_url: str, fake: FakeAmplitude | None, *args: str,
         api_key: str | None = API_KEY) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "AWS_ENDPOINT_URL": moto_url,
           "AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "PYTHONPATH": str(REPO_ROOT)}
    if fake is not None:
        env["AMPLITUDE_SERVER_URL"] = fake.url
    if api_key is not None:
        env["AMPLITUDE_API_KEY"] = api_key
    return subprocess.run([sys.executable, "-m", "amp_lite", "replay", *args],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, check=False)


def _summary(stdout: str) -> dict[str, int]:
    """The numbers of the final summary line, by name."""
    line = stdout.strip().splitlines()[-1]
    return {name.replace(" ", "_"): int(number) for number, name in re.findall(
        r"(\d+) (received|replayed|left|unreadable|read|delivered|rejected|not delivered)",
        line)}


def test_drains_the_queue_into_amplitude(
        fake: FakeAmplitude, aws_env: str, sqs: Any, queue_url: str) -> None:
    # GIVEN 12 overflow messages (more than one receive batch) of 3 events each
    written = _write_overflow(queue_url, messages=12, per_message=3)
    assert queue_depth(sqs, queue_url) == (12, 0)

    # WHEN the CLI drains the queue
    result = _run(aws_env, fake, "--queue-url", queue_url)

    # THEN it exits 0, every event is at Amplitude once, and the queue is empty
    assert result.returncode == 0, result.stderr
    assert sorted(fake.insert_ids) == sorted(e.insert_id for e in written)
    assert queue_depth(sqs, queue_url) == (0, 0)
    # AND it printed progress on stderr and one final summary on stdout
    progress = [line for line in result.stderr.splitlines() if line.startswith("amp-lite replay:")]
    assert len(progress) >= 2, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    assert result.stdout.startswith("amp-lite replay done")
    summary = _summary(result.stdout)
    assert summary["received"] == 12 and summary["replayed"] == 12 and summary["left"] == 0
    assert summary["read"] == 36 and summary["delivered"] == 36
    assert API_KEY not in result.stdout + result.stderr


def test_max_messages_replays_only_that_many(
        fake: FakeAmplitude, aws_env: str, sqs: Any, queue_url: str) -> None:
    # GIVEN 5 overflow messages of 2 events each
    _write_overflow(queue_url, messages=5, per_message=2)

    # WHEN the CLI runs with --max-messages 2
    result = _run(aws_env, fake, "--queue-url", queue_url, "--max-messages", "2")

    # THEN it replayed and deleted exactly 2 messages; 3 remain
    assert result.returncode == 0, result.stderr
    assert len(fake.events) == 4
    assert _summary(result.stdout)["replayed"] == 2
    visible, in_flight = queue_depth(sqs, queue_url)
    assert (visible, in_flight) == (3, 0)


def test_dry_run_sends_nothing_deletes_nothing_and_gives_messages_back(
        fake: FakeAmplitude, aws_env: str, sqs: Any, queue_url: str) -> None:
    # GIVEN 3 overflow messages of 4 events each
    written = _write_overflow(queue_url, messages=3, per_message=4)

    # WHEN the CLI runs with --dry-run
    result = _run(aws_env, fake, "--queue-url", queue_url, "--dry-run")

    # THEN it exits 0, counts the events, sends nothing...
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout
    assert _summary(result.stdout)["read"] == 12
    assert fake.requests == []
    # ...and the messages are visible again at once, untouched
    messages = receive_all(sqs, queue_url, 3, max_polls=1)
    assert len(messages) == 3
    assert sorted(e["insert_id"] for e in decoded_events(messages)) == sorted(
        e.insert_id for e in written)


def test_poison_message_is_left_and_exit_code_is_1(
        fake: FakeAmplitude, aws_env: str, sqs: Any, queue_url: str) -> None:
    # GIVEN two good overflow messages and one that is not an overflow message
    written = _write_overflow(queue_url, messages=2, per_message=2)
    send_bodies(sqs, queue_url, ["definitely not an overflow message"])

    # WHEN the CLI drains the queue
    result = _run(aws_env, fake, "--queue-url", queue_url)

    # THEN it exits 1, says 1 message is left, and the good events were delivered
    assert result.returncode == 1, (result.stdout, result.stderr)
    summary = _summary(result.stdout)
    assert summary["left"] == 1 and summary["unreadable"] == 1 and summary["replayed"] == 2
    assert "1 left on the queue" in result.stdout
    assert sorted(fake.insert_ids) == sorted(e.insert_id for e in written)
    assert queue_depth(sqs, queue_url) == (0, 1)  # hidden until its visibility timeout ends


def test_missing_api_key_exits_2_and_consumes_nothing(
        fake: FakeAmplitude, aws_env: str, sqs: Any, queue_url: str) -> None:
    # GIVEN a queue with overflow messages and no API key in the environment
    _write_overflow(queue_url, messages=2, per_message=1)

    # WHEN the CLI runs
    result = _run(aws_env, fake, "--queue-url", queue_url, api_key=None)

    # THEN it exits 2 naming the variable, and no message was received or hidden
    assert result.returncode == 2
    assert "AMPLITUDE_API_KEY" in result.stderr
    assert queue_depth(sqs, queue_url) == (2, 0)
    assert fake.requests == []
