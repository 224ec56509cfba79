"""The hand-off to the amp-lite Lambda extension: the wire format, and the function's side.

With `AMP_LITE_EXTENSION=on`, the extension (`amp_lite._extension`, shipped in the extension
layer) listens on a Unix socket. A scope's flush in a Lambda invocation sends the
invocation's encoded events there in one write and waits only for a one-byte answer, which the
extension sends once the message is in its journal: from then on the events are the
extension's to deliver, after the response. No socket, a refusal, no answer in time: the flush
runs in the function, as without the extension. Only the latency comes back; nothing is lost.

Every such scope hands off, even with no events, and even a client the extension cannot stand
in for (its own transport, overflow or retry strategy, no key, disabled) sends an empty one:
that is how the extension knows the invocation's events are complete, and stops waiting.

The message: a 4-byte big-endian length of what follows, a JSON header line, then one line per
event (its encoded JSON object, which holds no raw newline). The header:
`{"v": 1, "request_id": ..., "identity": <client signature, "" for none>, "min_id_length":
..., "count": n}`. The signature digests the key and everything that decides delivery; the
extension takes events only from a client whose signature is its own. The answer: `A`
(accepted) or `R` (refused: deliver them yourself).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import struct
from collections.abc import Mapping, Sequence

from ._checks import is_int, positive_seconds
from ._config import ENV_EXTENSION, ClientConfig
from ._deadline import Deadline
from ._errors import ConfigError
from ._wire import BufferedEvent

logger = logging.getLogger("amp_lite")

ENV_SOCKET = "AMP_LITE_EXTENSION_SOCKET"  # where the extension listens
ENV_ACK_MS = "AMP_LITE_EXTENSION_ACK_MS"  # how long a hand-off waits for its answer
DEFAULT_SOCKET = "/tmp/amp-lite-extension/handoff.sock"
DEFAULT_ACK_MS = 20.0
FORMAT_VERSION = 1
ACCEPTED, REFUSED = b"A", b"R"
LENGTH = struct.Struct(">I")
# Larger scopes are delivered in the function: the extension journals a message before it
# answers, on the same small CPU share as the function.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
BYTES_PER_S = 20e6  # the time a message of this size may add to the answer's, per byte


def client_signature(identity: str, config: ClientConfig) -> str:
    """What a client is to the extension: its key (or key provider) and every option that
    decides how its events are delivered. The key itself never appears."""
    decisive = (identity, config.server_url, config.gzip, config.min_id_length,
                config.request_timeout_s, config.flush_timeout_s, config.max_request_events,
                config.max_request_bytes)
    return hashlib.sha256(repr(decisive).encode()).hexdigest()[:32]


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
    if min_id_length is not None and not is_int(min_id_length):
        raise BadMessageError("min_id_length must be an integer or null")
    if not is_int(count) or count != len(lines):
        raise BadMessageError(f"the header counts {count} events, the message holds "
                              f"{len(lines)}")
    # Not parsed here: the function's encoder made them, and the extension answers before it
    # reads them (their ids are read back on first use, as for tracked events).
    events = [BufferedEvent.encoded(line) for line in lines if line]
    if len(events) != count:
        raise BadMessageError("an empty line where an event should be")
    return Message(request_id, identity, min_id_length, events)


class HandOff:
    """The function's side. `identity` is the client's signature, or None for a client the
    extension cannot stand in for: it only says that its scope ended."""

    def __init__(self, path: str, identity: str | None, *, ack_timeout_s: float) -> None:
        self.path = path
        self.identity = identity
        self.ack_timeout_s = ack_timeout_s
        self._warned: set[str] = set()

    @classmethod
    def from_environment(cls, identity: str | None,
                         env: Mapping[str, str] = os.environ) -> HandOff:
        """Raises ConfigError naming AMP_LITE_EXTENSION_ACK_MS when it is not a number of ms."""
        ack_ms = env.get(ENV_ACK_MS)
        ack_s = DEFAULT_ACK_MS / 1000
        if ack_ms:
            try:
                ack_s = float(ack_ms) / 1000
            except ValueError:
                raise ConfigError(f"{ENV_ACK_MS}={ack_ms!r}: must be a number of milliseconds, "
                                  f"e.g. {ENV_ACK_MS}={DEFAULT_ACK_MS:g}") from None
            positive_seconds(ack_s, ENV_ACK_MS)
        return cls(socket_path(env), identity, ack_timeout_s=ack_s)

    def send(self, events: Sequence[BufferedEvent], *, request_id: str,
             min_id_length: int | None, deadline: Deadline) -> bool:
        """True once the extension took `events`; always False for a client it cannot stand
        in for (whose empty message only ends the extension's wait)."""
        if self.identity is None:
            self.notify(request_id, deadline)
            return False
        data = encode(Message(request_id, self.identity, min_id_length, list(events)))
        if len(data) > MAX_MESSAGE_BYTES:
            self.notify(request_id, deadline)
            return self._fell_back("too_large", f"{len(data)} bytes, more than a hand-off "
                                   f"takes ({MAX_MESSAGE_BYTES})")
        answer, failure = self._post(data, deadline)
        if answer == ACCEPTED:
            return True
        return self._fell_back(*(failure or ("refused", "the extension refused the events"
                                             if answer else "the extension closed the "
                                             "connection")))

    def notify(self, request_id: str, deadline: Deadline) -> None:
        """Only tell the extension that this invocation's scope ended (an empty message that
        names no client): it stops waiting, and takes nothing."""
        self._post(encode(Message(request_id, "", None, [])), deadline)

    def _post(self, data: bytes, deadline: Deadline) -> tuple[bytes, tuple[str, str] | None]:
        """One connection, one write, one byte back, all within the flush's `deadline`."""
        allowance = self.ack_timeout_s + len(data) / BYTES_PER_S
        try:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:  # out of descriptors, say
            return b"", ("unreachable", f"{type(exc).__name__}: {exc}")
        try:
            connection.settimeout(max(0.001, deadline.clamp(allowance)))
            connection.connect(self.path)
            connection.sendall(data)
            connection.settimeout(max(0.001, deadline.clamp(allowance)))
            return connection.recv(1), None
        except OSError as exc:  # absent, refused, reset, or no answer in time
            reason = "timeout" if isinstance(exc, TimeoutError) else "unreachable"
            return b"", (reason, f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    def _fell_back(self, reason: str, detail: str) -> bool:
        # WARNING the first time for each reason, then INFO: a missing extension layer with
        # AMP_LITE_EXTENSION=on must be seen, but not flood every invocation's log
        level = logging.INFO if reason in self._warned else logging.WARNING
        self._warned.add(reason)
        logger.log(level, "amp_lite: hand-off to the extension at %s failed (%s); the events "
                   "are delivered in the function", self.path, detail)
        return False
