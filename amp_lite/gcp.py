"""Google Cloud Functions: the flush budget, and explicit adapters for both function kinds.

`@amplitude_flush` already recognises a Cloud Functions call (one argument: a Flask request or
a CloudEvent); `http` and `cloud_event` say it explicitly. Cloud Functions has no remaining-time
API, so the budget is the function's timeout measured from the start of the request: the
decorator's `timeout_s`, else AMP_LITE_TIMEOUT_S, else FUNCTION_TIMEOUT_SEC (1st gen) or
CLOUD_RUN_TIMEOUT_SECONDS (2nd gen, best effort), else 60 s (Cloud Functions' default). The
flush ends `margin_ms` before that, and never takes more than `flush_timeout_s`.

Gen2 serves many requests at once in one process, in threads: each request's events live in
its own contextvars scope and are flushed by that request, before its response is returned.
This module does not import functions_framework or flask (invariant I6).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from ._client import Amplitude
from ._config import _positive_seconds
from ._decorator import DEFAULT_MARGIN_MS, wrap_handler
from ._errors import ConfigError

ENV_TIMEOUT = "AMP_LITE_TIMEOUT_S"
PLATFORM_TIMEOUT_VARIABLES = ("FUNCTION_TIMEOUT_SEC", "CLOUD_RUN_TIMEOUT_SECONDS")
DEFAULT_TIMEOUT_S = 60.0  # Cloud Functions' default function timeout


def function_timeout_s(explicit: float | None = None,
                       env: Mapping[str, str] | None = None) -> float:
    """The function's timeout, by the rules in the module docstring."""
    if explicit is not None:
        return _positive_seconds(explicit, "timeout_s")
    env = os.environ if env is None else env
    for name in (ENV_TIMEOUT, *PLATFORM_TIMEOUT_VARIABLES):
        raw = env.get(name)
        if raw:
            try:
                return _positive_seconds(float(raw), name)
            except ValueError:
                raise ConfigError(f"{name}: must be a number of seconds, got {raw!r}") from None
    return DEFAULT_TIMEOUT_S


def http(handler: Callable[..., Any] | None = None, /, *, client: Amplitude | None = None,
         margin_ms: float = DEFAULT_MARGIN_MS, flush_timeout_s: float | None = None,
         timeout_s: float | None = None) -> Any:
    """Flush an HTTP function's events before its response goes out:
    `@functions_framework.http` over `@amp_lite.gcp.http` over `def f(request)`."""
    return _adapter(handler, client, margin_ms, flush_timeout_s, timeout_s)


def cloud_event(handler: Callable[..., Any] | None = None, /, *, client: Amplitude | None = None,
                margin_ms: float = DEFAULT_MARGIN_MS, flush_timeout_s: float | None = None,
                timeout_s: float | None = None) -> Any:
    """Flush a CloudEvent function's events before it returns:
    `@functions_framework.cloud_event` over `@amp_lite.gcp.cloud_event` over `def f(event)`."""
    return _adapter(handler, client, margin_ms, flush_timeout_s, timeout_s)


def _adapter(handler: Callable[..., Any] | None, client: Amplitude | None, margin_ms: float,
             flush_timeout_s: float | None, timeout_s: float | None) -> Any:
    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        return wrap_handler(function, client=client, margin_ms=margin_ms,
                            flush_timeout_s=flush_timeout_s, timeout_s=timeout_s,
                            platform="gcp")

    return decorate if handler is None else decorate(handler)
