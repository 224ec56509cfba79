"""A point in time that a flush must not run past (invariant I3), with an injectable clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

Clock = Callable[[], float]


@dataclass(frozen=True)
class Deadline:
    """An absolute expiry on a monotonic clock. Immutable: narrowing gives a new Deadline."""

    expires_at: float
    clock: Clock = field(default=time.monotonic, repr=False, compare=False)

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
