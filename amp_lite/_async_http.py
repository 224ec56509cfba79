"""HTTP to Amplitude for the async flush, over httpcore (the `amp-lite[async]` extra).

httpcore is httpx's own HTTP engine. We use it rather than `httpx.AsyncClient` for one reason:
httpx resolves host names through asyncio's `loop.getaddrinfo`, which runs in the event loop's
default thread pool, so the first flush of a process would start a thread (invariant I1).
httpcore takes a network backend: ours resolves the name with the blocking `getaddrinfo`, as
the sync flush does (README, "What it cannot promise"), and connects to the address; TLS is
still verified against the host name. Every other wait is awaited.

Each attempt is bounded as a whole (connect, send, every receive) by `asyncio.wait_for`, so a
server trickling its reply cannot stretch it (I3). Pooled connections belong to the event loop
that opened them: a flush on another loop (`asyncio.run` per call) gets a pool of its own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
import weakref
from collections.abc import Iterable
from typing import Any

import httpcore

from ._deadline import Deadline
from ._http_common import MAX_RESPONSE_BYTES, POOL_MAXSIZE, prepared, reply_from
from ._reply import Reply

logger = logging.getLogger("amp_lite")


class _ResolvingBackend(httpcore.AsyncNetworkBackend):
    """anyio's backend, handed addresses instead of names (see the module docstring)."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        failure: Exception | None = None
        for address in _addresses(host, port):
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout,
                                                      local_address=local_address,
                                                      socket_options=socket_options)
            except httpcore.ConnectError as exc:  # the next address may answer
                failure = exc
        raise failure or httpcore.ConnectError(f"{host}: no address")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_unix_socket(path, timeout=timeout,
                                                     socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _addresses(host: str, port: int) -> list[str]:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [host]
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror: the name does not resolve
        raise httpcore.ConnectError(f"{host}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in found))  # unique, in resolver order


class AsyncHttpTransport:
    """POSTs request bodies to one URL, awaited, with certificate verification always on."""

    def __init__(self, url: str, *, gzip: bool, ca_certs: str | None = None) -> None:
        self.url = url
        self._gzip = gzip
        # ca_certs, else the standard SSL_CERT_FILE, else the system store: never unverified.
        self._ssl = ssl.create_default_context(
            cafile=ca_certs or os.environ.get("SSL_CERT_FILE") or None)
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._pool: httpcore.AsyncConnectionPool | None = None

    async def apost(self, body: bytes, *, timeout_s: float, deadline: Deadline) -> Reply:
        body, headers = prepared(body, gzip=self._gzip)
        reply = await self._attempt(body, headers, timeout_s, deadline)
        if reply.error == "connection_dropped" and deadline.remaining_s() > 0:
            # A kept-alive connection closed by the server (often while the sandbox was frozen)
            # fails before any reply: resend at once on a fresh connection, no backoff.
            logger.debug("amp_lite: connection dropped before a reply; resending at once")
            reply = await self._attempt(body, headers, timeout_s, deadline)
        return reply

    def close(self) -> None:
        """Forget the pool; its connections close with their event loop."""
        self._loop = self._pool = None

    async def _attempt(self, body: bytes, headers: dict[str, str], timeout_s: float,
                       deadline: Deadline) -> Reply:
        budget = deadline.clamp(timeout_s)
        if budget <= 0:
            return Reply(None, error="timeout")
        try:
            return await asyncio.wait_for(self._exchange(body, headers, budget), budget)
        except asyncio.TimeoutError:  # the attempt as a whole ran out (TimeoutError on 3.11+)
            return Reply(None, error="timeout")

    async def _exchange(self, body: bytes, headers: dict[str, str], budget: float) -> Reply:
        timeouts = {"connect": budget, "read": budget, "write": budget, "pool": budget}
        try:
            async with self._current_pool().stream(
                    "POST", self.url, headers=list(headers.items()), content=body,
                    extensions={"timeout": timeouts}) as response:
                return await _read_reply(response)
        except httpcore.TimeoutException:
            return Reply(None, error="timeout")
        except httpcore.ConnectError as exc:
            tls = isinstance(exc.__cause__ or exc.__context__, ssl.SSLError)
            return Reply(None, error="tls" if tls else "connection")
        except (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError):
            # before any reply (a reply cut short is _read_reply's): a kept-alive connection
            # the server closed
            return Reply(None, error="connection_dropped")
        except (httpcore.ProtocolError, httpcore.NetworkError, OSError) as exc:
            return Reply(None, error=f"protocol:{type(exc).__name__}")
        except Exception as exc:  # an HTTP-stack fault must not drop the batch: retry it
            logger.warning("amp_lite: unexpected %s from the HTTP client; retrying",
                           type(exc).__name__, exc_info=True)
            return Reply(None, error=f"unexpected:{type(exc).__name__}")

    def _current_pool(self) -> httpcore.AsyncConnectionPool:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._loop is None or self._loop() is not loop:
            self._pool = httpcore.AsyncConnectionPool(
                ssl_context=self._ssl, max_connections=POOL_MAXSIZE, retries=0,
                network_backend=_ResolvingBackend())
            self._loop = weakref.ref(loop)
        return self._pool


async def _read_reply(response: httpcore.Response) -> Reply:
    """Read the body within the size cap (leaving `stream()` early closes the connection, so a
    half-read body is never reused); decide the status."""
    data = bytearray()
    try:
        async for chunk in response.aiter_stream():
            data += chunk
            if len(data) > MAX_RESPONSE_BYTES:
                return Reply(None, error="response_too_large")
    except httpcore.TimeoutException:
        return Reply(None, error="timeout")
    except (httpcore.ProtocolError, httpcore.NetworkError, OSError) as exc:
        return Reply(None, error=f"protocol:{type(exc).__name__}")
    return reply_from(response.status, bytes(data), _header(response.headers, b"retry-after"))


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((value.decode("latin-1") for key, value in headers if key.lower() == name),
                None)
