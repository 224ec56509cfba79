"""The overflow message format v1 and SQS packing (amp_lite/overflow/message.py).

Sizes are computed here, independently of the code under test: SQS counts the UTF-8 bytes of
the body plus every attribute's name, data type and value, and allows 1,048,576 bytes in all.
moto counts characters and ignores attributes, so these checks are the real guard.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from amp_lite import Amplitude, BufferedEvent
from amp_lite._encoder import EventEncoder
from amp_lite.overflow._message import (
    MessageFormatError,
    OverflowMessage,
    decode_message,
    pack_batches,
    pack_messages,
)
from tests.conftest import API_KEY

SQS_MAX_MESSAGE_BYTES = 1_048_576
SQS_MAX_BATCH_ENTRIES = 10
SQS_MAX_BATCH_BYTES = 1_048_576
OVERFLOWED_AT_MS = 1_795_717_756_052

# One character of each UTF-8 width: 2, 3 and 4 bytes.
MULTI_BYTE = ("é", "€", "😀")


def _raw(insert_id: str, prop: str) -> bytes:
    fields = {"event_type": "Big Event", "user_id": "user-1", "insert_id": insert_id,
              "time": 1_700_000_000_000, "event_properties": {"p": prop}}
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def event_of_size(insert_id: str, nbytes: int, char: str = "😀") -> BufferedEvent:
    """An event whose encoded JSON is exactly `nbytes` UTF-8 bytes, padded with `char`."""
    need = nbytes - len(_raw(insert_id, ""))
    width = len(char.encode("utf-8"))
    prop = char * (need // width) + "a" * (need % width)
    raw = _raw(insert_id, prop)
    assert len(raw) == nbytes
    return BufferedEvent(raw, insert_id, "user-1", None)


def attrs_bytes(attributes: Mapping[str, Mapping[str, str]]) -> int:
    return sum(len(name.encode("utf-8")) + len(attr["DataType"].encode("utf-8"))
               + len(attr.get("StringValue", "").encode("utf-8"))
               for name, attr in attributes.items())


def sqs_size(message: OverflowMessage) -> int:
    """What SQS counts for a message: body bytes plus attribute bytes."""
    return len(message.body.encode("utf-8")) + attrs_bytes(message.attributes)


def pack(events: Sequence[BufferedEvent], reason: str = "deadline",
         attempts: int = 3) -> list[OverflowMessage]:
    return pack_messages(events, reason=reason, attempts=attempts,
                         overflowed_at_ms=OVERFLOWED_AT_MS)


def message_overhead(reason: str = "deadline", attempts: int = 3) -> int:
    """Bytes a one-event message takes beyond the event itself (envelope and attributes)."""
    probe = event_of_size("probe-0001", 200, "a")
    (message,) = pack([probe], reason, attempts)
    return sqs_size(message) - len(probe.raw)


def mixed_events(count: int, seed: int = 7) -> list[BufferedEvent]:
    """Events of 2-, 3- and 4-byte characters, 20 KB to ~349 KB each (near a third of 1 MiB)."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        size = rng.choice([20_000, 150_000, 300_000, 349_000, rng.randrange(10_000, 349_500)])
        events.append(event_of_size(f"ins-{i:05d}", size, MULTI_BYTE[i % 3]))
    return events


# -- sizes -------------------------------------------------------------------------------------

def test_every_message_is_at_most_1_mib_of_utf8_bytes_including_attributes() -> None:
    # GIVEN events of multi-byte characters, many of ~300 KB, so messages land near 1 MiB and
    # hold far fewer characters than bytes
    events = mixed_events(40)

    # WHEN they are packed
    messages = pack(events)

    # THEN every message's SQS size (body bytes + attribute bytes) is within the limit, and the
    # size the message reports is that same figure
    assert len(messages) > 1
    for message in messages:
        size = sqs_size(message)
        assert size <= SQS_MAX_MESSAGE_BYTES
        assert message.size == size
    # and the messages were really filled close to the limit in bytes (not in characters)
    assert max(sqs_size(m) for m in messages) > 0.9 * SQS_MAX_MESSAGE_BYTES
    assert max(len(m.body) for m in messages) < 0.5 * SQS_MAX_MESSAGE_BYTES


