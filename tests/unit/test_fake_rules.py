"""FakeAmplitude's rules (`_fake_rules.answer`), without a server: request in, reply out."""

from __future__ import annotations

import gzip
import json
from typing import Any

from amp_lite.testing._fake_rules import (
    Reply,
    Request,
    ServerState,
    Throttle,
    answer,
    deduplicate,
)

NOW_MS = 1_700_000_000_000
KEY = "test-key"


def _event(i: int = 0, **fields: Any) -> dict[str, Any]:
    return {"event_type": "e", "user_id": f"user-{i}", "insert_id": f"id-{i}", **fields}


def _answer(events: list[dict[str, Any]], state: ServerState | None = None, *,
            path: str = "/2/httpapi", gzipped: bool = False) -> Reply:
    body = json.dumps({"api_key": KEY, "events": events}).encode()
    request = Request(path, gzip.compress(body) if gzipped else body,
                      content_encoding="gzip" if gzipped else "")
    return answer(request, state or ServerState(), NOW_MS)


def test_valid_request_is_ingested() -> None:
    # GIVEN two valid events, gzipped / WHEN answered
    events = [_event(0), _event(1)]
    reply = _answer(events, gzipped=True)
    # THEN 200 with the count, and both events are to be ingested
    assert reply.status == 200
    assert reply.body["events_ingested"] == 2
    assert reply.body["server_upload_time"] == NOW_MS
    assert reply.ingest == events


def test_invalid_id_is_refused_with_its_index_and_nothing_ingested() -> None:
    # GIVEN a valid event then one whose device_id is on Amplitude's invalid list
    reply = _answer([_event(0), _event(1, device_id="Anonymous")])
    # THEN 400 naming index 1 under device_id, and nothing of the request is ingested
    assert reply.status == 400
    assert reply.body["events_with_invalid_fields"] == {"device_id": [1]}
    assert reply.ingest == []


def test_short_id_is_reported_under_invalid_id_lengths() -> None:
    reply = _answer([_event(0, user_id="abc")])
    assert reply.status == 400
    assert reply.body["events_with_invalid_id_lengths"] == {"user_id": [0]}


def test_over_2000_events_is_too_large() -> None:
    # GIVEN 2001 events / WHEN answered / THEN 413 with Amplitude's body
    reply = _answer([_event(i) for i in range(2001)])
    assert (reply.status, reply.body) == (413, {"code": 413, "error": "Payload too large"})
    assert reply.events == 2001


def test_unknown_api_key_is_refused_when_keys_are_restricted() -> None:
    # GIVEN a server that only knows another key / WHEN our key sends
    reply = _answer([_event()], ServerState(api_keys=frozenset({"other-key"})))
    # THEN Amplitude's "Invalid API key: <key>" 400
    assert reply.status == 400
    assert reply.body["error"] == f"Invalid API key: {KEY}"


def test_throttled_user_gets_429_listing_its_events() -> None:
    # GIVEN user-1 throttled / WHEN a request holds events of user-0 and user-1
    state = ServerState(throttles=(Throttle(users=frozenset({"user-1"})),))
    reply = _answer([_event(0), _event(1)], state)
    # THEN 429 listing only user-1's event, nothing ingested
    assert reply.status == 429
    assert reply.body["throttled_events"] == [1]
    assert reply.body["throttled_users"] == {"user-1": 31}
    assert reply.ingest == []


def test_unknown_path_is_404() -> None:
    reply = _answer([_event()], path="/3/httpapi")
    assert (reply.status, reply.body["error"]) == (404, "Invalid request path")


def test_deduplicate_skips_seen_and_repeated_insert_ids() -> None:
    # GIVEN id-0 already seen / WHEN id-0, id-1 and id-1 again arrive
    fresh = deduplicate([_event(0), _event(1), _event(1)], {("user:user-0", "id-0")})
    # THEN only the first id-1 is new; the seen set itself is left to the caller
    assert fresh.events == [_event(1)]
    assert fresh.keys == {("user:user-1", "id-1")}
    assert fresh.duplicates == 2
