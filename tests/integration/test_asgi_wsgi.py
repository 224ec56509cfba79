"""ASGI and WSGI middleware with real frameworks (issue 13, item 8): FastAPI under Mangum and on
uvicorn, Flask under apig-wsgi, Django on a WSGI server; every server on 127.0.0.1.

Each request's events must be at Amplitude exactly once when the call returns (or when its
streamed body has been read), the app's response or exception unchanged, and the flush within
its budget when Amplitude hangs.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import wsgiref.simple_server
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flask
import pytest
import urllib3
import uvicorn
from apig_wsgi import make_lambda_handler
from fastapi import BackgroundTasks, FastAPI
from fastapi.responses import StreamingResponse
from mangum import Mangum

import amp_lite
from amp_lite import Amplitude
from amp_lite.asgi import AmplitudeMiddleware as AsgiMiddleware
from amp_lite.testing import FakeAmplitude, Fault
from amp_lite.wsgi import AmplitudeMiddleware as WsgiMiddleware
from tests.conftest import API_KEY
from tests.support.doubles import LambdaContext

TOLERANCE_S = 0.5


def http_api_event(path: str, *, method: str = "GET", body: str | None = None,
                   headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, as Lambda hands it to the handler."""
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"host": "api.example.com", "content-type": "application/json",
                    **(headers or {})},
        "requestContext": {"http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "127.0.0.1", "userAgent": "test"},
                           "requestId": "req-1", "stage": "$default"},
        "body": body, "isBase64Encoded": False,
    }


@pytest.fixture
def client(fake: FakeAmplitude) -> Amplitude:
    return Amplitude(API_KEY, server_url=fake.url)  # the default overflow: the spill


def spilled(spill_root: Path) -> int:
    return sum(len(f.read_text().splitlines()[1:]) for f in spill_root.rglob("*.jsonl"))


# -- apps -------------------------------------------------------------------------------------


def fastapi_app(client: Amplitude, background_ran: threading.Event | None = None) -> FastAPI:
    app = FastAPI()

    @app.get("/track/{user}")
    def track(user: str, background: BackgroundTasks) -> dict[str, Any]:
        ids = [client.track("Page Viewed", user_id=user, event_properties={"n": n})
               for n in range(3)]
        if background_ran is not None:
            def later() -> None:
                client.track("Background Done", user_id=user)
                background_ran.set()

            background.add_task(later)
        return {"insert_ids": ids}

    @app.get("/fail")
    def fail() -> None:
        client.track("Failed", user_id="user-fail")
        raise RuntimeError("the endpoint failed")

    @app.get("/stream/{user}")
    async def stream(user: str) -> StreamingResponse:
        async def chunks() -> Any:
            for n in range(4):
                yield client.track("Chunk Sent", user_id=user, event_properties={"n": n}) + "\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    return app


def flask_app(client: Amplitude) -> flask.Flask:
    app = flask.Flask("amp_lite_flask_test")

    @app.post("/order")
    def order() -> Any:
        body = flask.request.get_json()
        ids = [client.track("Order Placed", user_id=body["user"], event_properties={"sku": sku})
               for sku in body["skus"]]
        return {"insert_ids": ids}, 201

    @app.get("/fail")
    def fail() -> Any:
        client.track("Failed", user_id="user-fail")
        raise KeyError("the view failed")

    return app


# -- FastAPI under Mangum (Lambda) ------------------------------------------------------------


def test_mangum_with_the_middleware_delivers_before_the_handler_returns(
        client: Amplitude, fake: FakeAmplitude) -> None:
    # GIVEN a FastAPI app with the middleware, under Mangum, with a background task
    ran = threading.Event()
    handler = Mangum(AsgiMiddleware(fastapi_app(client, ran), client=client), lifespan="off")
    # WHEN Lambda invokes it
    response = handler(http_api_event("/track/user-m"), LambdaContext(3000))
    # THEN the response is the app's, and Amplitude holds its events (background task's too:
    # Mangum returns only when the app, background tasks included, has returned)
    assert response["statusCode"] == 200
    ids = json.loads(response["body"])["insert_ids"]
    assert ran.is_set()
    assert sorted(fake.insert_ids) == sorted(
        [*ids, next(e["insert_id"] for e in fake.events if e["event_type"] == "Background Done")])
    assert len(fake.events) == 4 and fake.duplicates == 0
    assert client.pending == 0


