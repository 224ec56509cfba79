"""Async Cloud Functions for the ASGI tests (tests/integration/test_gcf_async.py), served by a
real functions-framework. Both decorator orders, for HTTP and CloudEvent functions.

An HTTP body names `pages` (one event each) and may ask to `fail` after tracking, or to wait
until `together` requests are inside their functions at once (so their scopes are open
concurrently on the one event loop) before tracking all but the first page.
"""

from __future__ import annotations

import asyncio
from typing import Any

import functions_framework.aio
from cloudevents.http import CloudEvent
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse

import amp_lite

_inside: list[str] = []  # user ids of the requests that reached their function
_all_inside = asyncio.Event()


def _track_page(user_id: str, page: str) -> str | None:
    return amp_lite.track("Page Viewed", user_id=user_id, event_properties={"page": page})


async def _track_pages(request: Request) -> dict[str, Any]:
    body = await request.json()
    user_id, pages = body["user_id"], body["pages"]
    insert_ids = [_track_page(user_id, pages[0])]
    together = body.get("together", 0)
    if together:
        _inside.append(user_id)
        if len(_inside) >= together:
            _all_inside.set()
        await asyncio.wait_for(_all_inside.wait(), 10)  # every request's scope is open now
    insert_ids += [_track_page(user_id, page) for page in pages[1:]]
    if body.get("fail"):
        raise ValueError("boom requested")
    return {"insert_ids": insert_ids}


def _track_cloud_event(cloud_event: CloudEvent) -> None:
    data = cloud_event.data or {}
    amp_lite.track("Message Received", user_id=data["user_id"],
                   event_properties={"id": cloud_event["id"]})
    if data.get("fail"):
        raise ValueError("boom requested")


# functions-framework's decorator on top (the documented order)
@functions_framework.aio.http
@amp_lite.amplitude_flush
async def http_under(request: Request) -> dict[str, Any]:
    return await _track_pages(request)


# ...and the reverse
@amp_lite.amplitude_flush
@functions_framework.aio.http
async def http_over(request: Request) -> dict[str, Any]:
    return await _track_pages(request)


@functions_framework.aio.cloud_event
@amp_lite.gcp.cloud_event
async def event_under(cloud_event: CloudEvent) -> None:
    await asyncio.sleep(0)  # a real await: the function is a coroutine that must be run
    _track_cloud_event(cloud_event)


@amp_lite.amplitude_flush
@functions_framework.aio.cloud_event
async def event_over(cloud_event: CloudEvent) -> None:
    await asyncio.sleep(0)
    _track_cloud_event(cloud_event)


# a plain def under the aio API: functions-framework runs it in a thread, in a copied context
@functions_framework.aio.cloud_event
@amp_lite.amplitude_flush
def event_sync(cloud_event: CloudEvent) -> None:
    _track_cloud_event(cloud_event)


_background_done = asyncio.Event()


async def _track_later(user_id: str, page: str) -> None:
    _track_page(user_id, page)
    _background_done.set()


# a Starlette background task runs after the response was sent: after the scope's exit. A body
# with `after_background` waits (inside its scope) until the previous request's task has run.
@functions_framework.aio.http
@amp_lite.amplitude_flush
async def http_background(request: Request) -> JSONResponse:
    body = await request.json()
    if body.get("after_background"):
        await asyncio.wait_for(_background_done.wait(), 10)
    insert_id = _track_page(body["user_id"], f"{body['n']}-in-function")
    return JSONResponse({"insert_ids": [insert_id]}, background=BackgroundTask(
        _track_later, body["user_id"], f"{body['n']}-in-background"))
