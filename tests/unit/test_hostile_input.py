"""Hostile input (issue 8, item 3): whatever a caller, a server or a queue throws at amp_lite.

- `track` / `identify` / `revenue` with generated values of every Python type, deep and cyclic
  structures, huge strings, odd unicode and odd keys: either `InvalidEventError` naming a
  field or path, or an event FakeAmplitude accepts; never another exception, never a hang, and
  never a batch the server refuses because of it (known-good events travel beside it).
- Hostile replies (random bytes, huge bodies, truncated gzip, wrong content types): failures,
  retried and then overflowed, inside the flush deadline.
- Hostile SQS messages in replay: reported per record, never crashing the batch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import gzip
import json
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from amp_lite import Amplitude, Identify, InvalidEventError, RetryHandler, Revenue
from amp_lite._deadline import Deadline
from amp_lite._http import MAX_RESPONSE_BYTES
from amp_lite._validation import KNOWN_FIELDS
from amp_lite.replay import ReplayRecord, make_handler, replay_records
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.doubles import RecordingSink
from tests.support.raw_server import RawServer

FLUSH_BUDGET_S = 5.0  # generous: a healthy local flush takes a few milliseconds
FAULT_BUDGET_S = 0.4  # budget of flushes against hostile replies
SCHEDULING_TOLERANCE_S = 0.3  # thread scheduling and a 64 KiB read on a loaded CI machine
EXAMPLE_DEADLINE = dt.timedelta(seconds=3)  # one track + one local flush; a hang fails it
GOOD_USER = "user-known-good"

# Roots a refusal message may start with: the event fields, and the API's own names.
MESSAGE_ROOTS = KNOWN_FIELDS | {
    "event", "user_id/device_id", "identify", "revenue", "track", "Identify", "Revenue",
    "group_type", "group_name", "productId", "revenueType",
}


# -- odd values ---------------------------------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"
    NUMBER = 3
    NESTED = ("a", 1)


class Level(enum.IntEnum):
    LOW = 1


class Opaque:
    """An arbitrary object with nothing JSON can carry."""


class Text(str):
    """A str subclass (JSON can carry it as a string)."""


# Lone surrogates, NUL, non-characters, bidi marks, line separators, emoji (a ZWJ family too).
SPECIAL_CHARS = ("\x00", "\ufffe", "\uffff", "\u202e", "\u200f", "\u2028", "\ufeff",
                 "\U0001f600", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\ud800",
                 "\udfff", "\\", '"', "\n", "$", ".", "[0]")

odd_pieces = st.one_of(st.characters(exclude_categories=()), st.sampled_from(SPECIAL_CHARS))
odd_text = st.lists(odd_pieces, max_size=10).map("".join)
huge_text = st.builds(lambda n, ch: ch * n,
                      st.sampled_from([1023, 1024, 1025, 70_000, 2_000_000]),
                      st.sampled_from(["x", "\u00e9", "\U0001f600", "\x00", "\u202e"]))
keys = st.one_of(odd_text, odd_text, huge_text.map(lambda s: s[:1100]), st.integers(),
                 st.none(), st.booleans(), st.floats(), st.tuples(st.integers()),
                 st.builds(Text, odd_text))
numbers = st.one_of(
    st.integers(), st.sampled_from([2**63, -(2**63) - 1, 10**100, -(10**300)]),
    st.integers(4301, 4400).map(lambda digits: 10**digits),  # past int_max_str_digits
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5e-324]),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.complex_numbers(max_magnitude=10),
)
scalars = st.one_of(
    st.none(), st.booleans(), numbers, odd_text, huge_text, st.builds(Text, odd_text),
    st.binary(max_size=8), st.builds(bytearray, st.binary(max_size=4)),
    st.datetimes(timezones=st.none() | st.timezones()), st.dates(), st.times(), st.uuids(),
    st.sampled_from(Colour), st.sampled_from(Level), st.builds(Opaque), st.just(print),
    st.just(Ellipsis), st.just(NotImplemented), st.just(object()), st.just(type),
    st.builds(range, st.integers(0, 3)),
)
hashables = st.one_of(st.integers(), odd_text, st.floats(), st.booleans(), st.none(),
                      st.sampled_from(Colour), st.uuids())


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(keys, children, max_size=4),
        st.dictionaries(odd_text, children, max_size=4).map(MappingProxyType),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    )


values = st.recursive(scalars, _containers, max_leaves=12)
string_keyed = st.dictionaries(st.one_of(odd_text, st.text(max_size=8)), values, max_size=5)
properties = st.one_of(st.none(), string_keyed, st.dictionaries(keys, values, max_size=4), values)
any_value = st.one_of(values, st.text(min_size=5, max_size=20))



def mostly(good: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` three times in four: so that accepted events are common enough to check."""
    return st.one_of(good, good, good, hostile)


