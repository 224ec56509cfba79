"""A handler that never flushes: the amp-lite layer's wrapper does it.

Deploy with the layer, handler `amp_lite.aws_lambda.handler` and
AMP_LITE_HANDLER=zero_code_handler.handler. The code only calls amp_lite.track().
"""

from typing import Any

import amp_lite


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    user_id = event.get("user_id", "user-anonymous-0")
    items = event.get("items", [])
    for sku in items:
        amp_lite.track("Item Viewed", user_id=user_id, event_properties={"sku": sku})
    if event.get("fail"):
        raise ValueError("boom requested")
    return {"statusCode": 200, "tracked": len(items)}
