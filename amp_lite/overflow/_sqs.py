"""SQSOverflow: durable overflow to an SQS queue, replayed later by `amp_lite.replay`.

boto3 is imported at the first write (invariant I6): from the `sqs` extra, or the Lambda
runtime's own. amp-lite's own client lets botocore resolve the endpoint, region and credentials
(exactly as boto3 does: AWS_ENDPOINT_URL_SQS, AWS_ENDPOINT_URL, AWS_REGION...), serialize, sign
and parse, but sends each request itself (botocore's documented `before-send` event) through
`_http.BoundedHttp`: connect, send and every receive are bounded as a whole by the write's
deadline (I3). botocore's own read timeout applies to each receive, so an endpoint trickling
its reply a byte at a time could hold a flush for as long as it liked. Two exceptions, where
botocore's timeouts apply (per receive): a user's `sqs_client`, used as it is, and a proxy
(HTTPS_PROXY...), which BoundedHttp does not speak.

An entry counts as written only when the reply confirms its Id under `Successful`: a 2xx with
an empty body, `{}` or a proxy's HTML page writes nothing, and the events go to the next sink.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .._aws_http import bounded_by, bounded_client
from .._deadline import Deadline
from .._errors import ConfigError, OverflowWriteError, brief
from .._wire import BufferedEvent
from ._message import OverflowMessage, fits_in_a_message, pack_batches, pack_messages

logger = logging.getLogger("amp_lite")

DEFAULT_RESERVE_S = 0.5  # an in-region SendMessageBatch takes tens of milliseconds
MAX_SEND_ROUNDS = 3  # per batch: the first send and up to two resends of Failed entries
MIN_CALL_S = 0.05  # no call starts with less left: not even an in-region round trip fits
_REGION_IN_URL = re.compile(r"^https://sqs[.-]([a-z0-9-]+)\.amazonaws\.com", re.IGNORECASE)
_QUEUE_PATH = re.compile(r"/[0-9]{12}/[A-Za-z0-9_-]{1,80}(?:\.fifo)?")
MAX_QUEUE_NAME = 80  # SQS: the .fifo suffix included
EXPECTED_QUEUE_URL = ("https://sqs.<region>.amazonaws.com/<account-id>/<queue-name> (or, for "
                      "local testing with moto or LocalStack, an endpoint URL ending in "
                      "/<account-id>/<queue-name>)")

class SQSOverflow:
    """Overflow to the SQS queue at `queue_url`.

    `sqs_client`: a boto3 SQS client to use as it is: its own timeouts and retries apply, and
    botocore's read timeout bounds each receive, not the call. By default amp-lite builds its
    own, whose every call is bounded as a whole by the flush's deadline.
    """

    name = "sqs"

    def __init__(self, queue_url: str, *, sqs_client: Any = None,
                 reserve_s: float = DEFAULT_RESERVE_S, region_name: str | None = None) -> None:
        check_queue_url(queue_url)
        if not reserve_s > 0:
            raise ConfigError(f"SQSOverflow reserve_s: must be positive, got {reserve_s!r}")
        self.queue_url = queue_url
        self.reserve_s = reserve_s
        match = _REGION_IN_URL.match(queue_url)
        self._region = region_name or (match.group(1) if match else None)
        self._client = sqs_client  # ours is built at the first write
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
            left = batch if failed else self._send_batch(batch, deadline)
            failed = failed or bool(left)
            unwritten.extend(e for m in left for e in m.events)
        if unwritten:
            raise OverflowWriteError(
                f"SQS took {len(events) - len(unwritten)} of {len(events)} events",
                unwritten=unwritten)

    def _send_batch(self, batch: list[OverflowMessage],
                    deadline: Deadline) -> list[OverflowMessage]:
        """Send one SendMessageBatch; resend its entries that failed transiently while time
        allows. Returns the messages not confirmed as written, in order."""
        entries = {f"m{i}": message for i, message in enumerate(batch)}  # ids: [A-Za-z0-9_-]
        written: set[str] = set()
        pending = dict(entries)
        for _ in range(MAX_SEND_ROUNDS):
            reply = self._call(pending, deadline) if pending else None
            if reply is None:
                break
            confirmed, failed = entry_results(reply, pending)
            written |= confirmed
            _log_unwritten(pending, confirmed, failed)
            # SenderFault: refused for good (resending the same entry cannot help); neither
            # confirmed nor failed: the reply cannot be trusted. Both go to the next sink.
            pending = {i: m for i, m in pending.items()
                       if i in failed and not failed[i].get("SenderFault")}
        return [m for i, m in entries.items() if i not in written]

    def _call(self, pending: Mapping[str, OverflowMessage], deadline: Deadline) -> Any:
        """One SendMessageBatch call: its reply; None when there was no time to make it, or it
        failed (logged)."""
        client = self._sqs()  # OverflowWriteError when boto3 is missing
        if deadline.remaining_s() < MIN_CALL_S:
            return None
        try:
            with bounded_by(deadline):
                return client.send_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[{"Id": entry_id, "MessageBody": m.body,
                              "MessageAttributes": dict(m.attributes)}
                             for entry_id, m in pending.items()])
        except Exception as exc:  # botocore's and urllib3's: endpoint, timeout, credentials...
            logger.warning("amp_lite: SQS SendMessageBatch failed (%s)", type(exc).__name__)
            return None

    def _sqs(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = _build_client(self._region, self.reserve_s)
            return self._client


def check_queue_url(queue_url: Any) -> None:
    """Refuse, at construction, anything that is not a queue URL (an ARN, a queue name...)."""
    problem = _queue_url_problem(queue_url)
    if problem:
        raise ConfigError(f"SQSOverflow queue_url: {problem}; expected {EXPECTED_QUEUE_URL}")


def _queue_url_problem(url: Any) -> str | None:
    if not isinstance(url, str):
        return f"must be a string, got {type(url).__name__}"
    if not url:
        return "is empty"
    if url.startswith("arn:"):
        return f"{brief(url)} is an ARN, not a queue URL"
    if url != url.strip():
        return f"{brief(url)} has spaces around it"
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises ValueError for a bad one
    except ValueError:
        return f"{brief(url)} is not a URL"
    if parts.scheme not in ("https", "http"):
        return f"{brief(url)} does not start with https:// (or http:// for a local endpoint)"
    if not host:
        return f"{brief(url)} has no host"
    name = parts.path.rsplit("/", 1)[-1]
    if (parts.query or parts.fragment or not _QUEUE_PATH.fullmatch(parts.path)
            or len(name) > MAX_QUEUE_NAME):
        return (f"{brief(url)} does not end in /<account-id>/<queue-name> (a 12-digit account "
                f"id, then up to 80 letters, digits, - or _, .fifo included)")
    return None


def entry_results(reply: Any, sent: Collection[str]) -> tuple[set[str], dict[str, Any]]:
    """The ids among `sent` that `reply` confirms as written (`Successful`, with a MessageId),
    and its `Failed` entries by id. Anything else confirms nothing."""
    if not isinstance(reply, Mapping):
        return set(), {}
    confirmed = {e["Id"] for e in _entries(reply, "Successful")
                 if e["Id"] in sent and isinstance(e.get("MessageId"), str)}
    failed = {e["Id"]: e for e in _entries(reply, "Failed")
              if e["Id"] in sent and e["Id"] not in confirmed}
    return confirmed, failed


def _entries(reply: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    listed = reply.get(key)
    if not isinstance(listed, list):
        return []
    return [e for e in listed if isinstance(e, Mapping) and isinstance(e.get("Id"), str)]


def _log_unwritten(pending: Mapping[str, OverflowMessage], confirmed: set[str],
                   failed: Mapping[str, Any]) -> None:
    for entry in failed.values():
        logger.warning("amp_lite: SQS refused an entry: %s %s (sender fault: %s)",
                       entry.get("Code"), str(entry.get("Message", ""))[:200],
                       entry.get("SenderFault"))
    unanswered = len(pending) - len(confirmed) - len(failed)
    if unanswered:
        logger.warning("amp_lite: SQS's reply confirmed %d of %d entries and failed %d; the "
                       "other %d count as unwritten", len(confirmed), len(pending),
                       len(failed), unanswered)


def _build_client(region: str | None, reserve_s: float) -> Any:
    try:
        return bounded_client("sqs", region=region, timeout_s=reserve_s)
    except ImportError as exc:
        raise OverflowWriteError("SQSOverflow needs boto3: pip install 'amp-lite[sqs]'") from exc
    except Exception as exc:  # NoRegionError and friends
        raise OverflowWriteError(f"could not create an SQS client ({type(exc).__name__}: "
                                 f"{exc}); set AWS_REGION") from exc
