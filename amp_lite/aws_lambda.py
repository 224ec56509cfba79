"""AWS Lambda integration: the decorator, and the wrapper handler for zero-code installs.

Zero-code (through the layer): set the function's handler to `amp_lite.aws_lambda.handler` and
`AMP_LITE_HANDLER=module.function` (or `path/to/module.function`). The wrapper resolves your
handler once, when the runtime loads it during the init phase — a wrong value fails the init
with a message naming the variable — and runs it under `@amplitude_flush`.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from typing import Any, Protocol

from ._decorator import DEFAULT_MARGIN_MS, amplitude_flush
from ._errors import ConfigError

ENV_HANDLER = "AMP_LITE_HANDLER"


class LambdaContext(Protocol):
    """The part of Lambda's context object amp_lite uses (no Powertools import needed)."""

    def get_remaining_time_in_millis(self) -> int: ...


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
    return amplitude_flush(resolve_handler(os.environ.get(ENV_HANDLER)))


def __getattr__(name: str) -> Any:
    # `handler` is built on first access: the runtime reads it once at init; importing this
    # module for the decorator alone never touches AMP_LITE_HANDLER.
    if name != "handler":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _wrapped_handler()


__all__ = ["DEFAULT_MARGIN_MS", "ENV_HANDLER", "LambdaContext", "amplitude_flush",
           "resolve_handler"]
