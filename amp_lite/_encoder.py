"""The event encoder: stamps an event (`time`, `insert_id`, `library`), checks it by the rules
in `_validation`, and encodes it once as the JSON bytes that will be sent.
"""

from __future__ import annotations

import json
import json.encoder
import os
from collections.abc import Callable, Mapping
from typing import Any

from ._config import ClientConfig
from ._errors import InvalidEventError
from ._limits import DEFAULT_MIN_ID_LENGTH
from ._validation import (
    WIRE_NAMES,
    check_identity,
    checked_fields,
    event_type_value,
    mapping_value,
    now_ms,
)
from ._version import LIBRARY
from ._wire import BufferedEvent, request_overhead


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


class EventEncoder:
    """Turns (event_type, fields) into a BufferedEvent, or raises InvalidEventError."""

    def __init__(self, config: ClientConfig) -> None:
        self._min_id_length = config.min_id_length or DEFAULT_MIN_ID_LENGTH
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
        wire = checked_fields({}, event)
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
            wire["event_type"] = event_type_value(event_type, "event_type")
        _stamp_time_and_id(checked_fields(wire, fields))
        if self._plan is not None and "plan" not in wire:
            wire["plan"] = mapping_value(self._plan, "plan")
        if self._metadata is not None and "ingestion_metadata" not in wire:
            wire["ingestion_metadata"] = mapping_value(self._metadata, "ingestion_metadata")
        return self._finish(wire)

    def _finish(self, wire: dict[str, Any]) -> tuple[BufferedEvent, str]:
        check_identity(wire, self._min_id_length)
        wire["library"] = LIBRARY
        raw = _dumps(wire)
        if len(raw) > self._max_event_bytes:
            raise InvalidEventError(
                f"event: encoded size {len(raw)} bytes exceeds what one request can carry "
                f"({self._max_event_bytes} bytes)")
        return BufferedEvent.encoded(raw), wire["insert_id"]  # only the bytes are buffered


def _stamp_time_and_id(event: dict[str, Any]) -> None:
    """Give an event without them the current `time` and a new `insert_id`."""
    if "time" not in event:
        event["time"] = now_ms()
    if "insert_id" not in event:
        event["insert_id"] = new_insert_id()


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