def test_mangum_without_the_middleware_leaves_the_events_in_memory(
        client: Amplitude, fake: FakeAmplitude) -> None:
    # GIVEN the same app under Mangum, without the middleware
    handler = Mangum(fastapi_app(client), lifespan="off")
    # WHEN Lambda invokes it
    response = handler(http_api_event("/track/user-bare"), LambdaContext(3000))
    ids = json.loads(response["body"])["insert_ids"]
    # THEN nothing was sent: the events wait in the client's own buffer, which Lambda freezes
    # with the process (and loses if the environment is recycled)
    assert fake.events == []
    assert client.pending == 3
    # AND they are sent only when some later scope flushes (here: the next instrumented call)
    instrumented = Mangum(AsgiMiddleware(fastapi_app(client), client=client), lifespan="off")
    later = instrumented(http_api_event("/track/user-next"), LambdaContext(3000))
    later_ids = json.loads(later["body"])["insert_ids"]
    assert sorted(fake.insert_ids) == sorted(ids + later_ids)


def test_mangum_under_the_decorator_alone_flushes_after_the_app_returns(
        client: Amplitude, fake: FakeAmplitude) -> None:
    # GIVEN Mangum's handler wrapped by @amplitude_flush (the app itself not instrumented)
    handler = amp_lite.amplitude_flush(client)(Mangum(fastapi_app(client), lifespan="off"))
    # WHEN Lambda invokes it / THEN the events are delivered too (the app runs in a task that
    # copies the decorator's context), after Mangum built the response
    response = handler(http_api_event("/track/user-deco"), LambdaContext(3000))
    assert sorted(fake.insert_ids) == sorted(json.loads(response["body"])["insert_ids"])


def test_mangum_app_failure_is_mangums_500_and_its_event_is_delivered(
        client: Amplitude, fake: FakeAmplitude) -> None:
    handler = Mangum(AsgiMiddleware(fastapi_app(client), client=client), lifespan="off")
    response = handler(http_api_event("/fail"), LambdaContext(3000))
    assert response["statusCode"] == 500  # what Mangum (and FastAPI) make of the exception
    assert [e["event_type"] for e in fake.events] == ["Failed"]


def test_mangum_budget_comes_from_the_lambda_context(client: Amplitude, fake: FakeAmplitude,
                                                      clean_env: Path) -> None:
    # GIVEN an Amplitude that never answers, and an invocation with 3 s left (margin 0.5 s)
    fake.script(*[Fault.hang(60)] * 50)
    handler = Mangum(AsgiMiddleware(fastapi_app(client), client=client, flush_timeout_s=30),
                     lifespan="off")
    # WHEN Lambda invokes it
    started = time.monotonic()
    response = handler(http_api_event("/track/user-hang"), LambdaContext(3000))
    took = time.monotonic() - started
    # THEN the response came within 3 s - 0.5 s, unchanged, and the events were spilled
    assert response["statusCode"] == 200
    assert took <= 2.5 + TOLERANCE_S
    assert took >= 2.0  # the flush used its budget rather than giving up at once
    assert spilled(clean_env) == 3


# -- Flask under apig-wsgi (Lambda) -----------------------------------------------------------


def order_event() -> dict[str, Any]:
    return http_api_event("/order", method="POST",
                          body=json.dumps({"user": "user-f", "skus": ["a", "b"]}))


def test_apig_wsgi_with_the_middleware_delivers_before_the_handler_returns(
        client: Amplitude, fake: FakeAmplitude) -> None:
    # GIVEN a Flask app with the middleware, under apig-wsgi
    app = flask_app(client)
    app.wsgi_app = WsgiMiddleware(app.wsgi_app, client=client)  # type: ignore[method-assign]
    handler = make_lambda_handler(app)
    # WHEN Lambda invokes it / THEN the response is the app's and its events are delivered
    response = handler(order_event(), LambdaContext(3000))
    assert response["statusCode"] == 201
    assert sorted(fake.insert_ids) == sorted(json.loads(response["body"])["insert_ids"])
    assert fake.duplicates == 0


def test_apig_wsgi_without_the_middleware_leaves_the_events_in_memory(
        client: Amplitude, fake: FakeAmplitude) -> None:
    handler = make_lambda_handler(flask_app(client))
    response = handler(order_event(), LambdaContext(3000))
    assert response["statusCode"] == 201
    assert fake.events == [] and client.pending == 2  # unsent, frozen with the process


def test_apig_wsgi_under_the_decorator_alone_flushes_after_the_body_was_consumed(
        client: Amplitude, fake: FakeAmplitude) -> None:
    handler = amp_lite.amplitude_flush(client)(make_lambda_handler(flask_app(client)))
    response = handler(order_event(), LambdaContext(3000))
    assert sorted(fake.insert_ids) == sorted(json.loads(response["body"])["insert_ids"])


