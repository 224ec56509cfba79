"""The amp-lite Lambda extension: each invocation's events, delivered after its response.

A separate process in the execution environment (started by `_extension_boot`, which has
registered it), so the function process stays thread-free and its response does not wait for
Amplitude. One thread and one selector serve the Extensions API (a pending `event/next`) and
the hand-off socket (`_handoff`), so a hand-off is taken whenever it comes.

For each INVOKE: wait until the function's hand-off for that request id arrived (a scope's
flush always hands off, even with no events), or until the invocation's deadline minus the
margin; then flush the events handed over, within that deadline, as the client would: what
is not delivered is overflowed (SQS, the local spill); log one summary line; call
`event/next`, which ends the invocation. On SHUTDOWN, the same within its deadline.

A hand-off is acknowledged only once it is appended to the journal (one `write` to a file in
the socket's private directory, no fsync: it must survive this process, not the machine),
which is emptied once the events it holds are settled. An extension killed in between loses
nothing: the next one starts with what the journal holds.

Docs: https://docs.aws.amazon.com/lambda/latest/dg/runtimes-extensions-api.html
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import stat
import sys
import time
from collections.abc import Mapping
from typing import Any

from . import _handoff as h
from ._client import FLUSH_LOG_FIELD, Amplitude
from ._deadline import Deadline
from ._errors import AmpLiteError
from ._report import DeliveryReport, Tally
from ._wire import BufferedEvent
from .overflow._defaults import spill_digest

logger = logging.getLogger("amp_lite")

NEXT_PATH = "/2020-01-01/extension/event/next"
ENV_MARGIN_MS = "AMP_LITE_EXTENSION_MARGIN_MS"
DEFAULT_MARGIN_MS = 500.0  # as the decorator's: time kept back from the invocation's deadline
SHUTDOWN_MARGIN_S = 0.2  # Lambda kills what still runs at the shutdown deadline
READ_TIMEOUT_S = 1.0  # one hand-off: the function writes it at once
MAX_ROUNDS = 100  # flushes of max_request_events per invocation (a backlog drains over several)
JOURNAL_NAME = "journal"  # next to the socket


class ExtensionsAPI:
    """The Extensions API over one kept-alive HTTP/1.1 connection, read without blocking:
    `ask_next()` sends `event/next`; `sock` turns readable as the answer comes; `event()`
    reads what is there and returns the event once it is complete (None before). Not
    http.client: its header parsing (the email package) would delay a hand-off that arrives
    while an INVOKE is being read, and its import the extension's start."""

    def __init__(self, address: str, identifier: str) -> None:
        host, _, port = address.rpartition(":")
        self._address = (host, int(port))
        self._request = (f"GET {NEXT_PATH} HTTP/1.1\r\nHost: {address}\r\n"
                         f"Lambda-Extension-Identifier: {identifier}\r\n\r\n").encode()
        self._sock: socket.socket | None = None
        self._received = b""

    def ask_next(self) -> None:
        if self._sock is None:
            self._sock = socket.create_connection(self._address)
        self._sock.sendall(self._request)

    @property
    def sock(self) -> socket.socket:
        assert self._sock is not None, "ask_next() first"
        return self._sock

    def event(self) -> dict[str, Any] | None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the Extensions API closed the connection")
        self._received += chunk
        head, separator, rest = self._received.partition(b"\r\n\r\n")
        if not separator:
            return None
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length") or 0)
        if len(rest) < length:
            return None
        body, self._received = rest[:length], rest[length:]
        if headers.get("connection", "").lower() == "close":
            self._sock.close()  # type: ignore[union-attr]
            self._sock = None
        if status_line.split()[1:2] != ["200"]:
            raise RuntimeError(f"event/next answered {status_line!r}: {body[:200]!r}")
        event: dict[str, Any] = json.loads(body)
        return event


class Invoke:
    """The invocation being served: its request id and deadline (epoch ms, on a monotonic
    clock here), less the margin."""

    def __init__(self, event: Mapping[str, Any], margin_s: float) -> None:
        self.request_id = str(event.get("requestId"))
        left_s = float(event["deadlineMs"]) / 1000 - time.time()
        self.deadline = Deadline.after(left_s - margin_s)


