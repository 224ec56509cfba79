"""Replay: deliver overflowed events from SQS, idempotently (insert_id).

`amp_lite.replay.handler` is an SQS-triggered Lambda handler (see template.yaml) and
`make_handler(client)` builds one around your client. Both use Powertools' BatchProcessor for
the partial batch response: a record whose events are all delivered or rejected succeeds; a
record with throttled or undeliverable events, or events whose request Amplitude refused as a
whole (invalid API key, 403, missing field), is listed in `batchItemFailures` and its visibility
timeout is set from its receive count (`_redelivery.backoff_s`: 30 s doubling per receive,
capped under 12 h), so each redelivery comes later and a long outage does not use up
maxReceiveCount (then the dead-letter queue) in minutes. A message that is not an amp-lite
overflow message fails too, without a backoff (time will not fix it: it reaches the dead-letter
queue for a human after maxReceiveCount x the queue's visibility timeout); unreadable events
inside a good message are rejected with a log, once.

`replay_records()` is the Powertools-free core, used by `amp-lite replay` as well.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._client import Amplitude
from ._deadline import Deadline
from ._errors import AmpLiteError, KeyUnavailableError
from ._key_sources import api_key_from_environment
from ._redelivery import RESERVE_S, Backoff, Redelivery
from ._report import UNSETTLED_KEY_UNAVAILABLE
from ._retry import SendOutcome
from ._wire import BufferedEvent
from ._wrap import DEFAULT_MARGIN_MS
from .aws_lambda import context_time_left
from .overflow._message import DecodedMessage, MessageFormatError, decode_message

logger = logging.getLogger("amp_lite")

REPLAY_FLUSH_TIMEOUT_S = 60.0  # cap when no Lambda context says how long is left
DEFAULT_BACKOFF = Backoff()  # 30 s doubling per receive, capped under SQS's 12 h


@dataclass(frozen=True)
class ReplayRecord:
    """One SQS message: its id and body."""

    message_id: str
    body: str


@dataclass
class ReplayResult:
    """What a replay did, per message and in total."""

    failed: dict[str, str] = field(default_factory=dict)  # message id -> why it must come back
    not_replayable: set[str] = field(default_factory=set)  # failed ids time will not fix
    messages: int = 0
    events: int = 0
    delivered: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    unsettled: Counter[str] = field(default_factory=Counter)
    unreadable_messages: int = 0
    attempts: int = 0

    def summary(self) -> dict[str, object]:
        return {"messages": self.messages, "failed_messages": len(self.failed),
                "unreadable_messages": self.unreadable_messages, "events": self.events,
                "delivered": self.delivered, "rejected": dict(self.rejected),
                "unsettled": dict(self.unsettled), "attempts": self.attempts}


def replay_records(records: Sequence[ReplayRecord], client: Amplitude,
                   deadline: Deadline) -> ReplayResult:
    """Deliver the events of `records` in as few requests as possible; decide each record."""
    result = ReplayResult(messages=len(records))
    per_record: dict[str, list[_Key]] = {}
    # Grouped by the min_id_length option the events were tracked under; de-duplicated on
    # Amplitude's own key, so a message delivered twice sends nothing twice.
    groups: dict[int | None, dict[_Key, BufferedEvent]] = {}
    for record in records:
        decoded = _decode(record, result)
        if decoded is None:
            continue
        per_record[record.message_id] = [_key(e) for e in decoded.events]
        group = groups.setdefault(decoded.min_id_length, {})
        for event in decoded.events:
            group.setdefault(_key(event), event)
    unsettled: dict[_Key, str] = {}
    for min_id_length, group in groups.items():
        try:
            outcome = client.send_events(list(group.values()), deadline,
                                         min_id_length=min_id_length)
        except KeyUnavailableError as exc:  # the records come back once the key is known
            logger.error("amp_lite replay: %s; the records stay queued", exc)
            outcome = SendOutcome(unsettled={UNSETTLED_KEY_UNAVAILABLE: list(group.values())})
        unsettled.update(_count_outcome(outcome, result))
    for message_id, keys in per_record.items():
        reasons = Counter(unsettled[k] for k in keys if k in unsettled)
        if reasons:
            result.failed[message_id] = "undelivered events: " + ", ".join(
                f"{reason} {count}" for reason, count in sorted(reasons.items()))
    return result


def _decode(record: ReplayRecord, result: ReplayResult) -> DecodedMessage | None:
    """The record's message, counted in `result`; None (and the record failed) when it is not
    an amp-lite overflow message."""
    try:
        decoded = decode_message(record.body)
    except MessageFormatError as exc:
        logger.error("amp_lite replay: message %s is not replayable: %s", record.message_id, exc)
        result.failed[record.message_id] = f"not replayable: {exc}"
        result.not_replayable.add(record.message_id)
        result.unreadable_messages += 1
        return None
    if decoded.unreadable_events:
        logger.error("amp_lite replay: %d unreadable events in message %s rejected",
                     decoded.unreadable_events, record.message_id)
        result.rejected["unreadable_event"] += decoded.unreadable_events
    result.events += len(decoded.events) + decoded.unreadable_events
    return decoded


def _count_outcome(outcome: SendOutcome, result: ReplayResult) -> dict[_Key, str]:
    """Count what one send did in `result`; returns the events that must come back, with why
    (a refusal of the whole request, a wrong key..., leaves them unsettled too)."""
    unsettled: dict[_Key, str] = {}
    result.attempts += outcome.attempts
    result.delivered += len(outcome.delivered)
    for reason, events in outcome.rejected.items():
        logger.warning("amp_lite replay: %d events rejected by Amplitude (%s), not replayed "
                       "again", len(events), reason)
        result.rejected[reason] += len(events)
    if outcome.refused is not None:  # a wrong key or a block: the records stay queued
        logger.error("amp_lite replay: Amplitude refused the request (%s); the records stay "
                     "queued until the replay's configuration is fixed", outcome.refused)
    for reason, events in outcome.unsettled.items():
        result.unsettled[reason] += len(events)
        unsettled.update((_key(e), reason) for e in events)
    return unsettled


_Key = tuple[str, str]


def _key(event: BufferedEvent) -> _Key:
    """Amplitude's de-duplication key: (device_id, or the user when there is none; insert_id)."""
    return (event.device_id or f"user:{event.user_id}", event.insert_id)


