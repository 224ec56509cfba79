"""The amp-lite Lambda extension: each invocation's events, delivered after its response.

A separate process in the execution environment (started by `_extension_boot`, which has
registered it), so the function process stays thread-free and its response does not wait for
Amplitude. One thread and one selector serve the Extensions API (a pending `event/next`) and
the hand-off socket (`_handoff`), so a hand-off is taken whenever it comes.

For each INVOKE: wait until the function's hand-off for that request id arrived (a scope's
flush always hands off, even with no events), or until the invocation's deadline minus the
margin; then deliver, within that deadline, what the spill holds, overflowing what is left as
the client would (SQS, the local spill); log one summary line; call `event/next`, which ends
the invocation. A hand-off is acknowledged only once its events are in the local spill, so
an extension killed after the acknowledgement loses nothing: the next flush (of the next
extension or of the function) reads them back. On SHUTDOWN, the same within its deadline.

Docs: https://docs.aws.amazon.com/lambda/latest/dg/runtimes-extensions-api.html
"""

from __future__ import annotations

import contextlib
import http.client
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
from ._errors import AmpLiteError, OverflowWriteError
from ._report import DeliveryReport, Tally
from .overflow import LocalSpill
from .overflow._defaults import spill_digest

logger = logging.getLogger("amp_lite")

NEXT_PATH = "/2020-01-01/extension/event/next"
ENV_MARGIN_MS = "AMP_LITE_EXTENSION_MARGIN_MS"
DEFAULT_MARGIN_MS = 500.0  # as the decorator's: time kept back from the invocation's deadline
SHUTDOWN_MARGIN_S = 0.2  # Lambda kills what still runs at the shutdown deadline
READ_TIMEOUT_S = 1.0  # one hand-off: the function writes it at once
WRITE_BUDGET_S = 1.0  # storing one hand-off in the spill
MAX_ROUNDS = 100  # flushes of max_request_events per invocation (a backlog drains over several)


class ExtensionsAPI:
    """The Extensions API over one HTTP/1.1 connection: `ask_next()` sends `event/next`
    without waiting; `event()` reads the answer once `sock` is readable."""

    def __init__(self, address: str, identifier: str) -> None:
        self._connection = http.client.HTTPConnection(address)
        self._identifier = identifier

    def ask_next(self) -> None:
        self._connection.request("GET", NEXT_PATH,
                                 headers={"Lambda-Extension-Identifier": self._identifier})

    @property
    def sock(self) -> socket.socket:
        assert self._connection.sock is not None, "ask_next() first"
        return self._connection.sock

    def event(self) -> dict[str, Any]:
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"event/next answered {response.status}: {body[:200]!r}")
        event: dict[str, Any] = json.loads(body)
        return event


class Invoke:
    """The invocation being served: its request id and deadline (epoch ms, on a monotonic
    clock here), less the margin."""

    def __init__(self, event: Mapping[str, Any], margin_s: float) -> None:
        self.request_id = str(event.get("requestId"))
        left_s = float(event["deadlineMs"]) / 1000 - time.time()
        self.deadline = Deadline.after(left_s - margin_s)


