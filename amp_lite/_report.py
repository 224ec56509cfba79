"""Delivery reports: where every event of a flush ended up (invariant I2)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

from ._value import FrozenValue, Value

# Why Amplitude refused an event itself (it is not retried, ever).
REJECTED_INVALID = "invalid_event"  # 400 listed the event's index
REJECTED_TOO_LARGE = "too_large"  # 413 on a single event
REJECTED_DAILY_QUOTA = "daily_quota"  # 429, the user or device is over its daily quota
REJECTED_BAD_REQUEST = "bad_request"  # 400 on a single event, no index given

# Refusals of the whole request. They say nothing about the events (a mistyped or revoked key,
# a WAF block), so the events are overflowed, never rejected: nothing is lost once the cause
# is fixed, and a replay keeps such records queued.
REFUSED_API_KEY = "invalid_api_key"  # 400 "Invalid API key"
REFUSED_FORBIDDEN = "forbidden"  # 403
REFUSED_MISSING_FIELD = "missing_field"  # 400 naming a missing request-level field
REQUEST_REFUSALS = frozenset({REFUSED_API_KEY, REFUSED_FORBIDDEN, REFUSED_MISSING_FIELD})

# Why an event was not delivered within the flush (it goes to the overflow sink).
UNSETTLED_DEADLINE = "deadline"
UNSETTLED_THROTTLED = "throttled"
UNSETTLED_RETRIES_EXHAUSTED = "retries_exhausted"
UNSETTLED_NOT_RETRIED = "not_retried"  # BaseRetryHandler: one attempt only
UNSETTLED_OFFLINE = "offline"  # OfflineRetryHandler: failures are not retried in-invocation
UNSETTLED_HTTP_ERROR = "http_error"  # an unexpected 4xx (404, 401...): likely a wrong URL
UNSETTLED_BUFFER_CAP = "buffer_cap"  # the scope's buffer passed its cap: oldest overflowed early
UNSETTLED_KEY_UNAVAILABLE = "key_unavailable"  # the key provider failed: sent once it answers
UNSETTLED_NO_TRANSPORT = "transport_unavailable"  # the HTTP stack could not be built
UNSETTLED_CANCELLED = "cancelled"  # the async flush's task was cancelled: all its events

# Why an event could not even be overflowed.
DROPPED_NO_SINK = "no_sink"
DROPPED_SINK_FAILED = "sink_failed"
DROPPED_CONFIG = "config_error"
DROPPED_INTERNAL = "internal_error"
DROPPED_SPILL_UNTRUSTED = "spill_untrusted"  # no spill directory passes the trust rule (_trust.py)


def _frozen(counts: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(counts))


class DeliveryReport(FrozenValue):
    """The outcome of one flush.

    `tracked + recovered == delivered + rejected + overflowed + dropped`, where `tracked` counts
    the buffered events the flush took and `recovered` those it read back from the local spill.
    `outside` counts those of `tracked` that a scope's flush took from the client's own buffer
    (tracked outside any scope: from a thread, a callback, code around the decorator).
    `handed_off` counts events given to the amp-lite Lambda extension, which delivers them
    after the response (its own log line reports how): they are settled for this flush.
    """

    _fields = ("tracked", "outside", "recovered", "delivered", "handed_off", "rejected",
               "overflowed", "dropped", "rejected_reasons", "overflowed_reasons", "overflowed_to",
               "dropped_reasons", "attempts", "elapsed_ms", "deadline_hit")
    __slots__ = _fields
    tracked: int
    outside: int
    recovered: int
    delivered: int
    handed_off: int
    rejected: int
    overflowed: int
    dropped: int
    rejected_reasons: Mapping[str, int]
    overflowed_reasons: Mapping[str, int]
    overflowed_to: Mapping[str, int]
    dropped_reasons: Mapping[str, int]
    attempts: int
    elapsed_ms: float
    deadline_hit: bool

    def __init__(self, *, tracked: int = 0, outside: int = 0, recovered: int = 0,
                 delivered: int = 0, handed_off: int = 0, rejected: int = 0,
                 overflowed: int = 0, dropped: int = 0,
                 rejected_reasons: Mapping[str, int] | None = None,
                 overflowed_reasons: Mapping[str, int] | None = None,
                 overflowed_to: Mapping[str, int] | None = None,
                 dropped_reasons: Mapping[str, int] | None = None,
                 attempts: int = 0, elapsed_ms: float = 0.0, deadline_hit: bool = False) -> None:
        self._set(tracked=tracked, outside=outside, recovered=recovered, delivered=delivered,
                  handed_off=handed_off, rejected=rejected, overflowed=overflowed, dropped=dropped,
                  rejected_reasons=_frozen(rejected_reasons or {}),
                  overflowed_reasons=_frozen(overflowed_reasons or {}),
                  overflowed_to=_frozen(overflowed_to or {}),
                  dropped_reasons=_frozen(dropped_reasons or {}),
                  attempts=attempts, elapsed_ms=elapsed_ms, deadline_hit=deadline_hit)

    @property
    def balanced(self) -> bool:
        """True when every event taken by the flush is accounted for (invariant I2)."""
        settled = (self.delivered + self.handed_off + self.rejected + self.overflowed
                   + self.dropped)
        return self.tracked + self.recovered == settled

    def summary(self) -> dict[str, object]:
        """A flat dict for one structured log line: counts only, never event contents."""
        return {
            "tracked": self.tracked, "outside": self.outside, "recovered": self.recovered,
            "delivered": self.delivered, "handed_off": self.handed_off,
            "rejected": self.rejected, "overflowed": self.overflowed, "dropped": self.dropped,
            "attempts": self.attempts, "elapsed_ms": round(self.elapsed_ms, 1),
            "deadline_hit": self.deadline_hit,
            "rejected_reasons": dict(self.rejected_reasons),
            "overflowed_reasons": dict(self.overflowed_reasons),
            "overflowed_to": dict(self.overflowed_to),
            "dropped_reasons": dict(self.dropped_reasons),
        }


class Tally(Value):
    """The mutable counterpart of DeliveryReport, filled in while a flush runs."""

    _fields = ("tracked", "outside", "recovered", "delivered", "handed_off", "rejected",
               "overflowed", "overflowed_to", "dropped", "attempts", "deadline_hit")
    __slots__ = _fields

    def __init__(self, *, tracked: int = 0) -> None:
        self.tracked = tracked
        self.outside = 0
        self.recovered = 0
        self.delivered = 0
        self.handed_off = 0
        self.rejected: Counter[str] = Counter()
        self.overflowed: Counter[str] = Counter()
        self.overflowed_to: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.attempts = 0
        self.deadline_hit = False

    @property
    def settled(self) -> int:
        """Events whose fate is decided: delivered, handed off, rejected, overflowed or
        dropped."""
        return (self.delivered + self.handed_off + sum(self.rejected.values())
                + sum(self.overflowed.values()) + sum(self.dropped.values()))

    def merge(self, other: Tally) -> None:
        self.tracked += other.tracked
        self.outside += other.outside
        self.recovered += other.recovered
        self.delivered += other.delivered
        self.handed_off += other.handed_off
        self.rejected.update(other.rejected)
        self.overflowed.update(other.overflowed)
        self.overflowed_to.update(other.overflowed_to)
        self.dropped.update(other.dropped)
        self.attempts += other.attempts
        self.deadline_hit |= other.deadline_hit

    def report(self, elapsed_ms: float) -> DeliveryReport:
        return DeliveryReport(
            tracked=self.tracked, outside=self.outside, recovered=self.recovered,
            delivered=self.delivered, handed_off=self.handed_off,
            rejected=sum(self.rejected.values()), overflowed=sum(self.overflowed.values()),
            dropped=sum(self.dropped.values()), rejected_reasons=self.rejected,
            overflowed_reasons=self.overflowed, overflowed_to=self.overflowed_to,
            dropped_reasons=self.dropped, attempts=self.attempts,
            elapsed_ms=elapsed_ms, deadline_hit=self.deadline_hit,
        )
