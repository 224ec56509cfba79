"""HTTP to Amplitude over urllib3: the only module that imports it.

One PoolManager per client keeps TLS connections alive across warm invocations. Every attempt
is bounded by the flush deadline, including the reading of the reply body. Foreign errors are
translated here into a Reply with an `error` kind.
"""

from __future__ import annotations

import io
import logging
import os
import socket
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from ._deadline import Deadline
from ._http_common import MAX_RESPONSE_BYTES, POOL_MAXSIZE, prepared, reply_from
from ._reply import Reply

logger = logging.getLogger("amp_lite")

READ_CHUNK_BYTES = 8 * 1024


# The deadline of the attempt in progress in this context (thread), read by the connections.
_attempt_deadline: ContextVar[Deadline | None] = ContextVar("amp_lite_attempt_deadline",
                                                            default=None)


class _DeadlineSocket:
    """A socket view whose every receive is bounded by what is left of the attempt.

    urllib3's read timeout applies to each receive separately, so a server trickling its
    headers or body a byte at a time would stretch an attempt without limit. Re-arming the
    timeout from the deadline before each receive keeps the whole reply within it (I3).
    """

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        remaining = self._deadline.remaining_s()
        if remaining <= 0:
            raise TimeoutError("amp_lite: the flush deadline passed while reading the reply")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer, nbytes, flags)

    def makefile(self, mode: str = "rb", buffering: int = -1, **_: Any) -> io.BufferedReader:
        # Count the reader on the real socket, as socket.makefile does: when http.client
        # closes the connection on "Connection: close", the socket stays open for the body.
        self._sock._io_refs += 1  # type: ignore[attr-defined]
        return io.BufferedReader(socket.SocketIO(self, "rb"),  # type: ignore[arg-type]
                                 io.DEFAULT_BUFFER_SIZE)

    def _decref_socketios(self) -> None:  # called by SocketIO.close
        self._sock._decref_socketios()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineMixin:
    """Bounds sending by the attempt's deadline and reads the reply through _DeadlineSocket."""

    sock: Any

    def send(self, data: Any) -> None:
        deadline = _attempt_deadline.get()
        if deadline is not None and self.sock is not None:
            self.sock.settimeout(max(deadline.remaining_s(), 0.001))
        super().send(data)  # type: ignore[misc]

    def getresponse(self) -> Any:
        deadline = _attempt_deadline.get()
        real = self.sock
        if deadline is None or real is None:
            return super().getresponse()  # type: ignore[misc]
        self.sock = _DeadlineSocket(real, deadline)
        try:
            return super().getresponse()  # type: ignore[misc]
        finally:
            if self.sock is not None:  # None: http.client closed it ("Connection: close")
                self.sock = real


class _DeadlineHTTPConnection(_DeadlineMixin, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineMixin, HTTPSConnection):
    pass


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


class HttpTransport:
    """POSTs request bodies to one URL with certificate verification always on."""

    def __init__(self, url: str, *, gzip: bool, ca_certs: str | None = None) -> None:
        self.url = url
        self._gzip = gzip
        # ca_certs, else the standard SSL_CERT_FILE, else the system store: never unverified.
        bundle = ca_certs or os.environ.get("SSL_CERT_FILE") or None
        self._pool = urllib3.PoolManager(
            num_pools=2, maxsize=POOL_MAXSIZE, block=False, retries=False,
            cert_reqs="CERT_REQUIRED", ca_certs=bundle,
        )
        self._pool.pool_classes_by_scheme = {"http": _DeadlineHTTPPool,
                                             "https": _DeadlineHTTPSPool}

    def post(self, body: bytes, *, timeout_s: float, deadline: Deadline) -> Reply:
        body, headers = prepared(body, gzip=self._gzip)
        reply = self._attempt(body, headers, timeout_s, deadline)
        if reply.error == "connection_dropped" and deadline.remaining_s() > 0:
            # A kept-alive connection closed by the server (often while the sandbox was frozen)
            # fails before any reply: resend at once on a fresh connection, no backoff.
            logger.debug("amp_lite: connection dropped before a reply; resending at once")
            reply = self._attempt(body, headers, timeout_s, deadline)
        return reply

    def close(self) -> None:
        self._pool.clear()

    def _attempt(self, body: bytes, headers: dict[str, str], timeout_s: float,
                 deadline: Deadline) -> Reply:
        budget = deadline.clamp(timeout_s)
        if budget <= 0:
            return Reply(None, error="timeout")
        attempt_deadline = Deadline.after(budget, deadline.clock)
        token = _attempt_deadline.set(attempt_deadline)
        try:
            return self._send(body, headers, budget, attempt_deadline)
        finally:
            _attempt_deadline.reset(token)

    def _send(self, body: bytes, headers: dict[str, str], budget: float,
              deadline: Deadline) -> Reply:
        try:
            response = self._pool.request(
                "POST", self.url, body=body, headers=headers, redirect=False, retries=False,
                timeout=urllib3.Timeout(connect=budget, read=budget), preload_content=False,
            )
        except (ConnectTimeoutError, ReadTimeoutError, TimeoutError):
            return Reply(None, error="timeout")
        except SSLError:
            return Reply(None, error="tls")
        except NewConnectionError:
            return Reply(None, error="connection")
        except ProtocolError:
            return Reply(None, error="connection_dropped")
        except (HTTPError, OSError) as exc:
            return Reply(None, error=f"protocol:{type(exc).__name__}")
        except Exception as exc:  # an HTTP-stack fault must not drop the batch: retry it
            logger.warning("amp_lite: unexpected %s from the HTTP client; retrying",
                           type(exc).__name__, exc_info=True)
            return Reply(None, error=f"unexpected:{type(exc).__name__}")
        return _read_reply(response, deadline)