@pytest.mark.parametrize("char", MULTI_BYTE)
def test_three_events_of_300_kb_of_one_multibyte_character_fill_a_message(char: str) -> None:
    # GIVEN events of ~349,000 bytes made of one 2-, 3- or 4-byte character: three fit a
    # message in bytes, four do not (a character count would let many more in)
    events = [event_of_size(f"ins-{i}", 349_000, char) for i in range(7)]

    # WHEN they are packed
    messages = pack(events)

    # THEN messages hold 3, 3 and 1 events and each is within 1 MiB of UTF-8 bytes
    assert [len(m.events) for m in messages] == [3, 3, 1]
    assert all(sqs_size(m) <= SQS_MAX_MESSAGE_BYTES for m in messages)
    assert sqs_size(messages[0]) > 1_040_000


def test_a_message_of_exactly_1_mib_is_allowed_and_one_byte_more_splits() -> None:
    # GIVEN two 4-byte-character events whose message would be exactly 1,048,576 bytes
    overhead = message_overhead()
    first = event_of_size("ins-a", 500_000)
    exact = event_of_size("ins-b", SQS_MAX_MESSAGE_BYTES - overhead - len(first.raw) - 1)
    over = event_of_size("ins-b", len(exact.raw) + 1)

    # WHEN each pair is packed
    fits = pack([first, exact])
    split = pack([first, over])

    # THEN the exact pair makes one message of exactly the limit; one byte more makes two
    assert len(fits) == 1
    assert sqs_size(fits[0]) == SQS_MAX_MESSAGE_BYTES
    assert [len(m.events) for m in split] == [1, 1]
    assert all(sqs_size(m) <= SQS_MAX_MESSAGE_BYTES for m in split)


def test_attributes_count_towards_the_limit_with_a_long_multibyte_reason() -> None:
    # GIVEN a reason made of multi-byte characters (it is an attribute value and in the body)
    reason = "€" * 2000
    events = [event_of_size(f"ins-{i}", 340_000, "😀") for i in range(6)]

    # WHEN packed
    messages = pack(events, reason=reason)

    # THEN sizes still hold with the attribute bytes counted in UTF-8
    for message in messages:
        assert sqs_size(message) <= SQS_MAX_MESSAGE_BYTES
        assert message.attributes["amp_lite_reason"]["StringValue"] == reason
        assert json.loads(message.body)["reason"] == reason


def test_an_event_too_large_for_any_message_raises_value_error() -> None:
    # GIVEN an event that alone, with the envelope and attributes, is one byte over 1 MiB
    overhead = message_overhead()
    largest = event_of_size("ins-max", SQS_MAX_MESSAGE_BYTES - overhead)
    too_large = event_of_size("ins-big", SQS_MAX_MESSAGE_BYTES - overhead + 1)

    # WHEN / THEN the largest that fits makes one message of exactly the limit...
    (message,) = pack([largest])
    assert sqs_size(message) == SQS_MAX_MESSAGE_BYTES
    # ...and one byte more cannot be packed
    with pytest.raises(ValueError, match="cannot fit"):
        pack([event_of_size("ins-0", 200, "a"), too_large])


# -- contents ----------------------------------------------------------------------------------

def test_events_keep_their_order_and_each_is_in_exactly_one_message() -> None:
    # GIVEN many events of varied sizes and widths
    events = mixed_events(60, seed=11)

    # WHEN packed
    messages = pack(events)

    # THEN concatenating the messages' events gives back the input, in order, each once
    carried = [e for m in messages for e in m.events]
    assert carried == events
    bodies = [json.loads(m.body) for m in messages]
    assert [e["insert_id"] for b in bodies for e in b["events"]] == [e.insert_id for e in events]


