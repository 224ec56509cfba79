"""Client configuration: named limits, defaults, and resolution from arguments and environment.

An explicit argument always wins over an environment variable, which wins over the default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ._errors import ConfigError

# Endpoints (reference/amplitude-http-api.md, section 1.1).
SERVER_URLS: Mapping[tuple[str, bool], str] = {
    ("US", False): "https://api2.amplitude.com/2/httpapi",
    ("US", True): "https://api2.amplitude.com/batch",
    ("EU", False): "https://api.eu.amplitude.com/2/httpapi",
    ("EU", True): "https://api.eu.amplitude.com/batch",
}
AMPLITUDE_HOSTS = frozenset({"api2.amplitude.com", "api.eu.amplitude.com"})

# Request limits (reference section 3): "fewer than 2000 events" and "under 1 MB" for /2/httpapi;
# the byte limit is read as 1,000,000 bytes of uncompressed JSON, the safe reading of "1 MB".
MAX_EVENTS_PER_REQUEST = 2000
MAX_REQUEST_BYTES = 1_000_000
MAX_BATCH_REQUEST_BYTES = 20_000_000  # /batch: "must not exceed 20MB"

# Event limits (reference section 2.3).
MAX_STRING_LENGTH = 1024
MAX_PROPERTY_DEPTH = 40
DEFAULT_MIN_ID_LENGTH = 5  # server default when options.min_id_length is not sent (section 2.2)

# A scope's buffer past either cap overflows its oldest events at once, so a handler that
# tracks without limit keeps bounded memory: about 2x the encoded bytes in Python objects,
# which fits a 128 MB Lambda next to the handler's own needs.
DEFAULT_MAX_BUFFERED_EVENTS = 100_000
DEFAULT_MAX_BUFFERED_BYTES = 32 * 1024 * 1024

# Timing defaults.
DEFAULT_FLUSH_TIMEOUT_S = 10.0  # cap on one flush; the platform deadline usually binds first
DEFAULT_REQUEST_TIMEOUT_S = 10.0  # one HTTP attempt, clamped to the flush deadline
GZIP_MIN_BYTES = 2048  # smaller bodies gain too little (the browser SDK uses the same threshold)

ENV_API_KEY = "AMPLITUDE_API_KEY"
ENV_SERVER_URL = "AMPLITUDE_SERVER_URL"
ENV_SERVER_ZONE = "AMPLITUDE_SERVER_ZONE"
ENV_FLUSH_TIMEOUT = "AMP_LITE_FLUSH_TIMEOUT_S"
ENV_ENABLED = "AMP_LITE_ENABLED"
ENV_SPILL_DIR = "AMP_LITE_SPILL_DIR"
ENV_QUEUE_URL = "AMP_LITE_OVERFLOW_QUEUE_URL"

_FALSE_WORDS = frozenset({"0", "false", "no", "off"})
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Tracking-plan information sent on every event.

    Wire keys: branch, source, version, versionId.
    """

    branch: str | None = None
    source: str | None = None
    version: str | None = None
    version_id: str | None = None

    def to_wire(self) -> dict[str, str]:
        wire = {"branch": self.branch, "source": self.source, "version": self.version,
                "versionId": self.version_id}
        return {key: value for key, value in wire.items() if value is not None}


