"""A point in time that a flush must not run past (invariant I3), with an injectable clock."""

from __future__ import annotations

import time
from collections.abc import Callable

from ._value import FrozenValue

Clock = Callable[[], float]


class Deadline(FrozenValue):
    """An absolute expiry on a monotonic clock. Immutable: narrowing gives a new Deadline."""

    _fields = ("expires_at", "clock")
    __slots__ = _fields
    __match_args__ = ("expires_at", "clock")
    _unshown = _uncompared = frozenset({"clock"})
    expires_at: float
    clock: Clock

    def __init__(self, expires_at: float, clock: Clock = time.monotonic) -> None:
        self._set(expires_at=expires_at, clock=clock)

    @classmethod
    def after(cls, seconds: float, clock: Clock = time.monotonic) -> Deadline:
        return cls(clock() + max(0.0, seconds), clock)

    def remaining_s(self) -> float:
        return max(0.0, self.expires_at - self.clock())

    def expired(self) -> bool:
        return self.remaining_s() <= 0.0

    def shortened_by(self, seconds: float) -> Deadline:
        """The same deadline, `seconds` earlier: used to keep a reserve for overflow writes."""
        return Deadline(self.expires_at - max(0.0, seconds), self.clock)

    def clamp(self, seconds: float) -> float:
        """`seconds`, or what is left if that is less."""
        return max(0.0, min(seconds, self.remaining_s()))
