"""Event, Identify and Revenue: rules, shapes, equality, and how track() takes them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from amp_lite import Amplitude, Event, Identify, InvalidEventError, Revenue
from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY

NOW_MS = 1_700_000_000_000


def _client(fake: FakeAmplitude | None = None) -> Amplitude:
    if fake is None:
        return Amplitude(API_KEY, overflow=())
    return Amplitude(API_KEY, server_url=fake.url, overflow=())


# -- Identify --------------------------------------------------------------------------------


OPERATIONS: list[tuple[str, str, Any]] = [
    ("set", "$set", "pro"),
    ("set_once", "$setOnce", "2024-01-01"),
    ("add", "$add", 3),
    ("append", "$append", "tag"),
    ("prepend", "$prepend", ["a", "b"]),
    ("pre_insert", "$preInsert", "first"),
    ("post_insert", "$postInsert", "last"),
    ("remove", "$remove", "gone"),
]


@pytest.mark.parametrize(("method", "operation", "value"), OPERATIONS)
def test_identify_operation_shape(method: str, operation: str, value: Any) -> None:
    # GIVEN an Identify / WHEN one operation is added
    identify = getattr(Identify(), method)("k", value)
    # THEN user_properties holds {operation: {key: value}}
    assert identify.user_properties == {operation: {"k": value}}
    assert not identify.is_empty()


def test_identify_unset_uses_dash() -> None:
    assert Identify().unset("k").user_properties == {"$unset": {"k": "-"}}


def test_identify_clear_all_uses_dash_and_replaces_earlier_operations() -> None:
    # GIVEN an Identify with operations
    identify = Identify().set("a", 1).add("n", 2)
    # WHEN clear_all is called
    identify.clear_all()
    # THEN only $clearAll is left
    assert identify.user_properties == {"$clearAll": "-"}


def test_identify_all_operations_together() -> None:
    # GIVEN / WHEN every operation on distinct keys, two keys for $set
    identify = Identify()
    for i, (method, _operation, value) in enumerate(OPERATIONS):
        getattr(identify, method)(f"k{i}", value)
    identify.set("extra", True).unset("old")
    # THEN each operation groups its keys
    expected: dict[str, Any] = {op: {f"k{i}": value}
                                for i, (_m, op, value) in enumerate(OPERATIONS)}
    expected["$set"]["extra"] = True
    expected["$unset"] = {"old": "-"}
    assert identify.user_properties == expected


def test_identify_methods_chain() -> None:
    identify = Identify()
    assert identify.set("a", 1) is identify
    assert identify.unset("b") is identify
    assert identify.clear_all() is identify


@pytest.mark.parametrize("second", [m for m, _o, _v in OPERATIONS] + ["unset"])
def test_identify_one_operation_per_key(second: str) -> None:
    # GIVEN an Identify that already sets "k"
    identify = Identify().set_once("k", 1)
    # WHEN any operation on "k" is added
    args: tuple[Any, ...] = ("k",) if second == "unset" else ("k", 2)
    with pytest.raises(InvalidEventError, match=r"\('k'\): key already has an operation"):
        getattr(identify, second)(*args)
    # THEN the first operation is unchanged
    assert identify.user_properties == {"$setOnce": {"k": 1}}


@pytest.mark.parametrize("method", [m for m, _o, _v in OPERATIONS] + ["unset"])
def test_identify_nothing_after_clear_all(method: str) -> None:
    # GIVEN an Identify that clears everything
    identify = Identify().clear_all()
    # WHEN another operation follows
    args: tuple[Any, ...] = ("k",) if method == "unset" else ("k", 1)
    with pytest.raises(InvalidEventError, match=rf"Identify\.{method}\('k'\): no operation may "
                                                r"follow clear_all\(\)"):
        getattr(identify, method)(*args)
    # THEN it is still only $clearAll
    assert identify.user_properties == {"$clearAll": "-"}


@pytest.mark.parametrize("value", ["3", True, None, [1], {"n": 1}])
def test_identify_add_needs_a_number(value: Any) -> None:
    with pytest.raises(InvalidEventError, match=r"Identify\.add\('n'\): value must be a number"):
        Identify().add("n", value)


@pytest.mark.parametrize("value", [1, -2.5, 0])
def test_identify_add_accepts_numbers(value: float) -> None:
    assert Identify().add("n", value).user_properties == {"$add": {"n": value}}


@pytest.mark.parametrize("method", [m for m, _o, _v in OPERATIONS if m != "add"])
def test_identify_none_value_is_refused(method: str) -> None:
    identify = Identify()
    with pytest.raises(InvalidEventError, match=rf"Identify\.{method}\('k'\): value must not be "
                                                r"None"):
        getattr(identify, method)("k", None)
    assert identify.is_empty()


@pytest.mark.parametrize("key", ["", None, 5])
def test_identify_key_must_be_non_empty_string(key: Any) -> None:
    with pytest.raises(InvalidEventError, match=r"Identify\.set: key must be a non-empty string"):
        Identify().set(key, 1)


def test_identify_refused_operation_leaves_it_usable() -> None:
    # GIVEN an Identify whose second operation was refused
    identify = Identify().set("a", 1)
    with pytest.raises(InvalidEventError):
        identify.add("b", "x")
    # WHEN the key is used correctly afterwards / THEN it is accepted (not marked as taken)
    identify.add("b", 2)
    assert identify.user_properties == {"$set": {"a": 1}, "$add": {"b": 2}}


def test_identify_user_properties_is_a_copy() -> None:
    # GIVEN an Identify / WHEN its user_properties are changed by the caller
    identify = Identify().set("a", 1)
    identify.user_properties["$set"]["b"] = 2
    # THEN the Identify is unchanged
    assert identify.user_properties == {"$set": {"a": 1}}


def test_empty_identify_is_refused_by_the_client() -> None:
    client = _client()
    with pytest.raises(InvalidEventError, match=r"^identify: the Identify has no operations"):
        client.identify(Identify(), user_id="user-1")
    assert client.pending == 0


def test_identify_must_be_an_identify_object() -> None:
    client = _client()
    with pytest.raises(InvalidEventError, match=r"^identify: identify must be amp_lite\.Identify"):
        client.identify({"$set": {"a": 1}}, user_id="user-1")  # type: ignore[arg-type]
    assert client.pending == 0


def test_identify_event_on_the_wire(fake: FakeAmplitude) -> None:
    # GIVEN an identify with several operations
    client = _client(fake)
    client.identify(Identify().set("plan", "pro").unset("trial"), user_id="user-1")
    # WHEN flushed
    client.flush()
    # THEN an $identify event carries them as user_properties
    event = fake.events[0]
    assert event["event_type"] == "$identify"
    assert event["user_id"] == "user-1"
    assert event["user_properties"] == {"$set": {"plan": "pro"}, "$unset": {"trial": "-"}}


def test_clear_all_on_the_wire(fake: FakeAmplitude) -> None:
    client = _client(fake)
    client.identify(Identify().clear_all(), device_id="device-1")
    client.flush()
    assert fake.events[0]["user_properties"] == {"$clearAll": "-"}


def test_group_identify_on_the_wire_needs_no_id(fake: FakeAmplitude) -> None:
    # GIVEN a group identify without user or device id
    client = _client(fake)
    client.group_identify("org", "acme", Identify().set("tier", "gold"))
    # WHEN flushed
    client.flush()
    # THEN a $groupidentify event with groups and group_properties is delivered
    event = fake.events[0]
    assert event["event_type"] == "$groupidentify"
    assert event["groups"] == {"org": "acme"}
    assert event["group_properties"] == {"$set": {"tier": "gold"}}
    assert "user_id" not in event


@pytest.mark.parametrize(("group_type", "group_name", "pattern"), [
    ("", "acme", r"^group_type: must be a non-empty string"),
    (None, "acme", r"^group_type: must be a non-empty string"),
    ("org", "", r"^group_name: must be a non-empty string or a list"),
    ("org", [], r"^group_name: must be a non-empty string or a list"),
    ("org", ["a", 1], r"^group_name: must be a non-empty string or a list"),
])
def test_bad_group_is_refused(group_type: Any, group_name: Any, pattern: str) -> None:
    client = _client()
    with pytest.raises(InvalidEventError, match=pattern):
        client.set_group(group_type, group_name, user_id="user-1")
    with pytest.raises(InvalidEventError, match=pattern):
        client.group_identify(group_type, group_name, Identify().set("a", 1))
    assert client.pending == 0


def test_set_group_on_the_wire(fake: FakeAmplitude) -> None:
    client = _client(fake)
    client.set_group("org", ["acme", "globex"], user_id="user-1")
    client.flush()
    event = fake.events[0]
    assert event["event_type"] == "$identify"
    assert event["groups"] == {"org": ["acme", "globex"]}
    assert event["user_properties"] == {"$set": {"org": ["acme", "globex"]}}


# -- Revenue ---------------------------------------------------------------------------------


def test_revenue_event_properties_shape() -> None:
    # GIVEN a revenue with every field and extra properties
    revenue = Revenue(price=9.99, quantity=2, product_id="sku-1", revenue_type="sale",
                      receipt="r-1", receipt_sig="sig", properties={"coupon": "X"},
                      revenue=19.98, currency="EUR")
    # WHEN / THEN the properties are $-prefixed, extra ones kept
    assert revenue.event_properties() == {
        "coupon": "X", "$productId": "sku-1", "$quantity": 2, "$price": 9.99,
        "$revenueType": "sale", "$receipt": "r-1", "$receiptSig": "sig", "$revenue": 19.98,
        "$currency": "EUR",
    }


def test_revenue_event_properties_leave_out_none() -> None:
    # GIVEN a minimal revenue / WHEN / THEN only the set fields are present
    assert Revenue(price=1.5).event_properties() == {"$quantity": 1, "$price": 1.5}


def test_revenue_none_fields_are_not_sent(fake: FakeAmplitude) -> None:
    # GIVEN a minimal revenue / WHEN sent
    client = _client(fake)
    client.revenue(Revenue(price=1.5), user_id="user-1")
    client.flush()
    # THEN the wire holds only the set fields
    event = fake.events[0]
    assert event["event_type"] == "revenue_amount"
    assert event["event_properties"] == {"$quantity": 1, "$price": 1.5}


def test_revenue_fixed_fields_override_same_named_properties() -> None:
    revenue = Revenue(price=2.0, properties={"$price": 999, "note": "n"})
    assert revenue.event_properties()["$price"] == 2.0
    assert revenue.event_properties()["note"] == "n"


def test_revenue_set_receipt() -> None:
    revenue = Revenue(price=1.0)
    assert revenue.set_receipt("rcpt", "sig") is revenue
    props = revenue.event_properties()
    assert (props["$receipt"], props["$receiptSig"]) == ("rcpt", "sig")


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"price": "9.99"}, r"^Revenue\.price: must be a number"),
    ({"price": True}, r"^Revenue\.price: must be a number"),
    ({"price": 1.0, "quantity": 1.5}, r"^Revenue\.quantity: must be an integer"),
    ({"price": 1.0, "quantity": True}, r"^Revenue\.quantity: must be an integer"),
    ({"price": 1.0, "properties": [1]}, r"^Revenue\.properties: must be a mapping"),
])
def test_bad_revenue_is_refused(kwargs: dict[str, Any], pattern: str) -> None:
    client = _client()
    with pytest.raises(InvalidEventError, match=pattern):
        client.revenue(Revenue(**kwargs), user_id="user-1")
    assert client.pending == 0


def test_revenue_must_be_a_revenue_object() -> None:
    client = _client()
    with pytest.raises(InvalidEventError, match=r"^revenue: must be amp_lite\.Revenue"):
        client.revenue({"price": 1.0}, user_id="user-1")  # type: ignore[arg-type]


# -- Event -----------------------------------------------------------------------------------


def test_event_equality() -> None:
    a = Event("signup", user_id="user-1", event_properties={"plan": "pro"})
    assert a == Event("signup", user_id="user-1", event_properties={"plan": "pro"})
    assert a != Event("signup", user_id="user-2", event_properties={"plan": "pro"})
    assert a != Event("login", user_id="user-1", event_properties={"plan": "pro"})
    assert a != "signup"


def test_event_is_not_hashable() -> None:
    with pytest.raises(TypeError):
        hash(Event("e"))


def test_event_repr() -> None:
    assert repr(Event("signup", user_id="user-1")) == "Event('signup', user_id='user-1')"
    assert repr(Event("ping")) == "Event('ping')"


def test_track_event_object_equals_keyword_form(fake: FakeAmplitude) -> None:
    # GIVEN the same event as keywords and as an Event object
    fields: dict[str, Any] = {
        "user_id": "user-1", "device_id": "device-1", "event_properties": {"a": [1, 2]},
        "user_properties": {"b": "c"}, "groups": {"org": "acme"}, "time": NOW_MS,
        "product_id": "sku", "price": 1.25, "quantity": 2, "session_id": NOW_MS - 5,
    }
    client = _client(fake)
    # WHEN both are tracked and flushed
    keyword_id = client.track("e", insert_id="id-keyword", **fields)
    object_id = client.track(Event("e", insert_id="id-object", **fields))
    client.flush()
    # THEN they are identical but for insert_id
    assert (keyword_id, object_id) == ("id-keyword", "id-object")
    first, second = ({k: v for k, v in e.items() if k != "insert_id"} for e in fake.events)
    assert first == second
    assert first["productId"] == "sku"


@pytest.mark.parametrize("extra", [{"user_id": "user-2"}, {"time": NOW_MS},
                                   {"event_properties": {}}, {"platform": "ios"}])
def test_mixing_event_and_keywords_is_refused(extra: dict[str, Any]) -> None:
    client = _client()
    with pytest.raises(InvalidEventError, match=r"^track: pass either an Event or keyword "
                                                r"fields, not both"):
        client.track(Event("e", user_id="user-1"), **extra)
    assert client.pending == 0


def test_event_object_is_validated_like_keywords() -> None:
    client = _client()
    with pytest.raises(InvalidEventError, match=r"^price: must be a number"):
        client.track(Event("e", user_id="user-1", price="1"))
    assert client.pending == 0


def test_track_returns_insert_id(fake: FakeAmplitude) -> None:
    client = _client(fake)
    insert_id = client.track(Event("e", user_id="user-1"))
    client.flush()
    assert fake.events[0]["insert_id"] == insert_id


ClientCall = Callable[[Amplitude], Any]


@pytest.mark.parametrize("call", [
    lambda c: c.identify(Identify().set("a", float("nan")), user_id="user-1"),
    lambda c: c.identify(Identify().set("a", 1), user_id="nil"),
    lambda c: c.group_identify("org", "acme", Identify().set("a", b"x")),
    lambda c: c.revenue(Revenue(price=float("inf")), user_id="user-1"),
])
def test_helper_calls_are_validated_before_buffering(call: ClientCall) -> None:
    client = _client()
    with pytest.raises(InvalidEventError):
        call(client)
    assert client.pending == 0