class ReplayRecordError(AmpLiteError):
    """Raised for a record that must come back (BatchProcessor lists it in batchItemFailures)."""


def make_handler(client: Amplitude | None = None, *, margin_ms: float = DEFAULT_MARGIN_MS,
                 backoff: Backoff | None = DEFAULT_BACKOFF,
                 ) -> Callable[[Mapping[str, Any], Any], Any]:
    """An SQS-triggered Lambda handler replaying amp-lite overflow messages with `client`
    (default: one built from the environment, with no overflow of its own).

    `backoff`: the schedule for failed records' visibility timeouts (ChangeMessageVisibility,
    from each record's receive count); None leaves them the queue's visibility timeout."""
    redelivery = None if backoff is None else Redelivery(backoff)

    def handler(event: Mapping[str, Any], context: Any) -> Any:
        from aws_lambda_powertools.utilities.batch import (
            BatchProcessor,
            EventType,
            process_partial_response,
        )

        chosen = client if client is not None else _replay_client()
        raw_records = event.get("Records") or []
        records = [ReplayRecord(str(r.get("messageId")), str(r.get("body", "")))
                   for r in raw_records]
        deadline = _deadline(context, margin_ms)
        # The visibility changes get the end of the deadline: the send stops RESERVE_S before.
        send_deadline = deadline if redelivery is None else deadline.shortened_by(RESERVE_S)
        result = replay_records(records, chosen, send_deadline)
        logger.info("amp_lite replay %s", json.dumps(result.summary(), sort_keys=True))
        retry_later = [m for m in result.failed if m not in result.not_replayable]
        if redelivery is not None and retry_later:
            redelivery.postpone(raw_records, retry_later, deadline)

        def record_handler(record: Any) -> None:
            reason = result.failed.get(record.message_id)
            if reason is not None:
                raise ReplayRecordError(reason)

        processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
        return process_partial_response(event=dict(event), record_handler=record_handler,
                                        processor=processor, context=context)

    return handler


def _deadline(context: Any, margin_ms: float) -> Deadline:
    time_left = context_time_left(context)
    if time_left is None:
        return Deadline.after(REPLAY_FLUSH_TIMEOUT_S)
    return Deadline.after(min(REPLAY_FLUSH_TIMEOUT_S, time_left() - margin_ms / 1000))


@functools.cache
def _replay_client() -> Amplitude:
    # Replayed events that fail again go back to SQS by redelivery, not to another sink.
    return Amplitude(api_key=api_key_from_environment(), overflow=())


def handler(event: Mapping[str, Any], context: Any) -> Any:
    """The replay consumer for template.yaml: `amp_lite.replay.handler`."""
    return _default_handler()(event, context)


@functools.cache
def _default_handler() -> Callable[[Mapping[str, Any], Any], Any]:
    return make_handler()


__all__ = ["ReplayRecord", "ReplayRecordError", "ReplayResult", "handler", "make_handler",
           "replay_records"]
