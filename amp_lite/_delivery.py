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
from collections.abc import Sequence

from . import _report as r
from ._config import MISSING_API_KEY, ClientConfig
from ._deadline import Deadline
from ._errors import ConfigError, KeyUnavailableError, OverflowWriteError
from ._key_sources import ProvidedKey, provider_label
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
    """The parts every flush of one client shares: the key, the pooled transport (built on
    first use) and the overflow sinks (built with the client, so a sink that cannot be built
    is reported at once). The sinks do not depend on the key: events whose key is not known
    yet can still be overflowed."""

    def __init__(self, config: ClientConfig, overflow: OverflowArgument,
                 transport: Transport | None) -> None:
        self.config = config
        self._overflow = overflow
        self._transport = transport
        provider = config.api_key_provider
        self._provided = ProvidedKey(provider) if provider is not None else None
        identity = config.api_key or (provider_label(provider) if provider else None)
        self._sinks = None if identity is None else resolve_sinks(overflow, identity,
                                                                   config.server_url)
        self._lock = threading.Lock()  # concurrent flushes (Cloud Functions gen2 threads)

    def api_key_known(self) -> bool:
        return bool(self.config.api_key or (self._provided and self._provided.known))

    def api_key(self, deadline: Deadline | None = None) -> str:
        """The configured key, or the provider's (within `deadline`). Raises ConfigError
        naming what to fix; KeyUnavailableError when the provider failed."""
        if self.config.api_key or self._provided is None:
            return self.config.require_api_key()
        return self._provided.get(deadline)

    def sender(self, *, deadline: Deadline | None = None,
               min_id_length: int | None = None) -> Sender:
        """A sender bound to the key; `min_id_length` overrides the client's request option."""
        api_key = self.api_key(deadline)
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
            close = getattr(self._transport, "close", None)
            if callable(close):
                close()


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
        touched, when the API key is missing or cannot be fetched (KeyUnavailableError)."""
        try:  # the key fetch leaves the sinks their reserve: its events may need them
            sender = self._route.sender(deadline=self.deadline.shortened_by(
                self._route.reserve_s()))
        except ConfigError:
            raise
        except Exception as exc:  # the HTTP stack cannot be built (urllib3, OpenSSL...)
            logger.error("amp_lite: cannot send (%s: %s); %d events are overflowed",
                         type(exc).__name__, exc, len(events))
            return self.overflow(events, r.UNSETTLED_NO_TRANSPORT)
        tally = Tally(tracked=len(events))
        try:
            self._deliver(events, retry, sender, tally)
        except Exception:  # a bug of ours must not lose events silently or reach the handler
            logger.exception("amp_lite: internal error during flush")
            tally.dropped[r.DROPPED_INTERNAL] += tally.tracked + tally.recovered - tally.settled
        return tally

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
                 tally: Tally) -> None:
        sinks = self._route.sinks()
        claim = self._claim_spill(sinks)  # events an earlier flush could not deliver
        recovered = claim.events if claim else []
        tally.recovered = len(recovered)
        reserve = sum(sink.reserve_s for sink in sinks)  # after the claim: it measures the spill
        if claim and claim.min_id_length not in (None, sender.min_id_length):
            # tracked under another min_id_length option: sent (and re-spilled) with it
            spill_sender = self._route.sender(deadline=self.deadline,
                                              min_id_length=claim.min_id_length)
            self._send(recovered, retry, spill_sender, reserve, tally)
            recovered = []
        self._send(recovered + events, retry, sender, reserve, tally)
        if claim:
            _complete(claim, self.deadline)

    def _send(self, batch: list[BufferedEvent], retry: Retry, sender: Sender, reserve: float,
              tally: Tally) -> None:
        if batch:
            outcome = bound(retry, sender).send_events_with_retry(
                batch, self.deadline.shortened_by(reserve))
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
        for n, sink in enumerate(sinks):
            later = sum(s.reserve_s for s in sinks[n + 1:])
            left = self._write_to(sink, events, reason, attempts, min_id_length,
                                  self.deadline.shortened_by(later))
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
                  attempts: int, min_id_length: int | None,
                  deadline: Deadline) -> Sequence[BufferedEvent]:
        """Write to one sink; returns the events it did not take."""
        try:
            sink.write(events, reason=reason, attempts=attempts, deadline=deadline,
                       min_id_length=min_id_length)
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
                    claim = _claim(sink, self._route.config.max_request_events, self.deadline)
                except Exception as exc:  # OSError, or a bug in a sink of yours
                    logger.warning("amp_lite: could not read the spill of %s (%s)", sink.name,
                                   type(exc).__name__)
                    continue
                if claim is not None:
                    return claim
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
