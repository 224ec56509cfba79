"""amp-lite: zero-thread Amplitude analytics for serverless functions.

    import amp_lite

    @amp_lite.amplitude_flush
    def handler(event, context):
        amp_lite.track("Signed Up", user_id=event["user_id"])
        return {"statusCode": 200}

The public modules are this one, `aws_lambda`, `gcp`, `replay`, `overflow` and `testing`
(with `testing.tls`); every other module's name starts with an underscore and may change.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ._client import Amplitude, Middleware
from ._config import ClientConfig, ClientOptions, IngestionMetadata, Plan
from ._deadline import Deadline
from ._decorator import amplitude_flush
from ._default import (
    flush,
    get_client,
    group_identify,
    identify,
    revenue,
    set_client,
    set_group,
    track,
)
from ._errors import AmpLiteError, ConfigError, InvalidEventError, OverflowWriteError
from ._events import Event, Identify, Revenue
from ._logging import configure_logger
from ._reply import Reply
from ._report import DeliveryReport
from ._retry import BaseRetryHandler, OfflineRetryHandler, Retry, RetryHandler, SendOutcome
from ._scope import Invocation
from ._sender import Sender
from ._transport import AsyncTransport, Transport
from ._version import __version__
from ._wire import BufferedEvent
from .overflow import OverflowSink

configure_logger()

_PLATFORM_MODULES = frozenset({"asgi", "aws_lambda", "gcp", "replay", "wsgi"})


def __getattr__(name: str) -> ModuleType:
    # `amp_lite.gcp.http` after a plain `import amp_lite`, without loading every platform's
    # module at import (a cold start pays for each).
    if name in _PLATFORM_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AmpLiteError",
    "Amplitude",
    "AsyncTransport",
    "BaseRetryHandler",
    "BufferedEvent",
    "ClientConfig",
    "ClientOptions",
    "ConfigError",
    "Deadline",
    "DeliveryReport",
    "Event",
    "Identify",
    "IngestionMetadata",
    "InvalidEventError",
    "Invocation",
    "Middleware",
    "OfflineRetryHandler",
    "OverflowSink",
    "OverflowWriteError",
    "Plan",
    "Reply",
    "Retry",
    "RetryHandler",
    "Revenue",
    "SendOutcome",
    "Sender",
    "Transport",
    "__version__",
    "amplitude_flush",
    "flush",
    "get_client",
    "group_identify",
    "identify",
    "revenue",
    "set_client",
    "set_group",
    "track",
]
