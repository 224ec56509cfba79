"""The Transport protocols: how a request body reaches Amplitude.

One method, as httpx's BaseTransport: the client's default is `_http.HttpTransport` (urllib3,
pooled, verified TLS); tests and unusual networks pass their own to `Amplitude(transport=...)`.
The async flush awaits `apost` (`AsyncTransport`): `_async_http.AsyncHttpTransport` by default
(the `amp-lite[async]` extra); a transport of yours that has `apost` is used by both flushes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ._deadline import Deadline
from ._reply import Reply


class Transport(Protocol):
    def post(self, body: bytes, *, timeout_s: float, deadline: Deadline) -> Reply:
        """POST `body` (the JSON request) and return what came back, never raising for network
        trouble: a `Reply` with `error` set instead. Must return by `deadline`, and spend at
        most `timeout_s` on one attempt."""
        ...


@runtime_checkable
class AsyncTransport(Protocol):
    async def apost(self, body: bytes, *, timeout_s: float, deadline: Deadline) -> Reply:
        """`Transport.post` for the event loop: the same contract, awaited."""
        ...