def test_each_body_is_version_1_json_with_envelope_and_the_original_events() -> None:
    # GIVEN events
    events = mixed_events(12, seed=3)

    # WHEN packed with a reason and an attempt count
    messages = pack(events, reason="throttled", attempts=4)

    # THEN each body is JSON with the v1 envelope and exactly the original events
    for message in messages:
        body = json.loads(message.body)
        assert body["v"] == 1
        assert body["reason"] == "throttled"
        assert body["attempts"] == 4
        assert body["overflowed_at_ms"] == OVERFLOWED_AT_MS
        assert body["events"] == [json.loads(e.raw) for e in message.events]
        assert message.attributes["amp_lite_format"] == {"DataType": "String",
                                                         "StringValue": "1"}
        assert message.attributes["amp_lite_reason"] == {"DataType": "String",
                                                         "StringValue": "throttled"}


def test_no_api_key_anywhere_in_a_message() -> None:
    # GIVEN events encoded by a client configured with an API key
    client = Amplitude(API_KEY, server_url="http://127.0.0.1:9/2/httpapi")
    encoder = EventEncoder(client.config)
    events = [encoder.encode(encoder.stamp("Signed Up", {"user_id": f"user-{i}",
                                                        "event_properties": {"n": i}}))[0]
              for i in range(20)]

    # WHEN packed
    messages = pack(events)

    # THEN the key appears in no body and no attribute
    for message in messages:
        assert API_KEY not in message.body
        assert API_KEY not in json.dumps(message.attributes)
        assert "api_key" not in json.loads(message.body)


def test_xml_unsafe_noncharacters_are_escaped_yet_decode_to_the_same_value() -> None:
    # GIVEN a property with U+FFFE and U+FFFF, which SQS (XML 1.0) refuses raw
    value = "a\ufffeb\uffffc"
    event = BufferedEvent(_raw("ins-x", value), "ins-x", "user-1", None)

    # WHEN packed
    (message,) = pack([event])

    # THEN the body carries them only as JSON escapes, and reading it back gives the value
    assert "\ufffe" not in message.body
    assert "\uffff" not in message.body
    assert "\\ufffe" in message.body
    assert json.loads(message.body)["events"][0]["event_properties"]["p"] == value
    decoded = decode_message(message.body)
    assert decoded.events[0].raw == event.raw
    assert sqs_size(message) == message.size


def test_escaped_noncharacters_are_counted_at_their_escaped_size() -> None:
    # GIVEN events of ~400 KB made of U+FFFE (3 bytes raw, 6 bytes once escaped)
    events = [BufferedEvent(_raw(f"ins-{i}", "\ufffe" * 130_000), f"ins-{i}", "user-1", None)
              for i in range(3)]
    assert all(len(e.raw) < 400_000 for e in events)

    # WHEN packed
    messages = pack(events)

    # THEN each escaped event (~780 KB) gets its own message, each within 1 MiB
    assert [len(m.events) for m in messages] == [1, 1, 1]
    assert all(sqs_size(m) <= SQS_MAX_MESSAGE_BYTES for m in messages)


def test_an_event_too_large_only_once_escaped_raises_value_error() -> None:
    # GIVEN an event of ~600 KB of U+FFFE: within 1 MiB raw, ~1.2 MB once escaped
    event = BufferedEvent(_raw("ins-f", "\ufffe" * 200_000), "ins-f", "user-1", None)
    assert len(event.raw) < SQS_MAX_MESSAGE_BYTES

    # WHEN / THEN it cannot be packed
    with pytest.raises(ValueError):
        pack([event])


# -- batches -----------------------------------------------------------------------------------

def _varied_messages() -> list[OverflowMessage]:
    """Messages of varied sizes: each event packed on its own, 1 KB to ~1 MiB."""
    rng = random.Random(5)
    sizes = [rng.choice([1_000, 5_000, 60_000, 200_000, 450_000, 1_000_000]) for _ in range(60)]
    return [m for i, size in enumerate(sizes)
            for m in pack([event_of_size(f"ins-{i:03d}", size, MULTI_BYTE[i % 3])])]


def test_pack_batches_holds_at_most_10_entries_and_1_mib_per_batch() -> None:
    # GIVEN messages of varied sizes, small and large
    messages = _varied_messages()

    # WHEN grouped into SendMessageBatch calls
    batches = list(pack_batches(messages))

    # THEN each batch has 1-10 entries and at most 1 MiB summed, and order is kept
    for batch in batches:
        assert 1 <= len(batch) <= SQS_MAX_BATCH_ENTRIES
        assert sum(sqs_size(m) for m in batch) <= SQS_MAX_BATCH_BYTES
    assert [m for b in batches for m in b] == messages
    assert any(len(b) > 1 for b in batches)


