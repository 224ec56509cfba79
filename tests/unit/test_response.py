"""classify(reply, batch): what each Amplitude reply means for every event of the batch.

Follows the replies of https://amplitude.com/docs/apis/analytics/http-v2, as tabled in
docs/design.md, section 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from amp_lite import _report as r
from amp_lite._reply import Reply, Verdict, classify
from amp_lite._wire import BufferedEvent


def event(i: int, *, user: str | None = None, device: str | None = None) -> BufferedEvent:
    user = user if user is not None else f"user-{i}"
    device = device if device is not None else f"device-{i}"
    raw = (f'{{"event_type":"e","insert_id":"id-{i}","user_id":"{user}",'
           f'"device_id":"{device}"}}').encode()
    return BufferedEvent(raw=raw, insert_id=f"id-{i}", user_id=user, device_id=device)


def batch_of(n: int) -> list[BufferedEvent]:
    return [event(i) for i in range(n)]


def ids(events: Sequence[BufferedEvent]) -> list[str]:
    return [e.insert_id for e in events]


def assert_partition(verdict: Verdict, batch: Sequence[BufferedEvent]) -> None:
    """Every event of the batch is in exactly one of the verdict's lists."""
    placed = list(verdict.delivered) + list(verdict.retry)
    for events in verdict.rejected.values():
        placed += events
    for events in verdict.unsettled.values():
        placed += events
    assert sorted(ids(placed)) == sorted(ids(batch))


def bad_request(**fields: Any) -> Reply:
    return Reply(400, {"code": 400, "error": "Invalid field values on some events", **fields})


# -- transport problems and 2xx ----------------------------------------------------------------


@pytest.mark.parametrize("error", ["timeout", "connection", "connection_dropped", "tls",
                                   "protocol:OSError", "response_too_large"])
def test_transport_error_retries_everything_with_backoff(error: str) -> None:
    # GIVEN a batch and a reply that never arrived
    batch = batch_of(3)
    # WHEN it is classified
    verdict = classify(Reply(None, error=error), batch)
    # THEN every event is retried after a backoff, none settled
    assert verdict.retry == batch
    assert verdict.backoff
    assert not verdict.split
    assert not verdict.delivered and not verdict.rejected and not verdict.unsettled
    assert error in verdict.note


def test_no_status_and_no_error_is_retried_with_backoff() -> None:
    # GIVEN a reply with neither a status nor an error
    batch = batch_of(2)
    # WHEN it is classified
    verdict = classify(Reply(None), batch)
    # THEN it is treated as a transport problem
    assert verdict.retry == batch
    assert verdict.backoff


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_with_json_body_delivers_everything(status: int) -> None:
    # GIVEN a batch
    batch = batch_of(4)
    # WHEN Amplitude answers 2xx with its JSON body
    verdict = classify(Reply(status, {"code": status, "events_ingested": 4}), batch)
    # THEN every event is delivered, nothing retried
    assert verdict.delivered == batch
    assert not verdict.retry and not verdict.rejected and not verdict.unsettled
    assert not verdict.backoff


def test_2xx_with_empty_json_object_is_delivered() -> None:
    # GIVEN a 200 whose body is JSON but empty: still a JSON answer
    batch = batch_of(1)
    # WHEN it is classified
    verdict = classify(Reply(200, {}), batch)
    # THEN the event is delivered
    assert verdict.delivered == batch


def test_2xx_without_json_body_is_retried_with_backoff() -> None:
    # GIVEN a 200 that is not Amplitude's JSON (a proxy page, a captive portal)
    batch = batch_of(3)
    # WHEN it is classified
    verdict = classify(Reply(200, None), batch)
    # THEN it is not trusted: everything is retried after a backoff
    assert verdict.retry == batch
    assert verdict.backoff
    assert not verdict.delivered


# -- 400 ----------------------------------------------------------------------------------------


def test_400_invalid_api_key_refuses_the_request_and_overflows_everything() -> None:
    # GIVEN a batch
    batch = batch_of(5)
    # WHEN Amplitude says the key is invalid (the body echoes the key)
    verdict = classify(Reply(400, {"code": 400, "error": "Invalid API key: abc123"}), batch)
    # THEN the request is refused: the whole batch is left for overflow (a fixed key delivers
    # it later), nothing rejected, nothing retried now
    assert verdict.unsettled == {r.REFUSED_API_KEY: batch}
    assert verdict.refused == r.REFUSED_API_KEY
    assert not verdict.retry and not verdict.delivered and not verdict.rejected
    # AND the note does not repeat the key from the body
    assert "abc123" not in verdict.note


