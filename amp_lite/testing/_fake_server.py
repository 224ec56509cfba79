"""FakeAmplitude: a faithful, scriptable local stand-in for Amplitude's ingestion API.

The HTTP server, fault scripting and connection bookkeeping live here; what Amplitude answers to
a request is decided by the pure rules of `_fake_rules.py`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._fake_rules import (
    PATHS,
    STANDARD_BODIES,
    Reply,
    Request,
    ServerState,
    Throttle,
    answer,
    count_events,
    deduplicate,
)
from .tls import TlsFiles

HANDSHAKE_TIMEOUT_S = 10.0  # a client that connects and never says hello frees its thread


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, applied to one request. Build with the class methods."""

    kind: str
    status: int = 0
    body: bytes = b""
    content_type: str = "application/json"
    seconds: float = 0.0
    accept: bool = False  # process the events before failing ("may have been accepted")

    @classmethod
    def status_code(cls, status: int, body: dict[str, Any] | None = None, *,
                    accept: bool = False) -> Fault:
        """Answer `status` with Amplitude's body for it (or `body`)."""
        payload = body if body is not None else STANDARD_BODIES.get(status, {"code": status})
        return cls("reply", status, json.dumps(payload).encode(), accept=accept)

    @classmethod
    def reply(cls, status: int, body: bytes, content_type: str = "application/json", *,
              accept: bool = False) -> Fault:
        """Answer with arbitrary bytes: non-JSON 200s, huge or random bodies."""
        return cls("reply", status, body, content_type, accept=accept)

    @classmethod
    def hang(cls, seconds: float = 3600.0) -> Fault:
        """Read the request, answer nothing for `seconds` (or until the server stops)."""
        return cls("hang", seconds=seconds)

    @classmethod
    def reset(cls) -> Fault:
        """Reset the connection (TCP RST) after reading the request, before any reply."""
        return cls("reset")

    @classmethod
    def reset_mid_body(cls, *, accept: bool = False) -> Fault:
        """Send the status line, headers and part of the body, then reset."""
        return cls("reset_mid_body", accept=accept)

    @classmethod
    def slow_body(cls, seconds: float, *, accept: bool = True) -> Fault:
        """A normal reply whose body trickles out over `seconds`."""
        return cls("slow_body", seconds=seconds, accept=accept)


@dataclass(frozen=True)
class RequestRecord:
    path: str
    status: int | None  # None: no status was sent (hang, reset)
    events: int
    gzip: bool
    connection: int
    fault: str | None


@dataclass
class _Connection:
    number: int
    sock: socket.socket
    busy: bool = False


