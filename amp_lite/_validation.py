"""Validation, coercion and encoding of events at `track()` time (invariant I8).

A bad event raises InvalidEventError naming the field and the rule before anything is buffered.
Values JSON can carry unambiguously are coerced (documented in the README):
datetime/date/time -> ISO-8601 string, Decimal -> float, set/frozenset/tuple -> list,
Enum -> its value, UUID -> string, strings over 1024 characters -> truncated (debug log),
`None` property values at the top level of a properties object -> left out (as the official SDK).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import json.encoder
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from ._version import LIBRARY
from ._config import MAX_PROPERTY_DEPTH, MAX_STRING_LENGTH, ClientConfig
from ._errors import InvalidEventError, brief
from ._events import GROUP_IDENTIFY_EVENT
from ._wire import BufferedEvent, request_overhead

logger = logging.getLogger("amp_lite")

# Python keyword -> wire name, where they differ (reference section 2, "Wire-name gotchas").
WIRE_NAMES = {
    "product_id": "productId",
    "revenue_type": "revenueType",
    "skip_user_properties_sync": "$skip_user_properties_sync",
}

STRING_FIELDS = frozenset({
    "user_id", "device_id", "user_agent", "app_version", "platform", "os_name", "os_version",
    "device_brand", "device_manufacturer", "device_model", "carrier", "country", "region", "city",
    "dma", "language", "productId", "revenueType", "currency", "ip", "idfa", "idfv", "adid",
    "android_id", "android_app_set_id", "insert_id", "partner_id", "version_name",
})
INT_FIELDS = frozenset({"time", "event_id", "session_id", "quantity"})
FLOAT_FIELDS = frozenset({"price", "revenue", "location_lat", "location_lng"})
PROPERTY_FIELDS = frozenset({"event_properties", "user_properties", "group_properties"})
MAPPING_FIELDS = frozenset({"groups", "plan", "ingestion_metadata"})
BOOL_FIELDS = frozenset({"$skip_user_properties_sync"})
KNOWN_FIELDS = (STRING_FIELDS | INT_FIELDS | FLOAT_FIELDS | PROPERTY_FIELDS | MAPPING_FIELDS
                | BOOL_FIELDS | {"event_type", "library"})

# IDs Amplitude answers with 400 (reference section 2.2); compared case-insensitively.
INVALID_IDS = frozenset({
    "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", '""',
    "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1",
})

# `time` must be epoch milliseconds: below this it is almost surely seconds (1973-03-03 in ms).
MIN_EPOCH_MS = 100_000_000_000
MAX_EPOCH_MS = 10_000_000_000_000  # year 2286


def _make_json_encoder() -> Callable[[Any], str]:
    """One encoder for every event, as compact JSON (non-ASCII kept, NaN refused).

    JSONEncoder.encode builds a new C encoder on every call (a third of its cost for an event);
    this builds it once. Without the C module, the plain JSONEncoder does the same work.
    No circular-reference markers: encode() only ever sees fresh copies made by the field
    checks, which refuse cycles themselves (and a shared markers dict would not be thread-safe).
    """
    options = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    make: Any = getattr(json.encoder, "c_make_encoder", None)  # CPython's _json, untyped
    try:  # c_make_encoder's arguments are an implementation detail: any surprise, fall back
        encode = make(None, options.default, json.encoder.encode_basestring, None,
                      options.key_separator, options.item_separator, False, False, False)
        if "".join(encode({"k": ["é", 1]}, 0)) != options.encode({"k": ["é", 1]}):
            return options.encode
    except Exception:  # make is None (no C module), or its signature or behaviour changed
        return options.encode
    return lambda value: "".join(encode(value, 0))


_encode_json = _make_json_encoder()

# A random hex digit -> the same digit with its top two bits set to 10 (the RFC 4122 variant).
_VARIANT_DIGIT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_insert_id() -> str:
    """A random (version 4) UUID string, built without uuid.UUID (several times faster).

    122 random bits from os.urandom per call; the version digit is written as "4" and the
    variant digit mapped into 8..b. Never drawn from a pre-generated pool: a fork or a Lambda
    SnapStart restore would copy the pool, and Amplitude drops events whose insert_id repeats.
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT_DIGIT[h[16]]}{h[17:20]}-{h[20:]}"


