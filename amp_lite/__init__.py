"""amp-lite: zero-thread Amplitude analytics for serverless functions.

    import amp_lite
    client = amp_lite.Amplitude()            # AMPLITUDE_API_KEY from the environment
    with client.invocation(timeout_s=3):
        client.track("signup", user_id="user-42")
    # flushed synchronously here, within the deadline
"""

import logging

from ._version import __version__
from .client import Amplitude, Invocation
from .config import IngestionMetadata, Plan
from .deadline import Deadline
from .errors import AmpLiteError, ConfigError, InvalidEventError, OverflowWriteError, TransportError
from .event import Event, Identify, Revenue
from .report import DeliveryReport
from .retry import BaseRetryHandler, OfflineRetryHandler, Retry, RetryHandler, SendOutcome
from .wire import BufferedEvent

logging.getLogger("amp_lite").addHandler(logging.NullHandler())

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
]