clean_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
IDS = st.one_of(st.none(), st.sampled_from(["user-0001", "device-0001", "null", "abc", "",
                                            "     ", "0", "UNDEFINED", "n/a "]),
                odd_text, st.text(min_size=5, max_size=30), huge_text, any_value)
TIMES = st.one_of(st.none(), st.integers(), st.floats(),
                  st.just(int(time.time() * 1000)), st.just(time.time()), any_value)
NAMED_ARGUMENTS = {"event_type", "library", "user_id", "device_id", "event_properties",
                   "user_properties", "groups", "time", "insert_id"}
EXTRA_FIELDS = st.dictionaries(
    st.sampled_from([*sorted(KNOWN_FIELDS - NAMED_ARGUMENTS), "product_id", "revenue_type",
                     "skip_user_properties_sync", "colour", "Event_Type", "apiKey"]),
    any_value, max_size=3)


def _cyclic(value: Any, shape: int) -> Any:
    """`value` wrapped in a structure that contains itself, built explicitly."""
    if shape == 0:
        cycle: dict[str, Any] = {"value": value}
        cycle["self"] = cycle
        return cycle
    if shape == 1:
        items: list[Any] = [value]
        items.append(items)
        return {"items": items}
    if shape == 2:
        inner: dict[str, Any] = {"value": value}
        outer = {"level": [{"inner": inner}]}
        inner["back"] = outer
        return outer
    shared: list[Any] = [value]
    return {"a": (shared, {"b": [shared, (shared,)]}), "c": [shared]}  # no cycle: shared only


def _deep(levels: int, kinds: Sequence[int], leaf: Any) -> Any:
    """`levels` nested containers (built iteratively, so any depth is possible)."""
    value = leaf
    for i in range(levels):
        kind = kinds[i % len(kinds)]
        value = ({"k": value} if kind == 0 else [value] if kind == 1 else (value,)
                 if kind == 2 else MappingProxyType({"m": value}))
    return value


# -- the property checker -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAmplitude]:
    with FakeAmplitude() as fake:
        yield fake


def _root(message: str) -> str:
    return re.split(r"[.:\[ (]", message, maxsplit=1)[0]


def check_track_or_refuse(fake: FakeAmplitude, call: Callable[[Amplitude], Any],
                          extra_roots: frozenset[str] = frozenset()) -> str:
    """Run `call(client)` between two known-good events; assert the contract; say what
    happened ("refused" or "accepted")."""
    fake.reset()
    client = Amplitude(API_KEY, server_url=fake.url, overflow=(),
                       flush_timeout_s=FLUSH_BUDGET_S)
    before = client.track("known_good", user_id=GOOD_USER, event_properties={"order": 1})
    outcome = "accepted"
    try:
        generated = call(client)
    except InvalidEventError as exc:
        outcome, generated = "refused", None
        message = str(exc)
        # THEN a refusal names a field or path and the rule, and buffers nothing
        assert message.strip(), "an InvalidEventError needs a message"
        assert ":" in message, message[:200]
        assert _root(message) in MESSAGE_ROOTS | extra_roots, message[:200]
        assert client.pending == 1
    after = client.track("known_good", user_id=GOOD_USER, event_properties={"order": 2})
    started = time.monotonic()
    report = client.flush()
    client.close()
    # THEN the batch is accepted whole: the known-good events and the generated one, no 400
    assert time.monotonic() - started < FLUSH_BUDGET_S
    assert [r.status for r in fake.requests] == [200] * len(fake.requests)
    expected = {before, after} | ({generated} if outcome == "accepted" else set())
    assert set(fake.insert_ids) == expected
    assert report.balanced
    assert (report.delivered, report.rejected, report.dropped) == (len(expected), 0, 0)
    with contextlib.suppress(InvalidArgument):  # statistics exist inside @given tests only
        event(outcome)
    return outcome


