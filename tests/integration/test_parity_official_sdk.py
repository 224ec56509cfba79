"""Wire parity with the official Python SDK (amplitude-analytics 1.3.0).

Both SDKs make the same calls against two FakeAmplitude servers on 127.0.0.1; the events they
deliver must be equal except `library`, `insert_id` and `time` (stamped per SDK and per call).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator
from typing import Any

import amplitude
import pytest

import amp_lite
from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY

STAMPED = ("library", "insert_id", "time")

OfficialCalls = Callable[[amplitude.Amplitude], None]
AmpLiteCalls = Callable[[amp_lite.Amplitude], None]


class Tier(enum.Enum):
    GOLD = "gold"


@pytest.fixture
def official_fake() -> Iterator[FakeAmplitude]:
    with FakeAmplitude() as server:
        yield server


def _official_events(fake: FakeAmplitude, calls: OfficialCalls, count: int,
                     **config: Any) -> list[dict[str, Any]]:
    client = amplitude.Amplitude(API_KEY, amplitude.Config(
        # A short interval: the official consumer thread sleeps for it and is not woken by
        # shutdown(), so a long one would keep the test process alive that long.
        server_url=fake.url, flush_queue_size=1000, flush_interval_millis=100, **config))
    try:
        calls(client)
        for future in client.flush():
            if future is not None:
                future.result(timeout=10)
        assert fake.wait_for_events(count, timeout_s=10), fake.requests
    finally:
        client.shutdown()
    return list(fake.events)


def _amp_lite_events(fake: FakeAmplitude, calls: AmpLiteCalls, count: int,
                     **config: Any) -> list[dict[str, Any]]:
    client = amp_lite.Amplitude(API_KEY, server_url=fake.url, overflow=(), **config)
    calls(client)
    report = client.flush()
    assert report.delivered == count, report
    return list(fake.events)


def _strip(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events without their stamps, in a canonical order: the official SDK may send them in
    concurrent requests (its worker pool), so arrival order is not call order."""
    stripped = [{k: v for k, v in e.items() if k not in STAMPED} for e in events]
    return sorted(stripped, key=lambda e: json.dumps(e, sort_keys=True))


def _assert_same_wire(official: list[dict[str, Any]], ours: list[dict[str, Any]]) -> None:
    assert len(ours) == len(official)
    for theirs, mine in zip(_strip(official), _strip(ours), strict=True):
        assert mine == theirs
    for event in ours:
        assert event["library"] == f"amp-lite/{amp_lite.__version__}"
        assert isinstance(event["time"], int)
        assert isinstance(event["insert_id"], str)
        assert event["insert_id"]


TRACK_FIELDS: dict[str, Any] = {
    "user_id": "user-12345",
    "device_id": "device-67890",
    "event_properties": {"plan": "pro", "count": 3, "ratio": 0.5, "flag": True,
                         "tags": ["a", "b"], "nested": {"k": "v", "inner_none": None},
                         "dropped": None, "tier": Tier.GOLD, "long": "x" * 2000},
    "user_properties": {"age": 42, "gone": None},
    "groups": {"org": "acme", "team": ["red", "blue"]},
    "app_version": "1.2.3", "platform": "Lambda", "os_name": "Linux", "os_version": "6.1",
    "device_brand": "aws", "device_manufacturer": "amazon", "device_model": "arm64",
    "carrier": "none", "country": "Ireland", "region": "Leinster", "city": "Dublin",
    "dma": "n/a", "language": "en-IE", "price": 9.99, "quantity": 3, "revenue": 29.97,
    "product_id": "sku-1", "revenue_type": "purchase", "currency": "EUR",
    "location_lat": 53.35, "location_lng": -6.26, "ip": "127.0.0.1", "idfa": "idfa-1",
    "idfv": "idfv-1", "adid": "adid-1", "android_id": "android-1", "event_id": 7,
    "session_id": 1_700_000_000_000, "partner_id": "partner-1", "user_agent": "Mozilla/5.0",
}


def _official_track_all_fields(client: amplitude.Amplitude) -> None:
    event = amplitude.BaseEvent("Song Played", **TRACK_FIELDS)
    event["version_name"] = "v-name"  # an EventOptions field BaseEvent() does not take
    client.track(event)


def test_plain_track_matches(fake: FakeAmplitude, official_fake: FakeAmplitude) -> None:
    # GIVEN an event with properties, groups and many extra top-level fields
    # WHEN each SDK tracks it
    official = _official_events(official_fake, _official_track_all_fields, 1)
    ours = _amp_lite_events(
        fake, lambda c: c.track("Song Played", version_name="v-name", **TRACK_FIELDS), 1)
    # THEN the wire events match (None properties left out, long strings cut, enum values)
    _assert_same_wire(official, ours)
    assert ours[0]["productId"] == "sku-1"
    assert "dropped" not in ours[0]["event_properties"]
    assert official[0]["version_name"] == "v-name"


