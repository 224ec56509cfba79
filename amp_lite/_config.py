"""Client options: each declared once, as a `ClientConfig` field with its default, rule and
environment variable; `ClientConfig.resolve` merges arguments, environment and defaults.

An explicit argument always wins over an environment variable, which wins over the default.
Adding an option: a field below (with `option(...)`), its key in `ClientOptions` (the typed
keywords of `Amplitude()`; a test keeps the two in step) and its row in the README table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict
from urllib.parse import urlsplit

from ._checks import positive_int, positive_seconds, seconds_from_env
from ._errors import ConfigError, brief
from ._limits import (
    AMPLITUDE_HOSTS,
    MAX_BATCH_REQUEST_BYTES,
    MAX_EVENTS_PER_REQUEST,
    MAX_REQUEST_BYTES,
    SERVER_URLS,
)
from ._value import FrozenValue

# A scope's buffer past either cap overflows its oldest events at once, so a handler that
# tracks without limit keeps bounded memory: about 2x the encoded bytes in Python objects,
# which fits a 128 MB Lambda next to the handler's own needs.
DEFAULT_MAX_BUFFERED_EVENTS = 100_000
DEFAULT_MAX_BUFFERED_BYTES = 32 * 1024 * 1024

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
ENV_INITIALIZATION_TYPE = "AWS_LAMBDA_INITIALIZATION_TYPE"  # set by Lambda in every sandbox
SNAP_START = "snap-start"  # its value when the init is snapshotted (Lambda SnapStart)
ENV_EXTENSION = "AMP_LITE_EXTENSION"  # "on": hand scopes' events to the Lambda extension

MISSING_API_KEY = (f"no Amplitude API key: pass api_key=... to Amplitude() or set "
                   f"{ENV_API_KEY}")

_FALSE_WORDS = frozenset({"0", "false", "no", "off"})
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


class Plan(FrozenValue):
    """Tracking-plan information sent on every event.

    Wire keys: branch, source, version, versionId.
    """

    _fields = ("branch", "source", "version", "version_id")
    __slots__ = _fields
    branch: str | None
    source: str | None
    version: str | None
    version_id: str | None

    def __init__(self, *, branch: str | None = None, source: str | None = None,
                 version: str | None = None, version_id: str | None = None) -> None:
        self._set(branch=branch, source=source, version=version, version_id=version_id)

    def to_wire(self) -> dict[str, str]:
        wire = {"branch": self.branch, "source": self.source, "version": self.version,
                "versionId": self.version_id}
        return {key: value for key, value in wire.items() if value is not None}


class IngestionMetadata(FrozenValue):
    """Where events came from, for Amplitude's ingestion (source_name, source_version)."""

    _fields = ("source_name", "source_version")
    __slots__ = _fields
    source_name: str | None
    source_version: str | None

    def __init__(self, *, source_name: str | None = None,
                 source_version: str | None = None) -> None:
        self._set(source_name=source_name, source_version=source_version)

    def to_wire(self) -> dict[str, str]:
        wire = {"source_name": self.source_name, "source_version": self.source_version}
        return {key: value for key, value in wire.items() if value is not None}


class ClientOptions(TypedDict, total=False):
    """The keyword options of `Amplitude()`; the README's configuration table says more."""

    server_zone: str  # "US" or "EU" (AMPLITUDE_SERVER_ZONE)
    server_url: str  # an endpoint or proxy URL (AMPLITUDE_SERVER_URL); beats server_zone
    use_batch: bool  # Amplitude's /batch endpoint instead of /2/httpapi
    gzip: bool | None  # None: compress large bodies sent to Amplitude's own hosts
    min_id_length: int | None
    flush_timeout_s: float | None  # cap on one flush (AMP_LITE_FLUSH_TIMEOUT_S)
    request_timeout_s: float  # one HTTP attempt
    ca_certs: str | os.PathLike[str] | None  # a CA bundle file
    plan: Plan | Mapping[str, str] | None
    ingestion_metadata: IngestionMetadata | Mapping[str, str] | None
    enabled: bool | None  # False: track() does nothing (AMP_LITE_ENABLED)
    max_buffered_events: int
    max_buffered_bytes: int
    max_request_events: int  # at most 2000, Amplitude's limit


class _Rule(FrozenValue):
    """How an option's value is read: `check(value, name)` validates and converts an argument;
    `from_env(environ, name)` reads the variable `env`, or returns None when it is unset.
    `optional`: an argument of None means "not given" (else None is checked, and refused)."""

    _fields = ("check", "optional", "env", "from_env")
    __slots__ = _fields
    check: Callable[[Any, str], Any]
    optional: bool
    env: str | None
    from_env: Callable[[Mapping[str, str], str], Any] | None

    def __init__(self, check: Callable[[Any, str], Any], optional: bool, env: str | None = None,
                 from_env: Callable[[Mapping[str, str], str], Any] | None = None) -> None:
        self._set(check=check, optional=optional, env=env, from_env=from_env)


