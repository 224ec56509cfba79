"""Lambda handlers that track events outside their invocation's scope, for
tests/integration/test_outside_scope.py (under the real awslambdaric, and called directly).

Each SQS record's body is `{"user_id": ...}`; each tracked event carries the record's message id
(or the item) in `event_properties["id"]`.
"""

from __future__ import annotations

import contextvars
import functools
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    batch_processor,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

import amp_lite

warnings.filterwarnings("ignore", message="The `batch_processor` decorator is deprecated")

processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> None:
    amp_lite.track("Record Processed", user_id=record.json_body["user_id"],
                   event_properties={"id": record.message_id})


def track_item(user_id: str, item: str) -> None:
    amp_lite.track("Item Processed", user_id=user_id, event_properties={"id": item})


# (a) Powertools' legacy decorator OUTSIDE ours: it processes every record before it calls the
# handler it wraps, so the records' events are tracked before our scope opens.
@batch_processor(record_handler=record_handler, processor=processor)
@amp_lite.amplitude_flush
def batch_outside(event: dict[str, Any], context: Any) -> Any:
    return processor.response()


# (a) the recommended shape: process_partial_response inside the decorated handler
@amp_lite.amplitude_flush
def partial_inside(event: dict[str, Any], context: Any) -> Any:
    return process_partial_response(event=event, record_handler=record_handler,
                                    processor=processor, context=context)


# (b) tracking from a thread pool: threads do not inherit contextvars
@amp_lite.amplitude_flush
def from_threads(event: dict[str, Any], context: Any) -> dict[str, int]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(functools.partial(track_item, event["user_id"]), event["items"]))
    return {"tracked": len(event["items"])}


# (b) the same, each task run in a copy of the handler's context: events land in its scope
@amp_lite.amplitude_flush
def from_threads_in_context(event: dict[str, Any], context: Any) -> dict[str, int]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(contextvars.copy_context().run, track_item, event["user_id"], item)
                   for item in event["items"]]  # one copy per task: a context runs in one thread
        for future in futures:
            future.result()
    return {"tracked": len(event["items"])}


def after_handler(callback: Callable[[dict[str, Any], Any], None]) -> Callable[..., Any]:
    """An outer decorator that does some post-processing once the handler returned."""
    def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handler)
        def wrapper(event: dict[str, Any], context: Any) -> Any:
            result = handler(event, context)
            callback(event, context)
            return result
        return wrapper
    return decorate


def _post_processed(event: dict[str, Any], context: Any) -> None:
    amp_lite.track("Post Processed", user_id=event["user_id"],
                   event_properties={"id": f"post-{event['n']}"})


# (c) code that runs AFTER our scope's exit: its event is flushed at the NEXT invocation's exit
@after_handler(_post_processed)
@amp_lite.amplitude_flush
def callback_after(event: dict[str, Any], context: Any) -> dict[str, int]:
    track_item(event["user_id"], f"item-{event['n']}")
    return {"n": event["n"]}


# (c) the fix: amp-lite's decorator outermost, so the post-processing runs inside its scope
@amp_lite.amplitude_flush
@after_handler(_post_processed)
def callback_inside(event: dict[str, Any], context: Any) -> dict[str, int]:
    track_item(event["user_id"], f"item-{event['n']}")
    return {"n": event["n"]}
