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
import functools
import json
import logging
import os
import selectors
import socket
import stat
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import _handoff as h
from ._client import FLUSH_LOG_FIELD, Amplitude
from ._deadline import Deadline
from ._errors import AmpLiteError
from ._report import DeliveryReport, Tally
from ._wire import BufferedEvent

logger = logging.getLogger("amp_lite")

NEXT_PATH = "/2020-01-01/extension/event/next"
ENV_MARGIN_MS = "AMP_LITE_EXTENSION_MARGIN_MS"
DEFAULT_MARGIN_MS = 500.0  # as the decorator's: time kept back from the invocation's deadline
SHUTDOWN_MARGIN_S = 0.2  # Lambda kills what still runs at the shutdown deadline
READ_TIMEOUT_S = 1.0  # one hand-off: the function writes it at once
MAX_ROUNDS = 100  # flushes of max_request_events per invocation (a backlog drains over several)
MIN_FLUSH_S = 0.25  # less than this left: events wait in the journal for the next flush
SHUTDOWN_FALLBACK_S = 1.0  # a SHUTDOWN without a deadline: Lambda's shortest budget is 500 ms
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
    """The invocation being served: its request id and deadline (epoch ms on the wire, a
    monotonic one here), less the margin. ValueError when the event is not one."""

    def __init__(self, event: Mapping[str, Any], margin_s: float) -> None:
        request_id, deadline_ms = event.get("requestId"), event.get("deadlineMs")
        if not isinstance(request_id, str) or not isinstance(deadline_ms, (int, float)):
            raise ValueError(f"an INVOKE without requestId or deadlineMs: {dict(event)!r}")
        self.request_id = request_id
        self.deadline = Deadline.after(deadline_ms / 1000 - time.time() - margin_s)


class Journal:
    """The hand-offs taken and not yet settled, as they came (length-prefixed messages),
    appended to one file that only this user can read; emptied when they are settled."""

    def __init__(self, path: str) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        self._fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)

    def append(self, data: bytes) -> int:
        """Append one record; returns where it starts (for `truncate`). Raises OSError having
        left nothing of it."""
        start = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            self.truncate(start)
            raise
        return start

    def truncate(self, size: int) -> None:
        """Drop what was appended past `size` (a record whose acknowledgement failed)."""
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, size)

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
    function's environment. With no usable client it refuses every hand-off and holds no
    invocation (the function then delivers its own events)."""

    def __init__(self, client: Amplitude | None, listener: socket.socket, journal: Journal, *,
                 margin_s: float) -> None:
        self.client = client if client is not None and client.config.enabled else None
        self.listener = listener
        self.journal = journal
        self.margin_s = margin_s
        identity = self.client._route.identity if self.client is not None else None
        self.signature = (h.client_signature(identity, self.client.config)
                          if self.client is not None and identity else None)
        self.handed: dict[str, int] = {}  # request id -> events taken (hand-offs complete)
        self.pending: list[BufferedEvent] = []  # taken, not yet flushed
        self._said: set[str] = set()  # refusals logged at WARNING once each
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
            try:
                data = _read_message(connection, Deadline.after(READ_TIMEOUT_S))
                message = h.decode(data[h.LENGTH.size:])
            except (OSError, h.BadMessageError) as exc:
                self._refuse("unreadable", f"unreadable hand-off ({exc})")
                with contextlib.suppress(OSError):
                    connection.sendall(h.REFUSED)
                return
            taken, start = self.take(message, data)
            self.handed[message.request_id] = (self.handed.get(message.request_id, 0)
                                               + (len(message.events) if taken else 0))
            try:
                connection.sendall(h.ACCEPTED if taken else h.REFUSED)
            except OSError:  # it stopped waiting: it delivers them itself
                if start is not None:
                    del self.pending[len(self.pending) - len(message.events):]
                    self.journal.truncate(start)
                if taken:
                    self.handed[message.request_id] -= len(message.events)
                logger.info("amp_lite extension: the function left before the answer to its "
                            "hand-off and delivers those events itself")

    def take(self, message: h.Message, data: bytes) -> tuple[bool, int | None]:
        """Journal the hand-off and hold its events. Returns whether it is taken (else it is
        refused, logged why), and where its journal record starts (None: no record)."""
        if not message.identity or self.client is None:
            return False, None  # its scope ended, that is all (no client: said at the start)
        if message.identity != self.signature:
            self._refuse("client", "a hand-off from a client configured otherwise than this "
                         "extension's environment (key, server or delivery options): refused; "
                         "the function delivers its events")
            return False, None
        if not message.events:
            return True, None  # taken: the function has nothing more to do
        try:
            start = self.journal.append(data)
        except OSError as exc:
            self._refuse("journal", f"could not journal a hand-off ({exc}): refused")
            return False, None
        self.pending.extend(message.events)
        return True, start

    def _refuse(self, reason: str, message: str) -> None:
        level = logging.INFO if reason in self._said else logging.WARNING
        self._said.add(reason)
        logger.log(level, "amp_lite extension: %s", message)

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
        if self.client is not None and invoke.request_id not in self.handed:
            logger.warning("amp_lite extension: no hand-off for invocation %s before its "
                           "deadline (is the handler decorated with @amplitude_flush, or "
                           "wrapped by amp_lite.aws_lambda.handler?)", invoke.request_id)
        handed = self.handed.pop(invoke.request_id, 0)
        self.handed.clear()  # hand-offs that came late, from earlier invocations: flushed too
        if self.client is None:
            return
        deadline = _earlier(invoke.deadline, self.client.config.flush_timeout_s)
        if self.pending and deadline.remaining_s() < MIN_FLUSH_S:
            # too late to send; overflowing needs time too: the journal keeps them for the
            # next invocation's flush, or the SHUTDOWN's
            logger.info("amp_lite extension: %.0f ms left in invocation %s: its %d events "
                        "wait for the next flush", deadline.remaining_s() * 1000,
                        invoke.request_id, len(self.pending))
            return
        report = self.deliver(deadline)
        # `handed_off`: what this invocation handed over; `tracked`, `recovered` and the rest:
        # what this flush did with it, with late hand-offs and with the spill read back
        summary = {**report.summary(), "request_id": invoke.request_id, "handed_off": handed}
        logger.info("amp_lite extension flush %s", json.dumps(summary, sort_keys=True),
                    extra={FLUSH_LOG_FIELD: summary})

    # -- the loop ---------------------------------------------------------------------------

    def serve(self, api: ExtensionsAPI) -> int:
        """Until SHUTDOWN (0), or until the Extensions API fails (1: Lambda then resets the
        environment; what the journal holds goes with the next extension's first flush)."""
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ, "handoff")
        invoke: Invoke | None = None
        try:
            api.ask_next()
            api_sock = api.sock
            selector.register(api_sock, selectors.EVENT_READ, "api")
            while True:
                timeout = None if invoke is None else invoke.deadline.remaining_s()
                for key, _ in selector.select(timeout):
                    if key.data == "handoff":
                        self._guarded(self.accept)
                        continue
                    event = api.event()
                    if event is None:  # more of the answer to come
                        continue
                    if event.get("eventType") == "SHUTDOWN":
                        self._guarded(functools.partial(self.shutdown, event))
                        return 0
                    invoke = Invoke(event, self.margin_s)
                if invoke is not None and (self.client is None
                                           or invoke.request_id in self.handed
                                           or invoke.deadline.expired()):
                    self._guarded(functools.partial(self.finish, invoke))
                    invoke = None
                    api.ask_next()
                    if api.sock is not api_sock:  # the API closed the connection: a new one
                        selector.unregister(api_sock)
                        api_sock = api.sock
                        selector.register(api_sock, selectors.EVENT_READ, "api")
        except (OSError, ValueError, RuntimeError) as exc:
            logger.error("amp_lite extension: the Extensions API failed (%s); exiting",
                         _describe(exc))
            return 1

    @staticmethod
    def _guarded(step: Callable[[], object]) -> None:
        """A failure of one hand-off or flush must not end the extension (Lambda would fail
        the invocation): logged, and the loop goes on."""
        try:
            step()
        except Exception:
            logger.exception("amp_lite extension: internal error")

    def shutdown(self, event: Mapping[str, Any]) -> None:
        deadline_ms = event.get("deadlineMs")
        left_s = (float(deadline_ms) / 1000 - time.time()
                  if isinstance(deadline_ms, (int, float)) else SHUTDOWN_FALLBACK_S)
        report = self.deliver(Deadline.after(left_s - SHUTDOWN_MARGIN_S))
        summary = {"shutdown": event.get("shutdownReason"), **report.summary()}
        logger.info("amp_lite extension shutdown %s", json.dumps(summary, sort_keys=True),
                    extra={FLUSH_LOG_FIELD: summary})