def test_400_invalid_api_key_wins_over_index_lists() -> None:
    # GIVEN an invalid-key 400 that also carries an index list
    batch = batch_of(3)
    reply = Reply(400, {"code": 400, "error": "Invalid API key: k",
                        "events_with_invalid_fields": {"time": [0]}})
    # WHEN it is classified
    verdict = classify(reply, batch)
    # THEN the key's refusal wins: everything is left for overflow, nothing rejected
    assert verdict.unsettled == {r.REFUSED_API_KEY: batch}
    assert not verdict.retry and not verdict.rejected


def test_400_missing_field_refuses_the_request_and_overflows_everything() -> None:
    # GIVEN a batch
    batch = batch_of(3)
    # WHEN Amplitude says a request field is missing
    reply = Reply(400, {"code": 400, "error": "Request missing required field",
                        "missing_field": "api_key"})
    verdict = classify(reply, batch)
    # THEN the request is refused: the whole batch is left for overflow as missing_field
    assert verdict.unsettled == {r.REFUSED_MISSING_FIELD: batch}
    assert verdict.refused == r.REFUSED_MISSING_FIELD
    assert not verdict.retry and not verdict.delivered and not verdict.rejected
    assert "api_key" in verdict.note


@pytest.mark.parametrize("key", ["events_with_missing_fields", "events_with_invalid_fields",
                                 "events_with_invalid_id_lengths"])
def test_400_index_groups_reject_named_events_and_retry_the_rest_at_once(key: str) -> None:
    # GIVEN a batch of 5
    batch = batch_of(5)
    # WHEN a 400 names events 1 and 3 under one field, and 3 again under another
    verdict = classify(bad_request(**{key: {"user_id": [1, 3], "device_id": [3]}}), batch)
    # THEN events 1 and 3 are rejected as invalid, once each
    assert verdict.rejected == {r.REJECTED_INVALID: [batch[1], batch[3]]}
    # AND the others are retried at once (no backoff, no split), in order
    assert verdict.retry == [batch[0], batch[2], batch[4]]
    assert not verdict.backoff
    assert not verdict.split
    assert_partition(verdict, batch)


def test_400_silenced_events_are_rejected() -> None:
    # GIVEN a batch of 8 and the documented silenced-device body
    batch = batch_of(8)
    reply = Reply(400, {"code": 400, "eps_threshold": 100,
                        "error": "Events silenced for device_id",
                        "exceeded_daily_quota_devices": {},
                        "silenced_devices": ["d1", "d2"], "silenced_events": [5, 6],
                        "throttled_devices": {"d3": 0}, "throttled_events": [3, 4]})
    # WHEN it is classified
    verdict = classify(reply, batch)
    # THEN the silenced events are rejected; the rest (throttled ones included) retried at once
    assert ids(verdict.rejected[r.REJECTED_INVALID]) == ["id-5", "id-6"]
    assert ids(verdict.retry) == ["id-0", "id-1", "id-2", "id-3", "id-4", "id-7"]
    assert not verdict.backoff
    assert_partition(verdict, batch)


def test_400_union_of_all_index_lists() -> None:
    # GIVEN a 400 naming different events under every documented list
    batch = batch_of(6)
    reply = bad_request(events_with_missing_fields={"event_type": [0]},
                        events_with_invalid_fields={"time": [2]},
                        events_with_invalid_id_lengths={"user_id": [4]},
                        silenced_events=[5])
    # WHEN it is classified
    verdict = classify(reply, batch)
    # THEN all named events are rejected and the rest retried
    assert ids(verdict.rejected[r.REJECTED_INVALID]) == ["id-0", "id-2", "id-4", "id-5"]
    assert ids(verdict.retry) == ["id-1", "id-3"]


def test_400_out_of_range_indices_are_ignored() -> None:
    # GIVEN a batch of 3 and a 400 naming index 1 plus indices that do not exist
    batch = batch_of(3)
    reply = bad_request(events_with_invalid_fields={"time": [1, 3, 99, -1]},
                        silenced_events=[7])
    # WHEN it is classified
    verdict = classify(reply, batch)
    # THEN only event 1 is rejected; nothing is invented or lost
    assert verdict.rejected == {r.REJECTED_INVALID: [batch[1]]}
    assert verdict.retry == [batch[0], batch[2]]
    assert_partition(verdict, batch)


