"""A trivial handler for the control-plane fake's own tests (test_lambda_control.py).

The event says what to do: `sleep_ms` before answering, `fail` to raise. The answer reports
what the function saw: its request id, the time left, and two environment variables.
"""

from __future__ import annotations

import os
import time
from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    time.sleep(event.get("sleep_ms", 0) / 1000)
    if event.get("fail"):
        raise ValueError("boom requested")
    return {"request_id": context.aws_request_id,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "handler_env": os.environ.get("_HANDLER"),
            "function_setting": os.environ.get("FUNCTION_SETTING")}
