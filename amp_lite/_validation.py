"""The field rules of an event, checked at `track()` time (invariant I8).

A bad event raises InvalidEventError naming the field and the rule before anything is buffered.
Values JSON can carry unambiguously are coerced (documented in the README):
datetime/date/time -> ISO-8601 string, Decimal -> float, set/frozenset/tuple -> list,
Enum -> its value, UUID -> string, strings over 1024 characters -> truncated (debug log),
`None` property values at the top level of a properties object -> left out (as the official SDK).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from ._checks import is_number
from ._errors import InvalidEventError, brief
from ._events import GROUP_IDENTIFY_EVENT
from ._limits import MAX_PROPERTY_DEPTH, MAX_STRING_LENGTH

logger = logging.getLogger("amp_lite")

# Python keyword -> wire name, where they differ (the field names of the HTTP V2 API:
# https://amplitude.com/docs/apis/analytics/http-v2).
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

# IDs Amplitude answers with 400 ("Invalid IDs" in the HTTP V2 API docs, link above);
# compared case-insensitively.
INVALID_IDS = frozenset({
    "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", '""',
    "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1",
})

# `time` must be epoch milliseconds: below this it is almost surely seconds (1973-03-03 in ms).
MIN_EPOCH_MS = 100_000_000_000
MAX_EPOCH_MS = 10_000_000_000_000  # year 2286


def now_ms() -> int:
    return int(time.time() * 1000)


def check_identity(wire: dict[str, Any], min_id_length: int) -> None:
    """The rules over the whole event: an event type, a time in epoch milliseconds, an
    insert_id, and a user_id or device_id that Amplitude accepts."""
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
        if len(value) < min_id_length:
            raise InvalidEventError(
                f"{id_field}: must be at least {min_id_length} characters "
                f"(min_id_length), got {len(value)}")
        if value.strip().lower() in INVALID_IDS:
            raise InvalidEventError(
                f"{id_field}: {brief(value)} is on Amplitude's list of invalid ids")
        has_id = True
    if not has_id and wire["event_type"] != GROUP_IDENTIFY_EVENT:
        raise InvalidEventError("user_id/device_id: an event needs at least one of them")


def checked_fields(wire: dict[str, Any], event: Mapping[str, Any]) -> dict[str, Any]:
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


def event_type_value(value: Any, path: str) -> str:
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


def mapping_value(value: Any, path: str) -> Any:
    if not isinstance(value, Mapping):
        raise InvalidEventError(f"{path}: must be a dict, got {type(value).__name__}")
    return _normalise(value, path, 1, set())


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
    if not is_number(value):
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
    "event_type": event_type_value,
    "library": _library,
    **dict.fromkeys(STRING_FIELDS, _string),
    **dict.fromkeys(INT_FIELDS, _integer),
    **dict.fromkeys(FLOAT_FIELDS, _finite_number),
    **dict.fromkeys(BOOL_FIELDS, _boolean),
    **dict.fromkeys(PROPERTY_FIELDS, _properties),
    **dict.fromkeys(MAPPING_FIELDS, mapping_value),
}
