"""The default client and the module-level helpers (`amp_lite.track(...)` and friends).

One client per process, built lazily from the environment on first use (its key: see
`_key_sources`), so a handler can be instrumented with two lines.
"""

from __future__ import annotations

import threading
from typing import Any

from ._client import Amplitude
from ._events import Event, Identify, Revenue
from ._key_sources import api_key_from_environment
from ._report import DeliveryReport


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
