"""A Lambda handler instrumented with amp-lite's decorator: two lines of amp-lite.

Deploy with handler `lambda_handler.handler` and AMPLITUDE_API_KEY (or
AMPLITUDE_API_KEY_SECRET) in the function's environment. Events tracked during the invocation
are flushed before the handler returns, within the time the invocation has left.
"""

from typing import Any

import amp_lite


@amp_lite.amplitude_flush
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    user_id = event.get("user_id", "user-anonymous-0")
    items = event.get("items", [])
    for sku in items:
        amp_lite.track("Item Purchased", user_id=user_id, event_properties={"sku": sku})
    if event.get("fail"):
        raise ValueError("boom requested")
    return {"statusCode": 200, "tracked": len(items)}