def test_track_with_explicit_time_and_insert_id_matches_exactly(
        fake: FakeAmplitude, official_fake: FakeAmplitude) -> None:
    # GIVEN an event whose time and insert_id are set by the caller
    fields = {"user_id": "user-12345", "time": 1_700_000_000_123, "insert_id": "fixed-id-1"}
    # WHEN each SDK tracks it
    official = _official_events(official_fake,
                                lambda c: c.track(amplitude.BaseEvent("e", **fields)), 1)
    ours = _amp_lite_events(fake, lambda c: c.track("e", **fields), 1)
    # THEN everything but library is identical
    assert len(ours) == len(official) == 1
    assert {k: v for k, v in ours[0].items() if k != "library"} == {
        k: v for k, v in official[0].items() if k != "library"}


def test_track_event_object_matches(fake: FakeAmplitude, official_fake: FakeAmplitude) -> None:
    official = _official_events(
        official_fake, lambda c: c.track(amplitude.BaseEvent("e", user_id="user-12345",
                                                             event_properties={"a": 1})), 1)
    ours = _amp_lite_events(
        fake, lambda c: c.track(amp_lite.Event("e", user_id="user-12345",
                                               event_properties={"a": 1})), 1)
    _assert_same_wire(official, ours)


def _every_operation(identify: Any) -> Any:
    return (identify.set("plan", "pro").set_once("first_seen", "2024-01-01").add("logins", 1)
            .append("tags", "new").prepend("history", ["x", "y"]).pre_insert("queue", "head")
            .post_insert("queue_tail", "tail").remove("old_tags", "stale").unset("trial"))


def test_identify_with_every_operation_matches(fake: FakeAmplitude,
                                               official_fake: FakeAmplitude) -> None:
    # GIVEN an identify using every operation, and one clearing all properties
    def official_calls(client: amplitude.Amplitude) -> None:
        client.identify(_every_operation(amplitude.Identify()),
                        amplitude.EventOptions(user_id="user-12345"))
        client.identify(amplitude.Identify().clear_all(),
                        amplitude.EventOptions(device_id="device-67890"))

    def our_calls(client: amp_lite.Amplitude) -> None:
        client.identify(_every_operation(amp_lite.Identify()), user_id="user-12345")
        client.identify(amp_lite.Identify().clear_all(), device_id="device-67890")

    # WHEN each SDK sends them
    official = _official_events(official_fake, official_calls, 2)
    ours = _amp_lite_events(fake, our_calls, 2)
    # THEN the $identify events match
    _assert_same_wire(official, ours)
    assert ours[0]["user_properties"]["$unset"] == {"trial": "-"}
    assert ours[1]["user_properties"] == {"$clearAll": "-"}


def test_identify_with_extra_event_fields_matches(fake: FakeAmplitude,
                                                  official_fake: FakeAmplitude) -> None:
    official = _official_events(
        official_fake, lambda c: c.identify(
            amplitude.Identify().set("a", 1),
            amplitude.EventOptions(user_id="user-12345", platform="Lambda", app_version="2.0")),
        1)
    ours = _amp_lite_events(
        fake, lambda c: c.identify(amp_lite.Identify().set("a", 1), user_id="user-12345",
                                   platform="Lambda", app_version="2.0"), 1)
    _assert_same_wire(official, ours)


def test_group_identify_matches(fake: FakeAmplitude, official_fake: FakeAmplitude) -> None:
    # GIVEN group identifies with and without a user id
    def official_calls(client: amplitude.Amplitude) -> None:
        client.group_identify("org", "acme", amplitude.Identify().set("tier", "gold").add("n", 2),
                              amplitude.EventOptions(user_id="user-12345"))
        client.group_identify("org", "globex", amplitude.Identify().unset("tier"))

    def our_calls(client: amp_lite.Amplitude) -> None:
        client.group_identify("org", "acme", amp_lite.Identify().set("tier", "gold").add("n", 2),
                              user_id="user-12345")
        client.group_identify("org", "globex", amp_lite.Identify().unset("tier"))

    # WHEN each SDK sends them
    official = _official_events(official_fake, official_calls, 2)
    ours = _amp_lite_events(fake, our_calls, 2)
    # THEN the $groupidentify events match
    _assert_same_wire(official, ours)
    assert ours[1]["event_type"] == "$groupidentify"