HYPOTHESIS = settings(max_examples=120, deadline=EXAMPLE_DEADLINE,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- track ----------------------------------------------------------------------------------------


@HYPOTHESIS
@given(event_type=mostly(st.just("page_view") | clean_text.filter(str.strip) | huge_text,
                        odd_text | any_value),
       user_id=mostly(st.just("user-0001"), IDS), device_id=mostly(st.none(), IDS),
       event_properties=mostly(st.none() | string_keyed, properties),
       user_properties=mostly(st.none(), properties), groups=mostly(st.none(), properties),
       event_time=mostly(st.none(), TIMES), insert_id=mostly(st.none(), IDS),
       extra=mostly(st.just({}), EXTRA_FIELDS))
def test_track_refuses_clearly_or_sends_a_valid_event(
        server: FakeAmplitude, event_type: Any, user_id: Any, device_id: Any,
        event_properties: Any, user_properties: Any, groups: Any, event_time: Any,
        insert_id: Any, extra: dict[str, Any]) -> None:
    # GIVEN any event_type, ids, properties, time and extra fields
    def call(client: Amplitude) -> Any:
        return client.track(event_type, user_id=user_id, device_id=device_id,
                            event_properties=event_properties, user_properties=user_properties,
                            groups=groups, time=event_time, insert_id=insert_id,
                            **extra)

    # WHEN it is tracked and flushed between two known-good events
    # THEN InvalidEventError naming a field, or an event FakeAmplitude accepts (checked inside)
    check_track_or_refuse(server, call, frozenset(extra))


@HYPOTHESIS
@given(props=string_keyed, valid_ids=st.booleans())
def test_well_keyed_properties_of_every_type_refuse_or_arrive_intact(
        server: FakeAmplitude, props: dict[str, Any], valid_ids: bool) -> None:
    # GIVEN a valid event whose properties hold values of every type under string keys
    tracked: dict[str, Any] = {}

    def call(client: Amplitude) -> Any:
        tracked["id"] = client.track("props", user_id="user-0001" if valid_ids else None,
                                     device_id="device-0001", event_properties=props)
        return tracked["id"]

    # WHEN it is tracked and flushed
    outcome = check_track_or_refuse(server, call)
    # THEN when accepted, it arrived with JSON-safe properties and every key no longer than 1024
    if outcome == "accepted":
        sent = next(e for e in server.events if e["insert_id"] == tracked["id"])
        assert json.loads(json.dumps(sent, allow_nan=False)) == sent
        for key in sent.get("event_properties", {}):
            assert len(key) <= 1024


@settings(max_examples=40, deadline=EXAMPLE_DEADLINE,
          suppress_health_check=[HealthCheck.too_slow])
@given(value=values, shape=st.integers(0, 3), where=st.sampled_from(
    ["event_properties", "user_properties", "groups"]))
def test_cyclic_structures_are_refused_naming_the_path(
        server: FakeAmplitude, value: Any, shape: int, where: str) -> None:
    # GIVEN a property structure that contains itself (shapes 0-2) or only shares a list (3)
    structure = _cyclic(value, shape)

    def call(client: Amplitude) -> Any:
        return client.track("cyclic", user_id="user-0001", **{where: structure})

    # WHEN it is tracked
    outcome = check_track_or_refuse(server, call)
    # THEN a real cycle is always refused (a shared, acyclic list may pass)
    if shape < 3:
        assert outcome == "refused"


def test_cycle_refusal_names_the_cycle_and_its_path(server: FakeAmplitude) -> None:
    # GIVEN a cycle two containers down
    inner: dict[str, Any] = {}
    outer = {"level": [{"inner": inner}]}
    inner["back"] = outer
    client = Amplitude(API_KEY, server_url=server.url, overflow=())
    # WHEN it is tracked / THEN the message names the path and the rule
    with pytest.raises(InvalidEventError, match=r"^event_properties\.outer\.level\[0\]\.inner"
                                                r"\.back.*refers to itself"):
        client.track("cyclic", user_id="user-0001", event_properties={"outer": outer})


@settings(max_examples=40, deadline=EXAMPLE_DEADLINE,
          suppress_health_check=[HealthCheck.too_slow])
@given(levels=st.integers(1, 60), kinds=st.lists(st.integers(0, 3), min_size=1, max_size=5),
       leaf=st.one_of(st.integers(), st.text(max_size=5)))
def test_deep_mixed_nesting_accepted_to_40_levels_refused_beyond(
        server: FakeAmplitude, levels: int, kinds: list[int], leaf: Any) -> None:
    # GIVEN properties nested `levels` containers deep (dicts, lists, tuples, mapping proxies)
    def call(client: Amplitude) -> Any:
        return client.track("deep", user_id="user-0001",
                            event_properties={"d": _deep(levels, kinds, leaf)})

    # WHEN tracked / THEN accepted up to 40 levels (the properties object is level 1)
    outcome = check_track_or_refuse(server, call)
    assert outcome == ("accepted" if levels + 1 <= 40 else "refused")


@pytest.mark.parametrize("levels", [1_000, 100_000])
def test_nesting_far_past_the_recursion_limit_is_refused_not_crashed(
        server: FakeAmplitude, levels: int) -> None:
    # GIVEN properties nested deeper than Python's recursion limit
    deep = _deep(levels, [0, 1], "leaf")
    client = Amplitude(API_KEY, server_url=server.url, overflow=())
    # WHEN tracked / THEN InvalidEventError (not RecursionError) names the depth rule
    with pytest.raises(InvalidEventError, match=r"^event_properties\.d.*nested deeper than 40"):
        client.track("deep", user_id="user-0001", event_properties={"d": deep})
    assert client.pending == 0


@pytest.mark.parametrize("text", [
    "\x00" * 2_000_000, "\U0001f600" * 2_000_000, "\u202e\u200f" * 1_000_000,
    "\ufffe\uffff" * 1_000_000, "a" * 1023 + "\U0001f600" * 10,
])
def test_huge_strings_are_truncated_and_accepted(server: FakeAmplitude, text: str) -> None:
    # GIVEN a string of up to ~2 MB (characters of every width, NUL, bidi marks, non-characters)
    def call(client: Amplitude) -> Any:
        return client.track(text, user_id=text, device_id=text,
                            event_properties={text: text, "list": [text, text]})

    # WHEN it is used as event_type, ids, a property key and property values
    outcome = check_track_or_refuse(server, call)
    # THEN the event is accepted, every string cut to 1024 characters
    assert outcome == "accepted"
    sent = next(e for e in server.events if e["event_type"] != "known_good")
    assert sent["user_id"] == text[:1024]
    assert sent["event_properties"] == {text[:1024]: text[:1024], "list": [text[:1024]] * 2}


# -- identify and revenue -------------------------------------------------------------------------

OPERATIONS = ["set", "set_once", "add", "append", "prepend", "pre_insert", "post_insert",
              "remove", "unset", "clear_all"]


@HYPOTHESIS
@given(ops=st.lists(st.tuples(st.sampled_from(OPERATIONS), mostly(st.text(min_size=1), keys),
                             mostly(st.integers() | clean_text | huge_text, any_value)),
                   max_size=5),
       not_identify=st.one_of(st.none(), any_value), use_real=mostly(st.just(True), st.just(False)),
       user_id=mostly(st.none(), IDS), extra=mostly(st.just({}), EXTRA_FIELDS))
def test_identify_refuses_clearly_or_sends_a_valid_event(
        server: FakeAmplitude, ops: list[tuple[str, Any, Any]], not_identify: Any,
        use_real: bool, user_id: Any, extra: dict[str, Any]) -> None:
    # GIVEN an Identify built from any operations, keys and values (or something else)
    def call(client: Amplitude) -> Any:
        identify: Any = Identify() if use_real else not_identify
        if use_real:
            for op, key, value in ops:
                method = getattr(identify, op)
                identify = (method() if op == "clear_all" else method(key) if op == "unset"
                            else method(key, value))
        return client.identify(identify, user_id=user_id, device_id="device-0001", **extra)

    # WHEN identify() is called and flushed / THEN refused clearly or delivered intact
    check_track_or_refuse(server, call, frozenset(extra))


@HYPOTHESIS
@given(price=mostly(st.integers() | st.floats(), any_value),
       quantity=mostly(st.integers(), any_value),
       product_id=mostly(st.none() | clean_text | huge_text, any_value),
       revenue_type=mostly(st.none() | clean_text, any_value),
       receipt=mostly(st.none() | huge_text, any_value),
       props=mostly(st.none() | string_keyed, properties),
       revenue=mostly(st.none() | st.floats(), any_value),
       currency=mostly(st.none() | clean_text, any_value),
       not_revenue=st.none() | any_value, use_real=mostly(st.just(True), st.just(False)))
def test_revenue_refuses_clearly_or_sends_a_valid_event(
        server: FakeAmplitude, price: Any, quantity: Any, product_id: Any, revenue_type: Any,
        receipt: Any, props: Any, revenue: Any, currency: Any, not_revenue: Any,
        use_real: bool) -> None:
    # GIVEN a Revenue with any value in every slot (or something that is not a Revenue)
    def call(client: Amplitude) -> Any:
        purchase = (Revenue(price=price, quantity=quantity, product_id=product_id,
                            revenue_type=revenue_type, receipt=receipt, receipt_sig=receipt,
                            properties=props, revenue=revenue, currency=currency)
                    if use_real else not_revenue)
        return client.revenue(purchase, user_id="user-0001")

    # WHEN revenue() is called and flushed / THEN refused clearly or delivered intact
    check_track_or_refuse(server, call)


# -- regressions: values that once escaped as a plain ValueError ------------------------------


@pytest.mark.parametrize("kwargs", [{"event_properties": {"n": 10**4301}},
                                    {"event_id": 10**4301}])
def test_int_too_long_for_json_is_refused_with_invalid_event_error(
        kwargs: dict[str, Any]) -> None:
    client = Amplitude(API_KEY, overflow=())
    with pytest.raises(InvalidEventError, match=r"^(event_properties\.n|event_id):"):
        client.track("big", user_id="user-0001", **kwargs)


def test_time_too_long_for_str_is_refused_with_invalid_event_error() -> None:
    client = Amplitude(API_KEY, overflow=())
    with pytest.raises(InvalidEventError, match=r"^time:"):
        client.track("big", user_id="user-0001", time=10**4301)


@pytest.mark.parametrize("kwargs", [{"event_properties": {"n": Decimal("sNaN")}},
                                    {"price": Decimal("sNaN")}])
def test_signaling_nan_decimal_is_refused_with_invalid_event_error(
        kwargs: dict[str, Any]) -> None:
    client = Amplitude(API_KEY, overflow=())
    with pytest.raises(InvalidEventError, match=r"^(event_properties\.n|price):.*NaN"):
        client.track("nan", user_id="user-0001", **kwargs)


# -- hostile replies -----------------------------------------------------------------------------


def flush_against(url: str, *, budget_s: float = FAULT_BUDGET_S,
                  retry: RetryHandler | None = None,
                  count: int = 3) -> tuple[Any, RecordingSink, list[str], float]:
    """Track `count` events, flush once: (report, sink, insert_ids, seconds taken)."""
    sink = RecordingSink()
    client = Amplitude(API_KEY, server_url=url, overflow=sink, flush_timeout_s=budget_s,
                       retry=retry)
    ids = [client.track("e", user_id=f"user-{i:04d}") for i in range(count)]
    started = time.monotonic()
    report = client.flush()
    elapsed = time.monotonic() - started
    client.close()
    return report, sink, [i for i in ids if i], elapsed


def assert_failed_then_overflowed(report: Any, sink: RecordingSink, ids: list[str],
                                  elapsed: float, budget_s: float = FAULT_BUDGET_S) -> None:
    assert report.balanced
    assert report.delivered == 0
    assert report.overflowed == len(ids) and report.dropped == 0
    assert sorted(i for i, _ in sink.written) == sorted(ids)
    assert elapsed <= budget_s + SCHEDULING_TOLERANCE_S


def _is_json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=st.sampled_from([200, 202, 500, 502, 503, 504]),
       body=st.binary(max_size=2048), content_type=st.sampled_from(
           ["application/json", "text/html", "text/plain", "application/octet-stream", ""]))
