"""Where an API key comes from, and how a key provider is asked for it.

The default client's key is AMPLITUDE_API_KEY, or fetched at the first flush from AWS Secrets
Manager (AMPLITUDE_API_KEY_SECRET) or SSM Parameter Store (AMPLITUDE_API_KEY_PARAMETER) with
Powertools' parameters utility. A fetch fits the flush's deadline (botocore timeouts from what
is left, no retries), and a provider that failed is not asked again for a while: without that,
every invocation of a function whose secret is unreachable would wait for it again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._config import ENV_API_KEY, checked_api_key
from ._deadline import Deadline
from ._errors import ConfigError, KeyUnavailableError

logger = logging.getLogger("amp_lite")

ENV_API_KEY_SECRET = "AMPLITUDE_API_KEY_SECRET"
ENV_API_KEY_PARAMETER = "AMPLITUDE_API_KEY_PARAMETER"
SECRET_MAX_AGE_S = 300  # Powertools' default cache TTL; a rotated key is picked up within this
FETCH_TIMEOUT_S = 5.0  # a fetch with no deadline (a plain provider call outside a flush)
MIN_FETCH_S = 0.1  # less time than this left: do not start a fetch
RETRY_AFTER_FAILURE_S = (5.0, 300.0)  # a failed provider waits 5 s, doubling to 5 minutes


def api_key_from_environment(
    env: Mapping[str, str] | None = None,
) -> str | Callable[[], str] | None:
    """The key itself, or a provider that fetches it from Secrets Manager or SSM."""
    env = os.environ if env is None else env
    if env.get(ENV_API_KEY):
        return env[ENV_API_KEY]
    if env.get(ENV_API_KEY_SECRET):
        return SecretFetcher(ENV_API_KEY_SECRET, env[ENV_API_KEY_SECRET])
    if env.get(ENV_API_KEY_PARAMETER):
        return SecretFetcher(ENV_API_KEY_PARAMETER, env[ENV_API_KEY_PARAMETER])
    return None


class SecretFetcher:
    """A key provider reading a Secrets Manager secret or an SSM parameter, within a deadline.

    `label` identifies it across processes (the variable and the secret's name, never the
    key): the local spill of a client whose key is not known yet is found by it.
    """

    def __init__(self, variable: str, name: str) -> None:
        self.variable = variable
        self.name = name
        self.label = f"{variable}={name}"
        self._store: Any = None  # Powertools' provider over a bounded boto3 client, built once

    def __repr__(self) -> str:
        return f"SecretFetcher({self.label!r})"

    def __call__(self, deadline: Deadline | None = None) -> str:
        deadline = Deadline.after(FETCH_TIMEOUT_S) if deadline is None else deadline
        if deadline.remaining_s() < MIN_FETCH_S:  # not the store's fault: no backoff for it
            raise KeyUnavailableError(f"{self.label}: no time left in this flush to fetch the "
                                      "API key")
        provider = self._provider(deadline.remaining_s())
        from ._aws_http import bounded_by  # loaded with the first fetch, as boto3 is

        try:
            with bounded_by(deadline):  # the whole request, connect to last byte
                if self.variable == ENV_API_KEY_SECRET:
                    value = provider.get(self.name, max_age=SECRET_MAX_AGE_S)
                else:
                    value = provider.get(self.name, decrypt=True, max_age=SECRET_MAX_AGE_S)
        except Exception as exc:
            self._store = None  # the next attempt starts afresh: new client, new connections
            raise ConfigError(f"{self.variable}={self.name!r}: could not fetch the API key "
                              f"({type(exc).__name__})") from exc
        if isinstance(value, bytes):
            value = value.decode()
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self.variable}={self.name!r}: the secret holds no API key")
        return value.strip()

    def _provider(self, timeout_s: float) -> Any:
        """Powertools' provider, over a boto3 client whose requests BoundedHttp sends
        (`timeout_s` only matters behind a proxy, where botocore sends itself)."""
        if self._store is not None:
            return self._store
        try:  # Powertools (and boto3 under it) load only here, on the first flush (I6)
            from aws_lambda_powertools.utilities import parameters
        except ImportError as exc:
            raise ConfigError(f"{self.variable} is set but aws-lambda-powertools (with boto3) "
                              "is not installed: pip install 'amp-lite[powertools,sqs]'") from exc
        from ._aws_http import bounded_client

        secret = self.variable == ENV_API_KEY_SECRET
        client = bounded_client("secretsmanager" if secret else "ssm", region=None,
                                timeout_s=timeout_s)
        self._store = (parameters.SecretsProvider(boto3_client=client) if secret
                       else parameters.SSMProvider(boto3_client=client))
        return self._store


def provider_label(provider: Callable[..., str]) -> str:
    """What names a key provider without its key: its `label` (SecretFetcher's: the variable
    and the secret's name), else this very object in this process. Two providers of one
    name (two lambdas, two partials) may return different keys, so a name alone would let
    one project's spilled events go out with another's key; give a provider of yours a
    `label` attribute to keep its spill across processes."""
    label = getattr(provider, "label", None)
    if isinstance(label, str) and label:
        return label
    kind = provider if hasattr(provider, "__qualname__") else type(provider)
    name = f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', '?')}"
    return f"{name}@{os.getpid()}:{id(provider):x}"


class ProvidedKey:
    """The key a provider gives, asked once and kept; after a failure, not asked again until
    a backoff has passed (KeyUnavailableError until then, at once)."""

    def __init__(self, provider: Callable[..., str]) -> None:
        self._provider = provider
        self._key: str | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._lock = threading.Lock()  # one fetch at a time (Cloud Functions gen2 threads)

    @property
    def known(self) -> bool:
        return self._key is not None

    def get(self, deadline: Deadline | None = None) -> str:
        wait_s = FETCH_TIMEOUT_S if deadline is None else deadline.remaining_s()
        if not self._lock.acquire(timeout=max(wait_s, 0.001)):  # another flush is fetching
            raise KeyUnavailableError("api_key: another flush is still fetching the key")
        try:
            if self._key is None:
                self._key = self._fetch(deadline)
            return self._key
        finally:
            self._lock.release()

    def _fetch(self, deadline: Deadline | None) -> str:
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise KeyUnavailableError(f"{self._last_error}; the key provider is asked again in "
                                      f"{wait:.0f} s")
        try:
            return checked_api_key(self._call(deadline), "api_key (from the key provider)")
        except KeyUnavailableError:
            raise
        except Exception as exc:
            error = exc if isinstance(exc, ConfigError) else ConfigError(
                f"api_key: the key provider failed ({type(exc).__name__})")
            self._failed(str(error))
            raise KeyUnavailableError(str(error)) from exc

    def _call(self, deadline: Deadline | None) -> object:
        if isinstance(self._provider, SecretFetcher):
            return self._provider(deadline)
        return self._provider()  # a provider of yours: it cannot be interrupted

    def _failed(self, error: str) -> None:
        first, longest = RETRY_AFTER_FAILURE_S
        self._failures += 1
        self._retry_at = time.monotonic() + min(longest, first * 2 ** (self._failures - 1))
        self._last_error = error
        logger.error("amp_lite: %s (failure %d; next attempt in %.0f s)", error, self._failures,
                     self._retry_at - time.monotonic())
