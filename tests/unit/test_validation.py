"""track() validation (invariant I8), coercions, middleware and the enabled switch."""

from __future__ import annotations

import datetime as dt
import enum
import re
import uuid
from decimal import Decimal
from typing import Any

import pytest

from amp_lite import Amplitude, Event, Identify, InvalidEventError
from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY

NOW_MS = 1_700_000_000_000
MAX_DEPTH = 40

# Written out from Amplitude's HTTP V2 docs ("Invalid IDs": "These IDs are invalid, and result in
# a 400 error", https://amplitude.com/docs/apis/analytics/http-v2), not imported from the SDK, so
# a wrong SDK table fails here. The docs' `""""` is read as the two-character id `""`.
AMPLITUDE_INVALID_IDS = [
    "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", '""',
    "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1",
]


def _client(**kwargs: Any) -> Amplitude:
    return Amplitude(API_KEY, overflow=(), **kwargs)


def _refused(client: Amplitude, pattern: str, *args: Any, **kwargs: Any) -> str:
    """Track, expect InvalidEventError matching `pattern`, and check nothing was buffered."""
    before = client.pending
    with pytest.raises(InvalidEventError) as info:
        client.track(*args, **kwargs)
    assert re.search(pattern, str(info.value)), str(info.value)
    assert client.pending == before
    return str(info.value)


def _sent(fake: FakeAmplitude, *args: Any, client_kwargs: dict[str, Any] | None = None,
          **kwargs: Any) -> dict[str, Any]:
    """Track one event against the fake, flush, return the event as the fake received it."""
    client = Amplitude(API_KEY, server_url=fake.url, overflow=(), **(client_kwargs or {}))
    assert client.track(*args, **kwargs) is not None
    report = client.flush()
    assert report.delivered == 1, report
    return fake.events[-1]


def _nested_dicts(levels: int) -> dict[str, Any]:
    """`levels` dicts nested inside each other (the outermost one counts as level 1)."""
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


def _nested_lists(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


# -- event_type and ids ----------------------------------------------------------------------


def test_invalid_event_error_is_a_value_error() -> None:
    assert issubclass(InvalidEventError, ValueError)


@pytest.mark.parametrize("event_type", ["", "   ", 5, None, b"signup", ["a"]])
def test_bad_event_type_is_refused(event_type: Any) -> None:
    # GIVEN a client / WHEN tracking a bad event_type / THEN refused, naming event_type
    _refused(_client(), r"^event_type: (must be a non-empty string|required)", event_type,
             user_id="user-1")


def test_event_without_any_id_is_refused() -> None:
    # GIVEN / WHEN an event with neither user_id nor device_id / THEN refused naming both
    _refused(_client(), r"user_id/device_id: an event needs at least one", "e")


@pytest.mark.parametrize("field", ["user_id", "device_id"])
def test_short_id_is_refused_with_default_minimum_of_5(field: str) -> None:
    # GIVEN the default min_id_length / WHEN a 4-character id / THEN refused, naming the rule
    _refused(_client(), rf"^{field}: must be at least 5 characters \(min_id_length\), got 4",
             "e", **{field: "abcd"})


@pytest.mark.parametrize("field", ["user_id", "device_id"])
def test_five_character_id_is_accepted(field: str) -> None:
    # GIVEN / WHEN a 5-character id / THEN buffered
    client = _client()
    assert client.track("e", **{field: "abcde"}) is not None
    assert client.pending == 1


def test_min_id_length_option_changes_the_minimum() -> None:
    # GIVEN min_id_length=3
    client = _client(min_id_length=3)
    # WHEN / THEN 3 characters pass, 2 are refused with the new minimum in the message
    assert client.track("e", user_id="abc") is not None
    _refused(client, r"^user_id: must be at least 3 characters", "e", user_id="ab")
    assert client.pending == 1


def test_min_id_length_option_reaches_the_server(fake: FakeAmplitude) -> None:
    # GIVEN / WHEN a 3-character id with min_id_length=3 flushed to the fake (which applies
    # options.min_id_length like Amplitude) / THEN it is accepted
    event = _sent(fake, "e", user_id="abc", client_kwargs={"min_id_length": 3})
    assert event["user_id"] == "abc"


def test_longer_min_id_length_refuses_default_length_ids() -> None:
    # GIVEN min_id_length=8 / WHEN a 5-character id / THEN refused
    _refused(_client(min_id_length=8), r"^device_id: must be at least 8", "e", device_id="abcde")


@pytest.mark.parametrize("bad_id", AMPLITUDE_INVALID_IDS)
@pytest.mark.parametrize("field", ["user_id", "device_id"])
def test_ids_on_amplitudes_invalid_list_are_refused(bad_id: str, field: str) -> None:
    # GIVEN min_id_length=1 so only the invalid-id rule can apply
    client = _client(min_id_length=1)
    # WHEN / THEN the id is refused, named, in any case
    for variant in {bad_id, bad_id.upper(), bad_id.title()}:
        _refused(client, rf"^{field}: .* is on Amplitude's list of invalid ids", "e",
                 **{field: variant})


@pytest.mark.parametrize("bad_id", ["Anonymous", "UNDEFINED", "Unknown", " null  ",
                                    "00000000-0000-0000-0000-000000000000"])
def test_invalid_ids_refused_case_insensitively_with_default_minimum(bad_id: str) -> None:
    _refused(_client(), r"^user_id: .* list of invalid ids", "e", user_id=bad_id)


def test_invalid_user_id_is_refused_even_with_a_valid_device_id() -> None:
    _refused(_client(), r"^user_id: .* invalid ids", "e", user_id="anonymous",
             device_id="device-1")


def test_non_string_id_is_refused() -> None:
    _refused(_client(), r"^user_id: must be a string, got int", "e", user_id=12345)


# -- time ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "pattern"), [
    (NOW_MS + 0.5, r"^time: must be an integer"),
    ("1700000000000", r"^time: must be an integer"),
    (True, r"^time: must be an integer, got a bool"),
    (float("nan"), r"^time: must be an integer"),
    (1_700_000_000, r"^time: must be epoch milliseconds .*seconds\?"),
    (1_700_000_000.0, r"^time: must be epoch milliseconds"),
    (99_999_999_999, r"^time: must be epoch milliseconds"),
    (0, r"^time: must be epoch milliseconds"),
    (-1, r"^time: must be epoch milliseconds"),
    (10_000_000_000_000, r"^time: must be epoch milliseconds"),
])
def test_bad_time_is_refused(value: Any, pattern: str) -> None:
    _refused(_client(), pattern, "e", user_id="user-1", time=value)


