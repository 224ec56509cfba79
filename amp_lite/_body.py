"""A response body generated inside its request's scope, flushed before its last byte goes out.

A streamed body (a WSGI app's iterable, a Flask `stream_with_context` generator) runs after the
handler returned: the events it tracks belong to the request, but the scope would already be
closed. `ScopedBody` keeps the scope open, enters it around each `next()`, and flushes when the
body is exhausted (before StopIteration reaches the server, which then writes the last chunk:
the platform may stop the CPU once the response is complete), or at `close()` when the server
stops early. The inner body's `close()` is always called, inside the scope.

Duck-typed: no flask or werkzeug import (invariant I6).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from ._scope import Invocation

Chunk = TypeVar("Chunk")


def finish(scope: Invocation) -> None:
    """What a `with` block's exit does: close the scope, then flush it (never raises)."""
    scope.close()
    scope.report = scope.flush()


async def afinish(scope: Invocation) -> None:
    """`finish()` with the async flush, for code on an event loop."""
    scope.close()
    scope.report = await scope.aflush()


class ScopedBody(Generic[Chunk]):
    """`body`, iterated inside `scope`; the scope is flushed once, when the body is exhausted,
    fails or is closed."""

    def __init__(self, body: Iterable[Chunk], scope: Invocation) -> None:
        self._body = body
        self._iterator: Iterator[Chunk] | None = None
        self._scope = scope
        self._finished = False

    def __iter__(self) -> ScopedBody[Chunk]:
        return self

    def __next__(self) -> Chunk:
        if self._finished:  # a server asking again after the end
            raise StopIteration
        self._scope.enter()
        try:
            if self._iterator is None:
                self._iterator = iter(self._body)
            return next(self._iterator)
        except BaseException:  # exhausted (StopIteration) or failed: the body is over either way
            self._finish()
            raise
        finally:
            self._scope.leave()

    def close(self) -> None:
        """The server is done with the body: close the inner one (its cleanup may track
        events), then flush if that has not happened yet."""
        close = getattr(self._body, "close", None)
        try:
            if callable(close):
                self._scope.enter()
                try:
                    close()
                finally:
                    self._scope.leave()
        finally:
            self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            finish(self._scope)


def keep_open_for_body(result: Any, scope: Invocation, *, flask_view: bool) -> Any | None:
    """When a handler's `result` is still to be produced — a coroutine (a plain `def`
    decorator around an `async def` returns one), a streamed werkzeug/Flask Response
    (`is_streamed`), or, from a Flask view (`flask_view`: Flask streams it), a bare generator,
    either also as the first item of a `(body, status, headers)` tuple — the same result,
    produced inside `scope`, which it flushes when done (a coroutine awaiting the original, or
    the body wrapped in a `ScopedBody`); else None (the caller flushes now). A generator
    returned elsewhere (a Lambda handler) is nobody's body: it is flushed at once."""
    if inspect.iscoroutine(result):
        return _awaited_in_scope(result, scope)
    if isinstance(result, tuple) and result:
        first = keep_open_for_body(result[0], scope, flask_view=flask_view)
        return None if first is None else (first, *result[1:])
    if flask_view and inspect.isgenerator(result):
        return ScopedBody(result, scope)
    if _is_streamed_response(result):
        result.response = ScopedBody(result.response, scope)
        return result
    return None


async def _awaited_in_scope(coroutine: Any, scope: Invocation) -> Any:
    """`await coroutine` inside `scope` (in the awaiting task's context), then its flush."""
    scope.enter()
    try:
        return await coroutine
    finally:
        await afinish(scope)  # closes the scope (leaving it) before the async flush


def _is_streamed_response(result: Any) -> bool:
    # werkzeug's Response: `is_streamed` is True when its body (`response`) has no length
    try:
        return getattr(result, "is_streamed", False) is True and hasattr(result, "response")
    except Exception:  # a foreign object's property failing is not a reason to fail the call
        return False


def is_flask_view_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """A Cloud Functions HTTP call: its one argument is a werkzeug (Flask) request, which
    carries the WSGI `environ`."""
    return (len(args) == 1 and not kwargs
            and isinstance(getattr(args[0], "environ", None), dict))
