"""Where the default client's API key comes from: AMPLITUDE_API_KEY, or fetched once, at the
first flush, from AWS Secrets Manager (AMPLITUDE_API_KEY_SECRET) or SSM Parameter Store
(AMPLITUDE_API_KEY_PARAMETER) with Powertools' parameters utility.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from ._config import ENV_API_KEY
from ._errors import ConfigError

ENV_API_KEY_SECRET = "AMPLITUDE_API_KEY_SECRET"
ENV_API_KEY_PARAMETER = "AMPLITUDE_API_KEY_PARAMETER"
SECRET_MAX_AGE_S = 300  # Powertools' default cache TTL; a rotated key is picked up within this


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
