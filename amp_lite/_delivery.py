"""Delivery: one object per flush, the one place where a flush's I/O happens.

`Delivery(route, deadline).run(events, retry)` resolves the API key and the transport, reads
back the local spill when there is time, lets the retry strategy send, and writes what is left
to the overflow sinks, all under the flush's deadline; it returns the Tally of where every
event went (invariant I2). `arun` is the same flush on an event loop: the strategy's requests
and pauses are awaited; the key fetch, the spill and the SQS write stay blocking, bounded as
in the sync flush (they are rare: once per process, or only when Amplitude failed). `Route`
holds what the flushes of one client share: the key (a provider is asked once), the pooled
transports and the overflow sinks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Sequence

from . import _report as r
from ._config import MISSING_API_KEY, ClientConfig
from ._deadline import Deadline
from ._errors import ConfigError, KeyUnavailableError, OverflowWriteError
from ._key_sources import ProvidedKey, provider_label
from ._report import Tally
from ._retry import BaseRetryHandler, Retry, SendOutcome, runs_async
from ._sender import Sender
from ._transport import AsyncTransport, Transport
from ._wire import BufferedEvent
from .overflow import OverflowSink, RecoverableSink, SpillClaim
from .overflow._defaults import OverflowArgument, resolve_sinks

logger = logging.getLogger("amp_lite")

RECOVERY_MIN_BUDGET_S = 1.0  # read the local spill back only when a flush has at least this long
EARLY_OVERFLOW_BUDGET_S = 1.0  # time given to overflowing a buffer's excess from inside track()


class Route:
    """The parts every flush of one client shares: the key, the pooled transport (built on
    first use) and the overflow sinks (built with the client, so a sink that cannot be built
    is reported at once). The sinks do not depend on the key: events whose key is not known
    yet can still be overflowed."""

    def __init__(self, config: ClientConfig, overflow: OverflowArgument,
                 transport: Transport | None) -> None:
        self.config = config
        self._overflow = overflow
        self._transport = transport
        self._transport_given = transport is not None
        provider = config.api_key_provider
        self._provided = ProvidedKey(provider) if provider is not None else None
        identity = config.api_key or (provider_label(provider) if provider else None)
        self.identity = identity  # what names the client's spill directory (and hand-offs)
        self._sinks = None if identity is None else resolve_sinks(overflow, identity,
                                                                   config.server_url)
        self._async_transport: AsyncTransport | None = None
        self._no_async: str | None = None  # why the async flush is the sync one, once known
        self._lock = threading.Lock()  # concurrent flushes (Cloud Functions gen2 threads)

    def api_key_known(self) -> bool:
        return bool(self.config.api_key or (self._provided and self._provided.known))

    def api_key(self, deadline: Deadline | None = None) -> str:
        """The configured key, or the provider's (within `deadline`). Raises ConfigError
        naming what to fix; KeyUnavailableError when the provider failed."""
        if self.config.api_key or self._provided is None:
            return self.config.require_api_key()
        return self._provided.get(deadline)

    def sender(self, *, deadline: Deadline | None = None, min_id_length: int | None = None,
               asynchronous: bool = False) -> Sender:
        """A sender bound to the key; `min_id_length` overrides the client's request option;
        `asynchronous` adds the async transport (only when `can_await()`)."""
        api_key = self.api_key(deadline)
        with self._lock:
            if self._transport is None:
                from ._http import HttpTransport  # urllib3 loads on the first send

                self._transport = HttpTransport(self.config.server_url, gzip=self.config.gzip,
                                                ca_certs=self.config.ca_certs)
            transport = self._transport
        return Sender(transport=transport, api_key=api_key,
                      async_transport=self._async_transport if asynchronous else None,
                      min_id_length=(self.config.min_id_length if min_id_length is None
                                     else min_id_length),
                      max_events=self.config.max_request_events,
                      max_bytes=self.config.max_request_bytes,
                      request_timeout_s=self.config.request_timeout_s)

    def can_await(self) -> bool:
        """Whether an async flush can await its requests: a transport of yours with `apost`,
        or (with none given) the `amp-lite[async]` extra installed. Else the async flush is
        the sync one, which blocks the event loop (said once, at INFO)."""
        with self._lock:
            if self._async_transport is None and self._no_async is None:
                self._async_transport, self._no_async = self._async_transport_or_why()
                if self._no_async:  # harmless where one process serves one request (Lambda)
                    logger.info("amp_lite: the async flush blocks the event loop: %s",
                                self._no_async)
            return self._async_transport is not None

    def _async_transport_or_why(self) -> tuple[AsyncTransport | None, str | None]:
        if self._transport_given:
            if isinstance(self._transport, AsyncTransport):
                return self._transport, None
            return None, "Amplitude(transport=...) has no apost() method"
        try:
            from ._async_http import AsyncHttpTransport  # httpcore loads on the first await
        except ImportError as exc:
            return None, f"install amp-lite[async] ({exc})"
        return AsyncHttpTransport(self.config.server_url, gzip=self.config.gzip,
                                  ca_certs=self.config.ca_certs), None

    def reserve_s(self) -> float:
        """The time the sinks' writes are kept: 0 when there are none yet (no key at all)."""
        return sum(sink.reserve_s for sink in self._sinks or ())

    def sinks(self) -> tuple[OverflowSink, ...]:
        """The sinks; ConfigError when the client has neither a key nor a key provider."""
        if self._sinks is None:
            raise ConfigError(MISSING_API_KEY)
        return self._sinks

    def close(self) -> None:
        with self._lock:
            transports = {id(t): t for t in (self._transport, self._async_transport) if t}
            for transport in transports.values():
                close = getattr(transport, "close", None)
                if callable(close):
                    close()


