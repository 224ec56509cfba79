"""AWS Lambda: how long a call may flush, and the wrapper handler for zero-code installs.

A Lambda call is `(event, context)`: `context.get_remaining_time_in_millis()` says how long the
invocation has left, and the flush ends `margin_ms` before that.

Zero-code (through the layer): set the function's handler to `amp_lite.aws_lambda.handler` and
`AMP_LITE_HANDLER=module.function` (or `path/to/module.function`). The wrapper resolves your
handler once, when the runtime loads it during the init phase — a wrong value fails the init
with a message naming the variable — and runs it with its events flushed at exit.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

from ._errors import ConfigError
from ._scope import TimeLeft, from_milliseconds
from ._wrap import DEFAULT_MARGIN_MS, wrap_handler

logger = logging.getLogger("amp_lite")

ENV_HANDLER = "AMP_LITE_HANDLER"


def context_time_left(context: Any) -> TimeLeft | None:
    """Seconds the invocation has left, read from its Lambda context (None: no such method)."""
    method = getattr(context, "get_remaining_time_in_millis", None)
    if not callable(method):
        return None
    return from_milliseconds(method, getattr(context, "aws_request_id", None))


def call_time_left(args: tuple[Any, ...], kwargs: dict[str, Any]) -> TimeLeft | None:
    """How long a call may flush: what its Lambda context says is left. The context is found
    wherever the call shape puts it: `(event, context)`, `(self, event, context)` (a method),
    `context=` by keyword."""
    candidates = [kwargs.get("context"), *reversed(args[1:])]
    time_left = next((found for found in map(context_time_left, candidates) if found), None)
    if time_left is None:
        logger.debug("amp_lite: no context.get_remaining_time_in_millis(); the flush is "
                     "bounded by flush_timeout_s only")
    return time_left


def resolve_handler(value: str | None) -> Callable[..., Any]:
    """Import `module.function` (slashes allowed in the module path) and return the function."""
    if not value:
        raise ConfigError(f"{ENV_HANDLER} is not set: set it to your handler, e.g. "
                          f"{ENV_HANDLER}=app.handler (module app, function handler)")
    module_name, _, function_name = value.strip().rpartition(".")
    if not module_name or not function_name:
        raise ConfigError(f"{ENV_HANDLER}={value!r}: expected module.function, e.g. app.handler")
    module_name = module_name.replace("/", ".")
    if module_name == __name__:
        raise ConfigError(f"{ENV_HANDLER}={value!r}: points at the amp-lite wrapper itself")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{ENV_HANDLER}={value!r}: cannot import module "
                          f"{module_name!r}: {exc}") from exc
    function: Callable[..., Any] | None = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"{ENV_HANDLER}={value!r}: module {module_name!r} has no callable "
                          f"{function_name!r}")
    return function


@functools.cache
def _wrapped_handler() -> Callable[..., Any]:
    return wrap_handler(resolve_handler(os.environ.get(ENV_HANDLER)), client=None,
                        budget=call_time_left, margin_ms=DEFAULT_MARGIN_MS, flush_timeout_s=None)


def __getattr__(name: str) -> Any:
    # `handler` is built on first access: the runtime reads it once at init; importing this
    # module for the decorator alone never touches AMP_LITE_HANDLER.
    if name != "handler":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _wrapped_handler()


__all__ = ["ENV_HANDLER", "call_time_left", "context_time_left", "resolve_handler"]
