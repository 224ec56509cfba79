"""Events tracked outside the invocation's scope during the call are not stranded (issue 13,
item 4): Powertools' legacy `@batch_processor` outside `@amplitude_flush`, a thread pool, an
outer decorator's post-processing. Under the real awslambdaric runtime (a fake Runtime API) and
called directly with awslambdaric's own LambdaContext.

The rule: a scope's exit also flushes what reached the client's own buffer meanwhile (counted as
`outside`); what is tracked after the exit waits in that buffer for the next flush.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from awslambdaric.lambda_context import LambdaContext

import amp_lite
from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY
from tests.support import outside_scope_handlers as handlers
from tests.support.lambda_runtime import FUNCTION_ARN, REPO_ROOT, lambda_runtime
from tests.support.sqs_events import lambda_sqs_event

SUPPORT = REPO_ROOT / "tests" / "support"
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:orders"
RECORDS = 25


def _sqs_event(count: int) -> dict[str, Any]:
    messages = [{"MessageId": f"msg-{n:02d}", "ReceiptHandle": uuid.uuid4().hex,
                 "Body": json.dumps({"user_id": f"user-{n:03d}"})} for n in range(count)]
    return lambda_sqs_event(messages, event_source_arn=QUEUE_ARN)


def _ids(fake: FakeAmplitude) -> list[str]:
    return sorted(e["event_properties"]["id"] for e in fake.events)


def _flush_summaries(output: str) -> list[dict[str, Any]]:
    return [json.loads(m) for m in re.findall(r"amp_lite flush (\{.*\})", output)]


def _env(fake: FakeAmplitude, spill: Path) -> dict[str, str]:
    return {"AMPLITUDE_API_KEY": API_KEY, "AMPLITUDE_SERVER_URL": fake.url,
            "AMP_LITE_SPILL_DIR": str(spill), "AMP_LITE_LOG_LEVEL": "INFO"}


# -- under the real Lambda runtime client ------------------------------------------------------


def test_batch_processor_outside_the_decorator_delivers_every_record(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN Powertools' @batch_processor over @amplitude_flush: the records are processed (and
    # their events tracked) before amp-lite's scope opens
    with lambda_runtime("outside_scope_handlers.batch_outside", env=_env(fake, tmp_path / "s"),
                        python_path=[SUPPORT], log_dir=tmp_path) as runtime:
        # WHEN one invocation gets 25 SQS records
        result = runtime.api.invoke(_sqs_event(RECORDS))
        # THEN every record succeeded, and all 25 events were delivered by that invocation,
        # before its response, taken from the client's own buffer
        assert result.kind == "response", result.body
        assert result.body == {"batchItemFailures": []}
        assert _ids(fake) == [f"msg-{n:02d}" for n in range(RECORDS)]
        [summary] = _flush_summaries(runtime.output())
        assert (summary["tracked"], summary["outside"], summary["delivered"]) == (25, 25, 25)


def test_thread_pool_events_are_delivered_by_the_invocation(fake: FakeAmplitude,
                                                            tmp_path: Path) -> None:
    # GIVEN a handler that tracks from a ThreadPoolExecutor (its threads see no scope)
    with lambda_runtime("outside_scope_handlers.from_threads", env=_env(fake, tmp_path / "s"),
                        python_path=[SUPPORT], log_dir=tmp_path) as runtime:
        # WHEN two invocations track ten events each from the pool
        for n in range(2):
            items = [f"inv{n}-item{i}" for i in range(10)]
            result = runtime.api.invoke({"user_id": "user-pool", "items": items})
            # THEN each invocation delivered its own ten before its response
            assert result.kind == "response", result.body
            assert len(fake.events) == 10 * (n + 1)
        summaries = _flush_summaries(runtime.output())
    assert [(s["tracked"], s["outside"], s["delivered"]) for s in summaries] == [(10, 10, 10)] * 2
    assert fake.duplicates == 0


def test_events_tracked_after_the_scope_wait_for_the_next_invocation(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN an outer decorator whose post-processing tracks an event after the handler returned,
    # that is after amp-lite's scope flushed and closed
    with lambda_runtime("outside_scope_handlers.callback_after", env=_env(fake, tmp_path / "s"),
                        python_path=[SUPPORT], log_dir=tmp_path) as runtime:
        # WHEN a first invocation runs
        assert runtime.api.invoke({"user_id": "user-cb", "n": 0}).kind == "response"
        # THEN only the handler's own event was delivered: the post-processing came too late
        assert _ids(fake) == ["item-0"]
        # WHEN the next invocation of the warm environment runs
        assert runtime.api.invoke({"user_id": "user-cb", "n": 1}).kind == "response"
        # THEN its flush delivered the late event as well, counted as outside
        assert _ids(fake) == ["item-0", "item-1", "post-0"]
        summaries = _flush_summaries(runtime.output())
    assert [(s["tracked"], s["outside"]) for s in summaries] == [(1, 0), (2, 1)]


# -- called directly, with awslambdaric's LambdaContext ----------------------------------------


@pytest.fixture
def default_client(fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch,
                   caplog: pytest.LogCaptureFixture) -> Iterator[FakeAmplitude]:
    monkeypatch.setenv("AMPLITUDE_API_KEY", API_KEY)
    monkeypatch.setenv("AMPLITUDE_SERVER_URL", fake.url)
    caplog.set_level(logging.INFO, logger="amp_lite")
    amp_lite.set_client(None)
    yield fake
    amp_lite.set_client(None)


def _context() -> LambdaContext:
    return LambdaContext(uuid.uuid4().hex, None, None, int(time.time() * 1000) + 3000,
                         FUNCTION_ARN)


def _summaries(caplog: pytest.LogCaptureFixture) -> list[tuple[int, int, int]]:
    found = _flush_summaries("\n".join(r.getMessage() for r in caplog.records))
    return [(s["tracked"], s["outside"], s["delivered"]) for s in found]


@pytest.mark.filterwarnings("ignore:The `batch_processor` decorator is deprecated")
@pytest.mark.parametrize(("handler", "outside"), [
    (handlers.batch_outside, RECORDS),   # tracked before the scope opened
    (handlers.partial_inside, 0),        # tracked inside it
], ids=["batch_processor_outside", "process_partial_response_inside"])
def test_every_sqs_record_is_delivered_by_its_invocation(
        default_client: FakeAmplitude, caplog: pytest.LogCaptureFixture, handler: Any,
        outside: int) -> None:
    # GIVEN 25 SQS records, each tracking one event in Powertools' record handler
    # WHEN the handler runs once
    response = handler(_sqs_event(RECORDS), _context())
    # THEN 25 of 25 events were delivered by that call, and the report says where they came from
    assert response == {"batchItemFailures": []}
    assert _ids(default_client) == [f"msg-{n:02d}" for n in range(RECORDS)]
    assert _summaries(caplog) == [(RECORDS, outside, RECORDS)]


@pytest.mark.parametrize(("handler", "outside"), [
    (handlers.from_threads, 12),           # the pool's threads see no scope
    (handlers.from_threads_in_context, 0),  # contextvars.copy_context().run: they see the scope
], ids=["plain_submit", "copy_context_run"])
def test_thread_pool_events_are_delivered_by_their_call(
        default_client: FakeAmplitude, caplog: pytest.LogCaptureFixture, handler: Any,
        outside: int) -> None:
    # GIVEN a handler that tracks twelve events from a ThreadPoolExecutor
    items = [f"item-{i}" for i in range(12)]
    # WHEN it runs
    assert handler({"user_id": "user-pool", "items": items}, _context()) == {"tracked": 12}
    # THEN its call delivered all twelve, from the scope itself or from the client's buffer
    assert _ids(default_client) == sorted(items)
    assert _summaries(caplog) == [(12, outside, 12)]


def test_decorator_outermost_delivers_the_post_processing_in_the_same_call(
        default_client: FakeAmplitude, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN the same post-processing decorator, this time under @amplitude_flush
    # WHEN one call runs
    assert handlers.callback_inside({"user_id": "user-cb", "n": 0}, _context()) == {"n": 0}
    # THEN the handler's and the post-processing's events were both delivered by that call
    assert _ids(default_client) == ["item-0", "post-0"]
    assert _summaries(caplog) == [(2, 0, 2)]