def _earlier(deadline: Deadline, seconds: float | None) -> Deadline:
    """`deadline`, or `seconds` from now if that comes first (the client's flush_timeout_s)."""
    if seconds is None:
        return deadline
    cap = Deadline.after(seconds)
    return cap if cap.expires_at < deadline.expires_at else deadline


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _read_message(connection: socket.socket, deadline: Deadline) -> bytes:
    """One hand-off as it came, its length prefix first, read by `deadline`: a function that
    writes slowly cannot hold the extension's one loop."""
    header = _read_exactly(connection, h.LENGTH.size, deadline)
    (length,) = h.LENGTH.unpack(header)
    if length > h.MAX_MESSAGE_BYTES:
        raise h.BadMessageError(f"{length} bytes: more than a hand-off may hold")
    return header + _read_exactly(connection, length, deadline)


def _read_exactly(connection: socket.socket, size: int, deadline: Deadline) -> bytes:
    chunks, left = [], size
    while left:
        if deadline.expired():
            raise TimeoutError("the hand-off did not arrive in time")
        connection.settimeout(deadline.remaining_s())
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
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise OSError(f"{path}: exists and is not a socket; not removed")
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
    """The extension after registration; returns its exit status (at SHUTDOWN). If it cannot
    set up (its socket, its journal), it logs why and holds no invocation: exiting would fail
    every invocation (Extension.Crash), where the function can deliver its own events."""
    _configure_logging()
    api = ExtensionsAPI(os.environ["AWS_LAMBDA_RUNTIME_API"], identifier)
    try:
        path = h.socket_path(os.environ)
        listener = listen(path)
        journal = Journal(os.path.join(os.path.dirname(path), JOURNAL_NAME))
        extension = Extension(_client_from_environment(), listener, journal,
                              margin_s=_margin_s(os.environ))
    except Exception as exc:
        logger.error("amp_lite extension: cannot start (%s); the function delivers its own "
                     "events", _describe(exc))
        return _pass_through(api)
    return extension.serve(api)


def _pass_through(api: ExtensionsAPI) -> int:
    """Answer every INVOKE at once, until SHUTDOWN."""
    try:
        while True:
            api.ask_next()
            event = None
            while event is None:
                event = api.event()
            if event.get("eventType") == "SHUTDOWN":
                return 0
    except (OSError, ValueError, RuntimeError) as exc:
        logger.error("amp_lite extension: the Extensions API failed (%s); exiting",
                     _describe(exc))
        return 1
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
