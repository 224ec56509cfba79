"""Async Google Cloud Functions (functions-framework's `aio` API) instrumented with amp-lite.

Deploy with `gcloud functions deploy track --gen2 --runtime python312 --trigger-http
--entry-point track --set-env-vars AMPLITUDE_API_KEY=...,AMP_LITE_TIMEOUT_S=60` (and
`on_event` with a trigger of your choice, e.g. `--trigger-topic`). functions-framework serves
`aio` functions as an ASGI app (Starlette under uvicorn): one event loop, many requests at once.

Decorator order: functions-framework's decorator on top, amp-lite's under it (right above the
function), so the flush runs inside the request, before the response is sent and before a
CloudEvent is acknowledged. Each request's events live in its own contextvars scope (one per
asyncio task): concurrent requests flush only their own events. Install `amp-lite[async]` so
the flush awaits the network instead of blocking the event loop that serves the other requests.
"""

from typing import Any

import functions_framework.aio
from cloudevents.http import CloudEvent
from starlette.requests import Request

import amp_lite


@functions_framework.aio.http
@amp_lite.amplitude_flush
async def track(request: Request) -> dict[str, Any]:
    body = await request.json()
    user_id = body.get("user_id", "user-anonymous-0")
    insert_ids = [amp_lite.track("Page Viewed", user_id=user_id, event_properties={"page": page})
                  for page in body.get("pages", [])]
    if body.get("fail"):
        raise ValueError("boom requested")
    return {"tracked": len(insert_ids), "insert_ids": insert_ids}


@functions_framework.aio.cloud_event
@amp_lite.gcp.cloud_event
async def on_event(cloud_event: CloudEvent) -> None:
    data = cloud_event.data or {}
    amp_lite.track("Message Received", user_id=data.get("user_id", "user-anonymous-0"),
                   event_properties={"type": cloud_event["type"], "id": cloud_event["id"]})