def test_smallest_millisecond_time_is_accepted() -> None:
    # GIVEN / WHEN time=10^11 (the boundary) / THEN accepted
    client = _client()
    assert client.track("e", user_id="user-1", time=100_000_000_000) is not None


def test_integral_float_time_is_sent_as_int(fake: FakeAmplitude) -> None:
    # GIVEN / WHEN time is an integral float / THEN it goes out as a JSON integer
    event = _sent(fake, "e", user_id="user-1", time=float(NOW_MS))
    assert event["time"] == NOW_MS
    assert type(event["time"]) is int


def test_time_and_insert_id_are_stamped_and_kept(fake: FakeAmplitude) -> None:
    # GIVEN / WHEN explicit time and insert_id / THEN sent as given
    event = _sent(fake, "e", user_id="user-1", time=NOW_MS, insert_id="my-insert-id")
    assert event["time"] == NOW_MS
    assert event["insert_id"] == "my-insert-id"


# -- NaN / Infinity, types -------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "path"), [
    ({"price": float("nan")}, "price"),
    ({"revenue": float("inf")}, "revenue"),
    ({"location_lat": float("-inf")}, "location_lat"),
    ({"price": Decimal("NaN")}, "price"),
    ({"event_properties": {"x": float("nan")}}, r"event_properties\.x"),
    ({"event_properties": {"a": [1, float("inf")]}}, r"event_properties\.a\[1\]"),
    ({"event_properties": {"a": {"b": Decimal("Infinity")}}}, r"event_properties\.a\.b"),
    ({"user_properties": {"$set": {"k": float("nan")}}}, r"user_properties\.\$set\.k"),
    ({"groups": {"g": float("inf")}}, r"groups\.g"),
])
def test_nan_and_infinity_are_refused_anywhere(kwargs: dict[str, Any], path: str) -> None:
    _refused(_client(), rf"^{path}: NaN and Infinity cannot be sent", "e", user_id="user-1",
             **kwargs)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_integer_fields_are_refused(value: float) -> None:
    _refused(_client(), r"^session_id: must be an integer", "e", user_id="user-1",
             session_id=value)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"event_properties": {1: "x"}}, r"^event_properties: keys must be strings, got int"),
    ({"event_properties": {"a": {(1, 2): "x"}}}, r"^event_properties\.a: keys must be strings"),
    ({"user_properties": {None: 1}}, r"^user_properties: keys must be strings"),
])
def test_non_string_keys_are_refused(kwargs: dict[str, Any], pattern: str) -> None:
    _refused(_client(), pattern, "e", user_id="user-1", **kwargs)