def test_random_bytes_replies_are_failures_retried_then_overflowed(
        server: FakeAmplitude, status: int, body: bytes, content_type: str) -> None:
    assume(not _is_json_object(body))
    # GIVEN a server that answers every attempt with random bytes
    server.reset()
    server.script(*[Fault.reply(status, body, content_type)] * 20)
    # WHEN a client with a short retry schedule flushes
    report, sink, ids, elapsed = flush_against(
        server.url, retry=RetryHandler(max_attempts=3, backoff_base_s=0.001))
    # THEN nothing is counted delivered: all retried, then overflowed, on time
    assert_failed_then_overflowed(report, sink, ids, elapsed)
    assert report.attempts == 3
    assert set(report.overflowed_reasons) <= {"retries_exhausted", "deadline"}


@pytest.mark.parametrize("body", [
    b"x" * 5_000_000,
    b'{"code": 200, "events_ingested": 3, "pad": "' + b"x" * 5_000_000 + b'"}',
    os.urandom(MAX_RESPONSE_BYTES + 1),
], ids=["5MB-junk", "5MB-valid-json", "just-over-the-cap"])
def test_huge_reply_bodies_are_failures_within_the_deadline(
        server: FakeAmplitude, body: bytes) -> None:
    # GIVEN a server answering 200 with a body over amp_lite's 64 KiB reply cap
    server.reset()
    server.script(*[Fault.reply(200, body)] * 50)
    # WHEN a client flushes with the default retry strategy
    report, sink, ids, elapsed = flush_against(server.url)
    # THEN the huge replies are failures: retried until the budget, then overflowed, on time
    assert_failed_then_overflowed(report, sink, ids, elapsed)
    assert report.attempts >= 2


