"""amp-lite: zero-thread Amplitude analytics for serverless functions.

    import amp_lite

    @amp_lite.amplitude_flush
    def handler(event, context):
        amp_lite.track("Signed Up", user_id=event["user_id"])
        return {"statusCode": 200}
"""

from . import gcp
from ._logging import configure_logger
from ._version import __version__
from ._client import Amplitude, Invocation
from ._config import IngestionMetadata, Plan
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
from ._errors import AmpLiteError, ConfigError, InvalidEventError, OverflowWriteError, TransportError
from ._events import Event, Identify, Revenue
from ._report import DeliveryReport
from ._retry import BaseRetryHandler, OfflineRetryHandler, Retry, RetryHandler, SendOutcome
from ._wire import BufferedEvent

configure_logger()

__all__ = [
    "AmpLiteError",
    "Amplitude",
    "BaseRetryHandler",
    "BufferedEvent",
    "ConfigError",
    "Deadline",
    "DeliveryReport",
    "Event",
    "Identify",
    "IngestionMetadata",
    "InvalidEventError",
    "Invocation",
    "OfflineRetryHandler",
    "OverflowWriteError",
    "Plan",
    "Retry",
    "RetryHandler",
    "Revenue",
    "SendOutcome",
    "TransportError",
    "__version__",
    "amplitude_flush",
    "flush",
    "gcp",
    "get_client",
    "group_identify",
    "identify",
    "revenue",
    "set_client",
    "set_group",
    "track",
]
