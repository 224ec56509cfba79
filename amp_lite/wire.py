"""Encoded events and request bodies: what goes over the wire, and how batches are cut."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import NamedTuple


class BufferedEvent(NamedTuple):
    """A validated event, already encoded as the JSON bytes that will be sent.

    Encoding at `track()` time freezes the event (later changes to the caller's dicts cannot
    leak in), measures its size once, and keeps buffers compact. The ids are kept beside the
    bytes because 429 replies name throttled users and devices.
    """

    raw: bytes
    insert_id: str
    user_id: str | None
    device_id: str | None

    @classmethod
    def from_json(cls, raw: bytes) -> BufferedEvent:
        """Rebuild from encoded bytes (events read back from an overflow sink)."""
        fields = json.loads(raw)
        if not isinstance(fields, dict) or not isinstance(fields.get("insert_id"), str):
            raise ValueError("an encoded event must be a JSON object with an insert_id")
        return cls(raw, fields["insert_id"], fields.get("user_id"), fields.get("device_id"))


def request_prefix(api_key: str) -> bytes:
    return b'{"api_key":' + json.dumps(api_key).encode() + b',"events":['


def request_suffix(min_id_length: int | None) -> bytes:
    if min_id_length is None:
        return b"]}"
    return b'],"options":{"min_id_length":' + str(min_id_length).encode() + b"}}"


def encode_request(api_key: str, events: Sequence[BufferedEvent],
                   min_id_length: int | None) -> bytes:
    """The request body `{"api_key": ..., "events": [...], "options"?: {...}}`."""
    return (request_prefix(api_key) + b",".join(e.raw for e in events)
            + request_suffix(min_id_length))


def request_overhead(api_key: str, min_id_length: int | None) -> int:
    """Bytes a request body takes beyond its events and the commas between them."""
    return len(request_prefix(api_key)) + len(request_suffix(min_id_length))


def split_batches(
    events: Sequence[BufferedEvent], *, max_events: int, max_bytes: int, overhead: int
) -> Iterator[list[BufferedEvent]]:
    """Cut `events`, in order, into batches of at most `max_events` and under `max_bytes` encoded.

    An event too large to fit any request on its own is refused at `track()` time, so every
    event fits in a batch of one.
    """
    batch: list[BufferedEvent] = []
    size = overhead
    for event in events:
        added = len(event.raw) + (1 if batch else 0)
        if batch and (len(batch) >= max_events or size + added >= max_bytes):
            yield batch
            batch, size, added = [], overhead, len(event.raw)
        batch.append(event)
        size += added
    if batch:
        yield batch
