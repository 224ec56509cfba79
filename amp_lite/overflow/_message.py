"""The overflow message format (version 1) and how events are packed into SQS messages.

A message body is JSON:

    {"v": 1, "source": "amp-lite/0.1.0", "reason": "deadline", "attempts": 3,
     "overflowed_at_ms": 1795717756052, "events": [<events exactly as they would have been sent>]}

Every event keeps its insert_id, so replaying a message twice delivers nothing twice. There is
no API key in a message (invariant I7): the replay consumer uses its own.

Limits, from SQS's message quotas
(https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html):
a message is at most 1 MiB of UTF-8 bytes *including its message attributes* (name, type and
value); a SendMessageBatch call holds at most 10 entries and 1 MiB in total.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._checks import is_int, optional_str
from .._errors import brief
from .._version import LIBRARY
from .._wire import BufferedEvent

FORMAT_VERSION = 1
MAX_MESSAGE_BYTES = 1_048_576  # SQS: body + every attribute's name, type and value
MAX_BATCH_ENTRIES = 10  # SendMessageBatch
MAX_BATCH_BYTES = 1_048_576  # SendMessageBatch: sum of the entries' sizes
ATTRIBUTE_FORMAT = "amp_lite_format"
ATTRIBUTE_REASON = "amp_lite_reason"

# Characters XML 1.0 (and so SQS) refuses that JSON may carry raw inside strings.
_XML_UNSAFE = {"\ufffe": "\\ufffe", "\uffff": "\\uffff"}


@dataclass(frozen=True)
class OverflowMessage:
    """One SQS message: its body, attributes, the events it carries and its SQS size."""

    body: str
    attributes: Mapping[str, Mapping[str, str]]
    events: tuple[BufferedEvent, ...]
    size: int


@dataclass
class DecodedMessage:
    """A message read back: its events, and the ones that could not be read."""

    reason: str
    attempts: int
    min_id_length: int | None = None
    events: list[BufferedEvent] = field(default_factory=list)
    unreadable_events: int = 0


class MessageFormatError(ValueError):
    """A message that is not an amp-lite overflow message this version can read."""


def message_attributes(reason: str) -> dict[str, dict[str, str]]:
    return {
        ATTRIBUTE_FORMAT: {"DataType": "String", "StringValue": str(FORMAT_VERSION)},
        ATTRIBUTE_REASON: {"DataType": "String", "StringValue": reason},
    }


def attributes_size(attributes: Mapping[str, Mapping[str, str]]) -> int:
    """SQS counts every part of a message attribute: name, data type and value."""
    return sum(len(name.encode()) + len(attr["DataType"].encode())
               + len(attr.get("StringValue", "").encode())
               for name, attr in attributes.items())


def _envelope(reason: str, attempts: int, overflowed_at_ms: int,
              min_id_length: int | None = None) -> tuple[bytes, bytes]:
    fields: dict[str, Any] = {"v": FORMAT_VERSION, "source": LIBRARY, "reason": reason,
                              "attempts": attempts, "overflowed_at_ms": overflowed_at_ms}
    if min_id_length is not None:  # the request option the events were valid under
        fields["min_id_length"] = min_id_length
    head = json.dumps(fields, separators=(",", ":"))
    return head[:-1].encode() + b',"events":[', b"]}"


def _fixed_size(reason: str, attempts: int, overflowed_at_ms: int,
                min_id_length: int | None) -> int:
    """Bytes a message takes beyond its events: envelope and attributes."""
    head, tail = _envelope(reason, attempts, overflowed_at_ms, min_id_length)
    return attributes_size(message_attributes(reason)) + len(head) + len(tail)


def fits_in_a_message(event: BufferedEvent, *, reason: str, attempts: int,
                      overflowed_at_ms: int, min_id_length: int | None = None) -> bool:
    """Whether `event` alone fits an SQS message with this envelope and its attributes."""
    fixed = _fixed_size(reason, attempts, overflowed_at_ms, min_id_length)
    return fixed + len(_xml_safe(event.raw)) <= MAX_MESSAGE_BYTES


def _xml_safe(raw: bytes) -> bytes:
    text = raw.decode("utf-8")
    if any(ch in text for ch in _XML_UNSAFE):
        for ch, escape in _XML_UNSAFE.items():
            text = text.replace(ch, escape)  # only possible inside JSON strings: same value
        return text.encode("utf-8")
    return raw


def pack_messages(events: Sequence[BufferedEvent], *, reason: str, attempts: int,
                  overflowed_at_ms: int, min_id_length: int | None = None,
                  ) -> list[OverflowMessage]:
    """Pack `events`, in order, into as few messages as the 1 MiB limit allows."""
    attributes = message_attributes(reason)
    head, tail = _envelope(reason, attempts, overflowed_at_ms, min_id_length)
    fixed = _fixed_size(reason, attempts, overflowed_at_ms, min_id_length)
    messages: list[OverflowMessage] = []
    chunk: list[tuple[BufferedEvent, bytes]] = []
    size = fixed

    def close() -> None:
        body = head + b",".join(raw for _, raw in chunk) + tail
        messages.append(OverflowMessage(body.decode("utf-8"), attributes,
                                        tuple(e for e, _ in chunk), size))

    for event in events:
        raw = _xml_safe(event.raw)
        added = len(raw) + (1 if chunk else 0)
        if fixed + len(raw) > MAX_MESSAGE_BYTES:
            raise ValueError(f"an event of {len(raw)} bytes cannot fit an SQS message")
        if chunk and size + added > MAX_MESSAGE_BYTES:
            close()
            chunk, size, added = [], fixed, len(raw)
        chunk.append((event, raw))
        size += added
    if chunk:
        close()
    return messages


def pack_batches(messages: Sequence[OverflowMessage]) -> Iterator[list[OverflowMessage]]:
    """Group messages into SendMessageBatch calls: at most 10 entries and 1 MiB in total."""
    batch: list[OverflowMessage] = []
    total = 0
    for message in messages:
        if batch and (len(batch) >= MAX_BATCH_ENTRIES or total + message.size > MAX_BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(message)
        total += message.size
    if batch:
        yield batch


def decode_message(body: str | bytes) -> DecodedMessage:
    """Read a message body back. Raises MessageFormatError for anything that is not a
    version-1 amp-lite message; unreadable events inside a good message are counted."""
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # nesting past the stack
        raise MessageFormatError(f"not JSON ({type(exc).__name__})") from None
    version = message.get("v") if isinstance(message, dict) else None
    if type(version) is not int or version != FORMAT_VERSION:  # True == 1 is not a version
        raise MessageFormatError(f"not an amp-lite overflow message of version "
                                 f"{FORMAT_VERSION} (v={brief(version)})")
    events = message.get("events")
    if not isinstance(events, list):
        raise MessageFormatError("the message has no events list")
    min_id_length = message.get("min_id_length")
    decoded = DecodedMessage(reason=str(message.get("reason", "")),
                             attempts=_count(message.get("attempts")),
                             min_id_length=min_id_length if _count(min_id_length) > 0 else None)
    for event in events:
        parsed = _event(event)
        if parsed is None:
            decoded.unreadable_events += 1
        else:
            decoded.events.append(parsed)
    return decoded


def _event(event: Any) -> BufferedEvent | None:
    if not isinstance(event, dict) or not isinstance(event.get("insert_id"), str):
        return None
    if not isinstance(event.get("event_type"), str):
        return None
    try:
        raw = json.dumps(event, ensure_ascii=False, separators=(",", ":"),
                         allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):  # NaN, or a lone surrogate from a \ud800 escape
        return None
    return BufferedEvent(raw, event["insert_id"], optional_str(event.get("user_id")),
                         optional_str(event.get("device_id")))


def _count(value: Any) -> int:
    return value if is_int(value) else 0
