"""Google Cloud Functions instrumented with amp-lite: an HTTP function and a CloudEvent one.

Deploy with `gcloud functions deploy track --gen2 --runtime python312 --trigger-http
--entry-point track --set-env-vars AMPLITUDE_API_KEY=...` (and `on_event` with a trigger of
your choice). Each request's events are flushed before its response is returned, within the
function's timeout (AMP_LITE_TIMEOUT_S, else CLOUD_RUN_TIMEOUT_SECONDS, else 60 s).
"""

from typing import Any

import functions_framework
from cloudevents.http import CloudEvent

import amp_lite


@functions_framework.http
@amp_lite.amplitude_flush
def track(request: Any) -> dict[str, Any]:
    body = request.get_json(silent=True) or {}
    user_id = body.get("user_id", "user-anonymous-0")
    insert_ids = [amp_lite.track("Page Viewed", user_id=user_id, event_properties={"page": page})
                  for page in body.get("pages", [])]
    if body.get("fail"):
        raise ValueError("boom requested")
    return {"tracked": len(insert_ids), "insert_ids": insert_ids}


@functions_framework.cloud_event
@amp_lite.gcp.cloud_event
def on_event(cloud_event: CloudEvent) -> None:
    data = cloud_event.data or {}
    amp_lite.track("Message Received", user_id=data.get("user_id", "user-anonymous-0"),
                   event_properties={"type": cloud_event["type"], "id": cloud_event["id"]})
