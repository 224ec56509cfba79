"""What both HTTP transports share: the request's headers and body, and how a reply is read.

No HTTP library here: `_http` (urllib3, the sync flush) and `_async_http` (httpcore, the async
flush) each import this, so the two send the same bytes and judge replies alike.
"""

from __future__ import annotations

import gzip as gzip_module
import json
from typing import Any

from ._config import GZIP_MIN_BYTES
from ._reply import Reply
from ._version import LIBRARY

MAX_RESPONSE_BYTES = 64 * 1024  # Amplitude's replies are a few hundred bytes; more is hostile
POOL_MAXSIZE = 10  # concurrent requests kept alive (Cloud Functions gen2 serves many at once)
GZIP_LEVEL = 6


def prepared(body: bytes, *, gzip: bool) -> tuple[bytes, dict[str, str]]:
    """The body as sent (gzipped when worth it) and its headers."""
    headers = {"Content-Type": "application/json; charset=UTF-8", "Accept": "*/*",
               "User-Agent": LIBRARY}
    if gzip and len(body) >= GZIP_MIN_BYTES:
        body = gzip_module.compress(body, compresslevel=GZIP_LEVEL)
        headers["Content-Encoding"] = "gzip"
    return body, headers


def reply_from(status: int, data: bytes, retry_after: str | None) -> Reply:
    """A whole reply: its status, its body when that is a JSON object, its Retry-After."""
    return Reply(status, json_object(data), retry_after_s=retry_after_seconds(retry_after))


def json_object(data: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nesting past the stack
        return None
    return parsed if isinstance(parsed, dict) else None


def retry_after_seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 86_400 else None
