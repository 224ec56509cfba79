"""When a failed replay record comes back: a backoff per record, by its receive count.

A record the replay consumer lists in `batchItemFailures` stays on the queue; left alone, SQS
shows it again after the queue's visibility timeout (360 s in template.yaml), so a record that
keeps failing through an outage reaches the dead-letter queue after maxReceiveCount x 6 min.
Instead, `Redelivery.postpone` sets each such record's visibility timeout from its
`ApproximateReceiveCount`: `backoff_s(n)` (30 s doubling per receive, capped just under SQS's
12 h), so the same maxReceiveCount covers days, and records with fewer receives come back
sooner.

The schedule is pure (`backoff_s`, `covered_s`). The SQS calls (ChangeMessageVisibilityBatch,
10 entries each) go through `_aws_http`'s bounded client, so they end by the replay's deadline
even when SQS hangs; they never raise: a record whose visibility could not be changed keeps the
queue's default timeout, with a WARNING.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._aws_http import bounded_by, bounded_client
from ._deadline import Deadline
from ._errors import ConfigError

logger = logging.getLogger("amp_lite")

SQS_MAX_VISIBILITY_S = 43200  # SQS: 12 h, counted from the receive, not from the change
# The change is made some time after SQS handed the batch to the event source mapping: at most
# its batching window (5 min, the SQS event source's maximum) plus the function's run (15 min,
# Lambda's maximum). A change reaching past 12 h from the receive is rejected, so the cap keeps
# that much room.
RECEIVE_AGE_ALLOWANCE_S = 1200
BASE_BACKOFF_S = 30  # after the first failed receive
MAX_BACKOFF_S = SQS_MAX_VISIBILITY_S - RECEIVE_AGE_ALLOWANCE_S  # 42000 s, 11 h 40 min
_MAX_DOUBLINGS = 40  # 30 s x 2^40 is far past any cap: no need for bigger integers
CHANGE_BATCH = 10  # SQS: entries per ChangeMessageVisibilityBatch
RESERVE_S = 0.5  # of the replay's deadline, kept for the visibility changes (and the client)
MIN_CALL_S = 0.05  # no call starts with less left (overflow/_sqs.py uses the same)

_SQS_ARN = re.compile(r"^arn:(aws[a-z-]*):sqs:([a-z0-9-]+):([0-9]{12}):([A-Za-z0-9_.-]{1,80})$")


def backoff_s(receive_count: object, *, base_s: int = BASE_BACKOFF_S,
              cap_s: int = MAX_BACKOFF_S) -> int:
    """Seconds a record that failed on its `receive_count`-th receive stays hidden: `base_s`
    doubling per receive, at most `cap_s`. A missing or unreadable count (None, "", "x", "0",
    "-2") counts as the first receive."""
    count = receive_count_of(receive_count)
    return min(cap_s, base_s << min(count - 1, _MAX_DOUBLINGS))


def covered_s(receives: int, *, base_s: int = BASE_BACKOFF_S, cap_s: int = MAX_BACKOFF_S) -> int:
    """How long `receives` failed receives keep a record on the queue: from its first receive
    until SQS would hand it out the `receives + 1`-th time (with maxReceiveCount = `receives`,
    when it moves to the dead-letter queue). The processing time of each receive is left out."""
    return sum(backoff_s(n, base_s=base_s, cap_s=cap_s) for n in range(1, receives + 1))


def receive_count_of(value: object) -> int:
    """`ApproximateReceiveCount` as a positive integer; 1 when missing or not one."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return max(1, value)
    if isinstance(value, str) and value.strip().isdigit():
        return max(1, int(value.strip()))
    return 1


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """The schedule a replay handler applies to its failed records (`make_handler(backoff=)`)."""

    base_s: int = BASE_BACKOFF_S
    cap_s: int = MAX_BACKOFF_S

    def __post_init__(self) -> None:
        for name in ("base_s", "cap_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not (
                    0 <= value <= SQS_MAX_VISIBILITY_S):
                raise ConfigError(f"Backoff {name}: must be a whole number of seconds from 0 "
                                  f"to {SQS_MAX_VISIBILITY_S}, got {value!r}")

    def delay_s(self, receive_count: object) -> int:
        return backoff_s(receive_count, base_s=self.base_s, cap_s=self.cap_s)

    def covered_s(self, receives: int) -> int:
        return covered_s(receives, base_s=self.base_s, cap_s=self.cap_s)


@dataclass(frozen=True)
class QueueRef:
    """A queue named by an SQS ARN: arn:<partition>:sqs:<region>:<account>:<name>."""

    region: str
    account: str
    name: str

    @classmethod
    def from_arn(cls, arn: object) -> QueueRef | None:
        match = _SQS_ARN.match(arn) if isinstance(arn, str) else None
        return cls(*match.group(2, 3, 4)) if match else None

    def url(self, endpoint_url: str) -> str:
        """The queue's URL on `endpoint_url` (the SQS client's endpoint for the region:
        https://sqs.<region>.amazonaws.com, .amazonaws.com.cn in China, or whatever
        AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL says)."""
        return f"{endpoint_url.rstrip('/')}/{self.account}/{self.name}"


