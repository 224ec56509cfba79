"""The whole story under the real awslambdaric runtime client: an Amplitude outage during a Lambda
invocation puts every undelivered event in SQS (moto in server mode), the function still answers
in time, and the replay consumer `amp_lite.replay.handler`, also under awslambdaric and fed the
messages as an SQS event, delivers all of them once Amplitude is back."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.lambda_runtime import REPO_ROOT, lambda_runtime
from tests.support.sqs_events import (
    REGION,
    create_queue,
    decoded_events,
    failed_ids,
    lambda_sqs_event,
    queue_arn,
    queue_depth,
    receive_all,
    settle,
    sqs_client,
)

EXAMPLES = REPO_ROOT / "examples"
MARGIN_MS = 500  # amp_lite._wrap.DEFAULT_MARGIN_MS
SCHEDULING_TOLERANCE_MS = 400
FUNCTION_TIMEOUT_MS = 3000


def _aws(moto_url: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": moto_url, "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _flush_summaries(output: str) -> list[dict[str, Any]]:
    return [json.loads(m) for m in re.findall(r"amp_lite flush (\{.*\})", output)]


@pytest.mark.parametrize("outage", ["503", "hang"])
def test_outage_overflows_to_sqs_and_replay_delivers_everything(
        fake: FakeAmplitude, aws_env: str, tmp_path: Path, outage: str) -> None:
    # GIVEN the example handler in the real runtime, overflowing to an SQS queue...
    sqs = sqs_client(aws_env)
    queue_url = create_queue(sqs, f"overflow-{uuid.uuid4().hex[:8]}")
    spill = tmp_path / "spill"
    env = {"AMPLITUDE_API_KEY": API_KEY, "AMPLITUDE_SERVER_URL": fake.url,
           "AMP_LITE_OVERFLOW_QUEUE_URL": queue_url, "AMP_LITE_SPILL_DIR": str(spill),
           "AMP_LITE_LOG_LEVEL": "INFO", **_aws(aws_env)}
    # ...and an Amplitude that is down for the whole invocation
    fault = Fault.status_code(503) if outage == "503" else Fault.hang(10)
    fake.script(*[fault] * 50)
    user_id = f"user-outage-{outage}"
    skus = [f"sku-{n:03d}" for n in range(12)]

    # WHEN an invocation tracks one event per sku
    with lambda_runtime("lambda_handler.handler", env=env, python_path=[EXAMPLES],
                        log_dir=tmp_path, timeout_ms=FUNCTION_TIMEOUT_MS) as runtime:
        result = runtime.api.invoke({"user_id": user_id, "items": skus})
        runtime.process.terminate()
        runtime.wait_exit()
        output = runtime.output()

    # THEN it answered normally, before its deadline minus the margin...
    assert result.kind == "response", output
    assert result.body == {"statusCode": 200, "tracked": len(skus)}
    assert result.posted_ms <= result.deadline_ms - MARGIN_MS + SCHEDULING_TOLERANCE_MS, output
    assert fake.requests and fake.events == []  # it did try Amplitude, which took nothing
    # ...its flush says every event overflowed to SQS...
    summary = _flush_summaries(output)[-1]
    assert summary["tracked"] == len(skus) and summary["overflowed"] == len(skus), summary
    # ...and every tracked event is on the queue, nothing in the local spill
    visible, _ = queue_depth(sqs, queue_url)
    messages = receive_all(sqs, queue_url, visible)
    queued = decoded_events(messages)
    assert sorted((e["user_id"], e["event_properties"]["sku"]) for e in queued) == [
        (user_id, sku) for sku in skus]
    queued_ids = {e["insert_id"] for e in queued}
    assert len(queued_ids) == len(skus)
    assert not list(spill.rglob("*.jsonl"))

    # WHEN Amplitude is back and the replay consumer, in the real runtime, gets the messages
    fake.clear_faults()
    event = lambda_sqs_event(messages, event_source_arn=queue_arn(sqs, queue_url))
    replay_env = {"AMPLITUDE_API_KEY": API_KEY, "AMPLITUDE_SERVER_URL": fake.url,
                  "AMP_LITE_SPILL_DIR": str(spill)}
    with lambda_runtime("amp_lite.replay.handler", env=replay_env, python_path=[],
                        log_dir=tmp_path, timeout_ms=10_000) as replay:
        replayed = replay.api.invoke(event)

    # THEN no record failed, and Amplitude holds exactly the tracked events, once each
    assert replayed.kind == "response", replayed.body
    assert replayed.body == {"batchItemFailures": []}
    assert settle(sqs, queue_url, messages, replayed.body) == [m["MessageId"] for m in messages]
    assert failed_ids(replayed.body) == set()
    assert sorted(fake.insert_ids) == sorted(queued_ids)
    assert sorted((e["user_id"], e["event_properties"]["sku"]) for e in fake.events) == [
        (user_id, sku) for sku in skus]
    assert queue_depth(sqs, queue_url) == (0, 0)