@pytest.mark.parametrize(("body", "content_type"), [
    (b"<html><body>Service Unavailable</body></html>", "text/html"),
    (b"OK", "text/plain"),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "image/png"),
    (b"", "application/json"),
    (b"[]", "application/json"),
    (b'"code: 200"', "application/json"),
    (b"null", "application/json"),
], ids=["html", "text", "png", "empty", "json-array", "json-string", "json-null"])
def test_wrong_content_and_type_replies_are_failures(
        server: FakeAmplitude, body: bytes, content_type: str) -> None:
    # GIVEN a server answering 200 with something that is not Amplitude's JSON object
    server.reset()
    server.script(*[Fault.reply(200, body, content_type)] * 50)
    # WHEN a client flushes / THEN retried, then overflowed, within the budget
    report, sink, ids, elapsed = flush_against(server.url)
    assert_failed_then_overflowed(report, sink, ids, elapsed)


class RawReplyServer(RawServer):
    """Reads each request whole, answers `reply`, then closes the connection (whatever the
    reply's headers said). For replies the stdlib server cannot produce (a truncated gzip
    body, a short body)."""

    def __init__(self, reply: bytes) -> None:
        super().__init__()
        self.reply = reply
        self.requests = 0

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        self._read_request(conn)
        self.requests += 1
        conn.sendall(self.reply)

    @staticmethod
    def _read_request(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            body += chunk


def _gzip_reply(body: bytes, *, declared: int | None = None) -> bytes:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\n\r\n")
    return head % (len(body) if declared is None else declared) + body


GOOD_JSON = b'{"code": 200, "events_ingested": 3, "pad": "' + b"abcdefgh" * 4000 + b'"}'
GZIPPED = gzip.compress(GOOD_JSON)


@pytest.mark.parametrize("reply", [
    _gzip_reply(GZIPPED[:len(GZIPPED) // 2]),
    _gzip_reply(GZIPPED[:12]),
    _gzip_reply(GZIPPED[:len(GZIPPED) // 2], declared=len(GZIPPED)),
    _gzip_reply(b"this is not gzip at all"),
    _gzip_reply(gzip.compress(b"<html>gateway</html>")),
], ids=["cut-in-half", "cut-after-header", "short-body", "not-gzip", "gzipped-html"])
def test_truncated_or_bad_gzip_replies_are_failures(reply: bytes) -> None:
    # GIVEN a server answering 200 with Content-Encoding: gzip and a broken body
    with RawReplyServer(reply) as server:
        # WHEN a client flushes
        report, sink, ids, elapsed = flush_against(server.url)
        requests = server.requests
    # THEN the reply is a failure: retried, then overflowed, within the budget
    assert_failed_then_overflowed(report, sink, ids, elapsed)
    assert requests >= 2


def test_complete_gzip_reply_is_delivered() -> None:
    # GIVEN the same raw server answering a whole gzip body (the control for the test above)
    with RawReplyServer(_gzip_reply(GZIPPED)) as server:
        # WHEN a client flushes / THEN the events are delivered in one attempt
        report, sink, ids, _ = flush_against(server.url)
    assert (report.delivered, report.attempts, sink.written) == (len(ids), 1, [])


def test_deeply_nested_reply_is_a_failure_not_a_drop(server: FakeAmplitude) -> None:
    server.reset()
    server.script(*[Fault.reply(200, b"[" * 60_000)] * 50)
    report, sink, ids, elapsed = flush_against(server.url)
    assert_failed_then_overflowed(report, sink, ids, elapsed)


@pytest.mark.parametrize("padding", [0, 40_000], ids=["small-body", "body-past-first-read"])
def test_connection_close_reply_does_not_drop_the_next_flush(padding: int) -> None:
    # GIVEN a server that answers 200 with "Connection: close" (a body read in one piece, or
    # one longer than the first buffered read, so the socket must stay open for the rest)
    body = b'{"code": 200, "events_ingested": 1, "pad": "%s"}' % (b"x" * padding)
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
             b"Connection: close\r\n\r\n" % len(body)) + body
    with RawReplyServer(reply) as server:
        client = Amplitude(API_KEY, server_url=server.url, overflow=RecordingSink(),
                           flush_timeout_s=FAULT_BUDGET_S)
        reports = []
        for _ in range(2):
            client.track("e", user_id="user-0001")
            reports.append(client.flush())
    assert [(r.delivered, r.dropped) for r in reports] == [(1, 0), (1, 0)]


# -- hostile SQS messages in replay ----------------------------------------------------------------


def _event(**fields: Any) -> dict[str, Any]:
    base = {"event_type": "Replayed", "user_id": "user-replay", "insert_id": str(uuid.uuid4()),
            "time": int(time.time() * 1000), "library": "amp-lite/test"}
    return {**base, **fields}


def _message(events: list[Any], **envelope: Any) -> str:
    return json.dumps({"v": 1, "source": "amp-lite/test", "reason": "deadline", "attempts": 1,
                       "overflowed_at_ms": 0, **envelope, "events": events})


GOOD_EVENTS = [_event(), _event(user_id="user-replay-2")]
NAN_EVENT = ('{"v":1,"events":[{"event_type":"e","insert_id":"nan-1","user_id":"user-0001",'
             '"time":NaN}]}')
SURROGATE_EVENT = ('{"v":1,"events":[{"event_type":"\\ud800","insert_id":"s-1",'
                   '"user_id":"user-0001"}]}')
# Message id -> body: every one of these must fail its record, without touching the others.
NOT_REPLAYABLE = {
    "not-json": "garbage{",
    "empty": "",
    "json-null": "null",
    "json-list": "[1, 2, 3]",
    "version-2": _message(GOOD_EVENTS[:1], v=2),
    "version-true": _message(GOOD_EVENTS[:1], v=True),
    "version-string": _message(GOOD_EVENTS[:1], v="1"),
    "no-version": json.dumps({"events": [_event()]}),
    "no-events": json.dumps({"v": 1}),
    "events-not-a-list": json.dumps({"v": 1, "events": {"0": _event()}}),
    "oversized-garbage": os.urandom(786_432).hex()[:1_048_000],
    "oversized-binary-text": os.urandom(700_000).decode("latin-1"),
    "huge-int": '{"v":1,"events":[],"attempts":' + "9" * 5000 + "}",
}
# Message id -> body: readable messages whose events are unreadable (rejected, not retried).
UNREADABLE_EVENTS = {
    "missing-insert-id": _message([{"event_type": "e", "user_id": "user-0001"}]),
    "missing-event-type": _message([{"insert_id": "x-1", "user_id": "user-0001"}]),
    "not-objects": _message([1, "two", None, [4]]),
    "nan-event": NAN_EVENT,
    "surrogate-event": SURROGATE_EVENT,
}
# Message id -> body: events that reach Amplitude and are refused there (rejected).
INVALID_FOR_AMPLITUDE = {
    "no-ids": _message([_event(user_id=None)]),
    "bad-time": _message([_event(time="yesterday")]),
}
DEEP_JUNK = {"deep-junk": "[" * 100_000, "deep-in-events": '{"v":1,"events":[' + "[" * 50_000}


def _records(bodies: Mapping[str, str]) -> list[ReplayRecord]:
    return [ReplayRecord(message_id, body) for message_id, body in bodies.items()]


def test_replay_reports_hostile_messages_and_delivers_the_good_one(fake: FakeAmplitude) -> None:
    # GIVEN one good overflow message among hostile ones
    bodies = {"good": _message(GOOD_EVENTS), **NOT_REPLAYABLE, **UNREADABLE_EVENTS,
              **INVALID_FOR_AMPLITUDE}
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())
    # WHEN the batch is replayed
    started = time.monotonic()
    result = replay_records(_records(bodies), client, Deadline.after(10))
    elapsed = time.monotonic() - started
    # THEN every message that is not an overflow message fails its own record ...
    assert set(result.failed) == set(NOT_REPLAYABLE)
    assert all(reason.startswith("not replayable") for reason in result.failed.values())
    assert result.unreadable_messages == len(NOT_REPLAYABLE)
    # ... unreadable events are rejected once, events Amplitude refuses are rejected ...
    assert result.rejected == {"unreadable_event": 8, "invalid_event": 2}
    # ... and the good message's events are delivered, the batch not crashed
    assert sorted(fake.insert_ids) == sorted(e["insert_id"] for e in GOOD_EVENTS)
    assert result.delivered == 2 and not result.unsettled
    assert elapsed < 10


class _Context:
    function_name = "amp-replay"
    memory_limit_in_mb = "256"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:amp-replay"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def _sqs_event(bodies: Mapping[str, str]) -> dict[str, Any]:
    return {"Records": [{
        "messageId": message_id, "receiptHandle": f"handle-{message_id}", "body": body,
        "attributes": {}, "messageAttributes": {}, "md5OfBody": "0" * 32,
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:overflow",
        "awsRegion": "us-east-1"} for message_id, body in bodies.items()]}


def test_replay_handler_lists_only_hostile_records_as_failures(fake: FakeAmplitude) -> None:
    # GIVEN the SQS-triggered replay handler and a batch mixing good and hostile messages
    handler = make_handler(Amplitude(API_KEY, server_url=fake.url, overflow=()))
    bodies = {"good": _message(GOOD_EVENTS), **NOT_REPLAYABLE, **UNREADABLE_EVENTS}
    # WHEN it handles the batch
    response = handler(_sqs_event(bodies), _Context())
    # THEN the partial batch response lists exactly the messages that are not replayable
    failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
    assert failed == set(NOT_REPLAYABLE)
    assert sorted(fake.insert_ids) == sorted(e["insert_id"] for e in GOOD_EVENTS)


def test_replay_reports_deeply_nested_junk_without_crashing(fake: FakeAmplitude) -> None:
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())
    result = replay_records(_records({"good": _message(GOOD_EVENTS), **DEEP_JUNK}), client,
                            Deadline.after(10))
    assert set(result.failed) == set(DEEP_JUNK)
    assert result.delivered == 2