def test_apig_wsgi_app_failure_is_flasks_500_and_its_event_is_delivered(
        client: Amplitude, fake: FakeAmplitude) -> None:
    app = flask_app(client)
    app.wsgi_app = WsgiMiddleware(app.wsgi_app, client=client)  # type: ignore[method-assign]
    response = make_lambda_handler(app)(http_api_event("/fail"), LambdaContext(3000))
    assert response["statusCode"] == 500
    assert [e["event_type"] for e in fake.events] == ["Failed"]


def test_apig_wsgi_budget_comes_from_the_lambda_context(client: Amplitude, fake: FakeAmplitude,
                                                        clean_env: Path) -> None:
    # GIVEN an Amplitude that never answers and 2 s left in the invocation (margin 0.5 s)
    fake.script(*[Fault.hang(60)] * 50)
    app = flask_app(client)
    app.wsgi_app = WsgiMiddleware(app.wsgi_app, client=client,  # type: ignore[method-assign]
                                  flush_timeout_s=30)
    started = time.monotonic()
    response = make_lambda_handler(app)(order_event(), LambdaContext(2000))
    # THEN the answer came within 1.5 s, and the events were spilled
    assert response["statusCode"] == 201
    assert time.monotonic() - started <= 1.5 + TOLERANCE_S
    assert spilled(clean_env) == 2


def test_a_wsgi_app_that_raises_is_flushed_and_its_exception_propagates(
        client: Amplitude, fake: FakeAmplitude) -> None:
    error = ValueError("raised by the app itself")

    def app(environ: Any, start_response: Any) -> Any:
        client.track("Before Raising", user_id="user-raise")
        raise error

    with pytest.raises(ValueError) as raised:
        WsgiMiddleware(app, client=client)({}, lambda *a: None)
    assert raised.value is error
    assert [e["event_type"] for e in fake.events] == ["Before Raising"]


# -- Django on a WSGI server ------------------------------------------------------------------


def django_application(client: Amplitude) -> Any:
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, SECRET_KEY="test-only", ALLOWED_HOSTS=["*"],
                           ROOT_URLCONF=__name__, MIDDLEWARE=[], INSTALLED_APPS=[])
    from django.core.wsgi import get_wsgi_application

    _django_views.client = client
    return get_wsgi_application()


class _DjangoViews:
    client: Amplitude | None = None

    def signup(self, request: Any) -> Any:
        from django.http import JsonResponse

        assert self.client is not None
        user = request.GET["user"]
        return JsonResponse({"insert_ids": [self.client.track("Signed Up", user_id=user)]})

    def stream(self, request: Any) -> Any:
        from django.http import StreamingHttpResponse

        client = self.client
        assert client is not None

        def chunks() -> Iterator[str]:
            for n in range(3):
                yield client.track("Chunk Sent", user_id="user-dj", event_properties={"n": n})
                yield "\n"

        return StreamingHttpResponse(chunks(), content_type="text/plain")


_django_views = _DjangoViews()


def __getattr__(name: str) -> Any:
    # Django reads `urlpatterns` from ROOT_URLCONF (this module) at the first request
    if name != "urlpatterns":
        raise AttributeError(name)
    from django.urls import path

    return [path("signup", _django_views.signup), path("stream", _django_views.stream)]


@contextmanager
def wsgi_server(app: Any) -> Iterator[str]:
    server = wsgiref.simple_server.make_server(
        "127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_django_with_the_middleware_on_a_wsgi_server(client: Amplitude,
                                                     fake: FakeAmplitude) -> None:
    # GIVEN a Django WSGI application with the middleware, served on 127.0.0.1
    application = WsgiMiddleware(django_application(client), client=client, timeout_s=10)
    http = urllib3.PoolManager()
    with wsgi_server(application) as url:
        # WHEN a view tracks, and a streamed view tracks while its body is generated
        signup = http.request("GET", f"{url}/signup?user=user-dj", timeout=10)
        stream = http.request("GET", f"{url}/stream", timeout=10)
        at_amplitude = list(fake.insert_ids)
    # THEN both responses are Django's, and every event was delivered by the time each was read
    assert signup.status == 200 and stream.status == 200
    ids = signup.json()["insert_ids"] + stream.data.decode().split()
    assert len(ids) == 4
    assert sorted(at_amplitude) == sorted(ids)
    assert fake.duplicates == 0


# -- FastAPI on uvicorn (Cloud Run, Lambda Web Adapter) ---------------------------------------


@contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:  # readiness, not a behaviour: uvicorn offers no callback
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_uvicorn_requests_are_flushed_before_their_responses(client: Amplitude,
                                                             fake: FakeAmplitude) -> None:
    # GIVEN FastAPI with the middleware on uvicorn, as on Cloud Run (lifespan passed through)
    started: list[str] = []
    app = fastapi_app(client)
    app.router.on_startup.append(lambda: started.append("lifespan"))
    http = urllib3.PoolManager()
    with uvicorn_server(AsgiMiddleware(app, client=client, timeout_s=60)) as url:
        # WHEN requests arrive one after the other
        late: list[str] = []
        sent: list[str] = []
        for n in range(5):
            ids = http.request("GET", f"{url}/track/user-{n}", timeout=10).json()["insert_ids"]
            late += set(ids) - set(fake.insert_ids)  # THEN each response came after its events
            sent += ids
        failed = http.request("GET", f"{url}/fail", timeout=10)
    assert started == ["lifespan"]
    assert late == []
    assert failed.status == 500
    assert sorted(fake.insert_ids) == sorted(
        [*sent, next(e["insert_id"] for e in fake.events if e["event_type"] == "Failed")])
    assert fake.duplicates == 0


def test_uvicorn_streaming_response_is_flushed_when_its_body_has_been_read(
        client: Amplitude, fake: FakeAmplitude) -> None:
    # GIVEN a StreamingResponse that tracks one event per chunk
    http = urllib3.PoolManager()
    with uvicorn_server(AsgiMiddleware(fastapi_app(client), client=client, timeout_s=60)) as url:
        # WHEN a client reads the body to its end
        reply = http.request("GET", f"{url}/stream/user-s", timeout=10)
        at_amplitude = list(fake.insert_ids)
    # THEN the four events were at Amplitude by then, once each
    ids = reply.data.decode().split()
    assert len(ids) == 4
    assert sorted(at_amplitude) == sorted(ids)
    assert fake.duplicates == 0


def test_uvicorn_background_task_events_go_out_with_the_next_request(
        client: Amplitude, fake: FakeAmplitude) -> None:
    # GIVEN an endpoint whose background task tracks after the response was sent
    ran = threading.Event()
    http = urllib3.PoolManager()
    with uvicorn_server(AsgiMiddleware(fastapi_app(client, ran), client=client,
                                       timeout_s=60)) as url:
        first = http.request("GET", f"{url}/track/user-bg", timeout=10).json()["insert_ids"]
        assert ran.wait(10)
        # WHEN the task has run / THEN its event waits in the client's own buffer
        assert sorted(fake.insert_ids) == sorted(first)
        assert client.pending == 1
        # AND the next request's flush takes it along
        second = http.request("GET", f"{url}/track/user-bg2", timeout=10).json()["insert_ids"]
        assert ran.wait(10)
        assert len(fake.events) == 3 + 1 + 3
        assert set(first + second) <= set(fake.insert_ids)


def test_uvicorn_budget_is_timeout_s_from_the_start_of_the_request(
        client: Amplitude, fake: FakeAmplitude, clean_env: Path) -> None:
    # GIVEN an Amplitude that never answers and a 2 s request timeout (margin 0.5 s)
    fake.script(*[Fault.hang(60)] * 50)
    http = urllib3.PoolManager()
    with uvicorn_server(AsgiMiddleware(fastapi_app(client), client=client, timeout_s=2,
                                       flush_timeout_s=30)) as url:
        started = time.monotonic()
        reply = http.request("GET", f"{url}/track/user-cr", timeout=10)
        took = time.monotonic() - started
    # THEN the response came within 1.5 s, unchanged, and its events were spilled
    assert reply.status == 200 and len(reply.json()["insert_ids"]) == 3
    assert took <= 1.5 + TOLERANCE_S
    assert spilled(clean_env) == 3


def lambda_context_header(seconds_from_now: float) -> str:
    # what AWS Lambda Web Adapter sends: lambda_runtime::Context as JSON, `deadline` in ms
    return json.dumps({"request_id": "r-1",
                       "deadline": int((time.time() + seconds_from_now) * 1000),
                       "invoked_function_arn": "arn:aws:lambda:us-east-1:1:function:f",
                       "xray_trace_id": None, "client_context": None, "identity": None,
                       "env_config": {"function_name": "f", "memory": 128,
                                      "version": "$LATEST", "log_stream": "s",
                                      "log_group": "g"}})


