"""What a reply from Amplitude means for each event of the batch that was sent.

Pure logic: `classify(reply, batch)` decides, per event, delivered / rejected / throttled / retry,
by the replies documented at https://amplitude.com/docs/apis/analytics/http-v2 (the table in
docs/design.md, section 2). The strategy in `_retry` decides when.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from . import _report as r
from ._checks import is_int
from ._value import FrozenValue, Value
from ._wire import BufferedEvent

# Index lists in a 400 body that name invalid events (HTTP V2 API docs, 400 response body).
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\[\]]{0,39}")  # what a note may echo back
_INVALID_INDEX_KEYS = ("events_with_missing_fields", "events_with_invalid_fields",
                       "events_with_invalid_id_lengths")


class Reply(FrozenValue):
    """What one request to Amplitude came back with. `error` is set when no usable reply came
    back (then there is no status): a `Transport` returns this instead of raising."""

    _fields = ("http_status", "body", "error", "retry_after_s")
    __slots__ = _fields
    __match_args__ = ("http_status", "body", "error", "retry_after_s")
    http_status: int | None
    body: Mapping[str, Any] | None  # the JSON object of the reply, when it was one
    # timeout, tls, connection, connection_dropped, response_too_large, protocol:<error>,
    # unexpected:<error> (an HTTP-stack fault): every one is retried
    error: str | None
    retry_after_s: float | None

    def __init__(self, http_status: int | None, body: Mapping[str, Any] | None = None,
                 error: str | None = None, retry_after_s: float | None = None) -> None:
        self._set(http_status=http_status, body=body, error=error, retry_after_s=retry_after_s)

    @property
    def code(self) -> int | None:
        """The body's own `code` field, when it is an integer."""
        code = self.body.get("code") if isinstance(self.body, Mapping) else None
        return code if is_int(code) else None

    @property
    def status(self) -> int | None:
        """The status the reply is judged by: the body's `code` when it has one (a proxy may
        answer 200 around Amplitude's 400), else the HTTP status; None when nothing came back.
        """
        code = self.code
        return self.http_status if code is None or self.http_status is None else code


class Verdict(Value):
    """What `classify` decided for each event of a batch."""

    _fields = ("delivered", "rejected", "unsettled", "retry", "backoff", "split",
               "retry_after_s", "refused", "note")
    __slots__ = _fields

    def __init__(self, *, delivered: list[BufferedEvent] | None = None,
                 rejected: dict[str, list[BufferedEvent]] | None = None,
                 unsettled: dict[str, list[BufferedEvent]] | None = None,
                 retry: list[BufferedEvent] | None = None, backoff: bool = False,
                 split: bool = False, retry_after_s: float | None = None,
                 refused: str | None = None, note: str = "") -> None:
        self.delivered = delivered if delivered is not None else []
        self.rejected = rejected if rejected is not None else {}
        self.unsettled = unsettled if unsettled is not None else {}
        self.retry = retry if retry is not None else []
        self.backoff = backoff  # wait before retrying: the server or the network is in trouble
        self.split = split  # retry `retry` as two halves (413, or a 400 naming no index)
        self.retry_after_s = retry_after_s  # the server's Retry-After, if it sent one
        self.refused = refused  # the whole request was refused, for this reason: stop sending
        self.note = note  # for logs: a status and a reason, never event contents or the key


def classify(reply: Reply, batch: Sequence[BufferedEvent]) -> Verdict:
    status, body = reply.status, reply.body or {}
    if reply.error is not None:
        return Verdict(retry=list(batch), backoff=True, note=reply.error)
    if status is None:
        return Verdict(retry=list(batch), backoff=True, note="no status")
    if 200 <= status < 300:
        if reply.body is None:  # a 2xx that is not Amplitude's JSON: we cannot trust it
            return Verdict(retry=list(batch), backoff=True, note=f"{status} without a JSON body")
        return Verdict(delivered=list(batch), note=str(status))
    if status == 400:
        return _bad_request(body, batch)
    if status == 403:
        return _refused(r.REFUSED_FORBIDDEN, batch, "403 forbidden")
    if status == 413:
        if len(batch) == 1:
            return Verdict(rejected={r.REJECTED_TOO_LARGE: list(batch)}, note="413 single event")
        return Verdict(retry=list(batch), split=True, note="413 payload too large")
    if status == 429:
        return _throttled(body, batch)
    if status == 408 or status >= 500:
        return Verdict(retry=list(batch), backoff=True, note=str(status),
                       retry_after_s=reply.retry_after_s)
    return Verdict(unsettled={r.UNSETTLED_HTTP_ERROR: list(batch)}, note=f"unexpected {status}")