def _read_reply(response: Any, deadline: Deadline) -> Reply:
    """Read the body within the deadline and the size cap; decide the status."""
    data = bytearray()
    try:  # every receive underneath is bounded by the deadline (_DeadlineSocket)
        while chunk := response.read(READ_CHUNK_BYTES):
            data += chunk
            if len(data) > MAX_RESPONSE_BYTES:
                return _discard(response, "response_too_large")
    except (ReadTimeoutError, TimeoutError):
        return _discard(response, "timeout")
    except (HTTPError, OSError) as exc:
        return _discard(response, f"protocol:{type(exc).__name__}")
    response.release_conn()
    return reply_from(response.status, bytes(data), response.headers.get("Retry-After"))


def _discard(response: Any, error: str) -> Reply:
    """Give up on a reply: close its connection so a half-read body is never reused."""
    response.close()
    response.release_conn()
    return Reply(None, error=error)


# -- any request, bounded as a whole: what SQSOverflow sends the requests botocore signed with --

@dataclass(frozen=True)
class RawReply:
    """A whole HTTP reply, read within its deadline."""

    status: int
    headers: dict[str, str]
    body: bytes


class BoundedHttp:
    """Pooled, verified HTTP whose every exchange (connect, send, every receive) is bounded as
    a whole by a deadline, like HttpTransport's attempts, for requests other than Amplitude's."""

    def __init__(self, *, ca_certs: str | None = None) -> None:
        self._pool = urllib3.PoolManager(
            num_pools=2, maxsize=POOL_MAXSIZE, block=False, retries=False,
            cert_reqs="CERT_REQUIRED", ca_certs=ca_certs,
        )
        self._pool.pool_classes_by_scheme = {"http": _DeadlineHTTPPool,
                                             "https": _DeadlineHTTPSPool}

    def request(self, method: str, url: str, *, body: bytes, headers: Mapping[str, str],
                deadline: Deadline) -> RawReply:
        """The reply, read whole by `deadline`. Raises TimeoutError (or urllib3's timeout
        errors) when the deadline passes, urllib3's HTTPError or OSError when the exchange
        fails."""
        if deadline.expired():
            raise TimeoutError("amp_lite: no time left for the request")
        token = _attempt_deadline.set(deadline)
        try:
            response = self._open(method, url, body, headers, deadline)
            return RawReply(response.status, dict(response.headers), _read_whole(response))
        finally:
            _attempt_deadline.reset(token)

    def close(self) -> None:
        self._pool.clear()

    def _open(self, method: str, url: str, body: bytes, headers: Mapping[str, str],
              deadline: Deadline) -> Any:
        """Send the request and read the reply's head. A kept-alive connection found closed
        before any reply (often while the sandbox was frozen) is replaced once, at once."""
        try:
            return self._send_request(method, url, body, headers, deadline)
        except ProtocolError:
            if deadline.expired():
                raise
            logger.debug("amp_lite: connection dropped before a reply; resending at once")
            return self._send_request(method, url, body, headers, deadline)

    def _send_request(self, method: str, url: str, body: bytes, headers: Mapping[str, str],
                      deadline: Deadline) -> Any:
        budget = max(deadline.remaining_s(), 0.001)
        return self._pool.request(
            method, url, body=body, headers=dict(headers), redirect=False, retries=False,
            timeout=urllib3.Timeout(connect=budget, read=budget), preload_content=False,
        )


def _read_whole(response: Any) -> bytes:
    data = bytearray()
    try:
        while chunk := response.read(READ_CHUNK_BYTES):  # each receive: _DeadlineSocket
            data += chunk
            if len(data) > MAX_RESPONSE_BYTES:
                raise HTTPError(f"amp_lite: reply over {MAX_RESPONSE_BYTES} bytes")
    except BaseException:
        response.close()  # a half-read connection must never be reused
        raise
    finally:
        response.release_conn()
    return bytes(data)
