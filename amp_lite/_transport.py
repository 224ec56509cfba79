"""The Transport protocol: how a request body reaches Amplitude.

One method, as httpx's BaseTransport: the client's default is `_http.HttpTransport` (urllib3,
pooled, verified TLS); tests and unusual networks pass their own to `Amplitude(transport=...)`.
"""

from __future__ import annotations

from typing import Protocol

from ._deadline import Deadline
from ._reply import Reply


class Transport(Protocol):
    def post(self, body: bytes, *, timeout_s: float, deadline: Deadline) -> Reply:
        """POST `body` (the JSON request) and return what came back, never raising for network
        trouble: a `Reply` with `error` set instead. Must return by `deadline`, and spend at
        most `timeout_s` on one attempt."""
        ...
