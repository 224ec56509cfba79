"""Encoded events and request bodies: what goes over the wire, and how batches are cut."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from ._checks import optional_str


class BufferedEvent:
    """A validated event, already encoded as the JSON bytes that will be sent.

    Encoding at `track()` time freezes the event (later changes to the caller's dicts cannot
    leak in) and measures its size once. A tracked event keeps only its bytes, so a buffer of
    100,000 events costs little more than their JSON: the ids that 429 replies and replays need
    (`insert_id`, `user_id`, `device_id`) are read back from the bytes on first use, unless
    they were given. Treat it as immutable.
    """

    __slots__ = ("_ids", "raw")

    def __init__(self, raw: bytes, insert_id: str, user_id: str | None = None,
                 device_id: str | None = None) -> None:
        self.raw = raw
        self._ids: tuple[str, str | None, str | None] | None = (insert_id, user_id, device_id)

    @classmethod
    def encoded(cls, raw: bytes) -> BufferedEvent:
        """Bytes the event encoder just produced (a JSON object with an insert_id): only they
        are kept; the ids are read back from them on first use."""
        event = cls.__new__(cls)
        event.raw, event._ids = raw, None
        return event

    @classmethod
    def from_json(cls, raw: bytes) -> BufferedEvent:
        """Rebuild from encoded bytes (events read back from an overflow sink); raises
        ValueError for anything that is not a JSON object with an insert_id."""
        event = cls.encoded(raw)
        event._read_ids()  # refuse what is not an event now, not when it is sent
        return event

    @property
    def insert_id(self) -> str:
        return self._read_ids()[0]

    @property
    def user_id(self) -> str | None:
        return self._read_ids()[1]

    @property
    def device_id(self) -> str | None:
        return self._read_ids()[2]

    def _read_ids(self) -> tuple[str, str | None, str | None]:
        if self._ids is None:
            fields = json.loads(self.raw)
            if not isinstance(fields, dict) or not isinstance(fields.get("insert_id"), str):
                raise ValueError("an encoded event must be a JSON object with an insert_id")
            self._ids = (fields["insert_id"], optional_str(fields.get("user_id")),
                         optional_str(fields.get("device_id")))
        return self._ids

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BufferedEvent):
            return NotImplemented
        return self.raw == other.raw and self._read_ids() == other._read_ids()

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        shown = f"insert_id={self._ids[0]!r}, " if self._ids else ""
        return f"BufferedEvent({shown}{len(self.raw)} bytes)"


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
