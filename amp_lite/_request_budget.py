"""How long a web request may flush: the budget rules shared by the ASGI and WSGI middleware.

In order:
1. A Lambda context the adapter put in the request: Mangum's ASGI `scope["aws.context"]`,
   apig-wsgi's `environ["apig_wsgi.context"]`, serverless-wsgi's `environ["serverless.context"]`
   (`context.get_remaining_time_in_millis()`).
2. AWS Lambda Web Adapter's `x-amzn-lambda-context` request header: the JSON of the Rust
   runtime's `Context`, whose `deadline` is the invocation's deadline in milliseconds since the
   Unix epoch (aws-lambda-rust-runtime, lambda-runtime/src/types.rs). It is trusted only when
   the process runs on Lambda (AWS_LAMBDA_FUNCTION_NAME is set), where the adapter always
   overwrites it; elsewhere (Cloud Run) any client could send it.
3. `timeout_s` (the platform's request timeout), counted from the start of the request.
4. Nothing: the flush is bounded by `flush_timeout_s` alone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from ._client import Amplitude
from ._scope import Invocation, InvocationTime, TimeLeft, countdown
from ._wrap import check_options, open_scope
from .aws_lambda import context_time_left

logger = logging.getLogger("amp_lite")

ASGI_CONTEXT_KEY = "aws.context"  # Mangum
WSGI_CONTEXT_KEYS = ("apig_wsgi.context", "serverless.context")  # apig-wsgi, serverless-wsgi
WEB_ADAPTER_HEADER = "x-amzn-lambda-context"  # AWS Lambda Web Adapter
WEB_ADAPTER_ENVIRON_KEY = "HTTP_X_AMZN_LAMBDA_CONTEXT"  # the same header in a WSGI environ
ON_LAMBDA_VARIABLE = "AWS_LAMBDA_FUNCTION_NAME"  # set by Lambda in every execution environment


def on_lambda(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs on AWS Lambda (where the Web Adapter's header can be trusted)."""
    return bool((os.environ if env is None else env).get(ON_LAMBDA_VARIABLE))


class RequestBudget:
    """The rules above, with what is fixed for an app: its `timeout_s` and whether the Web
    Adapter's header is trusted (read once, when the middleware is built)."""

    def __init__(self, timeout_s: float | None, *, trust_web_adapter: bool) -> None:
        self._timeout_s = timeout_s
        self._trust_web_adapter = trust_web_adapter

    def asgi(self, scope: Mapping[str, Any]) -> TimeLeft | None:
        """For an ASGI HTTP connection scope (headers are lower-cased byte pairs)."""
        header = None
        if self._trust_web_adapter:
            wanted = WEB_ADAPTER_HEADER.encode()
            header = next((value for name, value in scope.get("headers") or ()
                           if name == wanted), None)
        return self._pick(scope.get(ASGI_CONTEXT_KEY), header)

    def wsgi(self, environ: Mapping[str, Any]) -> TimeLeft | None:
        """For a WSGI environ."""
        context = next((environ[key] for key in WSGI_CONTEXT_KEYS if key in environ), None)
        header = environ.get(WEB_ADAPTER_ENVIRON_KEY) if self._trust_web_adapter else None
        return self._pick(context, header)

    def _pick(self, context: Any, header: str | bytes | None) -> TimeLeft | None:
        found = context_time_left(context) if context is not None else None
        if found is None and header is not None:
            found = web_adapter_time_left(header)
        if found is None and self._timeout_s is not None:
            found = countdown(self._timeout_s)
        return found


class RequestScopes:
    """What a middleware opens for each request: a scope bounded by the rules above, with the
    middleware's options (checked here, when the app is built: ConfigError names the bad one)."""

    def __init__(self, client: Amplitude | None, *, timeout_s: float | None, margin_ms: float,
                 flush_timeout_s: float | None) -> None:
        check_options(margin_ms, flush_timeout_s, timeout_s)
        self._client = client
        self._margin_ms = margin_ms
        self._flush_timeout_s = flush_timeout_s
        self._budget = RequestBudget(timeout_s, trust_web_adapter=on_lambda())

    def asgi(self, scope: Mapping[str, Any]) -> Invocation | None:
        """A scope for an ASGI HTTP request; None when none can be opened (logged)."""
        return open_scope(self._client, lambda: self._budget.asgi(scope), self._margin_ms,
                          self._flush_timeout_s)

    def wsgi(self, environ: Mapping[str, Any]) -> Invocation | None:
        """A scope for a WSGI request; None when none can be opened (logged)."""
        return open_scope(self._client, lambda: self._budget.wsgi(environ), self._margin_ms,
                          self._flush_timeout_s)


def web_adapter_time_left(header: str | bytes) -> TimeLeft | None:
    """Seconds left until the `deadline` of a Lambda Web Adapter context header; None when the
    header does not carry one (logged at debug)."""
    try:
        context = json.loads(header)
        deadline_ms = context["deadline"]
        if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int) or deadline_ms <= 0:
            raise ValueError(f"deadline is {deadline_ms!r}")
    except (ValueError, TypeError, KeyError) as exc:
        logger.debug("amp_lite: the %s header has no usable deadline (%s)",
                     WEB_ADAPTER_HEADER, type(exc).__name__)
        return None
    ends_at = deadline_ms / 1000  # wall clock: the deadline comes from another process
    return InvocationTime(lambda: ends_at - time.time(), context.get("request_id"))