def test_400_only_out_of_range_indices_names_nothing() -> None:
    # GIVEN a batch of 2 and a 400 whose only index is out of range
    batch = batch_of(2)
    # WHEN it is classified
    verdict = classify(bad_request(events_with_invalid_fields={"time": [5]}), batch)
    # THEN it is treated as naming no event: the batch is split
    assert verdict.split
    assert verdict.retry == batch
    assert not verdict.rejected


def test_400_bare_int_index_is_accepted() -> None:
    # GIVEN a 400 whose field maps to a bare int (HTTP V2 docs: "the index of the first event")
    batch = batch_of(4)
    reply = bad_request(events_with_invalid_fields={"user_id": 2}, silenced_events=0)
    # WHEN it is classified
    verdict = classify(reply, batch)
    # THEN events 0 and 2 are rejected, the rest retried
    assert ids(verdict.rejected[r.REJECTED_INVALID]) == ["id-0", "id-2"]
    assert ids(verdict.retry) == ["id-1", "id-3"]


def test_400_non_int_indices_are_ignored() -> None:
    # GIVEN a 400 whose index lists hold strings, bools and floats besides a real index
    batch = batch_of(3)
    reply = bad_request(events_with_invalid_fields={"time": ["0", True, 1.0, 2]})
    # WHEN it is classified
    verdict = classify(reply, batch)
    # THEN only the int index counts (True is not index 1)
    assert verdict.rejected == {r.REJECTED_INVALID: [batch[2]]}
    assert verdict.retry == [batch[0], batch[1]]


def test_400_naming_every_event_leaves_nothing_to_retry() -> None:
    # GIVEN a 400 naming all events
    batch = batch_of(2)
    # WHEN it is classified
    verdict = classify(bad_request(events_with_missing_fields={"device_id": [0, 1]}), batch)
    # THEN all are rejected and nothing is retried
    assert verdict.rejected == {r.REJECTED_INVALID: batch}
    assert verdict.retry == []


def test_400_naming_nothing_on_a_single_event_rejects_it_as_bad_request() -> None:
    # GIVEN a single event
    batch = batch_of(1)
    # WHEN a 400 names no event
    verdict = classify(Reply(400, {"code": 400, "error": "Invalid JSON request body"}), batch)
    # THEN the event is rejected as bad_request
    assert verdict.rejected == {r.REJECTED_BAD_REQUEST: batch}
    assert not verdict.retry and not verdict.split


def test_400_naming_nothing_on_several_events_splits() -> None:
    # GIVEN several events
    batch = batch_of(4)
    # WHEN a 400 names no event
    verdict = classify(Reply(400, {"code": 400, "error": "Invalid JSON request body"}), batch)
    # THEN the batch is retried in halves, with no backoff and nothing rejected
    assert verdict.split
    assert verdict.retry == batch
    assert not verdict.backoff
    assert not verdict.rejected


def test_400_without_a_body_on_several_events_splits() -> None:
    # GIVEN a 400 whose body was not JSON
    batch = batch_of(3)
    # WHEN it is classified
    verdict = classify(Reply(400, None), batch)
    # THEN it names nothing: split
    assert verdict.split
    assert verdict.retry == batch


# -- 403, 408, 5xx, 413 -------------------------------------------------------------------------


def test_403_refuses_the_request_and_overflows_everything_as_forbidden() -> None:
    # GIVEN a batch
    batch = batch_of(3)
    # WHEN the WAF answers 403
    verdict = classify(Reply(403, {"code": 403, "error": "Forbidden"}), batch)
    # THEN nothing is retried now and nothing rejected: all left for overflow as forbidden
    assert verdict.unsettled == {r.REFUSED_FORBIDDEN: batch}
    assert verdict.refused == r.REFUSED_FORBIDDEN
    assert not verdict.retry and not verdict.backoff and not verdict.rejected


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504, 599])
def test_408_and_5xx_retry_with_backoff_and_carry_retry_after(status: int) -> None:
    # GIVEN a batch
    batch = batch_of(3)
    # WHEN the server answers a retryable status with Retry-After: 1.5
    verdict = classify(Reply(status, None, retry_after_s=1.5), batch)
    # THEN everything is retried after a backoff, and the Retry-After is carried through
    assert verdict.retry == batch
    assert verdict.backoff
    assert verdict.retry_after_s == 1.5
    assert not verdict.split and not verdict.rejected and not verdict.unsettled


