"""The Amplitude client: a thin front over three parts, the encoder (`track()` validates,
stamps and encodes), the scopes (which buffer an event joins) and the delivery (a flush).

It never starts a thread: every network call happens inside `flush()`, at the end of an
`invocation()` scope, or in the `@amplitude_flush` decorator.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from time import monotonic  # not `import time`: track() has a `time` parameter
from typing import TYPE_CHECKING, Any

from ._checks import positive_seconds
from ._config import (
    ENV_EXTENSION,
    ENV_INITIALIZATION_TYPE,
    SNAP_START,
    ClientConfig,
    ClientOptions,
    redacted_url,
)
from ._deadline import Deadline
from ._delivery import Delivery, Route, bound, overflow_early, undeliverable
from ._encoder import EventEncoder
from ._errors import ConfigError, InvalidEventError
from ._events import (
    GROUP_IDENTIFY_EVENT,
    IDENTIFY_EVENT,
    OP_SET,
    REVENUE_EVENT,
    Event,
    Identify,
    Revenue,
    check_group,
    check_identify,
)
from ._report import DeliveryReport, Tally
from ._retry import Retry, RetryHandler, SendOutcome
from ._scope import EventBuffer, Invocation, Scopes, TimeLeft, from_milliseconds
from ._transport import Transport
from ._wire import BufferedEvent
from .overflow import OverflowSink
from .overflow._defaults import check_overflow

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._handoff import HandOff

logger = logging.getLogger("amp_lite")

Middleware = Callable[[dict[str, Any]], "dict[str, Any] | None"]

FLUSH_LOG_FIELD = "amp_lite_flush"  # the flush summary's field on its log record
CAP_HEADROOM = 0.9  # overflow down to 90% of a cap, so the next track() does not do it again


class Amplitude:
    """An Amplitude client that never starts a thread.

    `track()` validates and buffers; `flush()` (or the end of an `invocation()` scope, or the
    `@amplitude_flush` decorator) sends synchronously within a deadline. `options` are the
    keywords of `ClientOptions` (server_url, flush_timeout_s, ...): the README's configuration
    table describes each, with its environment variable.
    """

    def __init__(self, api_key: str | Callable[[], str] | None = None, *,
                 retry: Retry | None = None,
                 overflow: OverflowSink | Sequence[OverflowSink] | None = None,
                 middleware: Iterable[Middleware] = (), transport: Transport | None = None,
                 **options: Unpack[ClientOptions]) -> None:
        self.config: ClientConfig = ClientConfig.resolve(api_key, options)
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigError("retry: must have a send_events_with_retry(events, deadline) method")
        self._retry: Retry = retry if retry is not None else RetryHandler()
        self._middleware = tuple(middleware)
        for fn in self._middleware:
            if not callable(fn):
                raise ConfigError(f"middleware: every entry must be callable, got {fn!r}")
        self._encoder = EventEncoder(self.config)
        self._scopes = Scopes(f"amp_lite_scope_{id(self)}")
        self._route = Route(self.config, check_overflow(overflow), transport)
        self._handoff = _handoff_if_enabled(self._route, overflow, transport, retry)
        if os.environ.get(ENV_INITIALIZATION_TYPE) == SNAP_START:  # Lambda SnapStart only
            from . import _snapstart  # flushed and closed before the snapshot

            _snapstart.enroll(self)

    def __repr__(self) -> str:
        key = ("set" if self.config.api_key else
               "from provider" if self.config.api_key_provider else "missing")
        return (f"Amplitude(server_url={redacted_url(self.config.server_url)!r}, api_key=<{key}>, "
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
        check_identify(identify, "identify")
        return self._accept(IDENTIFY_EVENT, {**fields, "user_id": user_id, "device_id": device_id,
                                             "user_properties": identify.user_properties})

    def group_identify(self, group_type: str, group_name: str | list[str], identify: Identify, *,
                       user_id: str | None = None, device_id: str | None = None,
                       **fields: Any) -> str | None:
        """Update a group's properties (a `$groupidentify` event)."""
        if not self.config.enabled:
            return None
        check_group(group_type, group_name)
        check_identify(identify, "group_identify")
        return self._accept(GROUP_IDENTIFY_EVENT, {
            **fields, "user_id": user_id, "device_id": device_id,
            "groups": {group_type: group_name}, "group_properties": identify.user_properties})

    def set_group(self, group_type: str, group_name: str | list[str], *,
                  user_id: str | None = None, device_id: str | None = None,
                  **fields: Any) -> str | None:
        """Put a user in a group (an `$identify` event setting the group as a user property)."""
        if not self.config.enabled:
            return None
        check_group(group_type, group_name)
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
        return len(self._scopes.current())

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
        buffer = self._scopes.current()
        sizes = buffer.append(buffered)
        if sizes is None:  # its scope closed meanwhile: the client's own buffer takes it
            buffer = self._scopes.outside
            sizes = buffer.append(buffered)
            assert sizes is not None, "the client's own buffer is never closed"
        count, size = sizes
        if count > self.config.max_buffered_events or size > self.config.max_buffered_bytes:
            # Bounded memory: the oldest events overflow now; the next flush reports them.
            excess = buffer.take_oldest(
                keep_events=int(self.config.max_buffered_events * CAP_HEADROOM),
                keep_bytes=int(self.config.max_buffered_bytes * CAP_HEADROOM))
            buffer.record_early(overflow_early(self._route, excess))
        return insert_id

    # -- flushing ---------------------------------------------------------------------------

    def flush(self, *, timeout_s: float | None = None) -> DeliveryReport:
        """Send the current buffer (and spilled events, when time allows), synchronously.

        Returns within `timeout_s` (default `flush_timeout_s`). Raises ConfigError, keeping the
        events buffered, when no API key is configured; never raises for delivery problems.
        """
        budget = (self.config.flush_timeout_s if timeout_s is None
                  else positive_seconds(timeout_s, "timeout_s"))
        return self._flush_buffer(self._scopes.current(), Deadline.after(budget),
                                  raise_config_error=True)

    def invocation(self, *, timeout_s: float | None = None,
                   remaining_time_ms: Callable[[], int] | None = None,
                   margin_ms: float = 0.0, flush_timeout_s: float | None = None,
                   time_left: TimeLeft | None = None) -> Invocation:
        """A scope with its own buffer, flushed when the `with` block exits.

        The flush deadline is the smaller of `flush_timeout_s` and what is left of the
        invocation minus `margin_ms`: `time_left()` (seconds) when given, else
        `remaining_time_ms()` (Lambda's context method), else `timeout_s` from the start of
        the block.
        `flush_timeout_s` overrides the client's cap for this scope.
        """
        if timeout_s is not None:
            positive_seconds(timeout_s, "timeout_s")
        cap = (self.config.flush_timeout_s if flush_timeout_s is None
               else positive_seconds(flush_timeout_s, "flush_timeout_s"))
        if time_left is None and remaining_time_ms is not None:
            # context.get_remaining_time_in_millis is bound to the context: its request id
            context = getattr(remaining_time_ms, "__self__", None)
            time_left = from_milliseconds(remaining_time_ms,
                                          getattr(context, "aws_request_id", None))
        return Invocation(self._scopes, self, flush_timeout_s=cap,
                          time_left=time_left, margin_ms=margin_ms,
                          timeout_s=None if time_left else timeout_s)

    def close(self) -> None:
        """Close pooled connections. The client stays usable (a new pool opens on demand)."""
        self._route.close()

    def send_events(self, events: Sequence[BufferedEvent], deadline: Deadline, *,
                    min_id_length: int | None = None) -> SendOutcome:
        """Deliver already-encoded events with the retry strategy, without overflow: what is
        unsettled comes back in the outcome (the replay consumer uses this). `min_id_length`
        overrides the client's request option. Raises ConfigError when no API key is
        configured."""
        sender = self._route.sender(deadline=deadline, min_id_length=min_id_length)
        return bound(self._retry, sender).send_events_with_retry(events, deadline)

    async def aflush(self, *, timeout_s: float | None = None) -> DeliveryReport:
        """`flush()` for code on an event loop: the requests and the pauses between retries
        are awaited, so other tasks keep running (with the `amp-lite[async]` extra, or a
        transport of yours with `apost`; else it is `flush()`, which blocks the loop)."""
        budget = (self.config.flush_timeout_s if timeout_s is None
                  else positive_seconds(timeout_s, "timeout_s"))
        return await self._aflush_buffer(self._scopes.current(), Deadline.after(budget),
                                         raise_config_error=True)

    def flush_scope(self, buffer: EventBuffer, deadline: Deadline, *,
                    request_id: str | None = None) -> DeliveryReport:
        """A scope's flush: its buffer and what reached the client's own buffer meanwhile
        (events tracked from threads, callbacks, code around the decorator). With the Lambda
        extension enabled, a Lambda invocation's (`request_id`) are handed to it instead.
        Never raises."""
        return self._flush_buffer(buffer, deadline, adopt=self._scopes.outside,
                                  request_id=request_id)

    async def aflush_scope(self, buffer: EventBuffer, deadline: Deadline, *,
                           request_id: str | None = None) -> DeliveryReport:
        """`flush_scope`, awaited (see `aflush`)."""
        return await self._aflush_buffer(buffer, deadline, adopt=self._scopes.outside,
                                         request_id=request_id)

    def _flush_buffer(self, buffer: EventBuffer, deadline: Deadline, *,
                      raise_config_error: bool = False, adopt: EventBuffer | None = None,
                      request_id: str | None = None) -> DeliveryReport:
        """Flush `buffer` (after the events of `adopt`, when given) within `deadline`. Without
        `raise_config_error` it never raises for a missing key: the events are counted as
        dropped instead (a scope's exit)."""
        started = monotonic()
        if not self.config.enabled:
            if self._handoff is not None and request_id is not None:
                self._handoff.notify(request_id, deadline)  # the extension stops waiting
            return DeliveryReport()
        buffers, events, outside = _take(buffer, adopt)
        tally = Tally(tracked=len(events))
        if self._handed_off(events, request_id, deadline):
            tally.handed_off = len(events)
        elif events or self._route.api_key_known():  # else: reading the spill back needs the key
            try:
                tally = Delivery(self._route, deadline).run(events, self._retry)
            except ConfigError as exc:
                tally = self._without_key(exc, buffer, events, deadline, raise_config_error)
        return self._report(tally, outside, buffers, started)

    async def _aflush_buffer(self, buffer: EventBuffer, deadline: Deadline, *,
                             raise_config_error: bool = False, adopt: EventBuffer | None = None,
                             request_id: str | None = None) -> DeliveryReport:
        """`_flush_buffer`, awaited; the sync one when the async flush cannot await. A hand-off
        to the extension is not awaited: one local write, its answer within a few ms."""
        if not self.config.enabled or not self._route.can_await():
            return self._flush_buffer(buffer, deadline, raise_config_error=raise_config_error,
                                      adopt=adopt, request_id=request_id)
        started = monotonic()
        buffers, events, outside = _take(buffer, adopt)
        tally = Tally(tracked=len(events))
        if self._handed_off(events, request_id, deadline):
            tally.handed_off = len(events)
        elif events or self._route.api_key_known():
            try:
                tally = await Delivery(self._route, deadline).arun(events, self._retry)
            except ConfigError as exc:
                tally = self._without_key(exc, buffer, events, deadline, raise_config_error)
        return self._report(tally, outside, buffers, started)

    def _deliver_handed(self, events: list[BufferedEvent], deadline: Deadline) -> Tally:
        """The Lambda extension's flush of the events handed to it: a scope's flush, but one
        that reads the spill back however short `deadline` (the extension's spill holds only
        events of this function). Never raises."""
        try:
            return Delivery(self._route, deadline, recovery_min_s=0.0).run(events, self._retry)
        except ConfigError as exc:
            return undeliverable(self._route, events, exc, deadline)

    def _handed_off(self, events: list[BufferedEvent], request_id: str | None,
                    deadline: Deadline) -> bool:
        """Whether the Lambda extension took the invocation's events (even none: so that it
        knows they are complete). Only a scope's flush in a Lambda invocation hands off."""
        if self._handoff is None or request_id is None:
            return False
        try:
            return self._handoff.send(events, request_id=request_id,
                                      min_id_length=self.config.min_id_length,
                                      deadline=deadline)
        except Exception:  # a bug of ours: the events are delivered here, not lost
            logger.exception("amp_lite: the hand-off to the extension failed")
            return False

    def _without_key(self, exc: ConfigError, buffer: EventBuffer, events: list[BufferedEvent],
                     deadline: Deadline, raise_config_error: bool) -> Tally:
        if events and raise_config_error:  # flush(): one buffer, nothing adopted
            buffer.put_back(events)
            raise exc
        return undeliverable(self._route, events, exc, deadline)

    def _report(self, tally: Tally, outside: int, buffers: Sequence[EventBuffer],
                started: float) -> DeliveryReport:
        tally.outside = outside
        for each in buffers:
            tally.merge(each.take_early())  # events overflowed earlier, past the buffer cap
        report = tally.report(elapsed_ms=(monotonic() - started) * 1000)
        if report.tracked or report.recovered:
            summary = report.summary()
            # also as a field: JSON log formatters (Lambda's, Powertools') put it at the top
            # level, where a CloudWatch metric filter can read `$.amp_lite_flush.dropped`
            logger.info("amp_lite flush %s", json.dumps(summary, sort_keys=True),
                        extra={FLUSH_LOG_FIELD: summary})
        return report


def _handoff_if_enabled(route: Route, overflow: object, transport: Transport | None,
                        retry: Retry | None) -> HandOff | None:
    """With AMP_LITE_EXTENSION=on, the hand-off to the Lambda extension. It carries the
    client's signature when the extension can stand in for it (a key, the default transport,
    overflow and retry strategy; the extension takes it only if its own signature is the
    same), else none: then it only tells the extension that the scope ended."""
    if not os.environ.get(ENV_EXTENSION):
        return None
    from ._handoff import HandOff, client_signature, enabled  # only where it is enabled

    if not enabled(os.environ):
        return None
    standard = overflow is None and transport is None and retry is None
    identity = route.identity if standard else None
    return HandOff.from_environment(client_signature(identity, route.config)
                                    if identity is not None else None)


def _take(buffer: EventBuffer, adopt: EventBuffer | None,
          ) -> tuple[tuple[EventBuffer, ...], list[BufferedEvent], int]:
    """The buffers a flush empties, their events (`adopt`'s first), and how many were adopt's."""
    if adopt is None or adopt is buffer:
        return (buffer,), buffer.take_all(), 0
    adopted = adopt.take_all()
    return (adopt, buffer), adopted + buffer.take_all(), len(adopted)
