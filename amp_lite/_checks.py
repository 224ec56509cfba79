"""Checks of numbers given by callers or the environment, with errors that name the value.

`bool` is an `int` in Python: `True` is never a number of seconds, events or bytes here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard

from ._errors import ConfigError

# No duration amp-lite is given can usefully exceed the longest invocation of a supported
# platform: an HTTP function on Cloud Run functions (2nd gen) runs at most 60 minutes; Lambda
# at most 15. A larger value is a mistake (ms for s?) and would overflow socket timeouts.
MAX_DURATION_S = 3600.0


def is_int(value: Any) -> TypeGuard[int]:
    """An int, and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[int | float]:
    """An int or a float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def optional_str(value: Any) -> str | None:
    """The value when it is a string, else None (ids read back from JSON)."""
    return value if isinstance(value, str) else None


def positive_int(value: Any, name: str) -> int:
    if not is_int(value) or value <= 0:
        raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
    return int(value)


def positive_seconds(value: Any, name: str) -> float:
    if not is_number(value):
        raise ConfigError(f"{name}: must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: must be a positive, finite number of seconds, got {value!r}")
    if value > MAX_DURATION_S:
        raise ConfigError(f"{name}: at most {MAX_DURATION_S:g} seconds (the longest serverless "
                          f"invocation), got {value!r}")
    return float(value)


def non_negative_ms(value: Any, name: str) -> float:
    if not is_number(value) or not 0 <= value < math.inf:
        raise ConfigError(f"{name}: must be a non-negative number of milliseconds, "
                          f"got {value!r}")
    if value > MAX_DURATION_S * 1000:
        raise ConfigError(f"{name}: at most {MAX_DURATION_S * 1000:g} milliseconds (the longest "
                          f"serverless invocation), got {value!r}")
    return float(value)


def seconds_from_env(env: Mapping[str, str], name: str) -> float | None:
    """The positive number of seconds in variable `name`, or None when it is unset or empty."""
    raw = env.get(name)
    if not raw:
        return None
    try:
        parsed = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be a number of seconds, got {raw!r}") from None
    return positive_seconds(parsed, name)
