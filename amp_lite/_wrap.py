"""Running a handler inside an invocation scope: the part every platform's decorator shares.

`wrap_handler` opens a scope around each call, runs the handler, and flushes in `finally`
(the scope's exit). How long a call may flush is the platform's business: `budget(args,
kwargs)` says how much of the invocation is left (`amp_lite.aws_lambda`, `amp_lite.gcp`).

A sync handler whose result is a body still to be generated (a streamed Flask response, a
`stream_with_context` generator: `_body.keep_open_for_body`) keeps its scope open: the body is
generated inside it and the flush runs when the body is exhausted or closed, before its last
byte is sent.

The handler's return value and exception pass through unchanged (invariant I4): the flush at
exit never raises, and a client that cannot be built is logged, not raised. Bad decorator
arguments are a ConfigError when the handler is decorated (at import, in the init phase).
`open_scope` is shared with the ASGI and WSGI middleware.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from ._body import finish, is_flask_view_call, keep_open_for_body
from ._checks import non_negative_ms, positive_seconds
from ._client import Amplitude
from ._default import get_client
from ._scope import Invocation, TimeLeft

logger = logging.getLogger("amp_lite")

# Time kept back between the end of the flush and the platform's deadline: the response still
# has to be posted, and decorators outside ours (Powertools metrics) still have to run.
DEFAULT_MARGIN_MS = 500

Handler = TypeVar("Handler", bound=Callable[..., Any])
# How long a given call may flush: what is left of its invocation, or None when unknown (then
# only flush_timeout_s bounds the flush). Called as the call starts.
CallBudget = Callable[[tuple[Any, ...], dict[str, Any]], "TimeLeft | None"]


def check_options(margin_ms: float, flush_timeout_s: float | None,
                  timeout_s: float | None = None) -> None:
    """Decorator arguments, checked when the handler is decorated (it fails the init phase)."""
    non_negative_ms(margin_ms, "margin_ms")
    if flush_timeout_s is not None:
        positive_seconds(flush_timeout_s, "flush_timeout_s")
    if timeout_s is not None:
        positive_seconds(timeout_s, "timeout_s")


def wrap_handler(handler: Handler, *, client: Amplitude | None, budget: CallBudget,
                 margin_ms: float, flush_timeout_s: float | None) -> Handler:
    """`handler`, flushing its events at exit; `client=None` is the default client. An
    `async def` handler stays one: it is awaited inside the scope, then flushed with the
    async flush (`Invocation.aflush`), which does not block the event loop."""
    if inspect.iscoroutinefunction(handler):
        return _wrap_coroutine(handler, client, budget, margin_ms, flush_timeout_s)

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        scope = open_scope(client, lambda: budget(args, kwargs), margin_ms, flush_timeout_s)
        if scope is None:
            return handler(*args, **kwargs)
        scope.enter()
        try:
            result = handler(*args, **kwargs)
        except BaseException:
            finish(scope)
            raise
        finally:
            scope.leave()
        streamed = _keep_open(result, scope, is_flask_view_call(args, kwargs))
        if streamed is None:
            finish(scope)
            return result
        return streamed

    return wrapper  # type: ignore[return-value]


def _keep_open(result: Any, scope: Invocation, flask_view: bool) -> Any | None:
    try:
        return keep_open_for_body(result, scope, flask_view=flask_view)
    except Exception:  # the result is returned as it is, and flushed now (I4)
        logger.exception("amp_lite: could not wrap a streamed response body; its events are "
                         "flushed with the next scope")
        return None


def _wrap_coroutine(handler: Handler, client: Amplitude | None, budget: CallBudget,
                    margin_ms: float, flush_timeout_s: float | None) -> Handler:
    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        scope = open_scope(client, lambda: budget(args, kwargs), margin_ms, flush_timeout_s)
        if scope is None:
            return await handler(*args, **kwargs)
        async with scope:  # the scope's ContextVar is this task's: the handler tracks into it
            return await handler(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def open_scope(client: Amplitude | None, read_budget: Callable[[], TimeLeft | None],
               margin_ms: float, flush_timeout_s: float | None) -> Invocation | None:
    """A scope for one call or request (`client=None`: the default client), bounded by what
    `read_budget()` says is left; None when it cannot be opened. Never raises: the call runs
    uninstrumented rather than fail (I4)."""
    try:
        chosen = client if client is not None else get_client()
    except Exception:  # a broken configuration must not break the handler (I4)
        logger.exception("amp_lite: the default client could not be built; this invocation "
                         "is not instrumented")
        return None
    time_left: TimeLeft | None = None
    try:
        time_left = read_budget()
    except Exception:  # still flush this call's events, bounded by flush_timeout_s
        logger.exception("amp_lite: could not tell how long this invocation has left; its "
                         "flush is bounded by flush_timeout_s only")
    try:
        return chosen.invocation(time_left=time_left, margin_ms=margin_ms,
                                 flush_timeout_s=flush_timeout_s)
    except Exception:
        logger.exception("amp_lite: could not open an invocation scope")
        return None
