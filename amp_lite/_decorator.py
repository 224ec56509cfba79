"""`@amplitude_flush`: open an invocation scope around a handler and flush it in `finally`.

Usable bare (`@amplitude_flush`, the default client), with a client (`@amplitude_flush(client)`)
or with options (`@amplitude_flush(client=..., margin_ms=..., flush_timeout_s=...)`). It
recognises the call shape: `(event, context)` is AWS Lambda, whose context says how long is
left; a single argument (a Flask request or a CloudEvent) is Google Cloud Functions, whose
budget is the function's timeout from the start of the request (see `amp_lite.gcp`).

The handler's return value and exception pass through unchanged (invariant I4): the flush at
exit never raises, and a client that cannot be built is logged, not raised. Bad decorator
arguments are a ConfigError when the handler is decorated (at import, in the init phase).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any, Literal, TypeVar, overload

from ._client import Amplitude, Invocation
from ._config import _positive_seconds
from ._default import get_client
from ._errors import ConfigError

logger = logging.getLogger("amp_lite")

# Time kept back between the end of the flush and the platform's deadline: the response still
# has to be posted, and decorators outside ours (Powertools metrics) still have to run.
DEFAULT_MARGIN_MS = 500

Handler = TypeVar("Handler", bound=Callable[..., Any])
Platform = Literal["auto", "lambda", "gcp"]


@overload
def amplitude_flush(handler: Handler, /) -> Handler: ...


@overload
def amplitude_flush(
    client: Amplitude | None = None, /, *, margin_ms: float = ...,
    flush_timeout_s: float | None = ..., timeout_s: float | None = ...,
) -> Callable[[Handler], Handler]: ...


@overload
def amplitude_flush(
    *, client: Amplitude | None = None, margin_ms: float = ...,
    flush_timeout_s: float | None = ..., timeout_s: float | None = ...,
) -> Callable[[Handler], Handler]: ...


def amplitude_flush(
    target: Any = None, /, *, client: Amplitude | None = None,
    margin_ms: float = DEFAULT_MARGIN_MS, flush_timeout_s: float | None = None,
    timeout_s: float | None = None,
) -> Any:
    """Flush the handler's events synchronously when it exits, within the time it has left.

    `timeout_s` is the function's timeout on platforms without a remaining-time API (Cloud
    Functions); Lambda's context is used when there is one.
    """
    if callable(target) and not isinstance(target, Amplitude):
        return wrap_handler(target, client=client, margin_ms=margin_ms,
                            flush_timeout_s=flush_timeout_s, timeout_s=timeout_s)
    chosen = target if isinstance(target, Amplitude) else client

    def decorate(handler: Handler) -> Handler:
        return wrap_handler(handler, client=chosen, margin_ms=margin_ms,
                            flush_timeout_s=flush_timeout_s, timeout_s=timeout_s)

    return decorate


def wrap_handler(handler: Handler, *, client: Amplitude | None, margin_ms: float,
                 flush_timeout_s: float | None, timeout_s: float | None = None,
                 platform: Platform = "auto") -> Handler:
    _check_options(margin_ms, flush_timeout_s, timeout_s)  # at decoration: fails the init phase

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        scope = _open_scope(client, args, kwargs, margin_ms, flush_timeout_s, timeout_s,
                            platform)
        if scope is None:
            return handler(*args, **kwargs)
        with scope:
            return handler(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _check_options(margin_ms: float, flush_timeout_s: float | None,
                   timeout_s: float | None) -> None:
    if isinstance(margin_ms, bool) or not isinstance(margin_ms, (int, float)) or not (
            0 <= margin_ms < math.inf):
        raise ConfigError(f"margin_ms: must be a non-negative number of milliseconds, "
                          f"got {margin_ms!r}")
    if flush_timeout_s is not None:
        _positive_seconds(flush_timeout_s, "flush_timeout_s")
    if timeout_s is not None:
        _positive_seconds(timeout_s, "timeout_s")


def _open_scope(client: Amplitude | None, args: tuple[Any, ...], kwargs: dict[str, Any],
                margin_ms: float, flush_timeout_s: float | None, timeout_s: float | None,
                platform: Platform) -> Invocation | None:
    try:
        chosen = client if client is not None else get_client()
    except Exception:  # a broken configuration must not break the handler (I4)
        logger.exception("amp_lite: the default client could not be built; this invocation "
                         "is not instrumented")
        return None
    try:
        return _scope_for_call(chosen, args, kwargs, margin_ms, flush_timeout_s, timeout_s,
                               platform)
    except Exception:
        # e.g. a bad AMP_LITE_TIMEOUT_S: still flush this invocation's events, bounded by
        # flush_timeout_s, rather than leave them in a buffer nobody flushes
        logger.exception("amp_lite: bad flush settings; this invocation's flush is bounded "
                         "by flush_timeout_s only")
    try:
        return chosen.invocation(remaining_time_ms=_remaining_time_fn(args, kwargs),
                                 margin_ms=margin_ms, flush_timeout_s=flush_timeout_s)
    except Exception:
        logger.exception("amp_lite: could not open an invocation scope")
        return None


def _scope_for_call(client: Amplitude, args: tuple[Any, ...], kwargs: dict[str, Any],
                    margin_ms: float, flush_timeout_s: float | None, timeout_s: float | None,
                    platform: Platform) -> Invocation:
    if platform == "gcp" or (platform == "auto" and _is_single_argument(args, kwargs)):
        from .gcp import function_timeout_s

        return client.invocation(timeout_s=function_timeout_s(timeout_s),
                                 margin_ms=margin_ms, flush_timeout_s=flush_timeout_s)
    remaining = _remaining_time_fn(args, kwargs)
    if remaining is None:
        logger.debug("amp_lite: no context.get_remaining_time_in_millis(); the flush is "
                     "bounded by flush_timeout_s only")
    return client.invocation(remaining_time_ms=remaining, margin_ms=margin_ms,
                             flush_timeout_s=flush_timeout_s)


def _is_single_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """A Cloud Functions call: one argument (request or cloud_event), no Lambda context."""
    return len(args) + len(kwargs) == 1 and "context" not in kwargs


def _remaining_time_fn(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], int] | None:
    context = args[1] if len(args) >= 2 else kwargs.get("context")
    method = getattr(context, "get_remaining_time_in_millis", None)
    return method if callable(method) else None