def bound(retry: Retry, sender: Sender) -> Retry:
    """The strategy ready to send: the shipped ones are bound to the flush's sender."""
    return retry.bind(sender) if isinstance(retry, BaseRetryHandler) else retry


class _Send:
    """A step of a delivery plan: let `strategy` send `batch` by `deadline`; the plan is
    sent the SendOutcome."""

    __slots__ = ("batch", "deadline", "strategy")

    def __init__(self, strategy: Retry, batch: list[BufferedEvent], deadline: Deadline) -> None:
        self.strategy = strategy
        self.batch = batch
        self.deadline = deadline


_DeliveryPlan = Generator[_Send, SendOutcome, None]


class Delivery:
    """One flush of `events` under `deadline`. The flush is written once, as a plan
    (`_deliver`) whose sends `run` takes blocking and `arun` awaits."""

    def __init__(self, route: Route, deadline: Deadline, *,
                 recovery_min_s: float = RECOVERY_MIN_BUDGET_S) -> None:
        self._route = route
        self.deadline = deadline
        self._recovery_min_s = recovery_min_s  # the extension's flush reads the spill always

    def run(self, events: list[BufferedEvent], retry: Retry) -> Tally:
        """Deliver, reject or overflow every event. Raises ConfigError, before any event is
        touched, when the API key is missing or cannot be fetched (KeyUnavailableError)."""
        sender = self._sender(asynchronous=False)
        if sender is None:
            return self.overflow(events, r.UNSETTLED_NO_TRANSPORT)
        tally = Tally(tracked=len(events))
        try:
            plan = self._deliver(events, retry, sender, tally)
            step = next(plan, None)
            while step is not None:
                step = _next(plan, step.strategy.send_events_with_retry(step.batch,
                                                                        step.deadline))
        except Exception:  # a bug of ours must not lose events silently or reach the handler
            self._internal_error(tally)
        return tally

    async def arun(self, events: list[BufferedEvent], retry: Retry) -> Tally:
        """`run`, awaiting the strategy's requests and pauses (a strategy of yours without
        `asend_events_with_retry` runs blocking). Cancelled, it overflows every event of the
        flush before re-raising: some may be delivered twice, none is lost (insert_id)."""
        import asyncio

        sender = self._sender(asynchronous=True)
        if sender is None:
            return self.overflow(events, r.UNSETTLED_NO_TRANSPORT)
        tally = Tally(tracked=len(events))
        awaitable = runs_async(retry)
        try:
            plan = self._deliver(events, retry, sender, tally)
            step = next(plan, None)
            while step is not None:
                outcome = (await step.strategy.asend_events_with_retry(  # type: ignore[attr-defined]
                    step.batch, step.deadline) if awaitable
                    else step.strategy.send_events_with_retry(step.batch, step.deadline))
                step = _next(plan, outcome)
        except asyncio.CancelledError:
            logger.warning("amp_lite: the flush was cancelled; its %d events are overflowed",
                           len(events))
            self.overflow(events, r.UNSETTLED_CANCELLED)
            raise
        except Exception:  # a bug of ours must not lose events silently or reach the handler
            self._internal_error(tally)
        return tally

    def _sender(self, *, asynchronous: bool) -> Sender | None:
        """The flush's sender; None when the HTTP stack cannot be built (logged)."""
        try:  # the key fetch leaves the sinks their reserve: its events may need them
            return self._route.sender(deadline=self.deadline.shortened_by(
                self._route.reserve_s()), asynchronous=asynchronous)
        except ConfigError:
            raise
        except Exception as exc:  # the HTTP stack cannot be built (urllib3, OpenSSL...)
            logger.error("amp_lite: cannot send (%s: %s); the events are overflowed",
                         type(exc).__name__, exc)
            return None

    def _internal_error(self, tally: Tally) -> None:
        logger.exception("amp_lite: internal error during flush")
        tally.dropped[r.DROPPED_INTERNAL] += tally.tracked + tally.recovered - tally.settled

    def overflow(self, events: Sequence[BufferedEvent], reason: str) -> Tally:
        """Write `events` to the sinks now, without sending them (a buffer past its cap, a
        key or a transport that is not available): in chunks of at most max_request_events;
        what no sink takes is dropped."""
        tally = Tally(tracked=len(events))
        step = self._route.config.max_request_events
        for start in range(0, len(events), step):
            self._write(events[start:start + step], reason, 0, self._route.config.min_id_length,
                        tally)
        return tally

    def _deliver(self, events: list[BufferedEvent], retry: Retry, sender: Sender,
                 tally: Tally) -> _DeliveryPlan:
        sinks = self._route.sinks()
        claim = self._claim_spill(sinks)  # events an earlier flush could not deliver
        recovered = claim.events if claim else []
        tally.recovered = len(recovered)
        reserve = sum(sink.reserve_s for sink in sinks)  # after the claim: it measures the spill
        if claim and claim.min_id_length not in (None, sender.min_id_length):
            # tracked under another min_id_length option: sent (and re-spilled) with it
            spill_sender = self._route.sender(deadline=self.deadline,
                                              min_id_length=claim.min_id_length,
                                              asynchronous=sender.async_transport is not None)
            yield from self._send(recovered, retry, spill_sender, reserve, tally)
            recovered = []
        yield from self._send(recovered + events, retry, sender, reserve, tally)
        if claim:
            _complete(claim, self.deadline)

    def _send(self, batch: list[BufferedEvent], retry: Retry, sender: Sender, reserve: float,
              tally: Tally) -> _DeliveryPlan:
        if batch:
            outcome = yield _Send(bound(retry, sender), batch, self.deadline.shortened_by(reserve))
            self._settle(outcome, len(batch), sender, tally)

    def _settle(self, outcome: SendOutcome, sent: int, sender: Sender, tally: Tally) -> None:
        tally.attempts += outcome.attempts
        tally.delivered += len(outcome.delivered)
        for reason, rejected in outcome.rejected.items():
            tally.rejected[reason] += len(rejected)
        for reason, unsettled in outcome.unsettled.items():
            tally.deadline_hit |= reason == r.UNSETTLED_DEADLINE
            for chunk in sender.batches(unsettled):  # request-sized: a replay resends as is
                self._write(chunk, reason, outcome.attempts, sender.min_id_length, tally)
        if outcome.settled != sent:  # a custom strategy lost track of events: count them, loudly
            logger.error("amp_lite: retry strategy accounted for %d of %d events",
                         outcome.settled, sent)
            tally.dropped[r.DROPPED_INTERNAL] += sent - outcome.settled

    def _write(self, events: Sequence[BufferedEvent], reason: str, attempts: int,
               min_id_length: int | None, tally: Tally) -> None:
        """Each sink in turn takes what the previous ones could not; the rest is dropped. A
        sink may use the time left but the reserves of the sinks after it: a hanging SQS must
        not take the local spill's time too."""
        sinks = self._route.sinks()
        why = None  # what the last sink to refuse them said (a spill with no trusted directory)
        for n, sink in enumerate(sinks):
            later = sum(s.reserve_s for s in sinks[n + 1:])
            left, why = self._write_to(sink, events, reason, attempts, min_id_length,
                                       self.deadline.shortened_by(later))
            if written := len(events) - len(left):
                tally.overflowed[reason] += written
                tally.overflowed_to[sink.name] += written
            events = left
            if not events:
                return
        dropped = (why or r.DROPPED_SINK_FAILED) if sinks else r.DROPPED_NO_SINK
        tally.dropped[dropped] += len(events)
        logger.error("amp_lite: %d events dropped (%s, not delivered: %s)", len(events), dropped,
                     reason)

    def _write_to(self, sink: OverflowSink, events: Sequence[BufferedEvent], reason: str,
                  attempts: int, min_id_length: int | None,
                  deadline: Deadline) -> tuple[Sequence[BufferedEvent], str | None]:
        """Write to one sink; returns the events it did not take, and the reason it gave."""
        try:
            sink.write(events, reason=reason, attempts=attempts, deadline=deadline,
                       min_id_length=min_id_length)
        except OverflowWriteError as exc:
            logger.warning("amp_lite: overflow to %s failed: %s", sink.name, exc)
            return (events if exc.unwritten is None else list(exc.unwritten)), exc.drop_reason
        except Exception:
            logger.exception("amp_lite: overflow sink %s raised", sink.name)
            return events, None
        return (), None

    def _claim_spill(self, sinks: tuple[OverflowSink, ...]) -> SpillClaim | None:
        if self.deadline.remaining_s() < self._recovery_min_s:
            return None
        for sink in sinks:
            if isinstance(sink, RecoverableSink):
                try:
                    claim = _claim(sink, self._route.config.max_request_events, self.deadline)
                except Exception as exc:  # OSError, or a bug in a sink of yours
                    logger.warning("amp_lite: could not read the spill of %s (%s)", sink.name,
                                   type(exc).__name__)
                    continue
                if claim is not None:
                    return claim
        return None



