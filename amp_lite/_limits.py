"""Amplitude's documented limits and endpoints, each named once.

Sources: the HTTP V2 API (https://amplitude.com/docs/apis/analytics/http-v2) and the Batch
Event Upload API (https://amplitude.com/docs/apis/analytics/batch-event-upload).
"""

from __future__ import annotations

from collections.abc import Mapping

# Endpoints: (zone, batch API?) -> URL. EU data lives on its own host.
SERVER_URLS: Mapping[tuple[str, bool], str] = {
    ("US", False): "https://api2.amplitude.com/2/httpapi",
    ("US", True): "https://api2.amplitude.com/batch",
    ("EU", False): "https://api.eu.amplitude.com/2/httpapi",
    ("EU", True): "https://api.eu.amplitude.com/batch",
}
AMPLITUDE_HOSTS = frozenset({"api2.amplitude.com", "api.eu.amplitude.com"})

# Request limits: "fewer than 2000 events" and "under 1 MB" for /2/httpapi; the byte limit is
# read as 1,000,000 bytes of uncompressed JSON, the safe reading of "1 MB".
MAX_EVENTS_PER_REQUEST = 2000
MAX_REQUEST_BYTES = 1_000_000
MAX_BATCH_REQUEST_BYTES = 20_000_000  # /batch: "must not exceed 20MB"

# Event limits: string values are cut at 1024 characters; properties nest at most 40 levels.
MAX_STRING_LENGTH = 1024
MAX_PROPERTY_DEPTH = 40
# user_id and device_id length when the request sends no options.min_id_length.
DEFAULT_MIN_ID_LENGTH = 5
