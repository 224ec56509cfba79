"""The Amplitude client: zero threads, per-invocation buffers, deadline-bounded flushes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from . import _report as r
from ._scope import EventBuffer
from ._config import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_BUFFERED_EVENTS,
    DEFAULT_REQUEST_TIMEOUT_S,
    ENV_QUEUE_URL,
    ENV_SPILL_DIR,
    ClientConfig,
    IngestionMetadata,
    Plan,
    _positive_seconds,
    resolve_config,
)
from ._deadline import Deadline
from ._errors import ConfigError, InvalidEventError, OverflowWriteError, brief
from ._events import (
    GROUP_IDENTIFY_EVENT,
    IDENTIFY_EVENT,
    OP_SET,
    REVENUE_EVENT,
    Event,
    Identify,
    Revenue,
)
from .overflow import LocalSpill, OverflowSink, RecoverableSink, SpillClaim
from ._report import DeliveryReport, Tally
from ._retry import BaseRetryHandler, Retry, RetryHandler, SendOutcome
from ._sender import Sender, Transport
from ._validation import EventEncoder
from ._wire import BufferedEvent

logger = logging.getLogger("amp_lite")

Middleware = Callable[[dict[str, Any]], "dict[str, Any] | None"]

RECOVERY_MIN_BUDGET_S = 1.0  # read the local spill back only when a flush has at least this long
EARLY_OVERFLOW_BUDGET_S = 1.0  # time given to overflowing a buffer's excess from inside track()
CAP_HEADROOM = 0.9  # overflow down to 90% of a cap, so the next track() does not do it again


class Amplitude:
    """An Amplitude client that never starts a thread.

    `track()` validates and buffers; `flush()` (or the end of an `invocation()` scope, or the
    `@amplitude_flush` decorator) sends synchronously within a deadline. See the README's
    configuration table for every argument and environment variable.
    """

    def __init__(
        self,
        api_key: str | Callable[[], str] | None = None,
        *,
        server_zone: str | None = None,
        server_url: str | None = None,
        use_batch: bool = False,
        min_id_length: int | None = None,
        retry: Retry | None = None,
        overflow: OverflowSink | Sequence[OverflowSink] | None = None,
        flush_timeout_s: float | None = None,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        gzip: bool | None = None,
        ca_certs: str | None = None,
        plan: Plan | Mapping[str, str] | None = None,
        ingestion_metadata: IngestionMetadata | Mapping[str, str] | None = None,
        enabled: bool | None = None,
        middleware: Iterable[Middleware] = (),
        max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        transport: Transport | None = None,
    ) -> None:
        self.config: ClientConfig = resolve_config(
            api_key=api_key, server_zone=server_zone, server_url=server_url, use_batch=use_batch,
            min_id_length=min_id_length, flush_timeout_s=flush_timeout_s,
            request_timeout_s=request_timeout_s, gzip=gzip, ca_certs=ca_certs, plan=plan,
            ingestion_metadata=ingestion_metadata, enabled=enabled,
            max_buffered_events=max_buffered_events, max_buffered_bytes=max_buffered_bytes,
        )
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError("retry: must have a send_events_with_retry(events, deadline) method")
        self._retry: Retry = retry if retry is not None else RetryHandler()
        self._overflow_arg = _check_overflow(overflow)
        self._sinks: tuple[OverflowSink, ...] | None = None  # resolved when the key is known
        self._middleware = tuple(middleware)
        for fn in self._middleware:
            if not callable(fn):
                raise ConfigError(f"middleware: every entry must be callable, got {fn!r}")
        self._encoder = EventEncoder(self.config)
        self._transport = transport
        self._transport_lock = threading.Lock()
        self._fetched_api_key: str | None = None
        self._buffer = EventBuffer()
        self._scope: ContextVar[EventBuffer | None] = ContextVar(
            f"amp_lite_scope_{id(self)}", default=None)

    def __repr__(self) -> str:
        key = ("set" if self.config.api_key else
               "from provider" if self.config.api_key_provider else "missing")
        return (f"Amplitude(server_url={self.config.server_url!r}, api_key=<{key}>, "
                f"enabled={self.config.enabled})")

    # -- tracking ---------------------------------------------------------------------------

    def track(
        self,
        event_type: str | Event,
        *,
        user_id: str | None = None,
        device_id: str | None = None,
        event_properties: Mapping[str, Any] | None = None,
        user_properties: Mapping[str, Any] | None = None,
        groups: Mapping[str, Any] | None = None,
        time: int | None = None,
        insert_id: str | None = None,
        **fields: Any,
    ) -> str | None:
        """Validate, stamp and buffer one event. Returns its insert_id (None when disabled or
        dropped by middleware). Raises InvalidEventError naming the field and the rule."""
        if not self.config.enabled:
            return None
        named = {"user_id": user_id, "device_id": device_id, "event_properties": event_properties,
                 "user_properties": user_properties, "groups": groups, "time": time,
                 "insert_id": insert_id, **fields}
        if isinstance(event_type, Event):
            if any(v is not None for v in named.values()):
                raise InvalidEventError("track: pass either an Event or keyword fields, not both")
            return self._accept(event_type.event_type, event_type.fields)
        if fields or self._middleware:
            return self._accept(event_type, named)
        # The common call: only track()'s own keywords (wire names, none renamed) and nothing
        # to show the stamped dict to, so it is stamped, checked and encoded in one pass.
        return self._append(*self._encoder.stamp_and_encode(event_type, named))

    def identify(self, identify: Identify, *, user_id: str | None = None,
                 device_id: str | None = None, **fields: Any) -> str | None:
        """Update user properties (an `$identify` event)."""
        if not self.config.enabled:
            return None
        _check_identify(identify, "identify")
        return self._accept(IDENTIFY_EVENT, {**fields, "user_id": user_id, "device_id": device_id,
                                             "user_properties": identify.user_properties})

    def group_identify(self, group_type: str, group_name: str | list[str], identify: Identify, *,
                       user_id: str | None = None, device_id: str | None = None,
                       **fields: Any) -> str | None:
        """Update a group's properties (a `$groupidentify` event)."""
        if not self.config.enabled:
            return None
        _check_group(group_type, group_name)
        _check_identify(identify, "group_identify")
        return self._accept(GROUP_IDENTIFY_EVENT, {
            **fields, "user_id": user_id, "device_id": device_id,
            "groups": {group_type: group_name}, "group_properties": identify.user_properties})

    def set_group(self, group_type: str, group_name: str | list[str], *,
                  user_id: str | None = None, device_id: str | None = None,
                  **fields: Any) -> str | None:
        """Put a user in a group (an `$identify` event setting the group as a user property)."""
        if not self.config.enabled:
            return None
        _check_group(group_type, group_name)
        return self._accept(IDENTIFY_EVENT, {
            **fields, "user_id": user_id, "device_id": device_id,
            "groups": {group_type: group_name},
            "user_properties": {OP_SET: {group_type: group_name}}})

    def revenue(self, revenue: Revenue, *, user_id: str | None = None,
                device_id: str | None = None, **fields: Any) -> str | None:
        """Record a purchase (a `revenue_amount` event with `$`-prefixed properties)."""
        if not self.config.enabled:
            return None
        if not isinstance(revenue, Revenue):
            raise InvalidEventError(
                f"revenue: must be amp_lite.Revenue, got {type(revenue).__name__}")
        return self._accept(REVENUE_EVENT, {**fields, "user_id": user_id, "device_id": device_id,
                                            "event_properties": revenue.event_properties()})

    @property
    def pending(self) -> int:
        """Events buffered in the current scope (or the client's own buffer outside scopes)."""
        return len(self._current_buffer())

    def _accept(self, event_type: Any, fields: Mapping[str, Any]) -> str | None:
        event = self._encoder.stamp(event_type, fields)
        for middleware in self._middleware:
            changed = middleware(event)
            if changed is None:
                logger.debug("amp_lite: an event was dropped by middleware")
                return None
            event = changed
        return self._append(*self._encoder.encode(event))

    def _append(self, buffered: BufferedEvent, insert_id: str) -> str:
        buffer = self._current_buffer()
        count, size = buffer.append(buffered)
        if count > self.config.max_buffered_events or size > self.config.max_buffered_bytes:
            self._overflow_excess(buffer)
        return insert_id

    def _overflow_excess(self, buffer: EventBuffer) -> None:
        """Overflow the oldest events of a buffer past its cap, now (bounded memory)."""
        excess = buffer.take_oldest(
            keep_events=int(self.config.max_buffered_events * CAP_HEADROOM),
            keep_bytes=int(self.config.max_buffered_bytes * CAP_HEADROOM))
        early = Tally(tracked=len(excess))
        try:
            sinks = self._overflow_sinks(self._api_key())
        except ConfigError as exc:
            logger.error("amp_lite: %d events dropped: buffer cap passed and %s", len(excess),
                         exc)
            early.dropped[r.DROPPED_CONFIG] += len(excess)
        else:
            reserve = sum(sink.reserve_s for sink in sinks)
            deadline = Deadline.after(max(EARLY_OVERFLOW_BUDGET_S, reserve))
            step = self.config.max_request_events
            for start in range(0, len(excess), step):
                self._overflow(excess[start:start + step], r.UNSETTLED_BUFFER_CAP, 0, deadline,
                               sinks, early)
        buffer.record_early(early)

    def _current_buffer(self) -> EventBuffer:
        scope = self._scope.get()
        return self._buffer if scope is None else scope

    # -- flushing ---------------------------------------------------------------------------

    def flush(self, *, timeout_s: float | None = None) -> DeliveryReport:
        """Send the current buffer (and spilled events, when time allows), synchronously.

        Returns within `timeout_s` (default `flush_timeout_s`). Raises ConfigError, keeping the
        events buffered, when no API key is configured; never raises for delivery problems.
        """
        budget = (self.config.flush_timeout_s if timeout_s is None
                  else _positive_seconds(timeout_s, "timeout_s"))
        return self.flush_buffer(self._current_buffer(), Deadline.after(budget))

    def invocation(self, *, timeout_s: float | None = None,
                   remaining_time_ms: Callable[[], int] | None = None,
                   margin_ms: float = 0.0, flush_timeout_s: float | None = None) -> Invocation:
        """A scope with its own buffer, flushed when the `with` block exits.

        The flush deadline is the smaller of `flush_timeout_s` and what is left of the
        invocation minus `margin_ms`: `remaining_time_ms()` when given (Lambda's context
        method), else `timeout_s` measured from the start of the block. `flush_timeout_s`
        overrides the client's cap for this scope.
        """
        return Invocation(self, timeout_s=timeout_s, remaining_time_ms=remaining_time_ms,
                          margin_ms=margin_ms, flush_timeout_s=flush_timeout_s)

    def close(self) -> None:
        """Close pooled connections. The client stays usable (a new pool opens on demand)."""
        with self._transport_lock:
            close = getattr(self._transport, "close", None)
            if callable(close):
                close()

    def flush_buffer(self, buffer: EventBuffer, deadline: Deadline, *,
                     raise_config_error: bool = True) -> DeliveryReport:
        started = time.monotonic()
        if not self.config.enabled:
            return DeliveryReport()
        events = buffer.drain()
        if not events and not self._api_key_known():
            # Nothing to send, and finding the spill would need the key: don't fetch it yet.
            return self._finish(buffer.take_early(), started)
        try:
            sender = self._sender()
        except ConfigError as exc:
            if events and raise_config_error:
                buffer.put_back(events)
                raise
            tally = buffer.take_early()
            tally.tracked += len(events)
            if events:  # the error names the variable to fix (no key, or its fetch failed)
                logger.error("amp_lite: %d events dropped: %s", len(events), exc)
                tally.dropped[r.DROPPED_CONFIG] += len(events)
            return self._finish(tally, started)
        tally = buffer.take_early()  # events overflowed before the flush, past the buffer cap
        tally.tracked += len(events)
        try:
            self._deliver(events, deadline, sender, tally)
        except Exception:  # a bug of ours must not lose events silently or reach the handler
            logger.exception("amp_lite: internal error during flush")
            settled = (tally.delivered + sum(tally.rejected.values())
                       + sum(tally.overflowed.values()) + sum(tally.dropped.values()))
            tally.dropped[r.DROPPED_INTERNAL] += tally.tracked + tally.recovered - settled
        return self._finish(tally, started)

    def _finish(self, tally: Tally, started: float) -> DeliveryReport:
        report = tally.report(elapsed_ms=(time.monotonic() - started) * 1000)
        if report.tracked or report.recovered:
            logger.info("amp_lite flush %s", json.dumps(report.summary(), sort_keys=True))
        return report

    def send_events(self, events: Sequence[BufferedEvent], deadline: Deadline, *,
                    min_id_length: int | None = None) -> SendOutcome:
        """Deliver already-encoded events with the retry strategy, without overflow: what is
        unsettled comes back in the outcome (the replay consumer uses this). `min_id_length`
        overrides the client's request option. Raises ConfigError when no API key is
        configured."""
        sender = self._sender()
        if min_id_length is not None:
            sender = dataclasses.replace(sender, min_id_length=min_id_length)
        return self._bound_retry(sender).send_events_with_retry(events, deadline)

    def _bound_retry(self, sender: Sender) -> Retry:
        if isinstance(self._retry, BaseRetryHandler):
            return self._retry.bind(sender)
        return self._retry

    def _deliver(self, events: list[BufferedEvent], deadline: Deadline, sender: Sender,
                 tally: Tally) -> None:
        sinks = self._overflow_sinks(sender.api_key)
        claim = self._claim_spill(sinks, deadline)
        recovered = claim.events if claim else []
        tally.recovered = len(recovered)
        batch = recovered + events
        if not batch:
            if claim:
                claim.complete()
            return
        reserve = sum(sink.reserve_s for sink in sinks)
        outcome = self._bound_retry(sender).send_events_with_retry(
            batch, deadline.shortened_by(reserve))
        self._settle(outcome, len(batch), deadline, sender, sinks, tally)
        if claim:
            claim.complete()

    def _settle(self, outcome: SendOutcome, sent: int, deadline: Deadline, sender: Sender,
                sinks: tuple[OverflowSink, ...], tally: Tally) -> None:
        tally.attempts += outcome.attempts
        tally.delivered += len(outcome.delivered)
        for reason, rejected in outcome.rejected.items():
            tally.rejected[reason] += len(rejected)
        for reason, unsettled in outcome.unsettled.items():
            tally.deadline_hit |= reason == r.UNSETTLED_DEADLINE
            for chunk in sender.batches(unsettled):
                self._overflow(chunk, reason, outcome.attempts, deadline, sinks, tally)
        settled = len(outcome.delivered) + sum(map(len, outcome.rejected.values())) + sum(
            map(len, outcome.unsettled.values()))
        if settled != sent:  # a custom strategy lost track of events: count them, loudly
            logger.error("amp_lite: retry strategy accounted for %d of %d events", settled, sent)
            tally.dropped[r.DROPPED_INTERNAL] += sent - settled

    def _overflow(self, events: list[BufferedEvent], reason: str, attempts: int,
                  deadline: Deadline, sinks: tuple[OverflowSink, ...], tally: Tally) -> None:
        for sink in sinks:
            left = events
            try:
                sink.write(events, reason=reason, attempts=attempts, deadline=deadline,
                           min_id_length=self.config.min_id_length)
                left = []
            except OverflowWriteError as exc:
                logger.warning("amp_lite: overflow to %s failed: %s", sink.name, exc)
                if exc.unwritten is not None:
                    left = list(exc.unwritten)
            except Exception:
                logger.exception("amp_lite: overflow sink %s raised", sink.name)
            if written := len(events) - len(left):
                tally.overflowed[reason] += written
                tally.overflowed_to[sink.name] += written
            events = left
            if not events:
                return
        dropped = r.DROPPED_SINK_FAILED if sinks else r.DROPPED_NO_SINK
        tally.dropped[dropped] += len(events)
        logger.error("amp_lite: %d events dropped (%s, not delivered: %s)", len(events), dropped,
                     reason)

    def _claim_spill(self, sinks: tuple[OverflowSink, ...],
                     deadline: Deadline) -> SpillClaim | None:
        if deadline.remaining_s() < RECOVERY_MIN_BUDGET_S:
            return None
        for sink in sinks:
            if isinstance(sink, RecoverableSink):
                try:
                    claim = sink.claim(max_events=self.config.max_request_events)
                except OSError:
                    logger.warning("amp_lite: could not read the spill of %s", sink.name)
                    continue
                if claim is not None:
                    return claim
        return None

    def _overflow_sinks(self, api_key: str) -> tuple[OverflowSink, ...]:
        if self._sinks is None:
            self._sinks = _resolve_sinks(self._overflow_arg, api_key, self.config.server_url)
        return self._sinks

    def _sender(self) -> Sender:
        api_key = self._api_key()
        with self._transport_lock:
            if self._transport is None:
                from ._http import HttpTransport  # urllib3 loads on the first send
                self._transport = HttpTransport(self.config.server_url, gzip=self.config.gzip,
                                                ca_certs=self.config.ca_certs)
            transport = self._transport
        return Sender(transport=transport, api_key=api_key,
                      min_id_length=self.config.min_id_length,
                      max_events=self.config.max_request_events,
                      max_bytes=self.config.max_request_bytes,
                      request_timeout_s=self.config.request_timeout_s)


    def _api_key_known(self) -> bool:
        return bool(self.config.api_key or self._fetched_api_key)

    def _api_key(self) -> str:
        provider = self.config.api_key_provider
        if self.config.api_key or provider is None:
            return self.config.require_api_key()
        with self._transport_lock:
            if self._fetched_api_key is None:
                try:
                    key = provider()
                except ConfigError:
                    raise
                except Exception as exc:  # not retried here; the next flush asks again
                    raise ConfigError(f"api_key: the key provider failed "
                                      f"({type(exc).__name__})") from exc
                if not isinstance(key, str) or not key.strip():
                    raise ConfigError("api_key: the key provider returned no key")
                self._fetched_api_key = key
            return self._fetched_api_key


