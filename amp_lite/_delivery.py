"""Delivery: one object per flush, the one place where a flush's I/O happens.

`Delivery(route, deadline).run(events, retry)` resolves the API key and the transport, reads
back the local spill when there is time, lets the retry strategy send, and writes what is left
to the overflow sinks, all under the flush's deadline; it returns the Tally of where every
event went (invariant I2). `Route` holds what the flushes of one client share: the key (a
provider is asked once), the pooled transport and the overflow sinks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from . import _report as r
from ._config import ClientConfig, checked_api_key
from ._deadline import Deadline
from ._errors import ConfigError, OverflowWriteError
from ._report import Tally
from ._retry import BaseRetryHandler, Retry, SendOutcome
from ._sender import Sender
from ._transport import Transport
from ._wire import BufferedEvent
from .overflow import OverflowSink, RecoverableSink, SpillClaim
from .overflow._defaults import OverflowArgument, resolve_sinks

logger = logging.getLogger("amp_lite")

RECOVERY_MIN_BUDGET_S = 1.0  # read the local spill back only when a flush has at least this long
EARLY_OVERFLOW_BUDGET_S = 1.0  # time given to overflowing a buffer's excess from inside track()


class Route:
    """The parts every flush of one client shares, each built on first use."""

    def __init__(self, config: ClientConfig, overflow: OverflowArgument,
                 transport: Transport | None) -> None:
        self.config = config
        self._overflow = overflow
        self._transport = transport
        self._sinks: tuple[OverflowSink, ...] | None = None  # they depend on the key
        self._fetched_api_key: str | None = None
        self._lock = threading.Lock()  # concurrent flushes (Cloud Functions gen2 threads)

    def api_key_known(self) -> bool:
        return bool(self.config.api_key or self._fetched_api_key)

    def api_key(self) -> str:
        """The configured key, or the provider's (asked once; a failure is asked again next
        time). Raises ConfigError naming what to fix."""
        provider = self.config.api_key_provider
        if self.config.api_key or provider is None:
            return self.config.require_api_key()
        with self._lock:
            if self._fetched_api_key is None:
                self._fetched_api_key = _ask_provider(provider)
            return self._fetched_api_key

    def sender(self, *, min_id_length: int | None = None) -> Sender:
        """A sender bound to the key; `min_id_length` overrides the client's request option."""
        api_key = self.api_key()
        with self._lock:
            if self._transport is None:
                from ._http import HttpTransport  # urllib3 loads on the first send

                self._transport = HttpTransport(self.config.server_url, gzip=self.config.gzip,
                                                ca_certs=self.config.ca_certs)
            transport = self._transport
        return Sender(transport=transport, api_key=api_key,
                      min_id_length=(self.config.min_id_length if min_id_length is None
                                     else min_id_length),
                      max_events=self.config.max_request_events,
                      max_bytes=self.config.max_request_bytes,
                      request_timeout_s=self.config.request_timeout_s)

    def sinks(self) -> tuple[OverflowSink, ...]:
        if self._sinks is None:
            self._sinks = resolve_sinks(self._overflow, self.api_key(), self.config.server_url)
        return self._sinks

    def close(self) -> None:
        with self._lock:
            close = getattr(self._transport, "close", None)
            if callable(close):
                close()


def _ask_provider(provider: Callable[[], str]) -> str:
    try:
        key = provider()
    except ConfigError:
        raise
    except Exception as exc:  # not retried here; the next flush asks again
        raise ConfigError(f"api_key: the key provider failed ({type(exc).__name__})") from exc
    if not isinstance(key, str) or not key.strip():
        raise ConfigError("api_key: the key provider returned no key")
    return checked_api_key(key, "api_key (from the key provider)")


def bound(retry: Retry, sender: Sender) -> Retry:
    """The strategy ready to send: the shipped ones are bound to the flush's sender."""
    return retry.bind(sender) if isinstance(retry, BaseRetryHandler) else retry


