"""A local Amplitude collector for the benchmarks: answers like /2/httpapi and counts.

Three listeners on 127.0.0.1, each on an ephemeral port:

- `http`: plain HTTP ingestion (`POST /2/httpapi`, any path is accepted);
- `https`: the same over TLS, with a certificate signed by a CA generated at start
  (`amp_lite.testing.tls`);
- `control`: `GET /stats`, `POST /reset`, `GET /wait?events=N&timeout_s=T` (blocks until at
  least N events were received since the last reset, or the timeout; 200 or 408), so that the
  benchmark waits on a condition instead of sleeping, and the counting connections are never
  mixed with the measured ones.

Ingestion replies come in a single write (status line, headers and body in one `sendall`) on a
socket with TCP_NODELAY; connections are kept alive (HTTP/1.1) unless the client asks to close.
Per-request work is kept to reading the body, gunzipping it if needed and `json.loads` to count
the events. TLS handshakes happen in the connection's own thread, never in the accept loop.

Run it as a separate process (`python benchmarks/collector.py`) so that it never competes with
the benchmark for the GIL: it prints one JSON line with its URLs and the CA file, then serves
until stdin closes. `Collector` runs the same servers in threads of the current process.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from amp_lite.testing.tls import TlsFiles, make_tls_files

INGEST_PATH = "/2/httpapi"
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
MAX_WAIT_S = 300.0


@dataclass
class Counts:
    """What the collector received since the last reset, guarded by one condition."""

    events: int = 0
    requests: int = 0
    bad_requests: int = 0
    body_bytes: int = 0
    connections: dict[str, int] = field(default_factory=lambda: {"http": 0, "https": 0})
    latency_s: float = 0.0  # how long each ingestion request waits before its answer
    condition: threading.Condition = field(default_factory=threading.Condition)

    def snapshot(self) -> dict[str, Any]:
        with self.condition:
            return {"events": self.events, "requests": self.requests,
                    "bad_requests": self.bad_requests, "body_bytes": self.body_bytes,
                    "connections": dict(self.connections)}

    def reset(self) -> None:
        with self.condition:
            self.events = self.requests = self.bad_requests = self.body_bytes = 0
            self.connections = {"http": 0, "https": 0}
            self.condition.notify_all()

    def add_request(self, events: int | None, body_bytes: int) -> None:
        with self.condition:
            self.requests += 1
            self.body_bytes += body_bytes
            if events is None:
                self.bad_requests += 1
            else:
                self.events += events
            self.condition.notify_all()

    def add_connection(self, listener: str) -> None:
        with self.condition:
            self.connections[listener] += 1

    def wait_for_events(self, events: int, timeout_s: float) -> bool:
        with self.condition:
            return self.condition.wait_for(lambda: self.events >= events, timeout=timeout_s)


def _reply(status: int, body: bytes, *, close: bool = False) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 408: "Request Timeout"}[status]
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "")
            + "\r\n")
    return head.encode("latin-1") + body


def count_events(body: bytes, content_encoding: str | None) -> int | None:
    """The number of events in an /2/httpapi body, or None when it is not a valid one."""
    try:
        if content_encoding and content_encoding.lower() == "gzip":
            body = gzip.decompress(body)
        payload = json.loads(body)
    except (ValueError, OSError, EOFError):
        return None
    events = payload.get("events") if isinstance(payload, dict) else None
    return len(events) if isinstance(events, list) else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes) -> None:
        self.wfile.write(_reply(status, body, close=self.close_connection))

    def do_POST(self) -> None:
        if self.server.role == "control":
            self._control()
            return
        body = self._body()
        if self.server.counts.latency_s:  # a far region, or a slow Amplitude
            time.sleep(self.server.counts.latency_s)
        events = count_events(body, self.headers.get("Content-Encoding"))
        self.server.counts.add_request(events, len(body))
        if events is None:
            self._send(400, b'{"code":400,"error":"Invalid request body"}')
            return
        reply = {"code": 200, "events_ingested": events, "payload_size_bytes": len(body),
                 "server_upload_time": int(time.time() * 1000)}
        self._send(200, json.dumps(reply, separators=(",", ":")).encode())

    def do_GET(self) -> None:
        if self.server.role == "control":
            self._control()
        else:
            self._send(404, b'{"code":404,"error":"not found"}')

    def _control(self) -> None:
        self._body()
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        counts = self.server.counts
        status = 200
        if url.path == "/reset":
            counts.reset()
        elif url.path == "/wait":
            timeout_s = min(float(query.get("timeout_s", "10")), MAX_WAIT_S)
            if not counts.wait_for_events(int(query["events"]), timeout_s):
                status = 408
        elif url.path == "/latency":
            counts.latency_s = float(query.get("ms", "0")) / 1000
        elif url.path != "/stats":
            self._send(404, b'{"error":"unknown control path"}')
            return
        self._send(status, json.dumps(counts.snapshot()).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, role: str, counts: Counts,
                 tls: ssl.SSLContext | None = None) -> None:
        self.role = role
        self.counts = counts
        self.tls = tls
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.role != "control":
            self.counts.add_connection(self.role)
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:  # the handshake runs here, in the connection's thread
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                request.close()
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client closing its keep-alive connection is not an error worth printing


BENCH_CA_NAME = "amp-lite benchmark CA"  # run.py checks that urllib trusts this name


def make_bench_tls_files(directory: str) -> TlsFiles:
    """The test CA and server certificate (amp_lite.testing.tls), with a trust file that holds
    the system CA bundle too, so that loading it costs what loading the real bundle costs, as
    it would for either SDK in a real function. No system bundle: RuntimeError (the cold-start
    scenarios would understate the TLS setup of both SDKs)."""
    files = make_tls_files(directory, ca_name=BENCH_CA_NAME)
    candidates = (*SYSTEM_CA_BUNDLES, ssl.get_default_verify_paths().openssl_cafile)
    found = next((Path(p) for p in candidates if p and Path(p).is_file()), None)
    if found is None:
        raise RuntimeError(f"no system CA bundle ({', '.join(map(str, candidates))}): the "
                           "benchmark's trust file must cost what a real one costs to load")
    system = found.read_bytes()
    bundle = Path(directory) / "ca-bundle.pem"
    bundle.write_bytes(system + b"\n" + Path(files.ca_cert).read_bytes())
    return replace(files, ca_cert=str(bundle))


class Collector:
    """The three listeners in threads of this process (use `spawn_collector` for benchmarks)."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="amp-lite-bench-")
        self.tls_files = make_bench_tls_files(self._tmp.name)
        tls = self.tls_files.server_context()
        self.counts = Counts()
        self._servers = [_Server("http", self.counts), _Server("https", self.counts, tls),
                         _Server("control", self.counts)]
        self._threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05},
                                          daemon=True) for s in self._servers]

    def _url(self, index: int, scheme: str, path: str) -> str:
        port = self._servers[index].server_address[1]
        return f"{scheme}://127.0.0.1:{port}{path}"

    @property
    def info(self) -> dict[str, str]:
        return {"http_url": self._url(0, "http", INGEST_PATH),
                "https_url": self._url(1, "https", INGEST_PATH),
                "control_url": self._url(2, "http", ""), "ca_cert": self.tls_files.ca_cert}

    def __enter__(self) -> Collector:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._tmp.cleanup()


def main() -> None:
    with Collector() as collector:
        print(json.dumps(collector.info), flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin (or exits)
    os._exit(0)


if __name__ == "__main__":
    main()