def test_dict_cycle_is_refused() -> None:
    # GIVEN a dict that contains itself
    props: dict[str, Any] = {"a": 1}
    props["self"] = props
    # WHEN / THEN refused, naming the path and the rule
    _refused(_client(), r"^event_properties\.self: refers to itself", "e", user_id="user-1",
             event_properties=props)


def test_list_cycle_is_refused() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    _refused(_client(), r"^event_properties\.l\[1\]: refers to itself", "e", user_id="user-1",
             event_properties={"l": loop})


def test_shared_non_cyclic_value_is_not_a_cycle(fake: FakeAmplitude) -> None:
    # GIVEN the same dict twice, side by side (not a cycle)
    shared = {"k": 1}
    # WHEN / THEN accepted and sent twice
    event = _sent(fake, "e", user_id="user-1", event_properties={"a": shared, "b": shared})
    assert event["event_properties"] == {"a": {"k": 1}, "b": {"k": 1}}


def test_depth_of_40_dicts_is_accepted_41_refused(fake: FakeAmplitude) -> None:
    # GIVEN properties objects nested 40 and 41 levels deep (event_properties itself is level 1)
    client = _client()
    # WHEN / THEN 41 is refused naming the path and the limit
    _refused(client, rf"^event_properties(\.a){{{MAX_DEPTH}}}: nested deeper than 40 levels",
             "e", user_id="user-1", event_properties=_nested_dicts(MAX_DEPTH + 1))
    # AND 40 is accepted and delivered intact
    event = _sent(fake, "e", user_id="user-1", event_properties=_nested_dicts(MAX_DEPTH))
    assert event["event_properties"] == _nested_dicts(MAX_DEPTH)


def test_lists_count_as_depth_levels() -> None:
    # GIVEN event_properties (level 1) holding 39 nested lists (levels 2..40) or 40 (..41)
    client = _client()
    # WHEN / THEN the 40-level value is accepted, the 41-level one refused
    assert client.track("e", user_id="user-1",
                        event_properties={"l": _nested_lists(MAX_DEPTH - 1)}) is not None
    _refused(client, r"^event_properties\.l(\[0\]){39}: nested deeper than 40", "e",
             user_id="user-1", event_properties={"l": _nested_lists(MAX_DEPTH)})


def test_depth_limit_applies_to_user_properties() -> None:
    _refused(_client(), r"^user_properties(\.a){40}: nested deeper than 40", "e",
             user_id="user-1", user_properties=_nested_dicts(MAX_DEPTH + 1))


@pytest.mark.parametrize("value", [b"bytes", bytearray(b"ba"), memoryview(b"mv")])
def test_bytes_are_refused(value: Any) -> None:
    _refused(_client(), r"^event_properties\.b: bytes cannot be sent", "e", user_id="user-1",
             event_properties={"b": value})


@pytest.mark.parametrize("value", [object(), Exception("x"), lambda: 1, complex(1, 2)])
def test_arbitrary_objects_are_refused(value: Any) -> None:
    _refused(_client(), r"^event_properties\.o: a \w+ cannot be sent", "e", user_id="user-1",
             event_properties={"o": value})


