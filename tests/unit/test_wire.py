"""Wire encoding: request bodies, batch splitting by count and bytes, BufferedEvent."""

from __future__ import annotations

import itertools
import json

import pytest

from amp_lite import BufferedEvent
from amp_lite._limits import MAX_EVENTS_PER_REQUEST
from amp_lite._wire import encode_request, request_overhead, split_batches
from tests.conftest import API_KEY


def _event(i: int, pad: int = 0) -> BufferedEvent:
    raw = json.dumps({"event_type": "e", "insert_id": f"id-{i}", "user_id": "user-1",
                      "p": "x" * pad}, separators=(",", ":")).encode()
    return BufferedEvent(raw, f"id-{i}", "user-1", None)


def _body_size(batch: list[BufferedEvent], min_id_length: int | None = None) -> int:
    return len(encode_request(API_KEY, batch, min_id_length))


# -- encode_request --------------------------------------------------------------------------


def test_encode_request_is_valid_json_without_options() -> None:
    # GIVEN two events / WHEN encoded without min_id_length
    events = [_event(1), _event(2)]
    body = json.loads(encode_request(API_KEY, events, None))
    # THEN the body has the key and the events, in order, and no options
    assert body == {"api_key": API_KEY, "events": [json.loads(e.raw) for e in events]}
    assert "options" not in body


def test_encode_request_carries_min_id_length_option() -> None:
    body = json.loads(encode_request(API_KEY, [_event(1)], 3))
    assert body["options"] == {"min_id_length": 3}
    assert [e["insert_id"] for e in body["events"]] == ["id-1"]


def test_encode_request_escapes_the_key() -> None:
    # GIVEN a key with characters JSON must escape / WHEN encoded / THEN it round-trips
    key = 'we"ird\\key'
    assert json.loads(encode_request(key, [_event(1)], None))["api_key"] == key


def test_encode_request_with_no_events_is_valid_json() -> None:
    assert json.loads(encode_request(API_KEY, [], None)) == {"api_key": API_KEY, "events": []}


@pytest.mark.parametrize("min_id_length", [None, 1, 12])
def test_request_overhead_is_body_minus_events_and_commas(min_id_length: int | None) -> None:
    # GIVEN three events / WHEN encoded / THEN size = overhead + raw sizes + 2 commas
    events = [_event(1), _event(2, 10), _event(3, 100)]
    expected = request_overhead(API_KEY, min_id_length) + sum(len(e.raw) for e in events) + 2
    assert _body_size(events, min_id_length) == expected


# -- split_batches ---------------------------------------------------------------------------


def _split(events: list[BufferedEvent], *, max_events: int = MAX_EVENTS_PER_REQUEST,
           max_bytes: int = 1_000_000) -> list[list[BufferedEvent]]:
    return list(split_batches(events, max_events=max_events, max_bytes=max_bytes,
                              overhead=request_overhead(API_KEY, None)))


def test_split_empty_yields_nothing() -> None:
    assert _split([]) == []


def test_split_by_count_of_2000() -> None:
    # GIVEN 4500 small events
    events = [_event(i) for i in range(4500)]
    # WHEN split with the default count limit
    batches = _split(events, max_bytes=10**9)
    # THEN batches of 2000, 2000, 500, in order
    assert [len(b) for b in batches] == [2000, 2000, 500]
    assert [e for b in batches for e in b] == events


def test_exactly_2000_events_make_one_batch() -> None:
    events = [_event(i) for i in range(2000)]
    assert [len(b) for b in _split(events, max_bytes=10**9)] == [2000]


def test_2001_events_make_two_batches() -> None:
    events = [_event(i) for i in range(2001)]
    assert [len(b) for b in _split(events, max_bytes=10**9)] == [2000, 1]


