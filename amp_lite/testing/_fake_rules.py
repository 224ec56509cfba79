"""Amplitude's ingestion rules as pure functions: one request in, one reply out.

FakeAmplitude's server (`_fake_server.py`) feeds every POST through `answer()` and only keeps the
state: accepted events, throttles, de-duplication keys. No sockets, no threads, no clock here
(the caller passes `now_ms`), so each rule can be unit-tested on its own.

Sources: https://amplitude.com/docs/apis/analytics/http-v2 and
https://amplitude.com/docs/apis/analytics/batch-event-upload. This module deliberately imports
nothing from the SDK: a test oracle that shared the SDK's tables could not catch a wrong one.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, NamedTuple

HTTP_V2_PATH = "/2/httpapi"
BATCH_PATH = "/batch"
PATHS = frozenset({HTTP_V2_PATH, BATCH_PATH})

# "Keep request sizes under 1 MB with fewer than 2000 events per request" (HTTP V2); Batch:
# "must not exceed 20MB", "The limit per batch is 2000 events". Both answer 413 beyond.
MAX_EVENTS_PER_REQUEST = 2000
MAX_REQUEST_BYTES = 1_000_000
MAX_BATCH_REQUEST_BYTES = 20_000_000

DEFAULT_MIN_ID_LENGTH = 5  # overridable per request with options.min_id_length
GROUP_IDENTIFY = "$groupidentify"  # the one event type that needs neither user_id nor device_id

# HTTP V2 docs, "Invalid IDs": "These IDs are invalid, and result in a 400 error"
# (https://amplitude.com/docs/apis/analytics/http-v2). The docs list `""""`, read here as the
# two-character id `""`. The docs do not say whether case matters: compared case-insensitively.
AMPLITUDE_INVALID_IDS = frozenset({
    "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", '""',
    "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1",
})

INVALID_JSON = "Invalid JSON request body"
THROTTLED_EPS = 31  # reported rate of a throttled id: just over the 30 events/s limit
EXCEEDED_DAILY_QUOTA = 500_001  # reported count of an id over the 500,000 events/day quota

# Reply bodies as the docs show them (403 is the WAF's answer, never produced by `answer`).
STANDARD_BODIES: dict[int, dict[str, Any]] = {
    403: {"code": 403, "error": "Forbidden"},
    413: {"code": 413, "error": "Payload too large"},
    429: {"code": 429, "error": "Too many requests for some devices and users",
          "eps_threshold": 30},
}


@dataclass(frozen=True)
class Request:
    """What the rules need of one POST: its path, the two headers that decide decoding, body."""

    path: str
    body: bytes
    content_type: str = "application/json"
    content_encoding: str = ""

    @property
    def gzipped(self) -> bool:
        return self.content_encoding.lower() == "gzip"


@dataclass(frozen=True)
class Throttle:
    """Answer 429 to requests holding events of these ids (optionally as over the daily quota)."""

    users: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    daily_quota: bool = False


@dataclass(frozen=True)
class ServerState:
    """The server's settings that change its answers. `api_keys=None` accepts any key."""

    api_keys: frozenset[str] | None = None
    throttles: tuple[Throttle, ...] = ()


@dataclass(frozen=True)
class Reply:
    """The answer: status, JSON body, events counted in the request, and the events to ingest
    (non-empty only on 200: Amplitude ingests nothing of a refused request)."""

    status: int
    body: dict[str, Any]
    events: int = 0
    ingest: list[dict[str, Any]] = field(default_factory=list)


class Fresh(NamedTuple):
    """`deduplicate()`'s result: events not seen before, their keys, how many were repeats."""

    events: list[dict[str, Any]]
    keys: set[tuple[str, str]]
    duplicates: int


def answer(request: Request, state: ServerState, now_ms: int) -> Reply:
    """Validate one request as Amplitude does and say what it answers and what it ingests."""
    if request.path not in PATHS:
        return _error(404, "Invalid request path")
    raw = _decompressed(request)
    if raw is None:
        return _error(400, INVALID_JSON)
    if not request.content_type.lower().startswith("application/json"):
        return _error(400, "Content-Type must be application/json")
    payload = _json_object(raw)
    if payload is None:
        return _error(400, INVALID_JSON)
    events = payload.get("events")
    count = len(events) if isinstance(events, list) else 0
    refusal = _refuse_request(request.path, payload, len(raw), count, state.api_keys)
    if refusal is not None:
        return refusal
    if not isinstance(events, list):
        return _error(400, "Invalid event JSON")
    problems = validate_events(events, _min_id_length(payload.get("options")))
    if problems:
        body = {"code": 400, "error": "Invalid field values on some events", **problems}
        return Reply(400, body, count)
    throttled = throttled_body(events, state.throttles)
    if throttled is not None:
        return Reply(429, throttled, count)
    return Reply(200, {"code": 200, "events_ingested": count, "payload_size_bytes": len(raw),
                       "server_upload_time": now_ms}, count, events)


def _error(status: int, error: str, count: int = 0, **extra: Any) -> Reply:
    return Reply(status, {"code": status, "error": error, **extra}, count)


