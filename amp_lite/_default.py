"""The default client and the module-level helpers (`amp_lite.track(...)` and friends).

One client per process, built lazily from the environment on first use, so a handler can be
instrumented with two lines. The API key comes from AMPLITUDE_API_KEY, or is fetched once, at
the first flush, from AWS Secrets Manager (AMPLITUDE_API_KEY_SECRET) or SSM Parameter Store
(AMPLITUDE_API_KEY_PARAMETER) with Powertools' parameters utility.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ._client import Amplitude
from ._config import ENV_API_KEY
from ._errors import ConfigError
from ._events import Event, Identify, Revenue
from ._report import DeliveryReport

ENV_API_KEY_SECRET = "AMPLITUDE_API_KEY_SECRET"
ENV_API_KEY_PARAMETER = "AMPLITUDE_API_KEY_PARAMETER"
SECRET_MAX_AGE_S = 300  # Powertools' default cache TTL; a rotated key is picked up within this

class _DefaultClient:
    """Holds the one default client of the process (a lock, never a thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client: Amplitude | None = None


_default = _DefaultClient()


def get_client() -> Amplitude:
    """The process-wide default client, built from the environment on first use."""
    with _default.lock:
        if _default.client is None:
            _default.client = Amplitude(api_key=api_key_from_environment())
        return _default.client


def set_client(client: Amplitude | None) -> None:
    """Replace the default client (None: build it again from the environment on next use)."""
    with _default.lock:
        _default.client = client


def api_key_from_environment(
    env: Mapping[str, str] | None = None,
) -> str | Callable[[], str] | None:
    """The key itself, or a function that fetches it from Secrets Manager or SSM once."""
    env = os.environ if env is None else env
    if env.get(ENV_API_KEY):
        return env[ENV_API_KEY]
    if env.get(ENV_API_KEY_SECRET):
        return _fetcher(ENV_API_KEY_SECRET, env[ENV_API_KEY_SECRET])
    if env.get(ENV_API_KEY_PARAMETER):
        return _fetcher(ENV_API_KEY_PARAMETER, env[ENV_API_KEY_PARAMETER])
    return None


def _fetcher(variable: str, name: str) -> Callable[[], str]:
    def fetch() -> str:
        try:  # Powertools (and boto3 under it) load only here, on the first flush (I6)
            from aws_lambda_powertools.utilities import parameters
        except ImportError as exc:
            raise ConfigError(f"{variable} is set but aws-lambda-powertools (with boto3) is not "
                              "installed: pip install 'amp-lite[powertools,sqs]'") from exc
        try:
            if variable == ENV_API_KEY_SECRET:
                value = parameters.get_secret(name, max_age=SECRET_MAX_AGE_S)
            else:
                value = parameters.get_parameter(name, decrypt=True, max_age=SECRET_MAX_AGE_S)
        except Exception as exc:
            raise ConfigError(f"{variable}={name!r}: could not fetch the API key "
                              f"({type(exc).__name__})") from exc
        if isinstance(value, bytes):
            value = value.decode()
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{variable}={name!r}: the secret holds no API key")
        return value.strip()

    return fetch


def track(event_type: str | Event, **fields: Any) -> str | None:
    """`Amplitude.track` on the default client."""
    return get_client().track(event_type, **fields)


def identify(identify: Identify, **fields: Any) -> str | None:
    """`Amplitude.identify` on the default client."""
    return get_client().identify(identify, **fields)


def group_identify(group_type: str, group_name: str | list[str], identify: Identify,
                   **fields: Any) -> str | None:
    """`Amplitude.group_identify` on the default client."""
    return get_client().group_identify(group_type, group_name, identify, **fields)


def set_group(group_type: str, group_name: str | list[str], **fields: Any) -> str | None:
    """`Amplitude.set_group` on the default client."""
    return get_client().set_group(group_type, group_name, **fields)


def revenue(revenue: Revenue, **fields: Any) -> str | None:
    """`Amplitude.revenue` on the default client."""
    return get_client().revenue(revenue, **fields)


def flush(*, timeout_s: float | None = None) -> DeliveryReport:
    """`Amplitude.flush` on the default client."""
    return get_client().flush(timeout_s=timeout_s)
