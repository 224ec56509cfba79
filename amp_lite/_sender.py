"""A Sender binds a transport to one API key and the request limits: what a strategy sends with."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ._deadline import Deadline
from ._reply import Reply
from ._transport import AsyncTransport, Transport
from ._value import FrozenValue
from ._wire import BufferedEvent, encode_request, request_overhead, split_batches


class Sender(FrozenValue):
    """What a retry strategy sends with: `batches()` cuts events into requests, `send()` posts
    one, `asend()` awaits one (the API key never appears in its repr)."""

    _fields = ("transport", "async_transport", "api_key", "min_id_length", "max_events",
               "max_bytes", "request_timeout_s")
    __slots__ = _fields
    _unshown = frozenset({"api_key"})
    transport: Transport
    async_transport: AsyncTransport | None  # the async flush's; None in the sync one
    api_key: str
    min_id_length: int | None
    max_events: int
    max_bytes: int
    request_timeout_s: float

    def __init__(self, *, transport: Transport, async_transport: AsyncTransport | None = None,
                 api_key: str, min_id_length: int | None, max_events: int, max_bytes: int,
                 request_timeout_s: float) -> None:
        self._set(transport=transport, async_transport=async_transport, api_key=api_key,
                  min_id_length=min_id_length, max_events=max_events, max_bytes=max_bytes,
                  request_timeout_s=request_timeout_s)

    def batches(self, events: Sequence[BufferedEvent]) -> Iterator[list[BufferedEvent]]:
        """`events` cut into requests Amplitude accepts (count and byte limits)."""
        return split_batches(events, max_events=self.max_events, max_bytes=self.max_bytes,
                             overhead=request_overhead(self.api_key, self.min_id_length))

    def send(self, batch: Sequence[BufferedEvent], deadline: Deadline) -> Reply:
        body = encode_request(self.api_key, batch, self.min_id_length)
        return self.transport.post(body, timeout_s=self.request_timeout_s, deadline=deadline)

    async def asend(self, batch: Sequence[BufferedEvent], deadline: Deadline) -> Reply:
        if self.async_transport is None:
            raise RuntimeError("this Sender has no async transport: it serves the sync flush")
        body = encode_request(self.api_key, batch, self.min_id_length)
        return await self.async_transport.apost(body, timeout_s=self.request_timeout_s,
                                                deadline=deadline)
