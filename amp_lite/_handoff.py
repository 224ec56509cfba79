"""The hand-off to the amp-lite Lambda extension: the wire format, and the function's side.

With `AMP_LITE_EXTENSION=on`, the extension (`amp_lite._extension`, shipped in the extension
layer) listens on a Unix socket. A scope's flush sends the invocation's encoded events there in
one write and waits only for a one-byte answer, which the extension sends once the events are
in its local spill: from then on they are the extension's to deliver, after the response.
No socket, a refusal, no answer within the acknowledgement timeout: the flush runs in the
function, as without the extension. Only the latency comes back; nothing is lost.

The message: a 4-byte big-endian length of what follows, a JSON header line, then one line per
event (its encoded JSON object, which holds no raw newline). The header:
`{"v": 1, "request_id": ..., "identity": <the client's spill digest>, "min_id_length": ...,
"count": n}`. The answer: `A` (accepted) or `R` (refused: deliver them yourself). The
extension serves only clients configured like its own (same key and server: same digest).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
from collections.abc import Mapping, Sequence

from ._checks import positive_seconds
from ._config import ENV_EXTENSION
from ._wire import BufferedEvent

logger = logging.getLogger("amp_lite")

ENV_SOCKET = "AMP_LITE_EXTENSION_SOCKET"  # where the extension listens
ENV_ACK_MS = "AMP_LITE_EXTENSION_ACK_MS"  # how long a hand-off waits for its answer
DEFAULT_SOCKET = "/tmp/amp-lite-extension/handoff.sock"
DEFAULT_ACK_MS = 20.0
FORMAT_VERSION = 1
ACCEPTED, REFUSED = b"A", b"R"
LENGTH = struct.Struct(">I")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # larger scopes are delivered in the function
SEND_BYTES_PER_S = 50e6  # a Unix socket moves far more: the send's time allowance per byte


def enabled(env: Mapping[str, str]) -> bool:
    return env.get(ENV_EXTENSION, "").strip().lower() == "on"


def socket_path(env: Mapping[str, str]) -> str:
    return env.get(ENV_SOCKET) or DEFAULT_SOCKET


class Message:
    """One scope's events, for the invocation `request_id`."""

    __slots__ = ("events", "identity", "min_id_length", "request_id")

    def __init__(self, request_id: str, identity: str, min_id_length: int | None,
                 events: list[BufferedEvent]) -> None:
        self.request_id = request_id
        self.identity = identity
        self.min_id_length = min_id_length
        self.events = events


def encode(message: Message) -> bytes:
    header = json.dumps({"v": FORMAT_VERSION, "request_id": message.request_id,
                         "identity": message.identity, "min_id_length": message.min_id_length,
                         "count": len(message.events)}).encode()
    body = b"\n".join([header, *(event.raw for event in message.events)])
    return LENGTH.pack(len(body)) + body


class BadMessageError(ValueError):
    """A hand-off that is not one: refused, never partly taken."""


def decode(body: bytes) -> Message:
    """The message after its length prefix. Raises BadMessageError on any flaw."""
    header_line, *lines = body.split(b"\n")
    try:
        header = json.loads(header_line)
    except ValueError as exc:
        raise BadMessageError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("v") != FORMAT_VERSION:
        raise BadMessageError(f"not a version {FORMAT_VERSION} hand-off header")
    request_id, identity = header.get("request_id"), header.get("identity")
    min_id_length, count = header.get("min_id_length"), header.get("count")
    if not isinstance(request_id, str) or not isinstance(identity, str):
        raise BadMessageError("request_id and identity must be strings")
    if min_id_length is not None and not isinstance(min_id_length, int):
        raise BadMessageError("min_id_length must be an integer or null")
    if not isinstance(count, int) or count != len(lines):
        raise BadMessageError(f"the header counts {count} events, the message holds "
                              f"{len(lines)}")
    try:
        events = [BufferedEvent.from_json(line) for line in lines]
    except ValueError as exc:
        raise BadMessageError(f"an event is not one: {exc}") from exc
    return Message(request_id, identity, min_id_length, events)


class HandOff:
    """The function's side: `send()` is True once the extension took the events."""

    def __init__(self, path: str, identity: str, *, ack_timeout_s: float) -> None:
        self.path = path
        self.identity = identity
        self.ack_timeout_s = ack_timeout_s
        self._warned: set[str] = set()

    @classmethod
    def from_environment(cls, identity: str, env: Mapping[str, str] = os.environ) -> HandOff:
        ack_ms = env.get(ENV_ACK_MS)
        ack_s = (positive_seconds(float(ack_ms) / 1000, ENV_ACK_MS) if ack_ms
                 else DEFAULT_ACK_MS / 1000)
        return cls(socket_path(env), identity, ack_timeout_s=ack_s)

    def send(self, events: Sequence[BufferedEvent], *, request_id: str,
             min_id_length: int | None) -> bool:
        data = encode(Message(request_id, self.identity, min_id_length, list(events)))
        if len(data) > MAX_MESSAGE_BYTES:
            return self._fell_back("too_large", f"{len(data)} bytes, more than a hand-off takes")
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.settimeout(self.ack_timeout_s + len(data) / SEND_BYTES_PER_S)
            connection.connect(self.path)
            connection.sendall(data)
            connection.settimeout(self.ack_timeout_s)
            answer = connection.recv(1)
        except OSError as exc:  # absent, refused, reset, or no answer in time
            reason = "timeout" if isinstance(exc, TimeoutError) else "unreachable"
            return self._fell_back(reason, f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()
        if answer == ACCEPTED:
            return True
        return self._fell_back("refused", "the extension refused the events" if answer
                               else "the extension closed the connection")

    def _fell_back(self, reason: str, detail: str) -> bool:
        # WARNING the first time for each reason, then INFO: a missing extension layer with
        # AMP_LITE_EXTENSION=on must be seen, but not flood every invocation's log
        level = logging.INFO if reason in self._warned else logging.WARNING
        self._warned.add(reason)
        logger.log(level, "amp_lite: hand-off to the extension at %s failed (%s); the events "
                   "are delivered in the function", self.path, detail)
        return False