def option(default: Any, check: Callable[[Any, str], Any], *, optional: bool = False,
           env: str | None = None,
           from_env: Callable[[Mapping[str, str], str], Any] | None = None) -> Any:
    """A ClientConfig field that is a plain option: `default` when neither given nor set."""
    return field(default=default, metadata={"rule": _Rule(check, optional, env, from_env)})


def _request_events(value: Any, name: str) -> int:
    if positive_int(value, name) > MAX_EVENTS_PER_REQUEST:
        raise ConfigError(f"{name}: at most {MAX_EVENTS_PER_REQUEST} (Amplitude's limit), "
                          f"got {value!r}")
    return int(value)


def _ca_bundle(path: Any, name: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"{name}: must be the path of a CA bundle file, got {brief(path)}")
    if not os.path.isfile(path):
        raise ConfigError(f"{name}: no CA bundle file at {path!r}")
    return os.fspath(path)


def _boolean(value: Any, name: str) -> bool:
    return bool(value)


def _boolean_from_env(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in _TRUE_WORDS:
        return True
    if raw in _FALSE_WORDS:
        return False
    raise ConfigError(f"{name}: must be true or false, got {raw!r}")


def _plan(plan: Any, name: str) -> Mapping[str, str]:
    if isinstance(plan, Plan):
        return plan.to_wire()
    if isinstance(plan, Mapping):
        allowed = {"branch", "source", "version", "version_id", "versionId"}
        _check_string_mapping(plan, allowed, name)
        renamed = {("versionId" if k == "version_id" else k): v for k, v in plan.items()}
        return {k: v for k, v in renamed.items() if v is not None}
    raise ConfigError(f"{name}: must be amp_lite.Plan or a mapping, got {type(plan).__name__}")


def _metadata(metadata: Any, name: str) -> Mapping[str, str]:
    if isinstance(metadata, IngestionMetadata):
        return metadata.to_wire()
    if isinstance(metadata, Mapping):
        _check_string_mapping(metadata, {"source_name", "source_version"}, name)
        return {k: v for k, v in metadata.items() if v is not None}
    raise ConfigError(f"{name}: must be amp_lite.IngestionMetadata or a mapping, "
                      f"got {type(metadata).__name__}")


def _check_string_mapping(values: Mapping[str, Any], allowed: set[str], name: str) -> None:
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(f"{name}.{key}: unknown key; allowed: {', '.join(sorted(allowed))}")
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name}.{key}: must be a string, got {type(value).__name__}")


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Everything a client needs to know, resolved and validated. Immutable.

    The first fields are derived from several options (see `resolve`); the rest are plain
    options, each declared once here.
    """

    api_key: str | None = field(default=None, repr=False)
    # Called once, at the first flush, when the key is not known up front (Secrets Manager, SSM).
    api_key_provider: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    server_url: str
    gzip: bool
    max_request_bytes: int = MAX_REQUEST_BYTES  # 20 MB for the /batch endpoint

    min_id_length: int | None = option(None, positive_int, optional=True)
    flush_timeout_s: float = option(DEFAULT_FLUSH_TIMEOUT_S, positive_seconds, optional=True,
                                    env=ENV_FLUSH_TIMEOUT, from_env=seconds_from_env)
    request_timeout_s: float = option(DEFAULT_REQUEST_TIMEOUT_S, positive_seconds)
    ca_certs: str | None = option(None, _ca_bundle, optional=True)
    plan: Mapping[str, str] | None = option(None, _plan, optional=True)
    ingestion_metadata: Mapping[str, str] | None = option(None, _metadata, optional=True)
    enabled: bool = option(True, _boolean, optional=True, env=ENV_ENABLED,
                           from_env=_boolean_from_env)
    max_request_events: int = option(MAX_EVENTS_PER_REQUEST, _request_events)
    max_buffered_events: int = option(DEFAULT_MAX_BUFFERED_EVENTS, positive_int)
    max_buffered_bytes: int = option(DEFAULT_MAX_BUFFERED_BYTES, positive_int)

    def __repr__(self) -> str:  # the dataclass's, with a URL password masked
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        shown["server_url"] = redacted_url(self.server_url)
        return f"ClientConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def require_api_key(self) -> str:
        if not self.api_key:
            raise ConfigError(MISSING_API_KEY)
        return self.api_key

    @classmethod
    def resolve(cls, api_key: str | Callable[[], str] | None, options: Mapping[str, Any], *,
                env: Mapping[str, str] | None = None) -> ClientConfig:
        """Merge arguments, environment and defaults; raise ConfigError naming the bad field
        (TypeError for an unknown option, as for any unknown keyword)."""
        env = os.environ if env is None else env
        unknown = sorted(set(options) - set(ClientOptions.__annotations__))
        if unknown:
            raise TypeError(f"Amplitude() got an unexpected keyword argument {unknown[0]!r}")
        key = _api_key(api_key, env)
        url = _server_url(options, env)
        host = urlsplit(url).hostname or ""
        gzip = options.get("gzip")
        return cls(
            **key, server_url=url,
            gzip=(host in AMPLITUDE_HOSTS) if gzip is None else bool(gzip),
            max_request_bytes=(MAX_BATCH_REQUEST_BYTES if _is_batch_url(url)
                               else MAX_REQUEST_BYTES),
            **{f.name: _plain_option(f.metadata["rule"], options, f.name, f.default, env)
               for f in fields(cls) if "rule" in f.metadata},
        )


def option_names() -> frozenset[str]:
    """The options ClientConfig declares with `option(...)`."""
    return frozenset(f.name for f in fields(ClientConfig) if "rule" in f.metadata)


def _plain_option(rule: _Rule, options: Mapping[str, Any], name: str, default: Any,
                  env: Mapping[str, str]) -> Any:
    if name in options and not (rule.optional and options[name] is None):
        return rule.check(options[name], name)
    if rule.env is not None and rule.from_env is not None:
        from_env = rule.from_env(env, rule.env)
        if from_env is not None:
            return rule.check(from_env, rule.env)
    return default


def _api_key(api_key: str | Callable[[], str] | None,
             env: Mapping[str, str]) -> dict[str, Any]:
    if callable(api_key):
        return {"api_key": None, "api_key_provider": api_key}
    if api_key is not None:
        return {"api_key": checked_api_key(api_key, "api_key"), "api_key_provider": None}
    raw = env.get(ENV_API_KEY) or None
    key = None if raw is None else checked_api_key(raw, f"api_key ({ENV_API_KEY})")
    return {"api_key": key, "api_key_provider": None}


def checked_api_key(key: Any, source: str) -> str:
    """The key without surrounding whitespace (a pasted newline); refused when empty or with
    whitespace inside, which no Amplitude key has. The message never shows the key."""
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f"{source}: must be a non-empty string (or a function returning one)")
    cleaned = str(key).strip()
    if any(ch.isspace() or not ch.isprintable() for ch in cleaned):
        raise ConfigError(f"{source}: an API key has no spaces or control characters inside")
    return cleaned


def _server_url(options: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """server_url, else AMPLITUDE_SERVER_URL (unless a zone or use_batch argument says
    otherwise), else the endpoint of the zone."""
    zone = _zone(options.get("server_zone"), env)
    use_batch = bool(options.get("use_batch", False))
    env_url = env.get(ENV_SERVER_URL) or None
    if options.get("server_url") is not None:
        return _checked_url(options["server_url"], "server_url")
    if env_url is not None and options.get("server_zone") is None and not use_batch:
        return _checked_url(env_url, ENV_SERVER_URL)
    return SERVER_URLS[(zone, use_batch)]


def _zone(server_zone: Any, env: Mapping[str, str]) -> str:
    source = "server_zone" if server_zone is not None else ENV_SERVER_ZONE
    zone = server_zone if server_zone is not None else env.get(ENV_SERVER_ZONE) or "US"
    if not isinstance(zone, str) or zone.upper() not in ("US", "EU"):
        raise ConfigError(f"{source}: must be 'US' or 'EU', got {zone!r}")
    return zone.upper()


def _checked_url(url: Any, source: str) -> str:
    """An http(s) URL with a host and a valid port, nothing around it: a stray space or newline
    would make every request fail and every event overflow, for good."""
    example = f"must be an http(s) URL such as {SERVER_URLS[('US', False)]!r}"
    if not isinstance(url, str):
        raise ConfigError(f"{source}: {example}, got {brief(url)}")
    shown = redacted_url(url)
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ConfigError(f"{source}: must not contain spaces or control characters, "
                          f"got {shown!r}")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise ConfigError(f"{source}: {example}, got {shown!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{source}: {example}, got {shown!r}")
    try:
        port = parts.port  # ValueError for a port out of range or not a number
    except ValueError:
        port = 0
    if port == 0:
        raise ConfigError(f"{source}: the port must be 1-65535, got {shown!r}")
    return str(url)


def redacted_url(url: str) -> str:
    """`url` with the secret of any `user:password@` (or `token@`) part masked, for reprs and
    messages."""
    try:
        parts = urlsplit(url)
    except ValueError:  # unparseable: show none of it
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    shown = f"{parts.username}:***" if parts.password is not None else "***"
    return parts._replace(netloc=f"{shown}@{host}").geturl()


def _is_batch_url(url: str) -> bool:
    return urlsplit(url).path.rstrip("/").endswith("/batch")