class Invocation:
    """A per-invocation scope (a context manager): its own buffer, flushed at exit.

    The flush at exit never raises: problems are logged and counted in `report`.
    """

    def __init__(self, client: Amplitude, *, timeout_s: float | None,
                 remaining_time_ms: Callable[[], int] | None, margin_ms: float,
                 flush_timeout_s: float | None = None) -> None:
        if timeout_s is not None:
            _positive_seconds(timeout_s, "timeout_s")
        self._flush_timeout_s = (client.config.flush_timeout_s if flush_timeout_s is None
                                 else _positive_seconds(flush_timeout_s, "flush_timeout_s"))
        self.client = client
        self.buffer = EventBuffer()
        self.report: DeliveryReport | None = None
        self._timeout_s = timeout_s
        self._remaining_time_ms = remaining_time_ms
        self._margin_s = max(0.0, margin_ms) / 1000
        self._started = 0.0
        self._token: Any = None

    def __enter__(self) -> Invocation:
        self._started = time.monotonic()
        self._token = self.client._scope.set(self.buffer)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(ValueError):  # exited in another context: nothing to restore
            self.client._scope.reset(self._token)
        self.report = self.flush()

    def flush(self) -> DeliveryReport:
        """Flush this scope's buffer now, within what is left of the invocation."""
        try:
            return self.client.flush_buffer(self.buffer, self.flush_deadline(),
                                            raise_config_error=False)
        except Exception:
            logger.exception("amp_lite: flush at the end of an invocation failed")
            lost = len(self.buffer.drain())
            return DeliveryReport(tracked=lost, dropped=lost,
                                  dropped_reasons={r.DROPPED_INTERNAL: lost} if lost else {})

    def flush_deadline(self) -> Deadline:
        budget = self._flush_timeout_s
        left: float | None = None
        if self._remaining_time_ms is not None:
            left = self._remaining_time_ms() / 1000
        elif self._timeout_s is not None:
            left = self._timeout_s - (time.monotonic() - self._started)
        if left is not None:
            budget = min(budget, left - self._margin_s)
        return Deadline.after(max(0.0, budget))


