"""Overflow sinks: where events go that could not be delivered within a flush's budget.

A sink has a `name` (used in reports), a `reserve_s` (time the flush keeps back for writing to
it) and `write(events, *, reason, attempts, deadline, min_id_length=None)`, which raises
OverflowWriteError when it cannot take them (listing the `unwritten` ones when it took
others). `min_id_length` is the client's request option, which a replay must send them with.
A sink that the next flush can read back from (the local spill) also has
`claim(max_events=..., deadline=None)`, bounded by `deadline` when given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._deadline import Deadline
from .._wire import BufferedEvent
from ._local import LocalSpill, SpillClaim

if TYPE_CHECKING:
    from ._sqs import SQSOverflow


@runtime_checkable
class OverflowSink(Protocol):
    name: str
    reserve_s: float

    def write(self, events: Sequence[BufferedEvent], *, reason: str, attempts: int,
              deadline: Deadline, min_id_length: int | None = None) -> None: ...


@runtime_checkable
class RecoverableSink(OverflowSink, Protocol):
    def claim(self, *, max_events: int,
              deadline: Deadline | None = None) -> SpillClaim | None: ...


__all__ = ["LocalSpill", "OverflowSink", "RecoverableSink", "SQSOverflow", "SpillClaim"]


def __getattr__(name: str) -> Any:
    # SQSOverflow (and the message format under it) load on first use: most functions that
    # import amp_lite never overflow to SQS, and a cold start pays for every module.
    if name == "SQSOverflow":
        from ._sqs import SQSOverflow

        return SQSOverflow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
