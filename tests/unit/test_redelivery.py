"""The replay's per-record backoff (`amp_lite._redelivery`): the schedule, how long it keeps a
record on the queue against template.yaml's redrive and retention, the queue URL taken from
the record's ARN, and the batching of the visibility changes (a recording SQS client)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from amp_lite._deadline import Deadline
from amp_lite._errors import ConfigError
from amp_lite._redelivery import (
    BASE_BACKOFF_S,
    MAX_BACKOFF_S,
    SQS_MAX_VISIBILITY_S,
    Backoff,
    QueueRef,
    Redelivery,
    backoff_s,
    covered_s,
)

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
DAY_S = 86_400
# What template.yaml's OverflowQueue is to say once issue 14 item 10's template change lands
# (made in parallel by another engineer: this file only reads it).


# -- the schedule -------------------------------------------------------------------------------

def test_the_delay_doubles_per_receive_from_30_s() -> None:
    assert [backoff_s(n) for n in range(1, 8)] == [30, 60, 120, 240, 480, 960, 1920]
    assert backoff_s(11) == 30 * 2**10 == 30_720


def test_the_delay_is_capped_under_the_sqs_maximum() -> None:
    # 30 x 2^11 = 61,440 s would pass 12 h; the cap leaves room for the time since the receive
    assert MAX_BACKOFF_S == 42_000 < SQS_MAX_VISIBILITY_S == 43_200
    assert [backoff_s(n) for n in (12, 13, 20, 1000, 10**9)] == [MAX_BACKOFF_S] * 5


@pytest.mark.parametrize("count", [None, "", "x", "1.5", "0", "-2", 0, -7, True, 2.0, [], {}])
def test_a_missing_or_garbage_receive_count_counts_as_the_first_receive(count: object) -> None:
    assert backoff_s(count) == BASE_BACKOFF_S == 30


@pytest.mark.parametrize(("count", "expected"), [("1", 30), ("3", 120), (" 2 ", 60), (4, 240),
                                                 ("99999999999999999999", MAX_BACKOFF_S)])
def test_a_receive_count_is_read_from_the_attribute_string(count: object, expected: int) -> None:
    assert backoff_s(count) == expected


def test_an_injected_base_and_cap() -> None:
    schedule = Backoff(base_s=2, cap_s=10)
    assert [schedule.delay_s(n) for n in range(1, 6)] == [2, 4, 8, 10, 10]
    assert schedule.covered_s(5) == 34
    assert Backoff(base_s=0, cap_s=0).delay_s(5) == 0


@pytest.mark.parametrize("bad", [{"base_s": -1}, {"cap_s": 43_201}, {"base_s": 1.5},
                                 {"cap_s": True}, {"base_s": "30"}])
def test_a_bad_schedule_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="whole number of seconds"):
        Backoff(**bad)


def test_covered_sums_the_delays() -> None:
    assert covered_s(0) == 0
    assert covered_s(3) == 30 + 60 + 120
    assert covered_s(11) == 30 * (2**11 - 1) == 61_410
    assert covered_s(20) == 61_410 + 9 * MAX_BACKOFF_S == 439_410  # 5.1 days
    # the old redrive: 5 receives now cover 15.5 minutes of backoff, not 30 minutes
    assert covered_s(5) == 930


# -- against template.yaml's overflow queue -----------------------------------------------------

class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !GetAtt, !Sub): kept as {tag: value}."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node)}
    return {suffix: loader.construct_mapping(node)}  # type: ignore[arg-type]


_CfnLoader.add_multi_constructor("!", _tag)


def _resources() -> dict[str, Any]:
    template = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # a SafeLoader
    resources: dict[str, Any] = template["Resources"]
    return resources


def _overflow_queue() -> tuple[int, int]:
    """(maxReceiveCount, MessageRetentionPeriod) of template.yaml's OverflowQueue."""
    queue = _resources()["OverflowQueue"]["Properties"]
    return int(queue["RedrivePolicy"]["maxReceiveCount"]), int(queue["MessageRetentionPeriod"])


