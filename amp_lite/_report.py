"""Delivery reports: where every event of a flush ended up (invariant I2)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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


@dataclass(frozen=True, kw_only=True)
class DeliveryReport:
    """The outcome of one flush.

    `tracked + recovered == delivered + rejected + overflowed + dropped`, where `tracked` counts
    the buffered events the flush took and `recovered` those it read back from the local spill.
    `outside` counts those of `tracked` that a scope's flush took from the client's own buffer
    (tracked outside any scope: from a thread, a callback, code around the decorator).
    """

    tracked: int = 0
    outside: int = 0
    recovered: int = 0
    delivered: int = 0
    rejected: int = 0
    overflowed: int = 0
    dropped: int = 0
    rejected_reasons: Mapping[str, int] = field(default_factory=lambda: _frozen({}))
    overflowed_reasons: Mapping[str, int] = field(default_factory=lambda: _frozen({}))
    overflowed_to: Mapping[str, int] = field(default_factory=lambda: _frozen({}))
    dropped_reasons: Mapping[str, int] = field(default_factory=lambda: _frozen({}))
    attempts: int = 0
    elapsed_ms: float = 0.0
    deadline_hit: bool = False

    @property
    def balanced(self) -> bool:
        """True when every event taken by the flush is accounted for (invariant I2)."""
        settled = self.delivered + self.rejected + self.overflowed + self.dropped
        return self.tracked + self.recovered == settled

    def summary(self) -> dict[str, object]:
        """A flat dict for one structured log line: counts only, never event contents."""
        return {
            "tracked": self.tracked, "outside": self.outside, "recovered": self.recovered,
            "delivered": self.delivered,
            "rejected": self.rejected, "overflowed": self.overflowed, "dropped": self.dropped,
            "attempts": self.attempts, "elapsed_ms": round(self.elapsed_ms, 1),
            "deadline_hit": self.deadline_hit,
            "rejected_reasons": dict(self.rejected_reasons),
            "overflowed_reasons": dict(self.overflowed_reasons),
            "overflowed_to": dict(self.overflowed_to),
            "dropped_reasons": dict(self.dropped_reasons),
        }


@dataclass
class Tally:
    """The mutable counterpart of DeliveryReport, filled in while a flush runs."""

    tracked: int = 0
    outside: int = 0
    recovered: int = 0
    delivered: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    overflowed: Counter[str] = field(default_factory=Counter)
    overflowed_to: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    deadline_hit: bool = False

    @property
    def settled(self) -> int:
        """Events whose fate is decided: delivered, rejected, overflowed or dropped."""
        return (self.delivered + sum(self.rejected.values()) + sum(self.overflowed.values())
                + sum(self.dropped.values()))

    def merge(self, other: Tally) -> None:
        self.tracked += other.tracked
        self.outside += other.outside
        self.recovered += other.recovered
        self.delivered += other.delivered
        self.rejected.update(other.rejected)
        self.overflowed.update(other.overflowed)
        self.overflowed_to.update(other.overflowed_to)
        self.dropped.update(other.dropped)
        self.attempts += other.attempts
        self.deadline_hit |= other.deadline_hit

    def report(self, elapsed_ms: float) -> DeliveryReport:
        return DeliveryReport(
            tracked=self.tracked, outside=self.outside, recovered=self.recovered,
            delivered=self.delivered,
            rejected=sum(self.rejected.values()), overflowed=sum(self.overflowed.values()),
            dropped=sum(self.dropped.values()), rejected_reasons=_frozen(self.rejected),
            overflowed_reasons=_frozen(self.overflowed), overflowed_to=_frozen(self.overflowed_to),
            dropped_reasons=_frozen(self.dropped), attempts=self.attempts,
            elapsed_ms=elapsed_ms, deadline_hit=self.deadline_hit,
        )
