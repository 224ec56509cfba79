"""Google Cloud Functions: how long a call may flush, and explicit adapters for both kinds.

`@amplitude_flush` already recognises a Cloud Functions call (one argument: a Flask request, a
Starlette request from functions-framework's `aio` API, or a CloudEvent); `http` and
`cloud_event` say it explicitly. Both take `async def` functions too (`functions_framework.aio`):
they stay coroutine functions, flushed before the response. Cloud Functions has no remaining-time
API, so the budget is the function's timeout measured from the start of the request: the
decorator's `timeout_s`, else AMP_LITE_TIMEOUT_S, else FUNCTION_TIMEOUT_SEC (1st gen) or
CLOUD_RUN_TIMEOUT_SECONDS (2nd gen, best effort), else 60 s (Cloud Functions' default). The
flush ends `margin_ms` before that, and never takes more than `flush_timeout_s`. The variables
are read once, when the handler is decorated.

Gen2 serves many requests at once in one process, in threads (or, with the `aio` API, as tasks
of one event loop): each request's events live in its own contextvars scope and are flushed by
that request, before its response is returned.
This module does not import functions_framework or flask (invariant I6).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from ._checks import positive_seconds, seconds_from_env
from ._client import Amplitude
from ._errors import ConfigError
from ._scope import TimeLeft, countdown
from ._wrap import DEFAULT_MARGIN_MS, CallBudget, check_options, wrap_handler

logger = logging.getLogger("amp_lite")

ENV_TIMEOUT = "AMP_LITE_TIMEOUT_S"
PLATFORM_TIMEOUT_VARIABLES = ("FUNCTION_TIMEOUT_SEC", "CLOUD_RUN_TIMEOUT_SECONDS")
DEFAULT_TIMEOUT_S = 60.0  # Cloud Functions' default function timeout


def function_timeout_s(explicit: float | None = None,
                       env: Mapping[str, str] | None = None) -> float:
    """The function's timeout, by the rules in the module docstring."""
    if explicit is not None:
        return positive_seconds(explicit, "timeout_s")
    env = os.environ if env is None else env
    for name in (ENV_TIMEOUT, *PLATFORM_TIMEOUT_VARIABLES):
        seconds = seconds_from_env(env, name)
        if seconds is not None:
            return seconds
    return DEFAULT_TIMEOUT_S


def is_cloud_functions_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """One argument (a request or a cloud_event), and no Lambda context; or a 1st gen
    background function's `(data, context)`, whose context has an event id and type."""
    if len(args) + len(kwargs) == 1 and "context" not in kwargs:
        return True
    context = kwargs.get("context", args[-1] if args else None)
    return (hasattr(context, "event_id") and hasattr(context, "event_type")
            and not hasattr(context, "get_remaining_time_in_millis"))


def call_budget(timeout_s: float | None = None) -> CallBudget:
    """How long a call may flush: the function's timeout, counted from the start of the call.
    Reads the environment now; a bad value is logged once, and the flush is then bounded by
    flush_timeout_s only (the events are still flushed)."""
    try:
        timeout = function_timeout_s(timeout_s)
    except ConfigError as exc:
        logger.error("amp_lite: %s; Cloud Functions calls of this handler are bounded by "
                     "flush_timeout_s only", exc)
        return _unknown_time_left

    def budget(args: tuple[Any, ...], kwargs: dict[str, Any]) -> TimeLeft | None:
        return countdown(timeout)

    return budget


def _unknown_time_left(args: tuple[Any, ...], kwargs: dict[str, Any]) -> TimeLeft | None:
    return None


def http(handler: Callable[..., Any] | None = None, /, *, client: Amplitude | None = None,
         margin_ms: float = DEFAULT_MARGIN_MS, flush_timeout_s: float | None = None,
         timeout_s: float | None = None) -> Any:
    """Flush an HTTP function's events before its response goes out:
    `@functions_framework.http` over `@amp_lite.gcp.http` over `def f(request)`, or
    `@functions_framework.aio.http` over it over `async def f(request)`."""
    return _adapter(handler, client, margin_ms, flush_timeout_s, timeout_s)


def cloud_event(handler: Callable[..., Any] | None = None, /, *, client: Amplitude | None = None,
                margin_ms: float = DEFAULT_MARGIN_MS, flush_timeout_s: float | None = None,
                timeout_s: float | None = None) -> Any:
    """Flush a CloudEvent function's events before it returns (before the event is
    acknowledged): `@functions_framework.cloud_event` (or `.aio.cloud_event`) over
    `@amp_lite.gcp.cloud_event` over `def f(event)` (or `async def`)."""
    return _adapter(handler, client, margin_ms, flush_timeout_s, timeout_s)


def _adapter(handler: Callable[..., Any] | None, client: Amplitude | None, margin_ms: float,
             flush_timeout_s: float | None, timeout_s: float | None) -> Any:
    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        check_options(margin_ms, flush_timeout_s, timeout_s)
        return wrap_handler(function, client=client, budget=call_budget(timeout_s),
                            margin_ms=margin_ms, flush_timeout_s=flush_timeout_s)

    return decorate if handler is None else decorate(handler)


__all__ = ["DEFAULT_TIMEOUT_S", "ENV_TIMEOUT", "call_budget", "cloud_event", "function_timeout_s",
           "http", "is_cloud_functions_call"]