class FakeAmplitude:
    """A local Amplitude: `with FakeAmplitude() as fake: Amplitude(key, server_url=fake.url)`.

    Validation and replies follow Amplitude's docs (https://amplitude.com/docs/apis/analytics/http-v2,
    https://amplitude.com/docs/apis/analytics/batch-event-upload): 400 with index lists for
    invalid events (nothing in that request is ingested), 413 over 2000 events or the byte limit,
    429 for throttled ids, dedup on (device_id or user_id, insert_id). See `_fake_rules.py`.

    With `tls` (files from `amp_lite.testing.tls.make_tls_files`, or a server-side
    `ssl.SSLContext`) it serves HTTPS and `url` starts with https://.
    """

    def __init__(self, *, api_keys: Iterable[str] | None = None,
                 idle_timeout_s: float | None = None,
                 tls: TlsFiles | ssl.SSLContext | None = None) -> None:
        self.api_keys = frozenset(api_keys) if api_keys is not None else None
        self.idle_timeout_s = idle_timeout_s
        self.tls = tls
        self.handshake_failures = 0  # TLS handshakes that failed (e.g. the client refused us)
        self.events: list[dict[str, Any]] = []
        self.requests: list[RequestRecord] = []
        self.duplicates = 0
        self.connections_opened = 0
        self._seen: set[tuple[str, str]] = set()
        self._faults: deque[Fault] = deque()
        self._throttles: list[Throttle] = []
        self._connections: dict[int, _Connection] = {}
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeAmplitude:
        tls = self.tls.server_context() if isinstance(self.tls, TlsFiles) else self.tls
        self._server = _Server(("127.0.0.1", 0), _Handler, self, tls)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="FakeAmplitude")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self.close_idle_connections(all_connections=True, settle_s=0)
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeAmplitude:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeAmplitude is not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The HTTP V2 endpoint: pass it as `server_url`."""
        return f"{self.base_url}/2/httpapi"

    @property
    def batch_url(self) -> str:
        return f"{self.base_url}/batch"

    # -- scripting ----------------------------------------------------------------------------

    def script(self, *faults: Fault) -> None:
        """Apply `faults` to the next requests, one each, in order."""
        with self._changed:
            self._faults.extend(faults)

    def clear_faults(self) -> None:
        """Drop scripted faults that were not used yet."""
        with self._changed:
            self._faults.clear()

    def throttle(self, *, users: Iterable[str] = (), devices: Iterable[str] = (),
                 daily_quota: bool = False) -> None:
        """Answer 429 to any request holding events of these ids, until `clear_throttles()`."""
        with self._changed:
            self._throttles.append(Throttle(frozenset(users), frozenset(devices), daily_quota))

    def clear_throttles(self) -> None:
        with self._changed:
            self._throttles.clear()

    def close_idle_connections(self, *, all_connections: bool = False,
                               settle_s: float = 1.0) -> int:
        """Close kept-alive connections that are waiting for a request, as a server or a NAT
        does to idle connections while a Lambda sandbox is frozen. Returns how many.

        A reply the client has just read may still be finishing on the server side: requests in
        progress get up to `settle_s` to finish first (a hanging one is left alone)."""
        closed = 0
        with self._changed:
            self._changed.wait_for(
                lambda: not any(c.busy for c in self._connections.values()), settle_s)
            for conn in list(self._connections.values()):
                if all_connections or not conn.busy:
                    with contextlib.suppress(OSError):
                        conn.sock.shutdown(socket.SHUT_RDWR)
                    closed += 1
        return closed

    # -- what it saw ----------------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """Connections currently open (kept alive or serving a request)."""
        with self._changed:
            return len(self._connections)

    @property
    def insert_ids(self) -> list[str]:
        with self._changed:
            return [e["insert_id"] for e in self.events if "insert_id" in e]

    def wait_for_events(self, count: int, timeout_s: float = 5.0) -> bool:
        """Wait until at least `count` events were accepted. Returns False on timeout."""
        return self.wait_until(lambda: len(self.events) >= count, timeout_s)

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout_s)

    def reset(self) -> None:
        """Forget accepted events, requests, faults and throttles (not connections)."""
        with self._changed:
            self.events.clear()
            self.requests.clear()
            self._seen.clear()
            self._faults.clear()
            self._throttles.clear()
            self.duplicates = 0

    # -- request handling (called from handler threads) -----------------------------------------

    def _open(self, sock: socket.socket) -> _Connection:
        with self._changed:
            self.connections_opened += 1
            conn = _Connection(self.connections_opened, sock)
            self._connections[conn.number] = conn
            return conn

    def _handshake_failed(self) -> None:
        with self._changed:
            self.handshake_failures += 1
            self._changed.notify_all()

    def _close(self, conn: _Connection) -> None:
        with self._changed:
            self._connections.pop(conn.number, None)
            self._changed.notify_all()

    def _next_fault(self) -> Fault | None:
        with self._changed:
            return self._faults.popleft() if self._faults else None

    def _record(self, record: RequestRecord) -> None:
        with self._changed:
            self.requests.append(record)
            self._changed.notify_all()

    def _answer(self, request: Request) -> Reply:
        """Answer one request by Amplitude's rules, and keep what they say to ingest."""
        with self._changed:
            state = ServerState(self.api_keys, tuple(self._throttles))
        reply = answer(request, state, int(time.time() * 1000))
        if reply.ingest:
            self._accept(reply.ingest)
        return reply

    def _accept(self, events: list[dict[str, Any]]) -> None:
        with self._changed:  # under the lock: concurrent repeats must not both get in
            fresh = deduplicate(events, self._seen)
            self._seen |= fresh.keys
            self.events.extend(fresh.events)
            self.duplicates += fresh.duplicates
            self._changed.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default backlog of 5 drops bursts of concurrent connections

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 fake: FakeAmplitude, tls: ssl.SSLContext | None = None) -> None:
        self.fake = fake
        self.tls = tls
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:  # the handshake runs here, in the connection's thread, never in the accept loop
            blocking = request.gettimeout()
            request.settimeout(HANDSHAKE_TIMEOUT_S)
            request = self.tls.wrap_socket(request, server_side=True)
            request.settimeout(blocking)
        except OSError:  # ssl.SSLError included: the client refused our certificate, or left
            self.fake._handshake_failed()
            request.close()
            return
        try:
            super().finish_request(request, client_address)
        finally:
            request.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without NODELAY, Nagle's algorithm and
        # the client's delayed ACK add ~40 ms to every reply.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fake = self.server.fake
        if fake.idle_timeout_s is not None:
            self.connection.settimeout(fake.idle_timeout_s)
        self.conn_state = fake._open(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.fake._close(self.conn_state)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, OSError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._send(404, b'{"code":404,"error":"Invalid request path"}', "application/json")

    def do_POST(self) -> None:
        fake = self.server.fake
        self.conn_state.busy = True
        try:
            request = Request(self.path.split("?")[0],
                              self.rfile.read(int(self.headers.get("Content-Length") or 0)),
                              self.headers.get("Content-Type", ""),
                              self.headers.get("Content-Encoding", ""))
            fault = fake._next_fault()
            if fault is None or fault.accept or request.path not in PATHS:
                reply = fake._answer(request)
            else:  # the fault answers instead of the rules: nothing is validated or ingested
                reply = Reply(0, {}, count_events(request))
            record = RequestRecord(request.path, reply.status or None, reply.events,
                                   request.gzipped, self.conn_state.number,
                                   fault.kind if fault else None)
            if fault is None:
                fake._record(record)
                self._send(reply.status, json.dumps(reply.body).encode(), "application/json")
            else:
                self._misbehave(fault, record)
        finally:
            with fake._changed:
                self.conn_state.busy = False
                fake._changed.notify_all()

    def _misbehave(self, fault: Fault, record: RequestRecord) -> None:
        fake = self.server.fake
        if fault.kind == "reply":
            fake._record(RequestRecord(record.path, fault.status, record.events, record.gzip,
                                       record.connection, fault.kind))
            self._send(fault.status, fault.body, fault.content_type)
            return
        fake._record(RequestRecord(record.path, None, record.events, record.gzip,
                                   record.connection, fault.kind))
        if fault.kind == "hang":
            fake._stopping.wait(fault.seconds)
            self._reset()
        elif fault.kind == "reset":
            self._reset()
        elif fault.kind == "reset_mid_body":
            self._write_head(200, 100, "application/json")
            self.wfile.write(b'{"code": 200, "ev')
            self.wfile.flush()
            self._reset()
        elif fault.kind == "slow_body":
            body = json.dumps({"code": 200, "events_ingested": record.events}).encode()
            self._write_head(200, len(body), "application/json")
            pause = fault.seconds / max(1, len(body))
            for i in range(len(body)):
                if fake._stopping.wait(pause):
                    break
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()

    def _write_head(self, status: int, length: int, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self._write_head(status, len(body), content_type)
        self.wfile.write(body)

    def _reset(self) -> None:
        """Abort with a TCP RST, so the client sees a reset rather than a clean close."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

