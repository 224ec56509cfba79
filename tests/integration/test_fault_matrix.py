"""The fault matrix, end to end (issue 8: item 1, and item 4's scan for the API key).

Every fault FakeAmplitude can script, and the unreachable-server faults it cannot (connection
refused, DNS failure), crossed with SQS up (overflow to a moto queue) and SQS down (the queue's
endpoint is a closed 127.0.0.1 port, so the local spill takes over). Each cell runs
`tests/support/matrix_handler.py` under the real awslambdaric runtime client with a 3 s timeout,
one warm runtime process per SQS mode, and asserts:

- the invocation responded before its deadline minus the 500 ms margin (plus a scheduling
  tolerance), measured on the Runtime API side;
- no thread was started during the invocation (flush included);
- the flush's accounting identity, `tracked + recovered == delivered + rejected + overflowed +
  dropped`, with nothing dropped, and each event in the state the fault calls for; what
  overflowed is exactly what is on the queue (SQS up) or in the spill (SQS down);
- after replay (SQS: the replay consumer over the queue until it is empty; spill: a follow-up
  invocation of the same warm runtime), with Amplitude healthy, the insert_ids FakeAmplitude
  accepted are the tracked ones minus those it rejected, each once;
- the API key appears nowhere in what was captured: runtime output, replay logs, results,
  overflow messages, spill files.

Set AMP_LITE_MATRIX_OUT to a path to get the matrix as a markdown table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from amp_lite import Amplitude
from amp_lite.replay import make_handler
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.lambda_runtime import (
    REPO_ROOT,
    InvocationResult,
    RuntimeProcess,
    lambda_runtime,
)
from tests.support.sqs_events import (
    REGION,
    create_queue,
    decoded_events,
    failed_ids,
    lambda_sqs_event,
    queue_arn,
    queue_depth,
    receive,
    settle,
    sqs_client,
)

SUPPORT = REPO_ROOT / "tests" / "support"
FUNCTION_TIMEOUT_MS = 3000
MARGIN_MS = 500  # amp_lite._wrap.DEFAULT_MARGIN_MS
SCHEDULING_TOLERANCE_MS = 400
REPLAY_REMAINING_MS = 10_000
MAX_REPLAY_ROUNDS = 10

USER_IDS = [f"matrix-user-{n}" for n in range(6)]
MARKED = (1, 4)  # the events a fault picks out: invalid, throttled, over their daily quota
MARKED_USERS = [USER_IDS[n] for n in MARKED]
PERSISTENT = 40  # copies of a fault that lasts the whole invocation: more than any attempt count
OTHER_KEY = "another-project-key-00000000"  # the only key the invalid-key server accepts
INVALID_HOST_URL = "http://amp-lite-nonexistent.invalid/2/httpapi"  # .invalid never resolves
INVALID_HOST = "amp-lite-nonexistent.invalid"

SQS_UP = "sqs-up"
SQS_DOWN = "sqs-down"

# Outcomes: where the events of the measured invocation must end.
DELIVERED = "delivered"  # all delivered
REJECTED_MARKED = "rejected_marked"  # the MARKED ones rejected, the rest delivered
OVERFLOWED_ALL = "overflowed_all"
OVERFLOWED_MARKED = "overflowed_marked"  # the MARKED ones overflowed, the rest delivered
RETRYABLE = frozenset({"deadline", "retries_exhausted"})


@dataclass(frozen=True)
class Cell:
    fault: str
    label: str
    outcome: str
    reasons: frozenset[str]  # the rejected or overflowed reasons the outcome may carry
    server_had_them: bool = False  # the server ingested the events though the reply never came
    # the requests the server saw during the invocation, (status, events), when they are fixed
    requests: tuple[tuple[int | None, int], ...] | None = None


CELLS = [
    Cell("500", "500 Internal Server Error (every attempt)", OVERFLOWED_ALL, RETRYABLE),
    Cell("502", "502 Bad Gateway (every attempt)", OVERFLOWED_ALL, RETRYABLE),
    Cell("503", "503 Service Unavailable (every attempt)", OVERFLOWED_ALL, RETRYABLE),
    Cell("504", "504 Gateway Timeout (every attempt)", OVERFLOWED_ALL, RETRYABLE),
    # a refused request says nothing about its events: they are overflowed, never rejected
    Cell("403", "403 Forbidden", OVERFLOWED_ALL, frozenset({"forbidden"}),
         requests=((403, 6),)),
    Cell("400-invalid-fields", "400 naming invalid events (indices 1, 4)", REJECTED_MARKED,
         frozenset({"invalid_event"}), requests=((400, 6), (200, 4))),
    Cell("400-invalid-api-key", "400 Invalid API key", OVERFLOWED_ALL,
         frozenset({"invalid_api_key"}), requests=((400, 6),)),  # its body names the key
    Cell("413", "413 Payload too large (first request)", DELIVERED, frozenset(),
         requests=((413, 6), (200, 3), (200, 3))),
    Cell("429-throttled", "429 throttling 2 of 6 users", OVERFLOWED_MARKED,
         frozenset({"throttled"}), requests=((429, 6), (200, 4))),
    Cell("429-daily-quota", "429 daily quota exceeded by 2 of 6 users", REJECTED_MARKED,
         frozenset({"daily_quota"}), requests=((429, 6), (200, 4))),
    Cell("connection-refused", "connection refused (closed port)", OVERFLOWED_ALL, RETRYABLE),
    Cell("reset", "reset before the response (every attempt)", OVERFLOWED_ALL, RETRYABLE),
    Cell("reset-mid-body", "reset mid-body (every attempt)", OVERFLOWED_ALL, RETRYABLE),
    Cell("hang", "hang (no reply)", OVERFLOWED_ALL, frozenset({"deadline"})),
    Cell("slow-body", "body trickled over 10 s (events ingested)", OVERFLOWED_ALL,
         frozenset({"deadline"}), server_had_them=True),
    Cell("idle-connection-closed", "kept-alive connection closed while idle", DELIVERED,
         frozenset(), requests=((200, 2), (200, 6))),  # the warm-up, then the measured one
    Cell("non-json-200", "200 with an HTML body (every attempt)", OVERFLOWED_ALL, RETRYABLE),
    Cell("dns-failure", "DNS failure (.invalid host)", OVERFLOWED_ALL, RETRYABLE),
]

# Cells that reveal a bug in amp_lite: {(fault, mode): reason}; marked xfail(strict=True).
BUGS: dict[tuple[str, str], str] = {}


# -- the matrix table -----------------------------------------------------------------------


@dataclass
class Row:
    summary: dict[str, Any]
    took_ms: int
    budget_ms: int  # from the invocation's start to its deadline
    accepted: int | None = None  # insert_ids FakeAmplitude held after replay
    expected_accepted: int | None = None


ROWS: dict[tuple[str, str], Row] = {}


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(sorted(counts))


def _count(value: int, reasons: dict[str, int] | None = None) -> str:
    if not value:
        return "0"
    return f"{value} ({_reasons(reasons)})" if reasons else str(value)


def _table() -> str:
    lines = [
        "| Fault | SQS | delivered | rejected | overflowed to SQS | spilled | dropped "
        "| responded (deadline 3000 ms) | accepted after replay |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in CELLS:
        for mode in (SQS_UP, SQS_DOWN):
            row = ROWS.get((cell.fault, mode))
            if row is None:
                continue
            s = row.summary
            to = s["overflowed_to"]
            reasons = s["overflowed_reasons"]
            sqs = _count(to.get("sqs", 0), reasons if to.get("sqs") else None)
            spilled = _count(to.get("local_spill", 0), reasons if to.get("local_spill") else None)
            accepted = ("-" if row.accepted is None
                        else f"{row.accepted} of {row.expected_accepted} expected, once each")
            lines.append(
                f"| {cell.label} | {'up' if mode == SQS_UP else 'down'} | {s['delivered']} "
                f"| {_count(s['rejected'], s['rejected_reasons'])} | {sqs} | {spilled} "
                f"| {_count(s['dropped'], s['dropped_reasons'])} "
                f"| {row.took_ms} ms (limit {row.budget_ms - MARGIN_MS} ms) | {accepted} |")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", autouse=True)
def matrix_table() -> Iterator[None]:
    yield
    out = os.environ.get("AMP_LITE_MATRIX_OUT")
    if out and ROWS:
        Path(out).write_text(_table())


# -- the runtime, one warm process per SQS mode ---------------------------------------------


@dataclass
class Runtime:
    mode: str
    process: RuntimeProcess
    spill: Path
    sqs: Any  # a client of the moto server (SQS up) or None
    queue_url: str | None
    queue_arn: str | None
    captured: list[str] = field(default_factory=list)  # texts scanned for the key


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections: bound (so nothing else takes it), no listen."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def runtime(request: pytest.FixtureRequest, moto_server: str, closed_port: int,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    mode = request.param
    work = tmp_path_factory.mktemp(f"matrix-{mode}")
    spill = work / "spill"
    aws = {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    sqs = queue_url = arn = None
    if mode == SQS_UP:
        sqs = sqs_client(moto_server)
        queue_url = create_queue(sqs, f"matrix-{uuid.uuid4().hex[:8]}", visibility_timeout_s=30)
        arn = queue_arn(sqs, queue_url)
        aws["AWS_ENDPOINT_URL"] = moto_server
    else:
        down = f"http://127.0.0.1:{closed_port}"
        queue_url = f"{down}/123456789012/amp-lite-overflow"
        aws["AWS_ENDPOINT_URL"] = down
    env = {"AMPLITUDE_API_KEY": API_KEY, "AMP_LITE_SPILL_DIR": str(spill),
           "AMP_LITE_OVERFLOW_QUEUE_URL": queue_url,
           "AMP_LITE_LOG_LEVEL": "DEBUG",  # the INFO summary line, and every DEBUG line to scan
           **aws}
    with lambda_runtime("matrix_handler.handler", env=env, python_path=[SUPPORT],
                        log_dir=work, timeout_ms=FUNCTION_TIMEOUT_MS) as process:
        yield Runtime(mode, process, spill, sqs if mode == SQS_UP else None,
                      queue_url if mode == SQS_UP else None, arn)
        process.process.terminate()
        process.wait_exit()
        assert API_KEY not in process.output()


# -- helpers --------------------------------------------------------------------------------


@dataclass
class Invoked:
    result: InvocationResult
    output: str  # what the runtime printed during this invocation
    summary: dict[str, Any] | None  # the flush's summary line


def _invoke(rt: Runtime, server_url: str, cell: str, user_ids: list[str]) -> Invoked:
    before = len(rt.process.output())
    result = rt.process.api.invoke({"server_url": server_url, "cell": cell,
                                    "events": [{"user_id": u} for u in user_ids]})
    output = rt.process.output()[before:]
    summaries = [json.loads(m) for m in re.findall(r"amp_lite flush (\{.*\})", output)]
    assert len(summaries) <= 1, output
    rt.captured.extend([output, json.dumps(result.body)])
    return Invoked(result, output, summaries[0] if summaries else None)


def _assert_in_time_and_threadless(invoked: Invoked) -> None:
    result = invoked.result
    assert result.kind == "response", invoked.output
    assert result.posted_ms <= result.deadline_ms - MARGIN_MS + SCHEDULING_TOLERANCE_MS, (
        f"responded {result.deadline_ms - result.posted_ms} ms before the deadline\n"
        f"{invoked.output}")
    assert result.body["threads_started"] == [], result.body
    assert result.body["new_threads"] == [], result.body
    assert result.body["refused_connects"] == [], result.body  # nothing left loopback


def _assert_balanced(summary: dict[str, Any]) -> None:
    settled = (summary["delivered"] + summary["rejected"] + summary["overflowed"]
               + summary["dropped"])
    # the whole summary, as text: pytest would shorten a dict, reasons first
    assert summary["tracked"] + summary["recovered"] == settled, json.dumps(summary)
    assert summary["dropped"] == 0, json.dumps(summary)  # SQS is up, or the spill has room


def _spill_files(spill: Path) -> list[Path]:
    return sorted(spill.rglob("*.jsonl*")) if spill.exists() else []


def _spilled(rt: Runtime) -> list[dict[str, Any]]:
    events = []
    for path in _spill_files(rt.spill):
        text = path.read_text()
        rt.captured.append(text)
        events.extend(json.loads(line) for line in text.splitlines()[1:])
    return events


def _clean_slate(rt: Runtime) -> None:
    """Leave nothing of an earlier (failed) cell behind: empty spill, empty queue."""
    for path in _spill_files(rt.spill):
        path.unlink()
    if rt.sqs is not None:
        for _ in range(MAX_REPLAY_ROUNDS):
            if queue_depth(rt.sqs, rt.queue_url) == (0, 0):
                break
            settle(rt.sqs, rt.queue_url, receive(rt.sqs, rt.queue_url), None)


class _Context:
    """A Lambda context for the replay consumer, run in this process."""

    function_name = "amp-replay"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return REPLAY_REMAINING_MS


def _replay_queue(rt: Runtime, healthy: FakeAmplitude) -> list[dict[str, Any]]:
    """The replay consumer over the queue's messages until it is empty. Returns the events
    that were on the queue."""
    handler = make_handler(Amplitude(API_KEY, server_url=healthy.url, overflow=()))
    queued: list[dict[str, Any]] = []
    for _ in range(MAX_REPLAY_ROUNDS):
        if queue_depth(rt.sqs, rt.queue_url) == (0, 0):
            break
        messages = receive(rt.sqs, rt.queue_url)
        if not messages:
            continue
        rt.captured.append(json.dumps(messages))
        queued.extend(decoded_events(messages))
        response = handler(lambda_sqs_event(messages, event_source_arn=rt.queue_arn),
                           _Context())
        assert failed_ids(response) == set(), response
        settle(rt.sqs, rt.queue_url, messages, response)
    assert queue_depth(rt.sqs, rt.queue_url) == (0, 0)
    return queued


def _arrange(cell: Cell, fake: FakeAmplitude, closed_port: int) -> str:
    """Script the fault; return the server URL the function must use."""
    persistent = {
        "500": Fault.status_code(500), "502": Fault.status_code(502),
        "503": Fault.status_code(503), "504": Fault.status_code(504),
        "reset": Fault.reset(), "reset-mid-body": Fault.reset_mid_body(),
        "hang": Fault.hang(10), "slow-body": Fault.slow_body(10),
        "non-json-200": Fault.reply(200, b"<html><body>OK</body></html>", "text/html"),
    }
    if cell.fault in persistent:
        fake.script(*[persistent[cell.fault]] * PERSISTENT)
    elif cell.fault == "403":
        fake.script(Fault.status_code(403))
    elif cell.fault == "413":
        fake.script(Fault.status_code(413))
    elif cell.fault == "400-invalid-fields":
        fake.script(Fault.status_code(400, {
            "code": 400, "error": "Invalid field values on some events",
            "events_with_invalid_fields": {"user_id": list(MARKED)}}))
    elif cell.fault == "429-throttled":
        fake.throttle(users=MARKED_USERS)
    elif cell.fault == "429-daily-quota":
        fake.throttle(users=MARKED_USERS, daily_quota=True)
    elif cell.fault == "connection-refused":
        return f"http://127.0.0.1:{closed_port}/2/httpapi"
    elif cell.fault == "dns-failure":
        return INVALID_HOST_URL
    return fake.url


@dataclass(frozen=True)
class Expected:
    delivered: set[str]
    rejected: set[str]
    overflowed: set[str]


def _expected(cell: Cell, insert_ids: list[str]) -> Expected:
    every = set(insert_ids)
    marked = {insert_ids[n] for n in MARKED}
    if cell.outcome == DELIVERED:
        return Expected(every, set(), set())
    if cell.outcome == REJECTED_MARKED:
        return Expected(every - marked, marked, set())
    if cell.outcome == OVERFLOWED_MARKED:
        return Expected(every - marked, set(), marked)
    return Expected(set(), set(), every)


def _assert_outcome(cell: Cell, mode: str, summary: dict[str, Any], expected: Expected) -> None:
    assert summary["tracked"] == len(USER_IDS) and summary["recovered"] == 0, summary
    assert summary["delivered"] == len(expected.delivered), summary
    assert summary["rejected"] == len(expected.rejected), summary
    assert summary["overflowed"] == len(expected.overflowed), summary
    assert set(summary["rejected_reasons"]) <= cell.reasons, summary
    assert set(summary["overflowed_reasons"]) <= cell.reasons, summary
    sink = "sqs" if mode == SQS_UP else "local_spill"
    assert summary["overflowed_to"] == ({sink: len(expected.overflowed)}
                                        if expected.overflowed else {}), summary


def _scan_for_key(rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    captured = [rt.process.output(), caplog.text, *rt.captured,
                *(r.getMessage() for r in caplog.records)]
    assert captured[0], "the runtime printed nothing: nothing was scanned"
    for text in captured:
        assert API_KEY not in text
        assert API_KEY[:16] not in text  # nor a recognisable prefix of it


# -- the matrix -----------------------------------------------------------------------------


def _warm_and_close_idle(rt: Runtime, server: FakeAmplitude, server_url: str) -> list[str]:
    """A first invocation leaves a kept-alive connection; the server closes it while idle."""
    warm = _invoke(rt, server_url, "idle-connection-closed", ["matrix-warm-0", "matrix-warm-1"])
    assert warm.summary is not None and warm.summary["delivered"] == 2, warm.output
    assert server.close_idle_connections() == 1
    return list(warm.result.body["insert_ids"])


def _check_invocation(cell: Cell, rt: Runtime, server: FakeAmplitude, invoked: Invoked,
                      warm_ids: list[str]) -> Expected:
    """The THEN of the measured invocation. Returns where its events had to end."""
    # it responded in time, started no thread, and never left loopback...
    _assert_in_time_and_threadless(invoked)
    insert_ids: list[str] = invoked.result.body["insert_ids"]
    assert len(set(insert_ids)) == len(USER_IDS)
    lookups = set(invoked.result.body["refused_lookups"])
    assert lookups == ({INVALID_HOST} if cell.fault == "dns-failure" else set())
    # ...its flush accounts for every event, in the state the fault calls for...
    summary = invoked.summary
    assert summary is not None, invoked.output
    result = invoked.result
    ROWS[(cell.fault, rt.mode)] = Row(summary, result.took_ms,
                                      result.deadline_ms - result.handed_out_ms)
    _assert_balanced(summary)
    expected = _expected(cell, insert_ids)
    _assert_outcome(cell, rt.mode, summary, expected)
    if cell.fault == "idle-connection-closed":
        # resent at once on a new connection: one attempt, not a failure
        assert summary["attempts"] == 1, summary
        assert server.connections_opened == 2
    # ...and the server holds exactly what was reported delivered
    held = set(insert_ids) if cell.server_had_them else expected.delivered
    assert set(server.insert_ids) == held | set(warm_ids)
    if cell.requests is not None:
        assert [(q.status, q.events) for q in server.requests] == list(cell.requests)
    return expected


def _replay_and_check_sinks(cell: Cell, rt: Runtime, healthy: FakeAmplitude,
                            expected: Expected) -> None:
    if rt.mode == SQS_UP:
        assert _spilled(rt) == []  # SQS took everything
        # the queue held exactly the overflowed events, and the consumer emptied it
        queued = _replay_queue(rt, healthy)
        assert sorted(e["insert_id"] for e in queued) == sorted(expected.overflowed)
        return
    spilled = _spilled(rt)
    # the spill held exactly the overflowed events...
    assert sorted(e["insert_id"] for e in spilled) == sorted(expected.overflowed)
    # ...and a follow-up invocation of the same warm runtime recovers them
    follow = _invoke(rt, healthy.url, cell.fault, [])
    _assert_in_time_and_threadless(follow)
    if spilled:
        assert follow.summary is not None, follow.output
        _assert_balanced(follow.summary)
        assert follow.summary["recovered"] == len(spilled), follow.summary
        assert follow.summary["delivered"] == len(spilled), follow.summary
    else:
        assert follow.summary is None, follow.output
    assert _spill_files(rt.spill) == []


# The runtime is parametrized on its own, so each mode's process serves all its cells (warm).
@pytest.mark.parametrize("runtime", [SQS_UP, SQS_DOWN], indirect=True)
@pytest.mark.parametrize("cell", CELLS, ids=[c.fault for c in CELLS])
def test_fault_cell(cell: Cell, runtime: Runtime, fake: FakeAmplitude, closed_port: int,
                    caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> None:
    rt = runtime
    bug = BUGS.get((cell.fault, rt.mode))
    if bug:
        request.applymarker(pytest.mark.xfail(strict=True, reason=bug))
    caplog.set_level(logging.DEBUG, logger="amp_lite")
    _clean_slate(rt)
    with contextlib.ExitStack() as stack:
        # GIVEN the server the function talks to, misbehaving as the cell says (the invalid-key
        # cell has a server that knows another project's key only; the idle cell a kept-alive
        # connection that the server closed)
        server = (stack.enter_context(FakeAmplitude(api_keys={OTHER_KEY}))
                  if cell.fault == "400-invalid-api-key" else fake)
        server_url = _arrange(cell, server, closed_port)
        warm_ids = (_warm_and_close_idle(rt, server, server_url)
                    if cell.fault == "idle-connection-closed" else [])

        # WHEN an invocation tracks six events
        invoked = _invoke(rt, server_url, cell.fault, USER_IDS)

        # THEN it answered in time, threadless, with every event accounted for as expected
        expected = _check_invocation(cell, rt, server, invoked, warm_ids)
        insert_ids = set(invoked.result.body["insert_ids"])

        # WHEN Amplitude is healthy again (for the invalid-key cell: the key is fixed, a server
        # that accepts it) and the overflowed events are replayed
        healthy = (fake if cell.fault in ("connection-refused", "dns-failure",
                                          "400-invalid-api-key") else server)
        healthy.clear_faults()
        healthy.clear_throttles()
        # THEN the sink held exactly the overflowed events, and replay emptied it
        _replay_and_check_sinks(cell, rt, healthy, expected)

        # THEN Amplitude accepted the tracked events minus the rejected ones, each once
        accepted = healthy.insert_ids
        row = ROWS[(cell.fault, rt.mode)]
        row.accepted = len(set(accepted) & insert_ids)
        row.expected_accepted = len(insert_ids - expected.rejected)
        assert set(accepted) == (insert_ids - expected.rejected) | set(warm_ids)
        assert len(accepted) == len(set(accepted))
        # nothing was sent twice, except what the slow-body server had taken without a reply:
        # the replay sent those again, and their insert_ids made that harmless
        assert healthy.duplicates == (len(USER_IDS) if cell.server_had_them else 0)
        # AND the API key appears nowhere in what was captured
        _scan_for_key(rt, caplog)


@pytest.mark.parametrize("runtime", [SQS_UP, SQS_DOWN], indirect=True)
def test_thread_detector_sees_a_thread(runtime: Runtime, fake: FakeAmplitude) -> None:
    # GIVEN the matrix function, WHEN an invocation starts a thread on purpose
    result = runtime.process.api.invoke({"server_url": fake.url, "cell": "self-check",
                                         "events": [{"user_id": "matrix-self-check"}],
                                         "start_thread": True})
    # THEN the detector the matrix relies on reports it
    assert result.kind == "response", result.body
    assert result.body["threads_started"] == ["matrix-self-check"]
    assert len(fake.insert_ids) == 1