def test_the_template_lets_a_day_long_outage_drain_by_itself() -> None:
    # GIVEN the overflow queue's redrive and retention
    max_receives, retention_s = _overflow_queue()
    # WHEN a record first received when an outage starts keeps failing
    # THEN it is still tried, by the last receive before the dead-letter queue, after a day,
    # and that receive comes before the queue's retention deletes it
    last_receive_at = covered_s(max_receives - 1)
    assert last_receive_at >= DAY_S, (
        f"with maxReceiveCount {max_receives} a failing record's last receive comes "
        f"{last_receive_at} s after its first: an outage longer than that needs a manual drain")
    assert retention_s > DAY_S


def test_a_record_failing_for_good_reaches_the_dead_letter_queue_before_it_expires() -> None:
    # GIVEN the overflow queue's redrive and retention
    max_receives, retention_s = _overflow_queue()
    # WHEN a record fails on every receive (SQS deletes a message at the end of the retention
    # period, counted from when it was sent, and does not move it to the dead-letter queue)
    to_dlq_s = covered_s(max_receives)
    # THEN it moves to the dead-letter queue first, where `amp-lite replay` can drain it
    assert to_dlq_s < retention_s, (
        f"with maxReceiveCount {max_receives} the backoff keeps a failing record on the queue "
        f"{to_dlq_s} s ({to_dlq_s / DAY_S:.2f} days) before the dead-letter queue, longer than "
        f"MessageRetentionPeriod {retention_s} s ({retention_s / DAY_S:.2f} days): it would "
        f"expire instead. Needs a retention of at least {to_dlq_s} s (e.g. 604800, 7 days) or "
        f"maxReceiveCount <= {max(n for n in range(1, 100) if covered_s(n) < retention_s)}")


# -- the queue URL, from the record's ARN ------------------------------------------------------

@pytest.mark.parametrize(("arn", "ref"), [
    ("arn:aws:sqs:us-east-1:123456789012:amp-lite-overflow",
     QueueRef("us-east-1", "123456789012", "amp-lite-overflow")),
    ("arn:aws-cn:sqs:cn-north-1:123456789012:q_1", QueueRef("cn-north-1", "123456789012", "q_1")),
    ("arn:aws-us-gov:sqs:us-gov-west-1:123456789012:orders.fifo",
     QueueRef("us-gov-west-1", "123456789012", "orders.fifo")),
])
def test_an_sqs_arn_names_the_queue(arn: str, ref: QueueRef) -> None:
    assert QueueRef.from_arn(arn) == ref


@pytest.mark.parametrize("arn", [None, "", 42, "arn:aws:sns:us-east-1:123456789012:topic",
                                 "arn:aws:sqs:us-east-1:12345:q", "https://sqs.x/1/q",
                                 "arn:aws:sqs:us-east-1:123456789012:"])
def test_anything_else_names_no_queue(arn: object) -> None:
    assert QueueRef.from_arn(arn) is None


def test_the_queue_url_is_on_the_clients_endpoint() -> None:
    ref = QueueRef("cn-north-1", "123456789012", "q")
    assert ref.url("https://sqs.cn-north-1.amazonaws.com.cn") == (
        "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q")
    assert ref.url("http://127.0.0.1:5000/") == "http://127.0.0.1:5000/123456789012/q"


# -- the visibility changes --------------------------------------------------------------------

class _Meta:
    endpoint_url = "https://sqs.us-east-1.amazonaws.com"


class _RecordingSQS:
    """Records ChangeMessageVisibilityBatch calls; confirms every entry, or raises."""

    meta = _Meta()

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.error = error

    def change_message_visibility_batch(self, **call: Any) -> dict[str, Any]:
        self.calls.append(call)
        if self.error is not None:
            raise self.error
        return {"Successful": [{"Id": e["Id"]} for e in call["Entries"]], "Failed": []}


ARN = "arn:aws:sqs:us-east-1:123456789012:overflow"


def _record(n: int, *, count: object = "1", arn: object = ARN) -> dict[str, Any]:
    return {"messageId": f"m{n}", "receiptHandle": f"h{n}", "eventSourceARN": arn,
            "attributes": {"ApproximateReceiveCount": count}}