class Journal:
    """The hand-offs taken and not yet settled, as they came (length-prefixed messages),
    appended to one file that only this user can read; emptied when they are settled."""

    def __init__(self, path: str) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        self._fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def clear(self) -> None:
        os.ftruncate(self._fd, 0)

    def recover(self) -> list[h.Message]:
        """What an extension killed before it settled its hand-offs left here (a torn last
        record, cut by the kill, is left out: it was never acknowledged)."""
        with open(self.path, "rb") as journal:
            data = journal.read()
        messages, at = [], 0
        while at + h.LENGTH.size <= len(data):
            (length,) = h.LENGTH.unpack_from(data, at)
            body = data[at + h.LENGTH.size:at + h.LENGTH.size + length]
            if len(body) < length:
                break
            with contextlib.suppress(h.BadMessageError):  # it was checked when it came
                messages.append(h.decode(body))
            at += h.LENGTH.size + length
        return messages


class Extension:
    """Hand-offs in (`accept`), flushes out (`deliver`), for one client configured from the
    function's environment; with no usable client it refuses every hand-off (the function
    then delivers its own events)."""

    def __init__(self, client: Amplitude | None, listener: socket.socket, journal: Journal, *,
                 margin_s: float) -> None:
        self.client = client
        self.listener = listener
        self.journal = journal
        self.margin_s = margin_s
        identity = client._route.identity if client is not None else None
        self.identity = (spill_digest(identity, client.config.server_url)
                         if client is not None and identity else None)
        self.handed: dict[str, int] = {}  # request id -> events taken (hand-offs complete)
        self.pending: list[BufferedEvent] = []  # taken, not yet flushed
        for message in journal.recover():
            self.pending.extend(message.events)
        if self.pending:
            logger.warning("amp_lite extension: %d events handed to an earlier extension "
                           "process were not settled; they go with the next flush",
                           len(self.pending))

    # -- hand-offs --------------------------------------------------------------------------

    def accept(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.settimeout(READ_TIMEOUT_S)
            try:
                data = _read_message(connection)
                message = h.decode(data[h.LENGTH.size:])
            except (OSError, h.BadMessageError) as exc:
                logger.warning("amp_lite extension: unreadable hand-off (%s): refused", exc)
                with contextlib.suppress(OSError):
                    connection.sendall(h.REFUSED)
                return
            taken = self.take(message, data)
            self.handed[message.request_id] = (self.handed.get(message.request_id, 0)
                                               + (len(message.events) if taken else 0))
            try:
                connection.sendall(h.ACCEPTED if taken else h.REFUSED)
            except OSError:  # it stopped waiting: it delivers them itself
                if taken:
                    del self.pending[len(self.pending) - len(message.events):]
                    self.handed[message.request_id] -= len(message.events)
                logger.info("amp_lite extension: the function left before the answer to its "
                            "hand-off and delivers those events itself")

    def take(self, message: h.Message, data: bytes) -> bool:
        """Journal the hand-off and hold its events: True; or refuse it (logged why)."""
        if self.client is None:
            return False
        if message.identity != self.identity:
            logger.warning("amp_lite extension: a hand-off from a client with another key or "
                           "server than this extension's environment: refused")
            return False
        if message.min_id_length != self.client.config.min_id_length:
            logger.warning("amp_lite extension: a hand-off with min_id_length %s, not %s: "
                           "refused", message.min_id_length, self.client.config.min_id_length)
            return False
        if message.events:
            try:
                self.journal.append(data)
            except OSError as exc:
                logger.warning("amp_lite extension: could not journal a hand-off (%s): "
                               "refused", exc)
                return False
            self.pending.extend(message.events)
        return True

    # -- deliveries -------------------------------------------------------------------------

    def deliver(self, deadline: Deadline) -> DeliveryReport:
        """Flush the pending events within `deadline` (the spill read back with them), then
        what the spill still holds, a request's worth at a time, while each round delivers
        and finds more."""
        started = time.monotonic()
        total = Tally()
        if self.client is None:
            return total.report(0.0)
        events, self.pending = self.pending, []
        max_events = self.client.config.max_request_events
        for _ in range(MAX_ROUNDS):
            tally = self.client._deliver_handed(events, deadline)
            total.merge(tally)
            if events:
                events = []
                self.journal.clear()  # settled: delivered, overflowed, or counted dropped
            if tally.recovered < max_events or not tally.delivered or deadline.expired():
                break  # more rounds only while the spill gives full claims that go through
        return total.report((time.monotonic() - started) * 1000)

    def finish(self, invoke: Invoke) -> None:
        if invoke.request_id not in self.handed:
            logger.warning("amp_lite extension: no hand-off for invocation %s before its "
                           "deadline (is the handler decorated with @amplitude_flush, or "
                           "wrapped by amp_lite.aws_lambda.handler?)", invoke.request_id)
        handed = self.handed.pop(invoke.request_id, 0)
        self.handed.clear()  # hand-offs that came late, from earlier invocations: flushed too
        report = self.deliver(invoke.deadline)
        # `handed_off`: what this invocation handed over; `tracked`, `recovered` and the rest:
        # what this flush did with it, with late hand-offs and with the spill read back
        summary = {**report.summary(), "request_id": invoke.request_id, "handed_off": handed}
        logger.info("amp_lite extension flush %s", json.dumps(summary, sort_keys=True),
                    extra={FLUSH_LOG_FIELD: summary})

    # -- the loop ---------------------------------------------------------------------------

    def serve(self, api: ExtensionsAPI) -> int:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ, "handoff")
        api.ask_next()
        api_sock = api.sock
        selector.register(api_sock, selectors.EVENT_READ, "api")
        invoke: Invoke | None = None
        while True:
            timeout = None if invoke is None else invoke.deadline.remaining_s()
            for key, _ in selector.select(timeout):
                if key.data == "handoff":
                    self.accept()
                    continue
                event = api.event()
                if event is None:  # more of the answer to come
                    continue
                if event.get("eventType") == "SHUTDOWN":
                    self.shutdown(event)
                    return 0
                invoke = Invoke(event, self.margin_s)
            if invoke is not None and (invoke.request_id in self.handed
                                       or invoke.deadline.expired()):
                self.finish(invoke)
                invoke = None
                api.ask_next()
                if api.sock is not api_sock:  # the API closed the connection: a new one
                    selector.unregister(api_sock)
                    api_sock = api.sock
                    selector.register(api_sock, selectors.EVENT_READ, "api")

    def shutdown(self, event: Mapping[str, Any]) -> None:
        left_s = float(event.get("deadlineMs", 0)) / 1000 - time.time()
        report = self.deliver(Deadline.after(left_s - SHUTDOWN_MARGIN_S))
        summary = {"shutdown": event.get("shutdownReason"), **report.summary()}
        logger.info("amp_lite extension shutdown %s", json.dumps(summary, sort_keys=True),
                    extra={FLUSH_LOG_FIELD: summary})