def test_5xx_without_retry_after_carries_none() -> None:
    # GIVEN a 503 without Retry-After
    verdict = classify(Reply(503, {"code": 503}), batch_of(1))
    # THEN no Retry-After is invented
    assert verdict.retry_after_s is None
    assert verdict.backoff


def test_413_single_event_is_rejected_too_large() -> None:
    # GIVEN a single event
    batch = batch_of(1)
    # WHEN Amplitude answers 413
    verdict = classify(Reply(413, {"code": 413, "error": "Payload too large"}), batch)
    # THEN it is rejected as too_large
    assert verdict.rejected == {r.REJECTED_TOO_LARGE: batch}
    assert not verdict.retry and not verdict.split


def test_413_several_events_are_split() -> None:
    # GIVEN several events
    batch = batch_of(4)
    # WHEN Amplitude answers 413
    verdict = classify(Reply(413, {"code": 413, "error": "Payload too large"}), batch)
    # THEN the batch is retried in halves, at once
    assert verdict.split
    assert verdict.retry == batch
    assert not verdict.backoff
    assert not verdict.rejected


# -- 429 ----------------------------------------------------------------------------------------


def test_429_throttled_events_are_unsettled_and_the_rest_retried_at_once() -> None:
    # GIVEN a batch of 8 and the documented 429 body
    batch = batch_of(8)
    reply = Reply(429, {"code": 429, "error": "Too many requests for some devices and users",
                        "eps_threshold": 30, "throttled_devices": {"device-3": 31},
                        "throttled_users": {"user-4": 32}, "throttled_events": [3, 4, 7]})
    # WHEN it is classified
    verdict = classify(reply, batch)
    # THEN the throttled events are unsettled as throttled (they go to overflow)
    assert verdict.unsettled == {r.UNSETTLED_THROTTLED: [batch[3], batch[4], batch[7]]}
    # AND the others are retried at once, without backoff
    assert ids(verdict.retry) == ["id-0", "id-1", "id-2", "id-5", "id-6"]
    assert not verdict.backoff
    assert not verdict.rejected
    assert_partition(verdict, batch)


def test_429_throttled_and_over_daily_quota_is_rejected() -> None:
    # GIVEN events 1 (quota user), 2 (quota device), 3 (throttled only), 0 and 4 (fine)
    batch = [event(0), event(1, user="quota-user"), event(2, device="quota-device"), event(3),
             event(4)]
    reply = Reply(429, {"code": 429, "throttled_events": [1, 2, 3],
                        "exceeded_daily_quota_users": {"quota-user": 500200},
                        "exceeded_daily_quota_devices": {"quota-device": 500900}})
    # WHEN it is classified
    verdict = classify(reply, batch)
    # THEN quota events are rejected, the merely throttled one unsettled, the rest retried
    assert verdict.rejected == {r.REJECTED_DAILY_QUOTA: [batch[1], batch[2]]}
    assert verdict.unsettled == {r.UNSETTLED_THROTTLED: [batch[3]]}
    assert verdict.retry == [batch[0], batch[4]]
    assert not verdict.backoff
    assert_partition(verdict, batch)


def test_429_quota_lists_may_be_arrays_of_ids() -> None:
    # GIVEN quota ids given as a list rather than an object
    batch = [event(0, user="q"), event(1)]
    reply = Reply(429, {"code": 429, "throttled_events": [0, 1],
                        "exceeded_daily_quota_users": ["q"]})
    # WHEN it is classified
    verdict = classify(reply, batch)
    # THEN the quota user's event is rejected, the other throttled
    assert verdict.rejected == {r.REJECTED_DAILY_QUOTA: [batch[0]]}
    assert verdict.unsettled == {r.UNSETTLED_THROTTLED: [batch[1]]}