def _decompressed(request: Request) -> bytes | None:
    """The body after gzip decoding; None when it claims gzip but is not."""
    if not request.gzipped:
        return request.body
    try:
        return gzip.decompress(request.body)
    except (OSError, EOFError):
        return None


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _refuse_request(path: str, payload: dict[str, Any], size: int, count: int,
                    api_keys: frozenset[str] | None) -> Reply | None:
    """Whole-request refusals, in Amplitude's order: too large, missing field, unknown key.
    Events are counted after gzip decoding, as the HTTP V2 docs say; so are bytes here."""
    limit = MAX_BATCH_REQUEST_BYTES if path == BATCH_PATH else MAX_REQUEST_BYTES
    if count > MAX_EVENTS_PER_REQUEST or size >= limit:
        return Reply(413, dict(STANDARD_BODIES[413]), count)
    for required in ("api_key", "events"):
        if not payload.get(required):
            return _error(400, "Request missing required field", count, missing_field=required)
    key = payload["api_key"]
    if api_keys is not None and key not in api_keys:
        return _error(400, f"Invalid API key: {key}", count)
    return None


def _min_id_length(options: Any) -> Any:
    # Not type-checked: a non-integer raises in validate_events (a bug of the test sending it).
    if not isinstance(options, dict):
        return DEFAULT_MIN_ID_LENGTH
    return options.get("min_id_length", DEFAULT_MIN_ID_LENGTH)


def validate_events(events: Sequence[Any], min_id_length: int) -> dict[str, Any]:
    """The 400 body's index lists (empty when every event is valid): field name -> indices."""
    missing: dict[str, list[int]] = {}
    invalid: dict[str, list[int]] = {}
    short: dict[str, list[int]] = {}
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            invalid.setdefault("event", []).append(i)
            continue
        if not isinstance(event.get("event_type"), str) or not event["event_type"]:
            missing.setdefault("event_type", []).append(i)
        ids = [f for f in ("user_id", "device_id") if event.get(f) is not None]
        if not ids and event.get("event_type") != GROUP_IDENTIFY:
            missing.setdefault("device_id", []).append(i)
        if "time" in event and (isinstance(event["time"], bool)
                                or not isinstance(event["time"], int)):
            invalid.setdefault("time", []).append(i)
        for f in ids:
            if not is_valid_id(event[f]):
                invalid.setdefault(f, []).append(i)
            elif len(event[f]) < min_id_length:
                short.setdefault(f, []).append(i)
    return _problems(missing, invalid, short)


def is_valid_id(value: Any) -> bool:
    """A string not on Amplitude's list of invalid ids (the length is checked apart)."""
    return isinstance(value, str) and value.strip().lower() not in AMPLITUDE_INVALID_IDS


def _problems(missing: dict[str, list[int]], invalid: dict[str, list[int]],
              short: dict[str, list[int]]) -> dict[str, Any]:
    problems: dict[str, Any] = {}
    if missing:
        problems["events_with_missing_fields"] = missing
    if invalid:
        problems["events_with_invalid_fields"] = invalid
    if short:  # undocumented, but observed, and parsed by Amplitude's own SDKs
        problems["events_with_invalid_id_lengths"] = short
        problems["error"] = "Invalid id length for user_id or device_id"
    return problems


def throttled_body(events: Sequence[dict[str, Any]],
                   throttles: Sequence[Throttle]) -> dict[str, Any] | None:
    """The 429 body when some event's id is throttled, else None. The first matching throttle
    of an event decides how that event is reported."""
    indices: list[int] = []
    users: dict[str, int] = {}
    devices: dict[str, int] = {}
    quota_users: dict[str, int] = {}
    quota_devices: dict[str, int] = {}
    for i, event in enumerate(events):
        user, device = str(event.get("user_id")), str(event.get("device_id"))
        rule = next((t for t in throttles if user in t.users or device in t.devices), None)
        if rule is None:
            continue
        indices.append(i)
        if user in rule.users:
            users[user] = THROTTLED_EPS
            if rule.daily_quota:
                quota_users[user] = EXCEEDED_DAILY_QUOTA
        if device in rule.devices:
            devices[device] = THROTTLED_EPS
            if rule.daily_quota:
                quota_devices[device] = EXCEEDED_DAILY_QUOTA
    if not indices:
        return None
    body: dict[str, Any] = dict(STANDARD_BODIES[429])
    body.update(throttled_events=indices, throttled_users=users, throttled_devices=devices)
    if quota_users or quota_devices:
        body.update(exceeded_daily_quota_users=quota_users,
                    exceeded_daily_quota_devices=quota_devices)
    return body


def dedup_key(event: dict[str, Any]) -> tuple[str, str] | None:
    """Amplitude de-duplicates on (device_id, or user_id without one, insert_id)."""
    insert_id = event.get("insert_id")
    if insert_id is None:
        return None
    return str(event.get("device_id") or f"user:{event.get('user_id')}"), str(insert_id)


def deduplicate(events: Iterable[dict[str, Any]], seen: Set[tuple[str, str]]) -> Fresh:
    """Split `events` into new ones and repeats (of `seen` or of an earlier event in `events`).
    `seen` is not modified: the caller adds `keys` to it."""
    fresh: list[dict[str, Any]] = []
    keys: set[tuple[str, str]] = set()
    duplicates = 0
    for event in events:
        key = dedup_key(event)
        if key is not None and (key in seen or key in keys):
            duplicates += 1
            continue
        if key is not None:
            keys.add(key)
        fresh.append(event)
    return Fresh(fresh, keys, duplicates)


def count_events(request: Request) -> int:
    """Events in a request that is not validated (a scripted fault answers it); 0 if unreadable."""
    try:
        raw = gzip.decompress(request.body) if request.gzipped else request.body
        events = json.loads(raw).get("events")
        return len(events) if isinstance(events, list) else 0
    except (ValueError, OSError, EOFError, AttributeError):
        return 0
