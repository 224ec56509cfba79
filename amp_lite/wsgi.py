"""WSGI middleware: one invocation scope per request, flushed before its last byte is sent.

    app.wsgi_app = amp_lite.wsgi.AmplitudeMiddleware(app.wsgi_app)     # Flask
    application = amp_lite.wsgi.AmplitudeMiddleware(get_wsgi_application())  # Django
    handler = apig_wsgi.make_lambda_handler(application)               # on Lambda

The app runs inside the scope; the body iterable it returns is wrapped (`_body.ScopedBody`) so
that each `next()` runs inside the scope too (a streamed body's events belong to the request),
and the flush happens when the body is exhausted — before the server writes the last chunk —
or at `close()` if the server stopped early; the inner body's `close()` is always called. A
list or tuple body, or a `wsgi.file_wrapper`, is flushed at once and returned as it is (no
code of the app runs while it is sent; the server keeps its `len()` or its sendfile). An app
that raises is flushed, then its exception propagates unchanged.

The budget: `amp_lite._request_budget` (a Lambda context from apig-wsgi or serverless-wsgi, or
the Web Adapter's header, else `timeout_s` from the start of the request, else
`flush_timeout_s` alone).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ._body import ScopedBody, finish
from ._client import Amplitude
from ._request_budget import RequestScopes
from ._wrap import DEFAULT_MARGIN_MS

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class AmplitudeMiddleware:
    """Flush each request's events before its response completes.

    `client` None is the default client (`amp_lite.get_client()`), resolved at each request;
    `timeout_s` is the platform's request timeout where there is no Lambda context (Cloud Run);
    `margin_ms` and `flush_timeout_s` as for `@amplitude_flush`. Bad options raise ConfigError
    here, when the app is built.
    """

    def __init__(self, app: WSGIApp, *, client: Amplitude | None = None,
                 timeout_s: float | None = None, margin_ms: float = DEFAULT_MARGIN_MS,
                 flush_timeout_s: float | None = None) -> None:
        self.app = app
        self._scopes = RequestScopes(client, timeout_s=timeout_s, margin_ms=margin_ms,
                                     flush_timeout_s=flush_timeout_s)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        scope = self._scopes.wsgi(environ)
        if scope is None:
            return self.app(environ, start_response)
        scope.enter()
        try:
            body = self.app(environ, start_response)
        except BaseException:
            finish(scope)
            raise
        finally:
            scope.leave()
        if isinstance(body, (list, tuple)) or _is_file_wrapper(body, environ):
            finish(scope)  # no code of the app runs while these are sent
            return body
        return ScopedBody(body, scope)


def _is_file_wrapper(body: object, environ: Environ) -> bool:
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(body, wrapper)


__all__ = ["AmplitudeMiddleware"]
