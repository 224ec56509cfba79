"""A fake SQS endpoint on 127.0.0.1 that answers with canned bytes, at a chosen pace.

For replies moto cannot produce: a 2xx without per-entry results (an empty body, `{}`, a
proxy's HTML page) and a reply trickled a byte at a time. Each request is read whole and
recorded (headers and body), so tests can check what amp-lite sent.
"""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.raw_server import RawServer

ACCOUNT = "123456789012"
QUEUE = "amp-lite-overflow"


@dataclass(frozen=True)
class Request:
    head: bytes
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode()
        return None

    def entry_ids(self) -> list[str]:
        return [entry["Id"] for entry in json.loads(self.body)["Entries"]]


def http_reply(body: bytes, *, status: str = "200 OK",
               content_type: str = "application/x-amz-json-1.0") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def success_body(entry_ids: list[str]) -> bytes:
    """A proper SendMessageBatch result confirming `entry_ids`."""
    return json.dumps({"Successful": [{"Id": i, "MessageId": f"mid-{i}",
                                       "MD5OfMessageBody": "0" * 32} for i in entry_ids],
                       "Failed": []}).encode()


class SQSReplyServer(RawServer):
    """Answers each connection's one request with `reply`, `pause_s` between bytes (0: all at
    once), then closes it; the first `drop_first` connections are closed with no reply."""

    def __init__(self, reply: bytes, *, pause_s: float = 0.0, drop_first: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.tls = tls  # serve HTTPS with this server-side context
        self.reply = reply
        self.pause_s = pause_s
        self.drop_first = drop_first  # connections closed after the request, with no reply
        self.requests: list[Request] = []

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def queue_url(self) -> str:
        return f"{self.endpoint}/{ACCOUNT}/{QUEUE}"

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(5.0)
        if self.tls is not None:
            with self.tls.wrap_socket(conn, server_side=True) as tls_conn:  # OSError: refused
                self._answer(tls_conn)
        else:
            self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        request = _read_request(conn)
        if request is None:
            return
        self.requests.append(request)
        if len(self.requests) <= self.drop_first:
            return
        if not self.pause_s:
            conn.sendall(self.reply)
            return
        for i in range(len(self.reply)):
            if self.stopping.wait(self.pause_s):
                return
            conn.sendall(self.reply[i:i + 1])


def _read_request(conn: socket.socket) -> Request | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(Request(head, b"").header("Content-Length") or 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return Request(head, body)


def isolate_from_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials and region, and no AWS configuration from the machine running tests:
    the test then points AWS_ENDPOINT_URL at its own 127.0.0.1 server."""
    for name, value in {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true",
                        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
                        }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL_SQS", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