class Delivery:
    """One flush of `events` under `deadline`."""

    def __init__(self, route: Route, deadline: Deadline) -> None:
        self._route = route
        self.deadline = deadline

    def run(self, events: list[BufferedEvent], retry: Retry) -> Tally:
        """Deliver, reject or overflow every event. Raises ConfigError, before any event is
        touched, when the API key is missing or cannot be fetched."""
        sender = self._route.sender()
        tally = Tally(tracked=len(events))
        try:
            self._deliver(events, bound(retry, sender), sender, tally)
        except Exception:  # a bug of ours must not lose events silently or reach the handler
            logger.exception("amp_lite: internal error during flush")
            tally.dropped[r.DROPPED_INTERNAL] += tally.tracked + tally.recovered - tally.settled
        return tally

    def overflow(self, events: Sequence[BufferedEvent], reason: str) -> Tally:
        """Write `events` to the sinks now, without sending them (a buffer past its cap):
        in chunks of at most max_request_events; what no sink takes is dropped."""
        tally = Tally(tracked=len(events))
        step = self._route.config.max_request_events
        for start in range(0, len(events), step):
            self._write(events[start:start + step], reason, 0, tally)
        return tally

    def _deliver(self, events: list[BufferedEvent], retry: Retry, sender: Sender,
                 tally: Tally) -> None:
        sinks = self._route.sinks()
        claim = self._claim_spill(sinks)  # events an earlier flush could not deliver
        recovered = claim.events if claim else []
        tally.recovered = len(recovered)
        batch = recovered + events
        if batch:
            reserve = sum(sink.reserve_s for sink in sinks)
            outcome = retry.send_events_with_retry(batch, self.deadline.shortened_by(reserve))
            self._settle(outcome, len(batch), sender, tally)
        if claim:
            claim.complete()

    def _settle(self, outcome: SendOutcome, sent: int, sender: Sender, tally: Tally) -> None:
        tally.attempts += outcome.attempts
        tally.delivered += len(outcome.delivered)
        for reason, rejected in outcome.rejected.items():
            tally.rejected[reason] += len(rejected)
        for reason, unsettled in outcome.unsettled.items():
            tally.deadline_hit |= reason == r.UNSETTLED_DEADLINE
            for chunk in sender.batches(unsettled):  # request-sized: a replay resends as is
                self._write(chunk, reason, outcome.attempts, tally)
        if outcome.settled != sent:  # a custom strategy lost track of events: count them, loudly
            logger.error("amp_lite: retry strategy accounted for %d of %d events",
                         outcome.settled, sent)
            tally.dropped[r.DROPPED_INTERNAL] += sent - outcome.settled

    def _write(self, events: Sequence[BufferedEvent], reason: str, attempts: int,
               tally: Tally) -> None:
        """Each sink in turn takes what the previous ones could not; the rest is dropped."""
        sinks = self._route.sinks()
        for sink in sinks:
            left = self._write_to(sink, events, reason, attempts)
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

    def _write_to(self, sink: OverflowSink, events: Sequence[BufferedEvent], reason: str,
                  attempts: int) -> Sequence[BufferedEvent]:
        """Write to one sink; returns the events it did not take."""
        try:
            sink.write(events, reason=reason, attempts=attempts, deadline=self.deadline,
                       min_id_length=self._route.config.min_id_length)
        except OverflowWriteError as exc:
            logger.warning("amp_lite: overflow to %s failed: %s", sink.name, exc)
            return events if exc.unwritten is None else list(exc.unwritten)
        except Exception:
            logger.exception("amp_lite: overflow sink %s raised", sink.name)
            return events
        return ()

    def _claim_spill(self, sinks: tuple[OverflowSink, ...]) -> SpillClaim | None:
        if self.deadline.remaining_s() < RECOVERY_MIN_BUDGET_S:
            return None
        for sink in sinks:
            if isinstance(sink, RecoverableSink):
                try:
                    claim = sink.claim(max_events=self._route.config.max_request_events)
                except OSError:
                    logger.warning("amp_lite: could not read the spill of %s", sink.name)
                    continue
                if claim is not None:
                    return claim
        return None



def overflow_early(route: Route, excess: Sequence[BufferedEvent]) -> Tally:
    """Overflow events taken from a buffer past its cap, now, with a budget of their own."""
    try:
        reserve = sum(sink.reserve_s for sink in route.sinks())
    except ConfigError as exc:
        return dropped_for_config(Tally(tracked=len(excess)), exc, "buffer cap passed and ")
    deadline = Deadline.after(max(EARLY_OVERFLOW_BUDGET_S, reserve))
    return Delivery(route, deadline).overflow(excess, r.UNSETTLED_BUFFER_CAP)


def dropped_for_config(tally: Tally, exc: ConfigError, when: str = "") -> Tally:
    """Count the tally's tracked events as dropped for a configuration error, loudly: the
    error names the argument or variable to fix (no key, or its fetch failed)."""
    if tally.tracked:
        logger.error("amp_lite: %d events dropped: %s%s", tally.tracked, when, exc)
        tally.dropped[r.DROPPED_CONFIG] += tally.tracked
    return tally