def default_sinks(api_key: str, server_url: str) -> tuple[OverflowSink, ...]:
    """SQS first when AMP_LITE_OVERFLOW_QUEUE_URL is set, then the local spill."""
    spill = default_spill(api_key, server_url)
    queue_url = os.environ.get(ENV_QUEUE_URL)
    if not queue_url:
        return (spill,)
    from .overflow._sqs import SQSOverflow  # the SQS code loads only where it is configured

    return (SQSOverflow(queue_url), spill)


def default_spill(api_key: str, server_url: str) -> LocalSpill:
    """The default overflow: a spill directory per (API key, server), under AMP_LITE_SPILL_DIR
    or the system temp directory. The directory name is a hash: the key never appears in it."""
    root = os.environ.get(ENV_SPILL_DIR) or os.path.join(tempfile.gettempdir(), "amp-lite-spill")
    digest = hashlib.sha256(f"{api_key}\n{server_url}".encode()).hexdigest()[:16]
    return LocalSpill(Path(root) / digest)


def _check_overflow(overflow: Any) -> OverflowSink | tuple[OverflowSink, ...] | None:
    """The `overflow` argument, checked: None (the default sinks), one sink, or a tuple."""
    if overflow is None:
        return None
    sinks = tuple(overflow) if isinstance(overflow, (list, tuple)) else (overflow,)
    for sink in sinks:
        if not isinstance(sink, OverflowSink):
            raise ConfigError(f"overflow: {sink!r} is not an overflow sink (needs name, "
                              "reserve_s and write(events, *, reason, attempts, deadline))")
    return sinks if isinstance(overflow, (list, tuple)) else overflow