def test_arbitrary_object_in_a_list_is_refused_with_its_index() -> None:
    _refused(_client(), r"^event_properties\.l\[2\]: a object cannot be sent", "e",
             user_id="user-1", event_properties={"l": [1, 2, object()]})


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"bogus": 1}, r"^bogus: unknown Amplitude event field"),
    ({"eventProperties": {}}, r"^eventProperties: unknown Amplitude event field"),
    ({"uuid": "x"}, r"^uuid: unknown Amplitude event field"),
])
def test_unknown_top_level_fields_are_refused(kwargs: dict[str, Any], pattern: str) -> None:
    _refused(_client(), pattern, "e", user_id="user-1", **kwargs)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"price": "9.99"}, r"^price: must be a number, got str"),
    ({"quantity": "2"}, r"^quantity: must be an integer"),
    ({"platform": 3}, r"^platform: must be a string, got int"),
    ({"event_properties": [1, 2]}, r"^event_properties: must be a dict, got list"),
    ({"groups": "org"}, r"^groups: must be a dict, got str"),
    ({"skip_user_properties_sync": "yes"}, r"^\$skip_user_properties_sync: must be true or"),
])
def test_wrong_types_for_known_fields_are_refused(kwargs: dict[str, Any], pattern: str) -> None:
    _refused(_client(), pattern, "e", user_id="user-1", **kwargs)


def test_single_event_too_large_for_a_request_is_refused() -> None:
    # GIVEN an event of about 1.1 MB
    props = {"pad": ["x" * 1000] * 1100}
    # WHEN / THEN refused, naming the size rule
    _refused(_client(), r"^event: encoded size \d+ bytes exceeds what one request can carry",
             "e", user_id="user-1", event_properties=props)


