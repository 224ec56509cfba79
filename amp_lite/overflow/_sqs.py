"""SQSOverflow: durable overflow to an SQS queue, replayed later by `amp_lite.replay`.

boto3 is imported at the first write (invariant I6): from the `sqs` extra, or the Lambda
runtime's own. Every write is bounded by the time the flush reserved for it: botocore's connect
and read timeouts come from what is left, and botocore does not retry on its own (failed entries
are retried here, while time allows).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

from .._deadline import Deadline
from .._errors import ConfigError, OverflowWriteError
from .._wire import BufferedEvent
from ._message import OverflowMessage, fits_in_a_message, pack_batches, pack_messages

logger = logging.getLogger("amp_lite")

DEFAULT_RESERVE_S = 0.5  # an in-region SendMessageBatch takes tens of milliseconds
MAX_SEND_ROUNDS = 3  # per batch: the first send and up to two resends of Failed entries
# botocore clients are cached per timeout step: building one costs ~20 ms, and the reserve is
# usually the same from flush to flush, so one or two clients serve a whole environment.
TIMEOUT_STEPS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
_REGION_IN_URL = re.compile(r"^https://sqs[.-]([a-z0-9-]+)\.amazonaws\.com", re.IGNORECASE)


class SQSOverflow:
    """Overflow to the SQS queue at `queue_url`.

    `sqs_client`: a boto3 SQS client to use as it is (its own timeouts and retries apply);
    by default amp-lite builds its own with timeouts taken from the reserved time.
    """

    name = "sqs"

    def __init__(self, queue_url: str, *, sqs_client: Any = None,
                 reserve_s: float = DEFAULT_RESERVE_S, region_name: str | None = None) -> None:
        if not isinstance(queue_url, str) or not queue_url.startswith(("https://", "http://")):
            raise ConfigError(f"SQSOverflow queue_url: must be an SQS queue URL, got {queue_url!r}")
        if not reserve_s > 0:
            raise ConfigError(f"SQSOverflow reserve_s: must be positive, got {reserve_s!r}")
        self.queue_url = queue_url
        self.reserve_s = reserve_s
        self._given_client = sqs_client
        match = _REGION_IN_URL.match(queue_url)
        self._region = region_name or (match.group(1) if match else None)
        self._clients: dict[float, Any] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQSOverflow({self.queue_url!r})"

    def write(self, events: Sequence[BufferedEvent], *, reason: str, attempts: int,
              deadline: Deadline, min_id_length: int | None = None) -> None:
        now_ms = int(time.time() * 1000)
        fitting: list[BufferedEvent] = []
        too_large: list[BufferedEvent] = []
        for event in events:
            fits = fits_in_a_message(event, reason=reason, attempts=attempts,
                                     overflowed_at_ms=now_ms, min_id_length=min_id_length)
            (fitting if fits else too_large).append(event)
        if too_large:
            logger.warning("amp_lite: %d events are too large for an SQS message",
                           len(too_large))
        messages = pack_messages(fitting, reason=reason, attempts=attempts,
                                 overflowed_at_ms=now_ms, min_id_length=min_id_length)
        unwritten: list[BufferedEvent] = list(too_large)
        failed = False  # after a batch fails, the rest are not tried: SQS is in trouble
        for batch in pack_batches(messages):
            left = (list(batch) if failed or deadline.expired()
                    else self._send_batch(batch, deadline))
            failed = failed or bool(left)
            unwritten.extend(e for m in left for e in m.events)
        if unwritten:
            raise OverflowWriteError(
                f"SQS took {len(events) - len(unwritten)} of {len(events)} events",
                unwritten=unwritten)

    def _send_batch(self, batch: list[OverflowMessage],
                    deadline: Deadline) -> list[OverflowMessage]:
        """Send one SendMessageBatch; resend its Failed entries while time allows.
        Returns the messages that were not written."""
        pending = {f"m{i}": message for i, message in enumerate(batch)}  # ids: [A-Za-z0-9_-]
        for _ in range(MAX_SEND_ROUNDS):
            if deadline.expired():
                break
            client = self._client(deadline)  # OverflowWriteError when boto3 is missing
            try:
                reply = client.send_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[{"Id": entry_id, "MessageBody": m.body,
                              "MessageAttributes": dict(m.attributes)}
                             for entry_id, m in pending.items()])
            except Exception as exc:  # botocore's errors: endpoint, timeout, credentials...
                logger.warning("amp_lite: SQS SendMessageBatch failed (%s)", type(exc).__name__)
                break
            failed = {f.get("Id"): f for f in reply.get("Failed", [])}
            for entry in failed.values():
                logger.warning("amp_lite: SQS refused an entry: %s %s (sender fault: %s)",
                               entry.get("Code"), entry.get("Message", "")[:200],
                               entry.get("SenderFault"))
            pending = {i: m for i, m in pending.items() if i in failed}
            if not pending or all(f.get("SenderFault") for f in failed.values()):
                break  # done, or refused for good: resending the same entry cannot help
        return list(pending.values())

    def _client(self, deadline: Deadline) -> Any:
        if self._given_client is not None:
            return self._given_client
        # Connect and read each get at most half of what is left: together, never more.
        half = deadline.remaining_s() / 2
        step = max((s for s in TIMEOUT_STEPS_S if s <= half), default=None)
        if step is None:
            raise OverflowWriteError("no time left to write to SQS")
        with self._lock:
            client = self._clients.get(step)
            if client is None:
                client = self._clients[step] = _build_client(step, self._region)
            return client


def _build_client(timeout_s: float, region: str | None) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise OverflowWriteError("SQSOverflow needs boto3: pip install 'amp-lite[sqs]'") from exc
    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                    retries={"total_max_attempts": 1, "mode": "standard"})
    try:
        return boto3.session.Session().client("sqs", region_name=region, config=config)
    except Exception as exc:  # NoRegionError and friends
        raise OverflowWriteError(f"could not create an SQS client ({type(exc).__name__}: "
                                 f"{exc}); set AWS_REGION") from exc
