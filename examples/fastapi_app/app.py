"""A FastAPI app instrumented with amp-lite, and its Lambda handler (Mangum).

Lambda: handler `app.handler` (API Gateway HTTP API or a function URL), AMPLITUDE_API_KEY set.
Cloud Run or any server: `uvicorn app:app`, with REQUEST_TIMEOUT_S set to the service's request
timeout. Each request's events are flushed before its response's last byte, within what the
request has left.
"""

import os
from typing import Any

from fastapi import FastAPI
from mangum import Mangum
from pydantic import BaseModel

import amp_lite
import amp_lite.asgi


class Order(BaseModel):
    user_id: str
    skus: list[str]


api = FastAPI()


@api.post("/orders")
def place_order(order: Order) -> dict[str, Any]:
    insert_ids = [amp_lite.track("Item Ordered", user_id=order.user_id,
                                 event_properties={"sku": sku}) for sku in order.skus]
    return {"tracked": len(insert_ids), "insert_ids": insert_ids}


# On Lambda the budget comes from the invocation's context (Mangum passes it along); elsewhere
# from REQUEST_TIMEOUT_S, your platform's request timeout (Cloud Run's default is 300 s).
app = amp_lite.asgi.AmplitudeMiddleware(
    api, timeout_s=float(os.environ.get("REQUEST_TIMEOUT_S", "300")))
handler = Mangum(app, lifespan="off")