@dataclass(frozen=True)
class _Change:
    receipt_handle: str
    visibility_s: int


class Redelivery:
    """Postpones failed records of one replay handler; owns its SQS clients (one per region,
    built at the first failure)."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def postpone(self, records: Sequence[Mapping[str, Any]], message_ids: Iterable[str],
                 deadline: Deadline) -> int:
        """Set the visibility timeout of the Lambda SQS event `records` whose messageId is in
        `message_ids` from their receive counts, within `deadline`. Returns how many SQS
        confirmed; never raises."""
        try:
            return self._postpone(records, set(message_ids), deadline)
        except Exception:  # ours: never into the handler
            logger.exception("amp_lite replay: could not change the visibility of the failed "
                             "records; they come back after the queue's visibility timeout")
            return 0

    def _postpone(self, records: Sequence[Mapping[str, Any]], wanted: set[str],
                  deadline: Deadline) -> int:
        by_queue: dict[QueueRef, list[_Change]] = {}
        skipped = 0
        for record in records:
            if not isinstance(record, Mapping) or str(record.get("messageId")) not in wanted:
                continue
            queue = QueueRef.from_arn(record.get("eventSourceARN"))
            handle = record.get("receiptHandle")
            if queue is None or not isinstance(handle, str) or not handle:
                skipped += 1
                continue
            attributes = record.get("attributes")
            count = attributes.get("ApproximateReceiveCount") if isinstance(
                attributes, Mapping) else None
            by_queue.setdefault(queue, []).append(_Change(handle, self.backoff.delay_s(count)))
        if skipped:
            logger.warning("amp_lite replay: %d failed records have no SQS eventSourceARN or "
                           "receipt handle; they keep the queue's visibility timeout", skipped)
        done = 0
        for queue, changes in by_queue.items():
            done += self._change(queue, changes, deadline)
        if done:
            delays = sorted({c.visibility_s for cs in by_queue.values() for c in cs})
            span = f"{delays[0]}" if len(delays) == 1 else f"{delays[0]}-{delays[-1]}"
            logger.info("amp_lite replay: %d failed records come back in %s s (backoff by "
                        "receive count)", done, span)
        return done

    def _change(self, queue: QueueRef, changes: list[_Change], deadline: Deadline) -> int:
        """ChangeMessageVisibilityBatch for `changes`, 10 at a time; after a call fails, the
        rest are not tried (SQS is in trouble, and the deadline is what is left of the
        replay's)."""
        done = 0
        for start in range(0, len(changes), CHANGE_BATCH):
            batch = changes[start:start + CHANGE_BATCH]
            confirmed = self._call(queue, batch, deadline)
            if confirmed is None:
                logger.warning("amp_lite replay: %d failed records keep the queue's visibility "
                               "timeout", len(changes) - start)
                break
            done += confirmed
        return done

    def _call(self, queue: QueueRef, batch: list[_Change], deadline: Deadline) -> int | None:
        """One ChangeMessageVisibilityBatch: how many entries SQS confirmed; None when it could
        not be made in time or failed (logged)."""
        if deadline.remaining_s() < MIN_CALL_S:
            logger.warning("amp_lite replay: no time left to change the visibility of failed "
                           "records")
            return None
        entries = {f"r{i}": change for i, change in enumerate(batch)}
        try:
            client = self._client(queue.region)
            with bounded_by(deadline):
                reply = client.change_message_visibility_batch(
                    QueueUrl=queue.url(client.meta.endpoint_url),
                    Entries=[{"Id": entry_id, "ReceiptHandle": c.receipt_handle,
                              "VisibilityTimeout": c.visibility_s}
                             for entry_id, c in entries.items()])
        except Exception as exc:  # boto3 missing, no region, endpoint, timeout, credentials...
            logger.warning("amp_lite replay: SQS ChangeMessageVisibilityBatch failed (%s: %s)",
                           type(exc).__name__, str(exc)[:200])
            return None
        return _confirmed(reply, entries)

    def _client(self, region: str) -> Any:
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = self._clients[region] = bounded_client("sqs", region=region,
                                                                timeout_s=RESERVE_S)
            return client


def _confirmed(reply: Any, entries: Mapping[str, _Change]) -> int:
    """The entries `reply` confirms under `Successful`; the `Failed` ones are logged."""
    if not isinstance(reply, Mapping):
        return 0
    successful = reply.get("Successful")
    confirmed = {e.get("Id") for e in successful if isinstance(e, Mapping)} if isinstance(
        successful, list) else set()
    failed = reply.get("Failed")
    for entry in failed if isinstance(failed, list) else []:
        if isinstance(entry, Mapping):
            logger.warning("amp_lite replay: SQS did not change a record's visibility: %s %s",
                           entry.get("Code"), str(entry.get("Message", ""))[:200])
    return len(confirmed & set(entries))