def test_lambda_web_adapter_header_gives_the_budget_on_lambda(
        client: Amplitude, fake: FakeAmplitude, clean_env: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the app on uvicorn behind the Web Adapter (on Lambda), Amplitude hanging
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "amp-web")
    fake.script(*[Fault.hang(60)] * 50)
    app = AsgiMiddleware(fastapi_app(client), client=client, timeout_s=60, flush_timeout_s=30)
    http = urllib3.PoolManager()
    with uvicorn_server(app) as url:
        # WHEN a request says the invocation ends in 2 s
        started = time.monotonic()
        reply = http.request("GET", f"{url}/track/user-lwa", timeout=10,
                             headers={"x-amzn-lambda-context": lambda_context_header(2)})
        took = time.monotonic() - started
    # THEN the flush kept 0.5 s before that deadline (not the 60 s timeout_s)
    assert reply.status == 200
    assert took <= 1.5 + TOLERANCE_S
    assert spilled(clean_env) == 3


def test_the_web_adapter_header_is_ignored_off_lambda(
        client: Amplitude, fake: FakeAmplitude, clean_env: Path) -> None:
    # GIVEN the app on uvicorn off Lambda (no AWS_LAMBDA_FUNCTION_NAME), Amplitude hanging
    fake.script(*[Fault.hang(60)] * 50)
    app = AsgiMiddleware(fastapi_app(client), client=client, timeout_s=2, flush_timeout_s=30)
    http = urllib3.PoolManager()
    with uvicorn_server(app) as url:
        # WHEN a client sends a forged header whose deadline has passed
        started = time.monotonic()
        reply = http.request("GET", f"{url}/track/user-forged", timeout=10,
                             headers={"x-amzn-lambda-context": lambda_context_header(-60)})
        took = time.monotonic() - started
    # THEN timeout_s was the budget: the flush still had its 1.5 s and spilled the events
    assert reply.status == 200
    assert 1.0 <= took <= 1.5 + TOLERANCE_S
    assert spilled(clean_env) == 3


# -- the default client, and what passes through untouched --------------------------------------


def test_the_default_client_is_resolved_per_request_and_a_broken_one_is_only_logged(
        fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a middleware built before the environment is set (client=None)
    amp_lite.set_client(None)
    app = FastAPI()

    @app.get("/")
    def index() -> str:
        amp_lite.track("Default Client", user_id="user-default")
        return "ok"

    handler = Mangum(AsgiMiddleware(app), lifespan="off")
    try:
        # WHEN the environment is broken / THEN the app still answers, and the error is logged
        monkeypatch.setenv("AMPLITUDE_SERVER_ZONE", "MARS")
        monkeypatch.setenv("AMPLITUDE_API_KEY", API_KEY)
        response = handler(http_api_event("/"), LambdaContext(3000))
        assert response["statusCode"] == 500  # amp_lite.track itself raises ConfigError...
        assert "the default client could not be built" in caplog.text
        # WHEN it is fixed / THEN the next request uses the default client and is flushed
        monkeypatch.delenv("AMPLITUDE_SERVER_ZONE")
        monkeypatch.setenv("AMPLITUDE_SERVER_URL", fake.url)
        response = handler(http_api_event("/"), LambdaContext(3000))
        assert response["statusCode"] == 200
        assert [e["event_type"] for e in fake.events] == ["Default Client"]
    finally:
        amp_lite.set_client(None)


def test_websocket_and_lifespan_scopes_pass_through_untouched(client: Amplitude) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    import asyncio

    middleware = AsgiMiddleware(app, client=client)
    for kind in ("lifespan", "websocket"):
        scope, receive, send = {"type": kind}, object(), object()
        asyncio.run(middleware(scope, receive, send))  # type: ignore[arg-type]
        assert seen[-1][0] is scope and seen[-1][1] is receive and seen[-1][2] is send


def test_the_fastapi_example_under_mangum(fake: FakeAmplitude,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN examples/fastapi_app/app.py, configured from the environment (the default client)
    import importlib.util

    from tests.support.lambda_runtime import REPO_ROOT

    monkeypatch.setenv("AMPLITUDE_API_KEY", API_KEY)
    monkeypatch.setenv("AMPLITUDE_SERVER_URL", fake.url)
    amp_lite.set_client(None)
    spec = importlib.util.spec_from_file_location(
        "fastapi_example", REPO_ROOT / "examples" / "fastapi_app" / "app.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    try:
        # WHEN Lambda invokes its handler
        body = json.dumps({"user_id": "user-42", "skus": ["sku-1", "sku-2"]})
        response = example.handler(http_api_event("/orders", method="POST", body=body),
                                   LambdaContext(3000))
        # THEN the order's events are at Amplitude when the handler returns
        assert response["statusCode"] == 200
        assert sorted(fake.insert_ids) == sorted(json.loads(response["body"])["insert_ids"])
    finally:
        amp_lite.set_client(None)
