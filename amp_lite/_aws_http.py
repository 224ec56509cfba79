"""botocore clients whose requests amp-lite's deadline-bounded HTTP sends.

botocore still resolves the endpoint, signs and parses; its documented `before-send` event
hands the signed request to `_http.BoundedHttp`, so connect, send and every receive of the
reply fit the deadline set with `bounded_by(deadline)`: a hanging or trickling AWS endpoint
cannot stretch a flush. Used by SQSOverflow and by the Secrets Manager / SSM key fetch.
boto3 is imported only when a client is built.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ._deadline import Deadline

logger = logging.getLogger("amp_lite")

# The deadline of the call in progress in this context (thread), read by the before-send hook.
_call_deadline: ContextVar[Deadline | None] = ContextVar("amp_lite_aws_deadline", default=None)


@contextmanager
def bounded_by(deadline: Deadline) -> Iterator[None]:
    """Calls of bounded clients inside the block end by `deadline`."""
    token = _call_deadline.set(deadline)
    try:
        yield
    finally:
        _call_deadline.reset(token)


def bounded_client(service: str, *, region: str | None, timeout_s: float) -> Any:
    """A boto3 client for `service` sending through BoundedHttp, with no retries of its own.
    `timeout_s` only matters when botocore sends itself (through a proxy). Raises ImportError
    without boto3, and botocore's errors (NoRegionError...) as they come."""
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.get_session()
    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                    retries={"total_max_attempts": 1, "mode": "standard"})
    client = boto3.session.Session(botocore_session=core).client(
        service, region_name=region, config=config)
    _use_bounded_http(client, core)
    return client


def _use_bounded_http(client: Any, core: Any) -> None:
    """Make `client` send through BoundedHttp, unless botocore would go through a proxy
    (HTTPS_PROXY...), which BoundedHttp does not speak: then botocore sends, per-receive
    timeouts and all."""
    from botocore.httpsession import get_cert_path
    from botocore.utils import get_environ_proxies

    from ._http import BoundedHttp

    service = client.meta.service_model.service_id.hyphenize()  # e.g. sqs, secrets-manager
    if get_environ_proxies(client.meta.endpoint_url):
        logger.warning("amp_lite: %s goes through a proxy: its calls are bounded per receive "
                       "(%.2f s), not as a whole", service, client.meta.config.read_timeout)
        return
    # The certificates botocore would trust: AWS_CA_BUNDLE / ca_bundle, else its own bundle.
    http = BoundedHttp(ca_certs=core.get_config_variable("ca_bundle") or get_cert_path(True))
    client.meta.events.register(f"before-send.{service}", _BoundedSender(http))


class _BoundedSender:
    """botocore's before-send hook: sends the signed request within the write's deadline and
    hands botocore the reply to parse."""

    def __init__(self, http: Any) -> None:
        self._http = http

    def __call__(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        deadline = _call_deadline.get()
        if deadline is None:  # bounded clients are only used inside bounded_by()
            raise TimeoutError("amp_lite: an AWS request outside a deadline")
        body = request.body or b""
        reply = self._http.request(
            request.method, request.url, headers=dict(request.headers.items()),
            body=body.encode() if isinstance(body, str) else body, deadline=deadline)
        return AWSResponse(request.url, reply.status, reply.headers, _Body(reply.body))


class _Body:
    """The already-read body, as AWSResponse reads it (`raw.stream()`)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, *_: Any, **__: Any) -> Iterator[bytes]:
        yield self._data
