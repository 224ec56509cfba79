"""`amp-lite replay`: replay an overflow queue (or its dead-letter queue) from a workstation.

Receives messages in batches of up to 10, replays them with `replay_records`, deletes the ones
that settled and leaves the others to come back after the visibility timeout. `--dry-run`
reads and counts, sends nothing, deletes nothing, and makes the messages visible again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from ._client import Amplitude
from ._deadline import Deadline
from .overflow._message import MessageFormatError, decode_message
from .replay import ReplayRecord, ReplayResult, replay_records

RECEIVE_BATCH = 10  # SQS ReceiveMessage maximum
DEFAULT_VISIBILITY_TIMEOUT_S = 120  # messages being replayed stay hidden this long


@dataclass
class QueueReplaySummary:
    received: int = 0
    replayed: int = 0  # settled and deleted
    left: int = 0  # failed: back on the queue after the visibility timeout
    unreadable: int = 0
    events: int = 0
    delivered: int = 0
    rejected: int = 0
    unsettled: int = 0
    seen: set[str] = field(default_factory=set, repr=False)

    def line(self) -> str:
        return (f"messages: {self.received} received, {self.replayed} replayed and deleted, "
                f"{self.left} left on the queue ({self.unreadable} unreadable); events: "
                f"{self.events} read, {self.delivered} delivered, {self.rejected} rejected, "
                f"{self.unsettled} not delivered")


def replay_queue(queue_url: str, *, sqs: Any, client_factory: Callable[[], Amplitude],
                max_messages: int | None, dry_run: bool, progress: TextIO,
                visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S) -> QueueReplaySummary:
    summary = QueueReplaySummary()
    handles: list[str] = []
    client = None if dry_run else client_factory()
    if client is not None:  # fail fast on a missing key, before any message is hidden
        client.send_events([], Deadline.after(1.0))
    while max_messages is None or summary.received < max_messages:
        wanted = RECEIVE_BATCH if max_messages is None else min(
            RECEIVE_BATCH, max_messages - summary.received)
        reply = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=wanted,
                                    WaitTimeSeconds=1, VisibilityTimeout=visibility_timeout_s)
        messages = [m for m in reply.get("Messages", []) if m["MessageId"] not in summary.seen]
        if not messages:
            break
        summary.seen.update(m["MessageId"] for m in messages)
        summary.received += len(messages)
        handles.extend(m["ReceiptHandle"] for m in messages)
        if dry_run:
            _count(messages, summary)
        else:
            assert client is not None
            _replay(queue_url, sqs, client, messages, summary, visibility_timeout_s)
        progress.write(f"amp-lite replay: {summary.line()}\n")
        progress.flush()
    if dry_run and handles:  # give the messages back at once
        for start in range(0, len(handles), RECEIVE_BATCH):
            sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=[
                {"Id": f"h{i}", "ReceiptHandle": h, "VisibilityTimeout": 0}
                for i, h in enumerate(handles[start:start + RECEIVE_BATCH])])
    return summary


def _count(messages: list[dict[str, Any]], summary: QueueReplaySummary) -> None:
    for message in messages:
        try:
            decoded = decode_message(message["Body"])
        except MessageFormatError:
            summary.unreadable += 1
            continue
        summary.events += len(decoded.events) + decoded.unreadable_events
    summary.left = summary.received


def _replay(queue_url: str, sqs: Any, client: Amplitude, messages: list[dict[str, Any]],
            summary: QueueReplaySummary, visibility_timeout_s: int) -> None:
    records = [ReplayRecord(m["MessageId"], m["Body"]) for m in messages]
    # Settle well within the visibility timeout, so no message reappears while in flight.
    result: ReplayResult = replay_records(records, client,
                                          Deadline.after(visibility_timeout_s / 2))
    done = [m for m in messages if m["MessageId"] not in result.failed]
    for start in range(0, len(done), RECEIVE_BATCH):
        sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]}
            for i, m in enumerate(done[start:start + RECEIVE_BATCH])])
    summary.replayed += len(done)
    summary.left += len(messages) - len(done)
    summary.unreadable += result.unreadable_messages
    summary.events += result.events
    summary.delivered += result.delivered
    summary.rejected += sum(result.rejected.values())
    summary.unsettled += sum(result.unsettled.values())