def _read_message(connection: socket.socket) -> bytes:
    """One hand-off as it came: its length prefix, then the message."""
    header = _read_exactly(connection, h.LENGTH.size)
    (length,) = h.LENGTH.unpack(header)
    if length > h.MAX_MESSAGE_BYTES:
        raise h.BadMessageError(f"{length} bytes: more than a hand-off may hold")
    return header + _read_exactly(connection, length)


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = connection.recv(min(left, 1 << 20))
        if not chunk:
            raise h.BadMessageError(f"the function closed the connection {left} bytes short")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def listen(path: str) -> socket.socket:
    """The hand-off socket, in a directory only this user can enter (0700, ours)."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.lstat(directory)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
            or info.st_mode & 0o077):
        raise OSError(f"{directory}: must be a directory of uid {os.getuid()} with mode 0700 "
                      f"(it is uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a socket left by an extension that was killed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    return listener


def _configure_logging() -> None:
    """Lambda sends the extension's stderr to the function's log group. As in the function,
    AMP_LITE_LOG_LEVEL=INFO shows the summary lines (`configure_logger` has set that up);
    without it, warnings and errors still show."""
    if not any(not isinstance(each, logging.NullHandler) for each in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def _margin_s(env: Mapping[str, str]) -> float:
    value = env.get(ENV_MARGIN_MS)
    try:
        margin_ms = float(value) if value else DEFAULT_MARGIN_MS
    except ValueError:
        logger.error("amp_lite extension: %s=%r is not a number of milliseconds; using %s",
                     ENV_MARGIN_MS, value, DEFAULT_MARGIN_MS)
        margin_ms = DEFAULT_MARGIN_MS
    return max(0.0, margin_ms) / 1000


def run(identifier: str) -> int:
    """The extension after registration; returns its exit status (at SHUTDOWN)."""
    _configure_logging()
    api = ExtensionsAPI(os.environ["AWS_LAMBDA_RUNTIME_API"], identifier)
    path = h.socket_path(os.environ)
    listener = listen(path)
    journal = Journal(os.path.join(os.path.dirname(path), JOURNAL_NAME))
    return Extension(_client_from_environment(), listener, journal,
                     margin_s=_margin_s(os.environ)).serve(api)


def _client_from_environment() -> Amplitude | None:
    """The client the function's environment configures, or None (logged): then every
    hand-off is refused and the function delivers its own events."""
    try:
        client = Amplitude()
    except AmpLiteError as exc:
        logger.error("amp_lite extension: no client from the environment (%s); hand-offs are "
                     "refused", exc)
        return None
    if client._route.identity is None:
        logger.error("amp_lite extension: no API key in the environment (AMPLITUDE_API_KEY or "
                     "a key provider's variables); hand-offs are refused")
        return None
    return client
