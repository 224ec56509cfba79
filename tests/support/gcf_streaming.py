"""Cloud Functions whose responses stream: events are tracked while the body is generated,
after the function returned (served by functions-framework in tests/integration/test_streaming.py).

Each chunk of the body is the insert_id of the event tracked just before it, one per line, so
the client knows which events its request tracked.
"""

from collections.abc import Iterator
from typing import Any

import flask
import functions_framework

import amp_lite


def _chunks(request: Any) -> Iterator[str]:
    user_id = request.args.get("user", "user-stream")
    for n in range(int(request.args.get("chunks", "3"))):
        yield amp_lite.track("Chunk Sent", user_id=user_id, event_properties={"n": n}) + "\n"


@functions_framework.http
@amp_lite.amplitude_flush
def stream_response(request: Any) -> flask.Response:
    """A streamed Response, as Flask's docs write it."""
    return flask.Response(flask.stream_with_context(_chunks(request)), mimetype="text/plain")


@functions_framework.http
@amp_lite.amplitude_flush
def stream_generator(request: Any) -> Iterator[str]:
    """A bare `stream_with_context` generator: Flask makes the streamed Response."""
    return flask.stream_with_context(_chunks(request))