def now_ms() -> int:
    return int(time.time() * 1000)


class EventEncoder:
    """Turns (event_type, fields) into a BufferedEvent, or raises InvalidEventError."""

    def __init__(self, config: ClientConfig) -> None:
        self._min_id_length = config.min_id_length or 5
        self._plan = dict(config.plan) if config.plan else None
        self._metadata = dict(config.ingestion_metadata) if config.ingestion_metadata else None
        # The largest event that fits a request on its own, with a generous key length.
        self._max_event_bytes = (config.max_request_bytes
                                 - request_overhead("k" * 64, config.min_id_length) - 1)

    def stamp(self, event_type: Any, fields: Mapping[str, Any]) -> dict[str, Any]:
        """The event as a dict with wire names, `time` and `insert_id`: what middleware sees."""
        event: dict[str, Any] = {"event_type": event_type}
        for key, value in fields.items():
            if value is not None:
                event[WIRE_NAMES.get(key, key)] = value
        _stamp_time_and_id(event)
        if self._plan is not None and "plan" not in event:
            event["plan"] = dict(self._plan)
        if self._metadata is not None and "ingestion_metadata" not in event:
            event["ingestion_metadata"] = dict(self._metadata)
        return event

    def encode(self, event: Mapping[str, Any]) -> tuple[BufferedEvent, str]:
        """Validate and encode a stamped event (after middleware): the event and its
        insert_id."""
        if not isinstance(event, Mapping):
            raise InvalidEventError(f"event: middleware must return a dict or None, "
                                    f"got {type(event).__name__}")
        wire = _checked_fields({}, event)
        _stamp_time_and_id(wire)  # again: middleware may have removed the stamps
        return self._finish(wire)

    def stamp_and_encode(self, event_type: Any,
                         fields: Mapping[str, Any]) -> tuple[BufferedEvent, str]:
        """`encode(stamp(event_type, fields))` in one pass, without the intermediate dict.

        Only for what no middleware needs to see, and only when `fields` holds wire names
        other than event_type (track()'s own keywords): then no key is renamed or repeated,
        and the fields are checked in the same order, with the same errors, as encode().
        """
        wire: dict[str, Any] = {}
        if event_type is not None:  # else "event_type: required", after the other fields
            wire["event_type"] = _event_type(event_type, "event_type")
        _stamp_time_and_id(_checked_fields(wire, fields))
        if self._plan is not None and "plan" not in wire:
            wire["plan"] = _mapping(self._plan, "plan")
        if self._metadata is not None and "ingestion_metadata" not in wire:
            wire["ingestion_metadata"] = _mapping(self._metadata, "ingestion_metadata")
        return self._finish(wire)

    def _finish(self, wire: dict[str, Any]) -> tuple[BufferedEvent, str]:
        self._check_identity(wire)
        wire["library"] = LIBRARY
        raw = _dumps(wire)
        if len(raw) > self._max_event_bytes:
            raise InvalidEventError(
                f"event: encoded size {len(raw)} bytes exceeds what one request can carry "
                f"({self._max_event_bytes} bytes)")
        return BufferedEvent.encoded(raw), wire["insert_id"]  # only the bytes are buffered

    def _check_identity(self, wire: dict[str, Any]) -> None:
        if "event_type" not in wire:
            raise InvalidEventError("event_type: required")
        time_ms = wire["time"]
        if not MIN_EPOCH_MS <= time_ms < MAX_EPOCH_MS:
            raise InvalidEventError(
                f"time: must be epoch milliseconds (e.g. {now_ms()}), got "
                f"{brief(time_ms)} "
                "(seconds? multiply by 1000)")
        if not wire["insert_id"]:
            raise InvalidEventError("insert_id: must be a non-empty string")
        has_id = False
        for id_field in ("user_id", "device_id"):
            value = wire.get(id_field)
            if value is None:
                continue
            if len(value) < self._min_id_length:
                raise InvalidEventError(
                    f"{id_field}: must be at least {self._min_id_length} characters "
                    f"(min_id_length), got {len(value)}")
            if value.strip().lower() in INVALID_IDS:
                raise InvalidEventError(
                    f"{id_field}: {brief(value)} is on Amplitude's list of invalid ids")
            has_id = True
        if not has_id and wire["event_type"] != GROUP_IDENTIFY_EVENT:
            raise InvalidEventError("user_id/device_id: an event needs at least one of them")


