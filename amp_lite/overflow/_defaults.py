"""Which sinks a client overflows to: the `overflow` argument, checked, and the defaults."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from .._config import ENV_QUEUE_URL, ENV_SPILL_DIR
from .._errors import ConfigError
from . import OverflowSink, RecoverableSink
from ._local import LocalSpill

logger = logging.getLogger("amp_lite")

OverflowArgument = OverflowSink | tuple[OverflowSink, ...] | None


def check_overflow(overflow: Any) -> OverflowArgument:
    """The `overflow` argument, checked: None (the default sinks), one sink, or a tuple."""
    if overflow is None:
        return None
    sinks = tuple(overflow) if isinstance(overflow, (list, tuple)) else (overflow,)
    for sink in sinks:
        if not isinstance(sink, OverflowSink):
            raise ConfigError(f"overflow: {sink!r} is not an overflow sink (needs name, "
                              "reserve_s and write(events, *, reason, attempts, deadline))")
    return sinks if isinstance(overflow, (list, tuple)) else overflow


def resolve_sinks(overflow: OverflowArgument, identity: str,
                  server_url: str) -> tuple[OverflowSink, ...]:
    """None: the default sinks. A list: exactly those, in order (empty: none). One sink: that
    sink, then (unless it is a spill itself) the default local spill for what it cannot take,
    e.g. during an SQS outage."""
    if overflow is None:
        return default_sinks(identity, server_url)
    if isinstance(overflow, tuple):
        return overflow
    if isinstance(overflow, RecoverableSink):  # a spill of its own: read back by our flushes
        return (overflow,)
    return (overflow, default_spill(identity, server_url))


def default_sinks(identity: str, server_url: str) -> tuple[OverflowSink, ...]:
    """SQS first when AMP_LITE_OVERFLOW_QUEUE_URL is set, then the local spill. A variable
    that names no queue is reported once, here, and the spill takes everything."""
    spill = default_spill(identity, server_url)
    queue_url = os.environ.get(ENV_QUEUE_URL)
    if not queue_url:
        return (spill,)
    from ._sqs import SQSOverflow  # the SQS code loads only where it is configured

    try:
        return (SQSOverflow(queue_url), spill)
    except ConfigError as exc:
        logger.error("amp_lite: %s is not usable (%s); overflow goes to the local spill only",
                     ENV_QUEUE_URL, exc)
        return (spill,)


def default_spill(identity: str, server_url: str) -> LocalSpill:
    """The default overflow: a spill directory per (API key, server), under AMP_LITE_SPILL_DIR
    or the system temp directory. `identity` is the key itself, or, for a key provider, its
    label (the key is not known before the first fetch, and events may need the spill before
    it). The directory name is a hash: the key never appears in it."""
    root = os.environ.get(ENV_SPILL_DIR) or os.path.join(tempfile.gettempdir(), "amp-lite-spill")
    return LocalSpill(Path(root) / spill_digest(identity, server_url))


def spill_digest(identity: str, server_url: str) -> str:
    """The name of a client configuration's spill directory; the key never appears in it."""
    return hashlib.sha256(f"{identity}\n{server_url}".encode()).hexdigest()[:16]
