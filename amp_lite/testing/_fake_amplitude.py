"""FakeAmplitude: a faithful, scriptable local stand-in for Amplitude's ingestion API."""

from __future__ import annotations

import contextlib
import gzip
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

from .._config import MAX_BATCH_REQUEST_BYTES, MAX_EVENTS_PER_REQUEST, MAX_REQUEST_BYTES
from .._validation import INVALID_IDS
from .tls import TlsFiles

DEFAULT_MIN_ID_LENGTH = 5
GROUP_IDENTIFY = "$groupidentify"
HANDSHAKE_TIMEOUT_S = 10.0  # a client that connects and never says hello frees its thread

STANDARD_BODIES: dict[int, dict[str, Any]] = {
    403: {"code": 403, "error": "Forbidden"},
    413: {"code": 413, "error": "Payload too large"},
    429: {"code": 429, "error": "Too many requests for some devices and users",
          "eps_threshold": 30},
}


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
class _Throttle:
    users: frozenset[str]
    devices: frozenset[str]
    daily_quota: bool


@dataclass
class _Connection:
    number: int
    sock: socket.socket
    busy: bool = False


class FakeAmplitude:
    """A local Amplitude: `with FakeAmplitude() as fake: Amplitude(key, server_url=fake.url)`.

    Validation and replies follow reference/amplitude-http-api.md: 400 with index lists for
    invalid events (nothing in that request is ingested), 413 over 2000 events or the byte limit,
    429 for throttled ids, dedup on (device_id or user_id, insert_id).

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
        self._throttles: list[_Throttle] = []
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
            self._throttles.append(_Throttle(frozenset(users), frozenset(devices), daily_quota))

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

    def _ingest(self, path: str, headers: Any, raw: bytes) -> tuple[int, dict[str, Any], int]:
        """Validate and (when valid) accept one request: (status, reply body, event count)."""
        if headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError):
                return 400, {"code": 400, "error": "Invalid JSON request body"}, 0
        if not headers.get("Content-Type", "").lower().startswith("application/json"):
            return 400, {"code": 400, "error": "Content-Type must be application/json"}, 0
        try:
            request = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return 400, {"code": 400, "error": "Invalid JSON request body"}, 0
        if not isinstance(request, dict):
            return 400, {"code": 400, "error": "Invalid JSON request body"}, 0
        events = request.get("events")
        count = len(events) if isinstance(events, list) else 0
        limit = MAX_BATCH_REQUEST_BYTES if path == "/batch" else MAX_REQUEST_BYTES
        if count > MAX_EVENTS_PER_REQUEST or len(raw) >= limit:
            return 413, dict(STANDARD_BODIES[413]), count
        for required in ("api_key", "events"):
            if not request.get(required):
                return 400, {"code": 400, "error": "Request missing required field",
                             "missing_field": required}, count
        key = request["api_key"]
        if self.api_keys is not None and key not in self.api_keys:
            return 400, {"code": 400, "error": f"Invalid API key: {key}"}, count
        if not isinstance(events, list):
            return 400, {"code": 400, "error": "Invalid event JSON"}, 0
        options = request.get("options") or {}
        min_len = options.get("min_id_length", DEFAULT_MIN_ID_LENGTH) if isinstance(
            options, dict) else DEFAULT_MIN_ID_LENGTH
        problems = _validate(events, min_len)
        if problems:
            return 400, {"code": 400, "error": "Invalid field values on some events",
                         **problems}, count
        throttled = self._throttled(events)
        if throttled:
            return 429, throttled, count
        self._accept(events)
        return 200, {"code": 200, "events_ingested": count, "payload_size_bytes": len(raw),
                     "server_upload_time": int(time.time() * 1000)}, count

    def _throttled(self, events: list[dict[str, Any]]) -> dict[str, Any] | None:
        with self._changed:
            rules = list(self._throttles)
        if not rules:
            return None
        body: dict[str, Any] = dict(STANDARD_BODIES[429])
        indices: list[int] = []
        users: dict[str, int] = {}
        devices: dict[str, int] = {}
        quota_users: dict[str, int] = {}
        quota_devices: dict[str, int] = {}
        for i, event in enumerate(events):
            user, device = str(event.get("user_id")), str(event.get("device_id"))
            for rule in rules:
                hit_user, hit_device = user in rule.users, device in rule.devices
                if not (hit_user or hit_device):
                    continue
                indices.append(i)
                if hit_user:
                    users[user] = 31
                    if rule.daily_quota:
                        quota_users[user] = 500_001
                if hit_device:
                    devices[device] = 31
                    if rule.daily_quota:
                        quota_devices[device] = 500_001
                break
        if not indices:
            return None
        body.update(throttled_events=indices, throttled_users=users, throttled_devices=devices)
        if quota_users or quota_devices:
            body.update(exceeded_daily_quota_users=quota_users,
                        exceeded_daily_quota_devices=quota_devices)
        return body

    def _accept(self, events: list[dict[str, Any]]) -> None:
        with self._changed:
            for event in events:
                insert_id = event.get("insert_id")
                if insert_id is not None:
                    key = (str(event.get("device_id") or f"user:{event.get('user_id')}"),
                           str(insert_id))
                    if key in self._seen:
                        self.duplicates += 1
                        continue
                    self._seen.add(key)
                self.events.append(event)
            self._changed.notify_all()


def _validate(events: list[Any], min_id_length: int) -> dict[str, Any]:
    missing: dict[str, list[int]] = {}
    invalid: dict[str, list[int]] = {}
    short: dict[str, list[int]] = {}
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            invalid.setdefault("event", []).append(i)
            continue
        if not isinstance(event.get("event_type"), str) or not event["event_type"]:
            missing.setdefault("event_type", []).append(i)
        ids = [f for f in ("user_id", "device_id") if event.get(f) is not None]
        if not ids and event.get("event_type") != GROUP_IDENTIFY:
            missing.setdefault("device_id", []).append(i)
        if "time" in event and (isinstance(event["time"], bool)
                                or not isinstance(event["time"], int)):
            invalid.setdefault("time", []).append(i)
        for f in ids:
            value = event[f]
            if not isinstance(value, str) or value.strip().lower() in INVALID_IDS:
                invalid.setdefault(f, []).append(i)
            elif len(value) < min_id_length:
                short.setdefault(f, []).append(i)
    problems: dict[str, Any] = {}
    if missing:
        problems["events_with_missing_fields"] = missing
    if invalid:
        problems["events_with_invalid_fields"] = invalid
    if short:
        problems["events_with_invalid_id_lengths"] = short
        problems["error"] = "Invalid id length for user_id or device_id"
    return problems


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
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?")[0]
            fault = fake._next_fault()
            if path not in ("/2/httpapi", "/batch"):
                status, body, count = 404, {"code": 404, "error": "Invalid request path"}, 0
            elif fault is None or fault.accept:
                status, body, count = fake._ingest(path, self.headers, raw)
            else:
                status, body, count = 0, {}, _count_events(raw, self.headers)
            gzipped = self.headers.get("Content-Encoding", "").lower() == "gzip"
            record = RequestRecord(path, status or None, count, gzipped, self.conn_state.number,
                                   fault.kind if fault else None)
            if fault is None:
                fake._record(record)
                self._send(status, json.dumps(body).encode(), "application/json")
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


def _count_events(raw: bytes, headers: Any) -> int:
    try:
        if headers.get("Content-Encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        events = json.loads(raw).get("events")
        return len(events) if isinstance(events, list) else 0
    except (ValueError, OSError, EOFError, AttributeError):
        return 0