def _stamp_time_and_id(event: dict[str, Any]) -> None:
    """Give an event without them the current `time` and a new `insert_id`."""
    if "time" not in event:
        event["time"] = now_ms()
    if "insert_id" not in event:
        event["insert_id"] = new_insert_id()


def _checked_fields(wire: dict[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
    """Add each non-None field of `event` to `wire`, checked (and coerced) by its rule."""
    for key, value in event.items():
        if value is not None:
            check = _FIELD_CHECKS.get(key)
            if check is None:
                raise InvalidEventError(_unknown_field(key))
            wire[key] = check(value, key)
    return wire


def _unknown_field(key: Any) -> str:
    return (f"{key}: unknown Amplitude event field (Python names: "
            f"{', '.join(sorted(WIRE_NAMES))} map to {', '.join(sorted(WIRE_NAMES.values()))})")


def _event_type(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidEventError(f"event_type: must be a non-empty string, got {brief(value)}")
    return _truncate(value, path)


def _string(value: Any, path: str) -> str:
    if type(value) is str and len(value) <= MAX_STRING_LENGTH:  # the common case, at once
        return value
    if not isinstance(value, str):
        raise InvalidEventError(f"{path}: must be a string, got {type(value).__name__}")
    return _truncate(value, path)


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidEventError(f"{path}: must be true or false, got {brief(value)}")
    return value


def _library(value: Any, path: str) -> Any:
    return value  # always replaced by amp-lite/<version>


def _properties(value: Any, path: str) -> dict[str, Any]:
    """A properties object: None values at its top level are left out (as the official SDK)."""
    if type(value) is not dict and not isinstance(value, Mapping):  # dict: skip the ABC check
        raise InvalidEventError(f"{path}: must be a dict, got {type(value).__name__}")
    return _normalise_mapping(value, path, 1, {id(value)}, drop_none=True)


def _mapping(value: Any, path: str) -> Any:
    if not isinstance(value, Mapping):
        raise InvalidEventError(f"{path}: must be a dict, got {type(value).__name__}")
    return _normalise(value, path, 1, set())


def _dumps(wire: dict[str, Any]) -> bytes:
    # Two rare faults are found only here, to keep the common path free of per-value checks.
    try:
        return _encode_json(wire).encode("utf-8")
    except UnicodeEncodeError:
        path = _find_path(wire, "", _is_unencodable) or "event"
        raise InvalidEventError(f"{path}: string is not valid Unicode "
                                "(lone surrogate); it cannot be sent as UTF-8") from None
    except ValueError:  # an int longer than Python converts to text (int_max_str_digits)
        path = _find_path(wire, "", _is_too_long_int) or "event"
        raise InvalidEventError(f"{path}: integer has too many digits to be written as JSON "
                                "(Python's int_max_str_digits limit)") from None


def _is_unencodable(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _is_too_long_int(value: Any) -> bool:
    if not isinstance(value, int):
        return False
    try:
        str(value)
    except ValueError:
        return True
    return False


def _find_path(value: Any, path: str, is_bad: Callable[[Any], bool]) -> str:
    """The path (from the root path "") of the first key or value in `value` for which
    `is_bad` holds, or ""."""
    if is_bad(value):
        return path
    items: Any = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, item in items:
        label = (f"{path}[{key}]" if isinstance(value, list)
                 else f"{path}.{key}" if path else str(key))
        found = (label if isinstance(key, str) and is_bad(key)
                 else _find_path(item, label, is_bad))
        if found:
            return found
    return ""


def _truncate(value: str, path: str) -> str:
    if len(value) <= MAX_STRING_LENGTH:
        return value
    logger.debug("amp_lite: %s truncated from %d to %d characters", path, len(value),
                 MAX_STRING_LENGTH)
    return value[:MAX_STRING_LENGTH]


def _integer(value: Any, path: str) -> int:
    if isinstance(value, bool):
        raise InvalidEventError(f"{path}: must be an integer, got a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise InvalidEventError(
        f"{path}: must be an integer (or an integral float), got {brief(value)}")


def _finite_number(value: Any, path: str) -> float | int:
    if isinstance(value, Decimal):
        # is_finite first: float() of a signalling NaN raises instead of giving nan
        value = float(value) if value.is_finite() else math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEventError(f"{path}: must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidEventError(f"{path}: NaN and Infinity cannot be sent (JSON has no such value)")
    return value


def _is_flat(item: Any) -> bool:
    """A value that needs no work: a short str, an int, a bool or None (most property values)."""
    kind = type(item)
    return ((kind is str and len(item) <= MAX_STRING_LENGTH) or kind is int or kind is bool
            or item is None)


def _normalise(value: Any, path: str, depth: int, active: set[int]) -> Any:
    """A JSON-ready copy of a property value, or InvalidEventError naming the path."""
    kind = type(value)
    if kind is str:
        return _truncate(value, path)
    if kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return _finite_number(value, path)
    if kind is dict or kind is list or isinstance(value, (Mapping, list, tuple, set, frozenset)):
        if depth > MAX_PROPERTY_DEPTH:
            raise InvalidEventError(f"{path}: nested deeper than {MAX_PROPERTY_DEPTH} levels")
        marker = id(value)
        if marker in active:
            raise InvalidEventError(f"{path}: refers to itself (a cycle cannot be sent as JSON)")
        active.add(marker)
        try:
            if kind is dict or isinstance(value, Mapping):
                return _normalise_mapping(value, path, depth, active)
            items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
            return [item if _is_flat(item) else _normalise(item, f"{path}[{i}]", depth + 1, active)
                    for i, item in enumerate(items)]
        finally:
            active.discard(marker)
    return _coerce_scalar(value, path, depth, active)


def _normalise_mapping(value: Mapping[Any, Any], path: str, depth: int, active: set[int],
                       *, drop_none: bool = False) -> dict[str, Any]:
    result = {}
    for key, item in value.items():
        if type(key) is not str or len(key) > MAX_STRING_LENGTH:
            key = _plain_key(key, path)  # noqa: PLW2901
        kind = type(item)  # _is_flat inlined: most property values are flat
        if (kind is str and len(item) <= MAX_STRING_LENGTH) or kind is int or kind is bool:
            result[key] = item
        elif item is None:
            if not drop_none:
                result[key] = None
        else:
            result[key] = _normalise(item, f"{path}.{key}", depth + 1, active)
    return result


def _plain_key(key: Any, path: str) -> str:
    """A mapping key as a plain str of at most MAX_STRING_LENGTH characters."""
    if not isinstance(key, str):
        raise InvalidEventError(f"{path}: keys must be strings, got "
                                f"{type(key).__name__} key {brief(key)}")
    return _truncate(str(key), f"{path} key")  # str(): a str subclass, made plain


_COERCIONS: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (dt.datetime, lambda v: v.isoformat()),
    (dt.date, lambda v: v.isoformat()),
    (dt.time, lambda v: v.isoformat()),
    (uuid.UUID, str),
)


def _coerce_scalar(value: Any, path: str, depth: int, active: set[int]) -> Any:
    if isinstance(value, enum.Enum):
        return _normalise(value.value, path, depth, active)
    if isinstance(value, (str, int, float)):  # subclasses of the JSON scalars
        base = str if isinstance(value, str) else (float if isinstance(value, float) else int)
        return _normalise(base(value), path, depth, active)
    if isinstance(value, Decimal):
        return _finite_number(value, path)
    for kind, convert in _COERCIONS:
        if isinstance(value, kind):
            return convert(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidEventError(f"{path}: bytes cannot be sent; decode them to a string first")
    raise InvalidEventError(f"{path}: a {type(value).__name__} cannot be sent; use a string, "
                            "number, bool, None, list or dict")


_FIELD_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "event_type": _event_type,
    "library": _library,
    **dict.fromkeys(STRING_FIELDS, _string),
    **dict.fromkeys(INT_FIELDS, _integer),
    **dict.fromkeys(FLOAT_FIELDS, _finite_number),
    **dict.fromkeys(BOOL_FIELDS, _boolean),
    **dict.fromkeys(PROPERTY_FIELDS, _properties),
    **dict.fromkeys(MAPPING_FIELDS, _mapping),
}