def test_largest_accepted_event_fits_one_request(fake: FakeAmplitude) -> None:
    # GIVEN the largest padding track() accepts (found by bisection)
    def props(extra: int) -> dict[str, Any]:
        return {"pad": ["x" * 1000] * (extra // 1000), "tail": "y" * (extra % 1000)}

    def accepted(extra: int) -> bool:
        try:
            _client().track("e", user_id="user-1", event_properties=props(extra))
        except InvalidEventError:
            return False
        return True

    low, high = 0, 1_100_000
    assert accepted(low)
    assert not accepted(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if accepted(middle) else (low, middle)
    # WHEN that event is flushed to the fake, which enforces "under 1 MB" like Amplitude
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())
    client.track("e", user_id="user-1", event_properties=props(low))
    report = client.flush()
    # THEN it goes in one request and is delivered
    assert report.delivered == 1
    assert [r.status for r in fake.requests] == [200]


@pytest.mark.parametrize(("args", "kwargs", "pattern"), [
    (("e",), {"user_id": "user-1", "event_properties": {"s": "ok\ud800"}},
     r"event_properties\.s: string is not valid Unicode"),
    (("e\udfff",), {"user_id": "user-1"}, r"event_type: string is not valid Unicode"),
    (("e",), {"user_id": "user-\ud800"}, r"user_id: string is not valid Unicode"),
    (("e",), {"user_id": "user-1", "event_properties": {"l": ["a", "\udc80"]}},
     r"event_properties\.l\[1\]: string is not valid Unicode"),
])
def test_lone_surrogates_are_refused(args: tuple[Any, ...], kwargs: dict[str, Any],
                                     pattern: str) -> None:
    _refused(_client(), pattern + r".*lone surrogate", *args, **kwargs)


def test_lone_surrogate_in_a_key_is_refused() -> None:
    _refused(_client(), r"event_properties\..*string is not valid Unicode", "e",
             user_id="user-1", event_properties={"k\ud800": 1})


def test_refusal_does_not_disturb_earlier_events(fake: FakeAmplitude) -> None:
    # GIVEN one good event buffered
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())
    client.track("good", user_id="user-1")
    # WHEN a bad one is refused
    _refused(client, r"^price:", "bad", user_id="user-1", price="x")
    # THEN only the good one is sent
    assert client.flush().delivered == 1
    assert [e["event_type"] for e in fake.events] == ["good"]


# -- coercions -------------------------------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"
    PAIR = (1, 2)


class Level(enum.IntEnum):
    HIGH = 3


def test_coercions_on_the_wire(fake: FakeAmplitude) -> None:
    # GIVEN values JSON cannot carry directly
    moment = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    props = {
        "when": moment, "day": dt.date(2024, 5, 6), "at": dt.time(7, 8, 9),
        "amount": Decimal("12.50"), "tags": {"b", "a", "c"}, "frozen": frozenset({2, 1}),
        "pair": (1, "two"), "colour": Colour.RED, "enum_pair": Colour.PAIR, "level": Level.HIGH,
        "id": ident, "nested": {"deep": [moment, Colour.RED, (3, 4)]},
    }
    # WHEN tracked and flushed
    event = _sent(fake, "e", user_id="user-1", event_properties=props)
    # THEN each was converted as documented
    assert event["event_properties"] == {
        "when": "2024-05-06T07:08:09+00:00", "day": "2024-05-06", "at": "07:08:09",
        "amount": 12.5, "tags": ["a", "b", "c"], "frozen": [1, 2], "pair": [1, "two"],
        "colour": "red", "enum_pair": [1, 2], "level": 3,
        "id": "12345678-1234-5678-1234-567812345678",
        "nested": {"deep": ["2024-05-06T07:08:09+00:00", "red", [3, 4]]},
    }


def test_decimal_price_becomes_float(fake: FakeAmplitude) -> None:
    event = _sent(fake, "e", user_id="user-1", price=Decimal("9.99"))
    assert event["price"] == 9.99


def test_long_strings_are_truncated_to_1024(fake: FakeAmplitude) -> None:
    # GIVEN strings over 1024 characters in properties, keys, ids and event_type
    long = "x" * 3000
    event = _sent(fake, "t" * 2000, user_id="u" * 1500,
                  event_properties={"s": long, "l": [long], "k" * 1100: 1})
    # THEN each is cut to 1024 characters
    assert event["event_type"] == "t" * 1024
    assert event["user_id"] == "u" * 1024
    assert event["event_properties"]["s"] == "x" * 1024
    assert event["event_properties"]["l"] == ["x" * 1024]
    assert "k" * 1024 in event["event_properties"]


def test_string_of_exactly_1024_is_kept(fake: FakeAmplitude) -> None:
    event = _sent(fake, "e", user_id="user-1", event_properties={"s": "z" * 1024})
    assert event["event_properties"]["s"] == "z" * 1024


def test_none_values_left_out_only_at_top_level_of_properties(fake: FakeAmplitude) -> None:
    # GIVEN None values at the top level and deeper, and None top-level fields
    event = _sent(fake, "e", user_id="user-1", device_id=None, platform=None,
                  event_properties={"gone": None, "kept": 1, "inner": {"n": None}, "l": [None]},
                  user_properties={"gone": None, "u": "v"})
    # THEN only top-level None values of the properties objects are left out
    assert event["event_properties"] == {"kept": 1, "inner": {"n": None}, "l": [None]}
    assert event["user_properties"] == {"u": "v"}
    assert "device_id" not in event
    assert "platform" not in event


def test_wire_names_for_python_keywords(fake: FakeAmplitude) -> None:
    event = _sent(fake, "e", user_id="user-1", product_id="sku-1", revenue_type="sale",
                  skip_user_properties_sync=True, price=1.0, quantity=1)
    assert event["productId"] == "sku-1"
    assert event["revenueType"] == "sale"
    assert event["$skip_user_properties_sync"] is True
    assert "product_id" not in event


def test_later_mutation_of_callers_dicts_changes_nothing(fake: FakeAmplitude) -> None:
    # GIVEN an event tracked with mutable dicts
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())
    props: dict[str, Any] = {"a": 1, "list": [1], "inner": {"x": 1}}
    groups: dict[str, Any] = {"org": "acme"}
    client.track("e", user_id="user-1", event_properties=props, groups=groups)
    # WHEN the caller changes them before the flush
    props["a"] = 2
    props["new"] = True
    props["list"].append(2)
    props["inner"]["x"] = 99
    groups["org"] = "other"
    client.flush()
    # THEN what was sent is what was tracked
    assert fake.events[0]["event_properties"] == {"a": 1, "list": [1], "inner": {"x": 1}}
    assert fake.events[0]["groups"] == {"org": "acme"}


def test_library_is_always_amp_lite(fake: FakeAmplitude) -> None:
    import amp_lite
    event = _sent(fake, "e", user_id="user-1", library="spoofed/1.0")
    assert event["library"] == f"amp-lite/{amp_lite.__version__}"


# -- middleware ------------------------------------------------------------------------------


def test_middleware_sees_stamped_event_and_can_change_it(fake: FakeAmplitude) -> None:
    # GIVEN a middleware that records what it sees and adds a property
    seen: list[dict[str, Any]] = []

    def enrich(event: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(event))
        event["event_properties"] = {**event.get("event_properties", {}), "region": "eu-west-1"}
        event["app_version"] = "2.0"
        return event

    # WHEN tracking through it
    event = _sent(fake, "e", user_id="user-1", event_properties={"a": 1},
                  client_kwargs={"middleware": [enrich]})
    # THEN it saw wire names with time and insert_id, and its change was sent
    assert {"event_type", "user_id", "time", "insert_id"} <= set(seen[0])
    assert event["event_properties"] == {"a": 1, "region": "eu-west-1"}
    assert event["app_version"] == "2.0"


