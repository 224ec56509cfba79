"""A raw TCP server on 127.0.0.1 for replies no HTTP server library would produce.

Subclasses answer one connection in `handle(conn)`; the server accepts connections one at a
time in a thread until the `with` block ends.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import TypeVar

_Server = TypeVar("_Server", bound="RawServer")


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """`http://127.0.0.1:<port>` of a socket that accepts connections (the kernel's backlog)
    and never answers: a VPC function without a route to the service."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


class RawServer:
    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/2/httpapi"

    def __enter__(self: _Server) -> _Server:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self._thread.join(5)
        self._listener.close()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        self._listener.settimeout(0.05)  # so that __exit__ is noticed between connections
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:  # timeout, or the listener was closed
                continue
            with conn, contextlib.suppress(OSError):
                self.handle(conn)