def test_429_non_throttled_event_of_a_quota_user_is_retried() -> None:
    # GIVEN a quota user whose event is not in throttled_events
    batch = [event(0, user="q"), event(1)]
    reply = Reply(429, {"code": 429, "throttled_events": [1],
                        "exceeded_daily_quota_users": {"q": 1}})
    # WHEN it is classified
    verdict = classify(reply, batch)
    # THEN only throttled indices are judged; event 0 is retried at once
    assert verdict.retry == [batch[0]]
    assert verdict.unsettled == {r.UNSETTLED_THROTTLED: [batch[1]]}
    assert not verdict.rejected


def test_429_without_throttled_events_falls_back_to_throttled_ids() -> None:
    # GIVEN a 429 naming throttled users and devices but no indices
    batch = [event(0), event(1, user="hot-user"), event(2, device="hot-device"), event(3)]
    reply = Reply(429, {"code": 429, "throttled_users": {"hot-user": 31},
                        "throttled_devices": {"hot-device": 40}})
    # WHEN it is classified
    verdict = classify(reply, batch)
    # THEN the events of those ids are throttled, the rest retried at once
    assert verdict.unsettled == {r.UNSETTLED_THROTTLED: [batch[1], batch[2]]}
    assert verdict.retry == [batch[0], batch[3]]
    assert not verdict.backoff


def test_429_without_indices_quota_ids_are_rejected() -> None:
    # GIVEN a 429 with only quota ids
    batch = [event(0), event(1, device="quota-device")]
    reply = Reply(429, {"code": 429, "exceeded_daily_quota_devices": {"quota-device": 500900}})
    # WHEN it is classified
    verdict = classify(reply, batch)
    # THEN the quota device's event is rejected; the other retried at once
    assert verdict.rejected == {r.REJECTED_DAILY_QUOTA: [batch[1]]}
    assert verdict.retry == [batch[0]]


def test_429_naming_nothing_throttles_everything() -> None:
    # GIVEN a bare 429
    batch = batch_of(3)
    # WHEN it is classified
    verdict = classify(Reply(429, {"code": 429, "error": "Too many requests"}), batch)
    # THEN every event is unsettled as throttled; nothing retried in this flush
    assert verdict.unsettled == {r.UNSETTLED_THROTTLED: batch}
    assert not verdict.retry
    assert not verdict.rejected


def test_429_out_of_range_throttled_indices_fall_back() -> None:
    # GIVEN a 429 whose only throttled index does not exist in the batch, naming a user
    batch = [event(0), event(1, user="hot")]
    reply = Reply(429, {"code": 429, "throttled_events": [9], "throttled_users": {"hot": 31}})
    # WHEN it is classified
    verdict = classify(reply, batch)
    # THEN the named user's event is throttled, the other retried
    assert verdict.unsettled == {r.UNSETTLED_THROTTLED: [batch[1]]}
    assert verdict.retry == [batch[0]]


# -- anything else ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 401, 404, 405, 409, 422])
def test_unexpected_status_is_unsettled_http_error(status: int) -> None:
    # GIVEN a batch
    batch = batch_of(2)
    # WHEN the server answers a status Amplitude does not use (a wrong URL, say)
    verdict = classify(Reply(status, {"code": status, "error": "Invalid request path"}), batch)
    # THEN the events are unsettled as http_error (overflowed, not lost, not retried)
    assert verdict.unsettled == {r.UNSETTLED_HTTP_ERROR: batch}
    assert not verdict.retry and not verdict.rejected and not verdict.delivered
    assert str(status) in verdict.note


def test_classify_does_not_mutate_the_batch() -> None:
    # GIVEN a batch kept as a tuple
    batch = tuple(batch_of(3))
    # WHEN a 400 with an index is classified
    verdict = classify(bad_request(silenced_events=[0]), batch)
    # THEN the verdict holds new lists and the input is unchanged
    assert verdict.retry == list(batch[1:])
    assert batch == tuple(batch_of(3))


def test_reply_names_the_http_status_and_the_body_code_apart() -> None:
    # GIVEN a proxy that answers 200 around Amplitude's own 400 body
    reply = Reply(200, {"code": 400, "error": "Invalid API key: k"})
    # THEN both are kept, and the body's code is the status the reply is judged by
    assert (reply.http_status, reply.code, reply.status) == (200, 400, 400)
    # AND without an integer code the HTTP status decides
    assert Reply(503, {"code": "busy"}).status == 503
    assert Reply(502, None).code is None