def test_pack_batches_cuts_at_10_entries_for_small_messages() -> None:
    # GIVEN 25 small messages
    messages = [m for i in range(25) for m in pack([event_of_size(f"ins-{i}", 500, "é")])]

    # WHEN grouped
    batches = list(pack_batches(messages))

    # THEN batches of 10, 10 and 5
    assert [len(b) for b in batches] == [10, 10, 5]


# -- decoding ----------------------------------------------------------------------------------

def test_decode_message_round_trips_packed_messages() -> None:
    # GIVEN packed multi-byte events
    events = mixed_events(10, seed=21)
    messages = pack(events, reason="deadline", attempts=2)

    # WHEN each body is decoded
    decoded = [decode_message(m.body) for m in messages]

    # THEN the events, their ids and the envelope come back unchanged
    assert [e for d in decoded for e in d.events] == events
    assert all(d.reason == "deadline" and d.attempts == 2 for d in decoded)
    assert all(d.unreadable_events == 0 for d in decoded)
    assert decode_message(messages[0].body.encode("utf-8")).events == list(messages[0].events)


def _body(**fields: Any) -> str:
    return json.dumps({"v": 1, "reason": "deadline", "attempts": 1,
                       "overflowed_at_ms": OVERFLOWED_AT_MS, "events": [], **fields})


@pytest.mark.parametrize("body", [
    "not json at all",
    b"\xff\xfe\x00garbage",
    "",
    "[1, 2, 3]",
    "NaN",
    _body(v=2),
    _body(v="1"),
    json.dumps({"reason": "deadline", "events": []}),
    _body(v=True),
], ids=["text", "bad-utf8", "empty", "list", "nan", "v2", "v-string", "no-v", "v-true"])
def test_decode_message_refuses_what_is_not_a_v1_message(body: str | bytes) -> None:
    # GIVEN a body that is not a version-1 amp-lite message
    # WHEN / THEN decoding raises MessageFormatError (a ValueError)
    with pytest.raises(MessageFormatError):
        decode_message(body)


@pytest.mark.parametrize("events", [None, {}, "events", 3], ids=["missing", "dict", "str", "int"])
def test_decode_message_refuses_a_message_without_an_events_list(events: Any) -> None:
    # GIVEN a v1 envelope whose events are missing or not a list
    body = json.loads(_body())
    if events is None:
        del body["events"]
    else:
        body["events"] = events

    # WHEN / THEN decoding raises MessageFormatError
    with pytest.raises(MessageFormatError, match="events"):
        decode_message(json.dumps(body))


def test_decode_message_counts_unreadable_events_without_failing_the_message() -> None:
    # GIVEN a v1 message with two good events and four unreadable ones: no insert_id, not an
    # object, a raw NaN token, and a lone surrogate from a \ud800 escape
    good = [_raw("ins-good-1", "é€😀").decode(), _raw("ins-good-2", "ok").decode()]
    bad = [
        '{"event_type":"E","user_id":"u"}',
        '42',
        '{"event_type":"E","user_id":"u","insert_id":"ins-nan","event_properties":{"p":NaN}}',
        '{"event_type":"E","user_id":"u","insert_id":"ins-sur","event_properties":{"p":"\\ud800"}}',
    ]
    items = [good[0], *bad[:2], good[1], *bad[2:]]
    body = ('{"v":1,"reason":"throttled","attempts":2,"overflowed_at_ms":1,"events":['
            + ",".join(items) + "]}")

    # WHEN it is decoded
    decoded = decode_message(body)

    # THEN the good events come back, in order, and the others are counted
    assert [e.insert_id for e in decoded.events] == ["ins-good-1", "ins-good-2"]
    assert [json.loads(e.raw) for e in decoded.events] == [json.loads(g) for g in good]
    assert decoded.unreadable_events == 4
    assert decoded.reason == "throttled"
    assert decoded.attempts == 2