@dataclass(frozen=True, kw_only=True)
class IngestionMetadata:
    """Where events came from, for Amplitude's ingestion (source_name, source_version)."""

    source_name: str | None = None
    source_version: str | None = None

    def to_wire(self) -> dict[str, str]:
        wire = {"source_name": self.source_name, "source_version": self.source_version}
        return {key: value for key, value in wire.items() if value is not None}


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Everything a client needs to know, resolved and validated. Immutable."""

    api_key: str | None = field(default=None, repr=False)
    # Called once, at the first flush, when the key is not known up front (Secrets Manager, SSM).
    api_key_provider: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    server_url: str
    gzip: bool
    min_id_length: int | None = None
    flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    ca_certs: str | None = None
    plan: Mapping[str, str] | None = None
    ingestion_metadata: Mapping[str, str] | None = None
    enabled: bool = True
    max_request_events: int = MAX_EVENTS_PER_REQUEST
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES

    def require_api_key(self) -> str:
        if not self.api_key:
            raise ConfigError(
                f"no Amplitude API key: pass api_key=... to Amplitude() or set {ENV_API_KEY}"
            )
        return self.api_key


def resolve_config(
    *,
    api_key: str | Callable[[], str] | None,
    server_zone: str | None,
    server_url: str | None,
    use_batch: bool,
    min_id_length: int | None,
    flush_timeout_s: float | None,
    request_timeout_s: float,
    gzip: bool | None,
    ca_certs: str | None,
    plan: Plan | Mapping[str, str] | None,
    ingestion_metadata: IngestionMetadata | Mapping[str, str] | None,
    enabled: bool | None,
    max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS,
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
    env: Mapping[str, str] | None = None,
) -> ClientConfig:
    """Merge arguments, environment and defaults; raise ConfigError naming the bad field."""
    env = os.environ if env is None else env
    provider = api_key if callable(api_key) else None
    key = None if provider else api_key if api_key is not None else env.get(ENV_API_KEY) or None
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise ConfigError("api_key: must be a non-empty string (or a function returning one)")
    zone = _resolve_zone(server_zone, env)
    env_url = env.get(ENV_SERVER_URL) or None
    if server_url is not None:
        _check_url(server_url, "server_url")
        url = server_url
    elif env_url is not None and server_zone is None and not use_batch:
        _check_url(env_url, ENV_SERVER_URL)  # an explicit zone or use_batch argument wins
        url = env_url
    else:
        url = SERVER_URLS[(zone, bool(use_batch))]
    host = urlsplit(url).hostname or ""
    is_batch = urlsplit(url).path.rstrip("/").endswith("/batch")
    return ClientConfig(
        api_key=key,
        api_key_provider=provider,
        server_url=url,
        gzip=(host in AMPLITUDE_HOSTS) if gzip is None else bool(gzip),
        min_id_length=_check_min_id_length(min_id_length),
        flush_timeout_s=_resolve_flush_timeout(flush_timeout_s, env),
        request_timeout_s=_positive_seconds(request_timeout_s, "request_timeout_s"),
        ca_certs=_check_ca_certs(ca_certs),
        plan=_plan_to_wire(plan),
        ingestion_metadata=_metadata_to_wire(ingestion_metadata),
        enabled=_resolve_enabled(enabled, env),
        max_request_bytes=MAX_BATCH_REQUEST_BYTES if is_batch else MAX_REQUEST_BYTES,
        max_buffered_events=_positive_int(max_buffered_events, "max_buffered_events"),
        max_buffered_bytes=_positive_int(max_buffered_bytes, "max_buffered_bytes"),
    )


def _resolve_zone(server_zone: str | None, env: Mapping[str, str]) -> str:
    source = "server_zone" if server_zone is not None else ENV_SERVER_ZONE
    zone = server_zone if server_zone is not None else env.get(ENV_SERVER_ZONE) or "US"
    if not isinstance(zone, str) or zone.upper() not in ("US", "EU"):
        raise ConfigError(f"{source}: must be 'US' or 'EU', got {zone!r}")
    return zone.upper()


def _check_url(url: Any, source: str) -> None:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{source}: must be an http(s) URL such as "
                          f"{SERVER_URLS[('US', False)]!r}, got {url!r}")


def _check_min_id_length(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"min_id_length: must be a positive integer, got {value!r}")
    return value


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
    return value


def _positive_seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: must be a positive, finite number of seconds, got {value!r}")
    return float(value)


def _resolve_flush_timeout(value: float | None, env: Mapping[str, str]) -> float:
    if value is not None:
        return _positive_seconds(value, "flush_timeout_s")
    raw = env.get(ENV_FLUSH_TIMEOUT)
    if not raw:
        return DEFAULT_FLUSH_TIMEOUT_S
    try:
        parsed = float(raw)
    except ValueError:
        raise ConfigError(
            f"{ENV_FLUSH_TIMEOUT}: must be a number of seconds, got {raw!r}") from None
    return _positive_seconds(parsed, ENV_FLUSH_TIMEOUT)


def _resolve_enabled(value: bool | None, env: Mapping[str, str]) -> bool:
    if value is not None:
        return bool(value)
    raw = env.get(ENV_ENABLED, "").strip().lower()
    if not raw or raw in _TRUE_WORDS:
        return True
    if raw in _FALSE_WORDS:
        return False
    raise ConfigError(f"{ENV_ENABLED}: must be true or false, got {raw!r}")


def _check_ca_certs(path: str | None) -> str | None:
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"ca_certs: no CA bundle file at {path!r}")
    return path


def _plan_to_wire(plan: Plan | Mapping[str, str] | None) -> Mapping[str, str] | None:
    if plan is None:
        return None
    if isinstance(plan, Plan):
        return plan.to_wire()
    if isinstance(plan, Mapping):
        allowed = {"branch", "source", "version", "version_id", "versionId"}
        _check_string_mapping(plan, allowed, "plan")
        renamed = {("versionId" if k == "version_id" else k): v for k, v in plan.items()}
        return {k: v for k, v in renamed.items() if v is not None}
    raise ConfigError(f"plan: must be amp_lite.Plan or a mapping, got {type(plan).__name__}")


def _metadata_to_wire(
    metadata: IngestionMetadata | Mapping[str, str] | None,
) -> Mapping[str, str] | None:
    if metadata is None:
        return None
    if isinstance(metadata, IngestionMetadata):
        return metadata.to_wire()
    if isinstance(metadata, Mapping):
        _check_string_mapping(metadata, {"source_name", "source_version"}, "ingestion_metadata")
        return {k: v for k, v in metadata.items() if v is not None}
    raise ConfigError("ingestion_metadata: must be amp_lite.IngestionMetadata or a mapping, "
                      f"got {type(metadata).__name__}")


def _check_string_mapping(values: Mapping[str, Any], allowed: set[str], name: str) -> None:
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(f"{name}.{key}: unknown key; allowed: {', '.join(sorted(allowed))}")
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name}.{key}: must be a string, got {type(value).__name__}")
