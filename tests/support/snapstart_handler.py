"""A Lambda handler for the SnapStart tests: it tracks one event at init, outside any handler,
as code that warms up at import does, then serves decorated invocations."""

from __future__ import annotations

from typing import Any

import amp_lite
from amp_lite import _retry
from amp_lite._default import get_client

amp_lite.track("cold_start", user_id="user-init")  # buffered in the default client's own buffer
JITTER_STATE_AT_INIT = _retry.JITTER_RNG.getstate()  # as the snapshot will hold it


@amp_lite.amplitude_flush
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    amp_lite.track("invoked", user_id=event["user_id"])
    return {"init_events_still_buffered": len(get_client()._scopes.outside),
            "jitter_reseeded": _retry.JITTER_RNG.getstate() != JITTER_STATE_AT_INIT}
