"""ASGI middleware: one invocation scope per HTTP request, flushed before its last byte is sent.

    app = amp_lite.asgi.AmplitudeMiddleware(app)            # FastAPI, Starlette, any ASGI app
    handler = mangum.Mangum(app)                            # on Lambda

The scope is entered before the app runs, so whatever the request's task tracks (its
endpoint, dependencies, a streamed body) lands in it. When the app sends the final
`http.response.body` (`more_body` false) or `http.response.pathsend`, the scope is closed and
flushed (`await scope.aflush()`) before that message is forwarded: the platform may stop the
CPU once the response is complete (Lambda freezes, Cloud Run throttles). An app that fails or
never sends its final message is flushed when it returns. Events tracked after the final
message (Starlette's background tasks) go to the client's own buffer and are flushed by the next
request's scope. Under Mangum (a scope with `aws.context`) the response leaves only when the
app returns, so the flush waits for that: background tasks' events are flushed with the
request's. Lifespan and websocket connections pass through untouched.

The budget: `amp_lite._request_budget` (a Lambda context from Mangum or the Web Adapter's
header, else `timeout_s` from the start of the request, else `flush_timeout_s` alone). The
app's response and exception are never changed (invariant I4).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._body import afinish
from ._client import Amplitude
from ._request_budget import ASGI_CONTEXT_KEY, RequestScopes
from ._wrap import DEFAULT_MARGIN_MS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FINAL_BODY = "http.response.body"
PATHSEND = "http.response.pathsend"  # the ASGI path-send extension: a whole file, always final


class AmplitudeMiddleware:
    """Flush each HTTP request's events before its response completes.

    `client` None is the default client (`amp_lite.get_client()`), resolved at each request;
    `timeout_s` is the platform's request timeout where there is no Lambda context (Cloud Run);
    `margin_ms` and `flush_timeout_s` as for `@amplitude_flush`. Bad options raise ConfigError
    here, when the app is built.
    """

    def __init__(self, app: ASGIApp, *, client: Amplitude | None = None,
                 timeout_s: float | None = None, margin_ms: float = DEFAULT_MARGIN_MS,
                 flush_timeout_s: float | None = None) -> None:
        self.app = app
        self._scopes = RequestScopes(client, timeout_s=timeout_s, margin_ms=margin_ms,
                                     flush_timeout_s=flush_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        invocation = self._scopes.asgi(scope)
        if invocation is None:
            await self.app(scope, receive, send)
            return
        # Mangum collects the whole response and hands it to Lambda when the app returns
        flush_at_final = not _response_leaves_when_the_app_returns(scope)

        async def send_after_flush(message: Message) -> None:
            if flush_at_final and not invocation.buffer.closed and _is_final(message):
                await afinish(invocation)  # closes the scope: flushed once
            await send(message)

        invocation.enter()
        try:
            await self.app(scope, receive, send_after_flush)
        finally:
            invocation.leave()
            if not invocation.buffer.closed:  # Mangum; or the app failed, or returned
                await afinish(invocation)        # without completing its response


def _response_leaves_when_the_app_returns(scope: Scope) -> bool:
    return ASGI_CONTEXT_KEY in scope


def _is_final(message: Message) -> bool:
    kind = message.get("type")
    return (kind == FINAL_BODY and not message.get("more_body", False)) or kind == PATHSEND


__all__ = ["AmplitudeMiddleware"]