def _refused(reason: str, batch: Sequence[BufferedEvent], note: str) -> Verdict:
    """The whole request was refused: the events are left unsettled (overflowed), and the
    strategy sends nothing more in this flush (the next request would be refused alike)."""
    return Verdict(unsettled={reason: list(batch)}, refused=reason, note=note)


def _bad_request(body: Mapping[str, Any], batch: Sequence[BufferedEvent]) -> Verdict:
    error = str(body.get("error", ""))
    if error.startswith("Invalid API key"):
        return _refused(r.REFUSED_API_KEY, batch, "400 invalid API key")
    if body.get("missing_field"):  # Amplitude: "which request-level required field is missing"
        named = str(body["missing_field"])
        shown = named if _FIELD_NAME.fullmatch(named) else "(not a field name: not shown)"
        return _refused(r.REFUSED_MISSING_FIELD, batch, f"400 missing field {shown}")
    invalid = _indices(body, batch)
    if invalid:
        return Verdict(
            rejected={r.REJECTED_INVALID: [e for i, e in enumerate(batch) if i in invalid]},
            retry=[e for i, e in enumerate(batch) if i not in invalid],
            note=f"400 with {len(invalid)} invalid events")
    if len(batch) == 1:
        return Verdict(rejected={r.REJECTED_BAD_REQUEST: list(batch)}, note="400 single event")
    # A 400 that names no event: halve the batch until the bad event is alone.
    return Verdict(retry=list(batch), split=True, note="400 naming no event")


def _indices(body: Mapping[str, Any], batch: Sequence[BufferedEvent]) -> set[int]:
    found: set[int] = set()
    for key in _INVALID_INDEX_KEYS:
        groups = body.get(key)
        if isinstance(groups, Mapping):
            for indices in groups.values():
                found.update(_int_list(indices))
    found.update(_int_list(body.get("silenced_events")))
    return {i for i in found if 0 <= i < len(batch)}


def _int_list(value: Any) -> list[int]:
    if is_int(value):
        return [value]  # HTTP V2 docs describe "the index of the first event"
    if isinstance(value, list):
        return [i for i in value if is_int(i)]
    return []


def _throttled(body: Mapping[str, Any], batch: Sequence[BufferedEvent]) -> Verdict:
    quota_users = _keys(body.get("exceeded_daily_quota_users"))
    quota_devices = _keys(body.get("exceeded_daily_quota_devices"))
    throttled = {i for i in _int_list(body.get("throttled_events")) if 0 <= i < len(batch)}
    if not throttled:  # no indices: fall back to the throttled ids, else everything
        users, devices = _keys(body.get("throttled_users")), _keys(body.get("throttled_devices"))
        throttled = {i for i, e in enumerate(batch)
                     if e.user_id in users or e.device_id in devices
                     or e.user_id in quota_users or e.device_id in quota_devices}
        throttled = throttled or set(range(len(batch)))
    verdict = Verdict(note=f"429 with {len(throttled)} throttled events")
    for i, event in enumerate(batch):
        if i not in throttled:
            verdict.retry.append(event)  # not throttled: retried at once
        elif event.user_id in quota_users or event.device_id in quota_devices:
            verdict.rejected.setdefault(r.REJECTED_DAILY_QUOTA, []).append(event)
        else:  # Amplitude asks for a 30 s pause: longer than an invocation should wait
            verdict.unsettled.setdefault(r.UNSETTLED_THROTTLED, []).append(event)
    return verdict


def _keys(value: Any) -> frozenset[str]:
    if isinstance(value, Mapping):
        return frozenset(k for k in value if isinstance(k, str))
    if isinstance(value, list):
        return frozenset(k for k in value if isinstance(k, str))
    return frozenset()