def _redelivery(sqs: _RecordingSQS) -> Redelivery:
    redelivery = Redelivery(Backoff())
    redelivery._clients["us-east-1"] = sqs  # the client it would build for the ARN's region
    return redelivery


def test_only_the_named_records_are_changed_ten_per_call() -> None:
    # GIVEN 25 records, 23 of which failed, with receive counts 1, 2, 3...
    sqs = _RecordingSQS()
    records = [_record(n, count=str(n + 1)) for n in range(25)]
    failed = [f"m{n}" for n in range(25) if n not in (3, 7)]

    # WHEN they are postponed
    done = _redelivery(sqs).postpone(records, failed, Deadline.after(5))

    # THEN three calls of at most 10 changed exactly the failed ones, each by its receive count
    assert done == 23
    assert [len(c["Entries"]) for c in sqs.calls] == [10, 10, 3]
    assert {c["QueueUrl"] for c in sqs.calls} == {
        "https://sqs.us-east-1.amazonaws.com/123456789012/overflow"}
    entries = [e for c in sqs.calls for e in c["Entries"]]
    assert [e["ReceiptHandle"] for e in entries] == [f"h{n}" for n in range(25)
                                                     if n not in (3, 7)]
    assert all(e["VisibilityTimeout"] == backoff_s(int(e["ReceiptHandle"][1:]) + 1)
               for e in entries)


def test_records_without_an_arn_or_handle_are_skipped_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    sqs = _RecordingSQS()
    records = [_record(0, arn="not an arn"), {**_record(1), "receiptHandle": None},
               _record(2, count=None), "not a record"]
    with caplog.at_level(logging.WARNING, logger="amp_lite"):
        done = _redelivery(sqs).postpone(records, ["m0", "m1", "m2"], Deadline.after(5))  # type: ignore[list-item]
    assert done == 1
    assert [e["VisibilityTimeout"] for c in sqs.calls for e in c["Entries"]] == [30]
    assert any("2 failed records have no SQS eventSourceARN" in r.getMessage()
               for r in caplog.records)


def test_a_failing_sqs_call_never_raises_and_stops_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    sqs = _RecordingSQS(error=TimeoutError("hung"))
    records = [_record(n) for n in range(15)]
    with caplog.at_level(logging.WARNING, logger="amp_lite"):
        done = _redelivery(sqs).postpone(records, [f"m{n}" for n in range(15)],
                                         Deadline.after(5))
    assert done == 0 and len(sqs.calls) == 1
    assert any("15 failed records keep the queue's visibility timeout" in r.getMessage()
               for r in caplog.records)


def test_no_call_is_made_without_time_left() -> None:
    sqs = _RecordingSQS()
    assert _redelivery(sqs).postpone([_record(0)], ["m0"], Deadline.after(0)) == 0
    assert sqs.calls == []


def test_entries_sqs_lists_as_failed_do_not_count(caplog: pytest.LogCaptureFixture) -> None:
    class _Refusing(_RecordingSQS):
        def change_message_visibility_batch(self, **call: Any) -> dict[str, Any]:
            self.calls.append(call)
            return {"Successful": [{"Id": "r0"}], "Failed": [
                {"Id": "r1", "Code": "ReceiptHandleIsInvalid", "SenderFault": True,
                 "Message": "gone"}]}

    with caplog.at_level(logging.WARNING, logger="amp_lite"):
        done = _redelivery(_Refusing()).postpone([_record(0), _record(1)], ["m0", "m1"],
                                                 Deadline.after(5))
    assert done == 1
    assert any("ReceiptHandleIsInvalid" in r.getMessage() for r in caplog.records)


def test_an_unexpected_error_of_ours_is_logged_not_raised(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="amp_lite"):
        done = _redelivery(_RecordingSQS()).postpone(None, ["m0"], Deadline.after(5))  # type: ignore[arg-type]
    assert done == 0
    assert any("could not change the visibility" in r.getMessage() for r in caplog.records)
