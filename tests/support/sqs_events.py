"""Stand-ins for the SQS event source mapping
(https://docs.aws.amazon.com/lambda/latest/dg/with-sqs.html).

`lambda_sqs_event(messages, ...)` turns messages received from a (moto) queue into the event a
SQS-triggered Lambda function gets; `settle(...)` deletes the receipt handles of the records the
function did not list in `batchItemFailures`, as the mapping does with a partial batch response.
Plus small helpers to create queues and put amp-lite overflow messages on them.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from amp_lite._wire import BufferedEvent
from amp_lite.overflow._message import pack_messages

REGION = "us-east-1"
ALL = ["All"]


def sqs_client(endpoint_url: str) -> Any:
    import boto3

    return boto3.client("sqs", endpoint_url=endpoint_url, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def create_queue(sqs: Any, name: str, *, visibility_timeout_s: int | None = None,
                 dead_letter_arn: str | None = None, max_receive_count: int = 2) -> str:
    attributes: dict[str, str] = {}
    if visibility_timeout_s is not None:
        attributes["VisibilityTimeout"] = str(visibility_timeout_s)
    if dead_letter_arn is not None:
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": str(max_receive_count)})
    return str(sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])


def queue_arn(sqs: Any, queue_url: str) -> str:
    reply = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return str(reply["Attributes"]["QueueArn"])


def wire_event(user_id: str, *, event_type: str = "Replayed", insert_id: str | None = None,
               **properties: Any) -> BufferedEvent:
    """An event as amp-lite would have sent it (bypassing track()'s validation on purpose)."""
    fields: dict[str, Any] = {"event_type": event_type, "user_id": user_id,
                              "insert_id": insert_id or str(uuid.uuid4()),
                              "time": int(time.time() * 1000), "library": "amp-lite/test"}
    if properties:
        fields["event_properties"] = properties
    return BufferedEvent.from_json(json.dumps(fields, separators=(",", ":")).encode())


def overflow_bodies(events: Sequence[BufferedEvent], *, reason: str = "deadline") -> list[str]:
    """Message bodies exactly as SQSOverflow writes them."""
    return [m.body for m in pack_messages(events, reason=reason, attempts=1,
                                          overflowed_at_ms=int(time.time() * 1000))]


def send_bodies(sqs: Any, queue_url: str, bodies: Iterable[str]) -> list[str]:
    """Put raw bodies on the queue, one message each. Returns their message ids."""
    return [str(sqs.send_message(QueueUrl=queue_url, MessageBody=body)["MessageId"])
            for body in bodies]


def receive(sqs: Any, queue_url: str, *, max_messages: int = 10,
            wait_s: int = 1) -> list[dict[str, Any]]:
    """One ReceiveMessage call, with every attribute (long poll: waits on a condition)."""
    reply = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=max_messages,
                                WaitTimeSeconds=wait_s, MessageAttributeNames=ALL,
                                MessageSystemAttributeNames=ALL)
    return list(reply.get("Messages", []))


def receive_all(sqs: Any, queue_url: str, expected: int, *,
                max_polls: int = 10) -> list[dict[str, Any]]:
    """Receive until `expected` distinct messages arrived (or `max_polls` polls came back empty)."""
    seen: dict[str, dict[str, Any]] = {}
    empty = 0
    while len(seen) < expected and empty < max_polls:
        batch = receive(sqs, queue_url, max_messages=min(10, expected - len(seen)))
        empty = 0 if batch else empty + 1
        for message in batch:
            seen.setdefault(message["MessageId"], message)
    return list(seen.values())


def queue_depth(sqs: Any, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]))


def lambda_record(message: Mapping[str, Any], *, event_source_arn: str,
                  region: str = REGION) -> dict[str, Any]:
    """One SQS message in the shape a Lambda function receives it."""
    body = str(message["Body"])
    attributes = {name: str(value) for name, value in message.get("Attributes", {}).items()}
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": body,
        "attributes": attributes,
        "messageAttributes": {
            name: {"stringValue": attr.get("StringValue"), "binaryValue": attr.get("BinaryValue"),
                   "stringListValues": [], "binaryListValues": [],
                   "dataType": attr["DataType"]}
            for name, attr in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody") or hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": event_source_arn,
        "awsRegion": region,
    }


def lambda_sqs_event(messages: Iterable[Mapping[str, Any]], *, event_source_arn: str,
                     region: str = REGION) -> dict[str, Any]:
    return {"Records": [lambda_record(m, event_source_arn=event_source_arn, region=region)
                        for m in messages]}


def failed_ids(response: Any) -> set[str]:
    """The message ids a partial batch response lists in batchItemFailures."""
    items = (response or {}).get("batchItemFailures", [])
    return {str(item["itemIdentifier"]) for item in items}


def settle(sqs: Any, queue_url: str, messages: Sequence[Mapping[str, Any]],
           response: Any) -> list[str]:
    """Delete what the function did not report as failed. Returns the deleted message ids."""
    failed = failed_ids(response)
    done = [m for m in messages if m["MessageId"] not in failed]
    for start in range(0, len(done), 10):
        reply = sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]}
            for i, m in enumerate(done[start:start + 10])])
        assert not reply.get("Failed"), reply
    return [str(m["MessageId"]) for m in done]


def esm_round(sqs: Any, queue_url: str, invoke: Callable[[dict[str, Any]], Any], *,
              event_source_arn: str,
              max_messages: int = 10) -> tuple[list[dict[str, Any]], Any, list[str]]:
    """One poll of the event source mapping: receive, invoke the function, delete the
    successes. Returns (messages received, the function's response, deleted ids)."""
    messages = receive(sqs, queue_url, max_messages=max_messages)
    if not messages:
        return [], None, []
    response = invoke(lambda_sqs_event(messages, event_source_arn=event_source_arn))
    return messages, response, settle(sqs, queue_url, messages, response)


def decoded_events(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every event carried by amp-lite overflow messages."""
    return [event for m in messages for event in json.loads(m["Body"])["events"]]


class ReplayContext:
    """The replay function's Lambda context, with a fixed remaining time."""

    function_name = "amp-replay"
    memory_limit_in_mb = "256"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:amp-replay"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms
