"""`@amplitude_flush`: the decorator for any handler, on either platform.

Usable bare (`@amplitude_flush`, the default client), with a client (`@amplitude_flush(client)`)
or with options (`@amplitude_flush(client=..., margin_ms=..., flush_timeout_s=...)`). It picks
the platform by call shape: a single argument (a Flask or Starlette request, or a CloudEvent) is
Google Cloud Functions (`amp_lite.gcp`), anything else AWS Lambda (`amp_lite.aws_lambda`), whose
context says how long is left. Put it outermost among the decorators whose code tracks events
(right under functions-framework's): what runs after its scope's exit is flushed only by the
next invocation. The platform modules load when a handler is decorated, not at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

from ._client import Amplitude
from ._scope import TimeLeft
from ._wrap import DEFAULT_MARGIN_MS, CallBudget, Handler, check_options, wrap_handler


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
    chosen = target if isinstance(target, Amplitude) else client

    def decorate(handler: Handler) -> Handler:
        check_options(margin_ms, flush_timeout_s, timeout_s)
        return wrap_handler(handler, client=chosen, budget=_by_call_shape(timeout_s),
                            margin_ms=margin_ms, flush_timeout_s=flush_timeout_s)

    if callable(target) and not isinstance(target, Amplitude):
        return decorate(target)
    return decorate


def _by_call_shape(timeout_s: float | None) -> CallBudget:
    from . import aws_lambda, gcp  # at decoration: `import amp_lite` loads neither

    cloud_functions = gcp.call_budget(timeout_s)  # reads the environment once, now

    def budget(args: tuple[Any, ...], kwargs: dict[str, Any]) -> TimeLeft | None:
        if gcp.is_cloud_functions_call(args, kwargs):
            return cloud_functions(args, kwargs)
        return aws_lambda.call_time_left(args, kwargs)

    return budget