def test_split_by_bytes_keeps_each_body_strictly_under_the_limit() -> None:
    # GIVEN events of varied size and a small byte limit
    events = [_event(i, pad=(i * 37) % 300) for i in range(200)]
    max_bytes = 2_000
    # WHEN split
    batches = _split(events, max_bytes=max_bytes)
    # THEN every body is under the limit, order kept, nothing lost
    assert len(batches) > 1
    assert all(_body_size(b) < max_bytes for b in batches)
    assert [e for b in batches for e in b] == events
    # AND no batch could have taken the next event (batches are as full as allowed)
    for batch, following in itertools.pairwise(batches):
        assert _body_size([*batch, following[0]]) >= max_bytes


def test_body_of_exactly_max_bytes_is_split() -> None:
    # GIVEN two events whose joint body is exactly max_bytes
    events = [_event(1, 50), _event(2, 50)]
    exact = _body_size(events)
    # WHEN the limit equals that size / THEN they go separately ("strictly under")
    assert [len(b) for b in _split(events, max_bytes=exact)] == [1, 1]
    # AND one byte more lets them travel together
    assert [len(b) for b in _split(events, max_bytes=exact + 1)] == [2]


def test_count_and_byte_limits_combine() -> None:
    # GIVEN 10 events, a count limit of 4 and a byte limit fitting 3
    events = [_event(i, 100) for i in range(10)]
    three = _body_size(events[:3])
    batches = _split(events, max_events=4, max_bytes=three + 1)
    # THEN the byte limit binds: batches of 3
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    # AND with a generous byte limit the count binds
    assert [len(b) for b in _split(events, max_events=4)] == [4, 4, 2]


def test_oversized_single_event_still_gets_its_own_batch() -> None:
    # GIVEN an event larger than the limit between two small ones
    events = [_event(1), _event(2, 5000), _event(3)]
    # WHEN split / THEN nothing is lost and order is kept
    batches = _split(events, max_bytes=1000)
    assert [e for b in batches for e in b] == events
    assert [len(b) for b in batches] == [1, 1, 1]


# -- BufferedEvent ---------------------------------------------------------------------------


def test_buffered_event_from_json_round_trip() -> None:
    # GIVEN encoded event bytes
    raw = b'{"event_type":"e","insert_id":"abc","user_id":"user-1","device_id":"dev-1"}'
    # WHEN rebuilt
    event = BufferedEvent.from_json(raw)
    # THEN the ids are read and the bytes are kept verbatim
    assert event == BufferedEvent(raw, "abc", "user-1", "dev-1")
    assert event.raw is raw


def test_buffered_event_from_json_without_ids() -> None:
    event = BufferedEvent.from_json(b'{"event_type":"$groupidentify","insert_id":"x"}')
    assert (event.user_id, event.device_id) == (None, None)


@pytest.mark.parametrize("raw", [b'[1, 2]', b'"text"', b'{"event_type":"e"}',
                                 b'{"insert_id": 5}'])
def test_buffered_event_from_json_refuses_non_events(raw: bytes) -> None:
    with pytest.raises(ValueError, match="insert_id"):
        BufferedEvent.from_json(raw)


def test_buffered_event_from_json_refuses_invalid_json() -> None:
    with pytest.raises(ValueError):
        BufferedEvent.from_json(b"{not json")


def test_an_encoded_event_keeps_its_bytes_and_reads_its_ids_back() -> None:
    # GIVEN the bytes the encoder produced, WHEN only those are kept
    raw = b'{"event_type":"e","user_id":"user-1","device_id":"dev-1","insert_id":"abc"}'
    event = BufferedEvent.encoded(raw)
    # THEN the repr does not parse them, and the ids come back from the bytes when asked
    assert repr(event) == f"BufferedEvent({len(raw)} bytes)"
    assert (event.insert_id, event.user_id, event.device_id) == ("abc", "user-1", "dev-1")
    assert event == BufferedEvent(raw, "abc", "user-1", "dev-1")
    assert "insert_id='abc'" in repr(event)


def test_a_hand_built_event_needs_its_insert_id() -> None:
    with pytest.raises(TypeError):
        BufferedEvent(b'{"event_type":"e","insert_id":"x"}')  # type: ignore[call-arg]