def _resolve_sinks(overflow: OverflowSink | tuple[OverflowSink, ...] | None, api_key: str,
                   server_url: str) -> tuple[OverflowSink, ...]:
    """None: the default sinks. A list: exactly those, in order (empty: none). One sink: that
    sink, then (unless it is a spill itself) the default local spill for what it cannot take,
    e.g. during an SQS outage."""
    if overflow is None:
        return default_sinks(api_key, server_url)
    if isinstance(overflow, tuple):
        return overflow
    if isinstance(overflow, RecoverableSink):  # a spill of its own: read back by our flushes
        return (overflow,)
    return (overflow, default_spill(api_key, server_url))


def _check_identify(identify: Any, method: str) -> None:
    if not isinstance(identify, Identify):
        raise InvalidEventError(f"{method}: identify must be amp_lite.Identify, "
                                f"got {type(identify).__name__}")
    if identify.is_empty():
        raise InvalidEventError(f"{method}: the Identify has no operations")


def _check_group(group_type: Any, group_name: Any) -> None:
    if not isinstance(group_type, str) or not group_type:
        raise InvalidEventError(f"group_type: must be a non-empty string, got {brief(group_type)}")
    names = group_name if isinstance(group_name, list) else [group_name]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise InvalidEventError("group_name: must be a non-empty string or a list of them, "
                                f"got {brief(group_name)}")