def _next(plan: _DeliveryPlan, outcome: SendOutcome) -> _Send | None:
    try:
        return plan.send(outcome)
    except StopIteration:
        return None


def _claim(sink: RecoverableSink, max_events: int, deadline: Deadline) -> SpillClaim | None:
    """`sink.claim`, with the deadline when the sink takes one (a sink of yours written
    before `deadline` was added to the protocol does not)."""
    try:
        return sink.claim(max_events=max_events, deadline=deadline)
    except TypeError:
        return sink.claim(max_events=max_events)


def _complete(claim: SpillClaim, deadline: Deadline) -> None:
    if isinstance(claim, SpillClaim):
        claim.complete(deadline=deadline)
    else:  # a claim of a sink of yours
        claim.complete()


def overflow_early(route: Route, excess: Sequence[BufferedEvent]) -> Tally:
    """Overflow events taken from a buffer past its cap, now, with a budget of their own."""
    try:
        reserve = sum(sink.reserve_s for sink in route.sinks())
    except ConfigError as exc:
        return dropped_for_config(Tally(tracked=len(excess)), exc, "buffer cap passed and ")
    deadline = Deadline.after(max(EARLY_OVERFLOW_BUDGET_S, reserve))
    return Delivery(route, deadline).overflow(excess, r.UNSETTLED_BUFFER_CAP)


def undeliverable(route: Route, events: list[BufferedEvent], exc: ConfigError,
                  deadline: Deadline) -> Tally:
    """Events a flush cannot send for want of a key: overflowed when a provider failed (they
    are sent once it answers), dropped and counted when no key is configured."""
    if isinstance(exc, KeyUnavailableError):
        logger.error("amp_lite: %s; %d events are overflowed", exc, len(events))
        return Delivery(route, deadline).overflow(events, r.UNSETTLED_KEY_UNAVAILABLE)
    return dropped_for_config(Tally(tracked=len(events)), exc)


def dropped_for_config(tally: Tally, exc: ConfigError, when: str = "") -> Tally:
    """Count the tally's tracked events as dropped for a configuration error, loudly: the
    error names the argument or variable to fix (no key, or its fetch failed)."""
    if tally.tracked:
        logger.error("amp_lite: %d events dropped: %s%s", tally.tracked, when, exc)
        tally.dropped[r.DROPPED_CONFIG] += tally.tracked
    return tally