class Extension:
    """Hand-offs in (`take`), deliveries out (`deliver`), for one client configured from the
    function's environment; with no usable client it refuses every hand-off (the function
    then delivers its own events)."""

    def __init__(self, client: Amplitude | None, listener: socket.socket, *,
                 margin_s: float) -> None:
        self.client = client
        self.listener = listener
        self.margin_s = margin_s
        self.spill = _local_spill(client) if client is not None else None
        identity = client._route.identity if client is not None else None
        self.identity = (spill_digest(identity, client.config.server_url)
                         if client is not None and identity else None)
        self.handed: dict[str, int] = {}  # request id -> events taken (hand-offs complete)

    # -- hand-offs --------------------------------------------------------------------------

    def accept(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.settimeout(READ_TIMEOUT_S)
            try:
                message = h.decode(_read_message(connection))
            except (OSError, h.BadMessageError) as exc:
                logger.warning("amp_lite extension: unreadable hand-off (%s): refused", exc)
                with contextlib.suppress(OSError):
                    connection.sendall(h.REFUSED)
                return
            answer = self.take(message)
            self.handed[message.request_id] = (self.handed.get(message.request_id, 0)
                                               + (len(message.events) if answer == h.ACCEPTED
                                                  else 0))
            try:
                connection.sendall(answer)
            except OSError:  # it stopped waiting and delivers them itself: twice, not lost
                logger.info("amp_lite extension: the function left before the answer to its "
                            "hand-off; Amplitude de-duplicates on insert_id")

    def take(self, message: h.Message) -> bytes:
        """Store the hand-off's events in the spill: ACCEPTED, or REFUSED (logged why)."""
        if self.client is None or self.spill is None:
            return h.REFUSED
        if message.identity != self.identity:
            logger.warning("amp_lite extension: a hand-off from a client with another key or "
                           "server than this extension's environment: refused")
            return h.REFUSED
        if message.min_id_length != self.client.config.min_id_length:
            logger.warning("amp_lite extension: a hand-off with min_id_length %s, not %s: "
                           "refused", message.min_id_length, self.client.config.min_id_length)
            return h.REFUSED
        try:
            self.spill.write(message.events, reason="handed_off", attempts=0,
                             deadline=Deadline.after(WRITE_BUDGET_S),
                             min_id_length=message.min_id_length, durable=False)
        except OverflowWriteError as exc:
            logger.warning("amp_lite extension: could not store a hand-off (%s): refused", exc)
            return h.REFUSED
        return h.ACCEPTED

    # -- deliveries -------------------------------------------------------------------------

    def deliver(self, deadline: Deadline) -> DeliveryReport:
        """Flush what the spill holds within `deadline`, a request's worth at a time, while
        each round delivers and finds more."""
        started = time.monotonic()
        total = Tally()
        if self.client is None:
            return total.report(0.0)
        max_events = self.client.config.max_request_events
        for _ in range(MAX_ROUNDS):
            try:
                tally = self.client._deliver_spilled(deadline)
            except AmpLiteError as exc:  # the key cannot be fetched now: it stays spilled
                logger.warning("amp_lite extension: cannot deliver now (%s)", exc)
                break
            total.merge(tally)
            if tally.recovered < max_events or not tally.delivered or deadline.expired():
                break
        return total.report((time.monotonic() - started) * 1000)

    def finish(self, invoke: Invoke) -> None:
        if invoke.request_id not in self.handed:
            logger.warning("amp_lite extension: no hand-off for invocation %s before its "
                           "deadline (is the handler decorated with @amplitude_flush, or "
                           "wrapped by amp_lite.aws_lambda.handler?)", invoke.request_id)
        handed = self.handed.pop(invoke.request_id, 0)
        self.handed.clear()  # hand-offs that came late, from earlier invocations: spilled too
        report = self.deliver(invoke.deadline)
        # `handed_off`: what this invocation handed over (the report's own counts what a flush
        # handed on, none here); `recovered` and the rest: what the flush did with the spill
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
    header = _read_exactly(connection, h.LENGTH.size)
    (length,) = h.LENGTH.unpack(header)
    if length > h.MAX_MESSAGE_BYTES:
        raise h.BadMessageError(f"{length} bytes: more than a hand-off may hold")
    return _read_exactly(connection, length)


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = connection.recv(min(left, 1 << 20))
        if not chunk:
            raise h.BadMessageError(f"the function closed the connection {left} bytes short")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _local_spill(client: Amplitude) -> LocalSpill | None:
    sinks = client._route.sinks()
    return next((sink for sink in sinks if isinstance(sink, LocalSpill)), None)


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


def run(identifier: str, *, enabled: bool) -> int:
    """The extension after registration; returns its exit status (at SHUTDOWN)."""
    _configure_logging()
    api = ExtensionsAPI(os.environ["AWS_LAMBDA_RUNTIME_API"], identifier)
    if not enabled:  # registered for SHUTDOWN only: nothing to do until then
        api.ask_next()
        api.event()
        return 0
    listener = listen(h.socket_path(os.environ))
    return Extension(_client_from_environment(), listener,
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