def test_middleware_changes_are_validated() -> None:
    # GIVEN a middleware that puts a NaN in
    client = _client(middleware=[lambda e: {**e, "price": float("nan")}])
    # WHEN / THEN the result is validated like any event
    _refused(client, r"^price: NaN", "e", user_id="user-1")


def test_middleware_can_drop_an_event(fake: FakeAmplitude) -> None:
    # GIVEN a middleware that drops "noise" events
    client = Amplitude(API_KEY, server_url=fake.url, overflow=(),
                       middleware=[lambda e: None if e["event_type"] == "noise" else e])
    # WHEN both kinds are tracked
    dropped = client.track("noise", user_id="user-1")
    kept = client.track("signal", user_id="user-1")
    # THEN track returns None for the dropped one, and only the other is sent
    assert dropped is None
    assert kept is not None
    assert client.pending == 1
    report = client.flush()
    assert report.tracked == 1
    assert [e["event_type"] for e in fake.events] == ["signal"]


def test_middleware_chain_stops_at_first_drop() -> None:
    # GIVEN two middlewares, the first drops
    calls: list[str] = []

    def first(event: dict[str, Any]) -> None:
        calls.append("first")

    def second(event: dict[str, Any]) -> dict[str, Any]:
        calls.append("second")
        return event

    client = _client(middleware=[first, second])
    # WHEN / THEN the second never runs
    assert client.track("e", user_id="user-1") is None
    assert calls == ["first"]


@pytest.mark.parametrize("garbage", [[1, 2], "event", 42, ("event_type", "x")])
def test_middleware_returning_garbage_is_refused(garbage: Any) -> None:
    client = _client(middleware=[lambda e: garbage])
    _refused(client, r"^event: middleware must return a dict or None, got \w+", "e",
             user_id="user-1")


def test_middleware_returning_dict_with_bad_field_is_refused() -> None:
    client = _client(middleware=[lambda e: {**e, "user_id": 12345}])
    _refused(client, r"^user_id: must be a string", "e", user_id="user-1")


def test_middleware_removing_event_type_is_refused() -> None:
    client = _client(middleware=[lambda e: {k: v for k, v in e.items() if k != "event_type"}])
    _refused(client, r"^event_type: required", "e", user_id="user-1")


@pytest.mark.parametrize("drop", ["time", "insert_id"])
def test_middleware_dropping_stamps_gets_them_back(fake: FakeAmplitude, drop: str) -> None:
    # GIVEN a middleware that returns the event without `time` or `insert_id`
    def strip(event: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in event.items() if k != drop}

    client = Amplitude(API_KEY, server_url=fake.url, overflow=(), middleware=[strip])
    # WHEN tracked and flushed
    insert_id = client.track("e", user_id="user-1")
    client.flush()
    # THEN the event is stamped again rather than failing with a KeyError
    event = fake.events[0]
    assert isinstance(event["time"], int)
    assert event["time"] >= 100_000_000_000
    assert event["insert_id"] == insert_id


# -- enabled=False ---------------------------------------------------------------------------


def test_disabled_client_tracks_nothing_and_sends_nothing(fake: FakeAmplitude) -> None:
    # GIVEN a disabled client aimed at the fake
    client = Amplitude(API_KEY, server_url=fake.url, overflow=(), enabled=False)
    # WHEN every tracking call is made, even with invalid input
    results = [
        client.track("e", user_id="user-1"),
        client.track("", price=float("nan")),
        client.track(Event("e", user_id="user-1")),
        client.identify(Identify().set("a", 1), user_id="user-1"),
    ]
    report = client.flush()
    # THEN each returns None, nothing is buffered, and nothing is sent
    assert results == [None, None, None, None]
    assert client.pending == 0
    assert report.tracked == 0
    assert fake.requests == []


def test_disabled_by_environment(monkeypatch: pytest.MonkeyPatch, fake: FakeAmplitude) -> None:
    monkeypatch.setenv("AMP_LITE_ENABLED", "false")
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())
    assert client.track("e", user_id="user-1") is None
    client.flush()
    assert fake.requests == []