def test_set_group_matches(fake: FakeAmplitude, official_fake: FakeAmplitude) -> None:
    # GIVEN a user put in one group and in a list of groups
    def official_calls(client: amplitude.Amplitude) -> None:
        client.set_group("org", "acme", amplitude.EventOptions(user_id="user-12345"))
        client.set_group("team", ["red", "blue"], amplitude.EventOptions(device_id="device-678"))

    def our_calls(client: amp_lite.Amplitude) -> None:
        client.set_group("org", "acme", user_id="user-12345")
        client.set_group("team", ["red", "blue"], device_id="device-678")

    # WHEN / THEN both send the same $identify events
    _assert_same_wire(_official_events(official_fake, official_calls, 2),
                      _amp_lite_events(fake, our_calls, 2))


def test_revenue_matches(fake: FakeAmplitude, official_fake: FakeAmplitude) -> None:
    # GIVEN a full revenue and a minimal one
    full = {"price": 9.99, "quantity": 2, "product_id": "sku-1", "revenue_type": "purchase",
            "receipt": "rcpt-1", "receipt_sig": "sig-1", "currency": "EUR",
            "properties": {"coupon": "SPRING", "gift": True}}

    def official_calls(client: amplitude.Amplitude) -> None:
        client.revenue(amplitude.Revenue(**full), amplitude.EventOptions(user_id="user-12345"))
        client.revenue(amplitude.Revenue(price=1.5, revenue=3.0),
                       amplitude.EventOptions(device_id="device-67890"))

    def our_calls(client: amp_lite.Amplitude) -> None:
        client.revenue(amp_lite.Revenue(**full), user_id="user-12345")
        client.revenue(amp_lite.Revenue(price=1.5, revenue=3.0), device_id="device-67890")

    # WHEN each SDK sends them
    official = _official_events(official_fake, official_calls, 2)
    ours = _amp_lite_events(fake, our_calls, 2)
    # THEN the revenue_amount events match
    _assert_same_wire(official, ours)
    assert ours[0]["event_type"] == "revenue_amount"
    assert ours[0]["event_properties"]["$productId"] == "sku-1"


def test_plan_and_ingestion_metadata_match(fake: FakeAmplitude,
                                           official_fake: FakeAmplitude) -> None:
    # GIVEN both clients configured with a plan and ingestion metadata
    official_config = {
        "plan": amplitude.Plan(branch="main", source="lambda", version="3", version_id="vid-1"),
        "ingestion_metadata": amplitude.IngestionMetadata(source_name="ampli",
                                                          source_version="2.0.0"),
    }
    our_config = {
        "plan": amp_lite.Plan(branch="main", source="lambda", version="3", version_id="vid-1"),
        "ingestion_metadata": amp_lite.IngestionMetadata(source_name="ampli",
                                                         source_version="2.0.0"),
    }

    def official_calls(client: amplitude.Amplitude) -> None:
        client.track(amplitude.BaseEvent("e", user_id="user-12345"))
        client.identify(amplitude.Identify().set("a", 1),
                        amplitude.EventOptions(user_id="user-12345"))
        client.group_identify("org", "acme", amplitude.Identify().set("b", 2))
        client.revenue(amplitude.Revenue(price=2.0), amplitude.EventOptions(user_id="user-12345"))

    def our_calls(client: amp_lite.Amplitude) -> None:
        client.track("e", user_id="user-12345")
        client.identify(amp_lite.Identify().set("a", 1), user_id="user-12345")
        client.group_identify("org", "acme", amp_lite.Identify().set("b", 2))
        client.revenue(amp_lite.Revenue(price=2.0), user_id="user-12345")

    # WHEN each SDK sends four kinds of event
    official = _official_events(official_fake, official_calls, 4, **official_config)
    ours = _amp_lite_events(fake, our_calls, 4, **our_config)
    # THEN every event carries the same plan (versionId) and metadata
    _assert_same_wire(official, ours)
    assert all(e["plan"] == {"branch": "main", "source": "lambda", "version": "3",
                             "versionId": "vid-1"} for e in ours)
    assert all(e["ingestion_metadata"] == {"source_name": "ampli", "source_version": "2.0.0"}
               for e in ours)


def test_partial_plan_matches(fake: FakeAmplitude, official_fake: FakeAmplitude) -> None:
    official = _official_events(
        official_fake, lambda c: c.track(amplitude.BaseEvent("e", user_id="user-12345")), 1,
        plan=amplitude.Plan(version_id="vid-only"))
    ours = _amp_lite_events(fake, lambda c: c.track("e", user_id="user-12345"), 1,
                            plan={"version_id": "vid-only"})
    _assert_same_wire(official, ours)


def test_library_names_amp_lite_and_its_version(fake: FakeAmplitude) -> None:
    # GIVEN / WHEN amp_lite sends an event
    ours = _amp_lite_events(fake, lambda c: c.track("e", user_id="user-12345"), 1)
    # THEN library is amp-lite/<version>
    assert ours[0]["library"] == f"amp-lite/{amp_lite.__version__}"
    assert amp_lite.__version__
