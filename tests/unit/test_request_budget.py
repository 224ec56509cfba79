"""How long a web request may flush (`_request_budget`): a Lambda context, the Web Adapter's
header (on Lambda only), `timeout_s`, or nothing; and the middleware's options."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from amp_lite import ConfigError, asgi, wsgi
from amp_lite._request_budget import RequestBudget, on_lambda, web_adapter_time_left


class Context:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def header(seconds_from_now: float) -> bytes:
    deadline_ms = int((time.time() + seconds_from_now) * 1000)
    # the shape lambda_runtime::Context serializes to (aws-lambda-rust-runtime)
    return json.dumps({"request_id": "r-1", "deadline": deadline_ms,
                       "invoked_function_arn": "arn:aws:lambda:us-east-1:1:function:f",
                       "xray_trace_id": None, "client_context": None, "identity": None,
                       "env_config": {"function_name": "f", "memory": 128,
                                      "version": "$LATEST", "log_stream": "s",
                                      "log_group": "g"}}).encode()


def asgi_scope(**extra: Any) -> dict[str, Any]:
    return {"type": "http", "headers": [(b"host", b"x")], **extra}


def test_a_lambda_context_comes_first() -> None:
    budget = RequestBudget(30, trust_web_adapter=True)
    scope = asgi_scope(**{"aws.context": Context(2500)},
                       headers=[(b"x-amzn-lambda-context", header(9))])
    left = budget.asgi(scope)
    assert left is not None and left() == pytest.approx(2.5)
    for key in ("apig_wsgi.context", "serverless.context"):
        found = budget.wsgi({key: Context(1200), "HTTP_X_AMZN_LAMBDA_CONTEXT": header(9)})
        assert found is not None and found() == pytest.approx(1.2)


def test_the_web_adapter_header_gives_the_deadline_on_lambda() -> None:
    budget = RequestBudget(30, trust_web_adapter=True)
    from_asgi = budget.asgi(asgi_scope(headers=[(b"x-amzn-lambda-context", header(2))]))
    from_wsgi = budget.wsgi({"HTTP_X_AMZN_LAMBDA_CONTEXT": header(2).decode()})
    for left in (from_asgi, from_wsgi):
        assert left is not None and left() == pytest.approx(2, abs=0.1)


def test_the_header_is_ignored_off_lambda_where_any_client_could_send_it() -> None:
    budget = RequestBudget(None, trust_web_adapter=False)
    assert budget.asgi(asgi_scope(headers=[(b"x-amzn-lambda-context", header(0))])) is None
    assert budget.wsgi({"HTTP_X_AMZN_LAMBDA_CONTEXT": header(0).decode()}) is None


@pytest.mark.parametrize("value", [b"not json", b"[]", b"{}", b'{"deadline": "soon"}',
                                   b'{"deadline": true}', b'{"deadline": 0}',
                                   b'{"deadline_ms": 1}'])
def test_a_header_without_a_usable_deadline_falls_back_to_timeout_s(value: bytes) -> None:
    assert web_adapter_time_left(value) is None
    left = RequestBudget(7, trust_web_adapter=True).asgi(
        asgi_scope(headers=[(b"x-amzn-lambda-context", value)]))
    assert left is not None and left() == pytest.approx(7, abs=0.1)


def test_without_context_header_or_timeout_only_flush_timeout_s_bounds_the_flush() -> None:
    budget = RequestBudget(None, trust_web_adapter=True)
    assert budget.asgi(asgi_scope()) is None
    assert budget.wsgi({}) is None
    assert budget.wsgi({"apig_wsgi.context": object()}) is None  # no remaining-time method


def test_on_lambda_reads_the_function_name_variable() -> None:
    assert on_lambda({"AWS_LAMBDA_FUNCTION_NAME": "f"})
    assert not on_lambda({})


@pytest.mark.parametrize("middleware", [asgi.AmplitudeMiddleware, wsgi.AmplitudeMiddleware])
@pytest.mark.parametrize(("option", "value"), [("margin_ms", -1), ("flush_timeout_s", 0),
                                               ("timeout_s", -5)])
def test_bad_options_fail_when_the_app_is_built(middleware: Any, option: str,
                                                value: float) -> None:
    with pytest.raises(ConfigError, match=option):
        middleware(lambda *a: None, **{option: value})
