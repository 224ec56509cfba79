"""Handlers under the real awslambdaric runtime client, a fake Runtime API and FakeAmplitude.

These run the worked examples in examples/ exactly as Lambda would: a subprocess, a real
LambdaContext built from the Lambda-Runtime-Deadline-Ms header, real error reporting.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.lambda_runtime import REPO_ROOT, lambda_runtime

EXAMPLES = REPO_ROOT / "examples"
MARGIN_MS = 500  # amp_lite._wrap.DEFAULT_MARGIN_MS
SCHEDULING_TOLERANCE_MS = 400


def _env(fake: FakeAmplitude, spill: Path, **extra: str) -> dict[str, str]:
    return {"AMPLITUDE_API_KEY": API_KEY, "AMPLITUDE_SERVER_URL": fake.url,
            "AMP_LITE_SPILL_DIR": str(spill), "AMP_LITE_LOG_LEVEL": "INFO", **extra}


def _flush_summaries(output: str) -> list[dict[str, object]]:
    return [json.loads(m) for m in re.findall(r"amp_lite flush (\{.*\})", output)]


def test_warm_invocations_reuse_one_connection(fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN the decorated example handler running in the real runtime client
    with lambda_runtime("lambda_handler.handler", env=_env(fake, tmp_path / "spill"),
                        python_path=[EXAMPLES], log_dir=tmp_path) as runtime:
        # WHEN five warm invocations each track three events
        results = [runtime.api.invoke({"user_id": f"user-{n:04d}", "items": ["a", "b", "c"]})
                   for n in range(5)]
        # THEN every invocation answered, every event arrived before its response...
        assert [r.kind for r in results] == ["response"] * 5
        assert [r.body["tracked"] for r in results] == [3] * 5
        assert len(fake.events) == 15
        # ...over a single kept-alive TCP connection
        assert fake.connections_opened == 1
        assert {e["user_id"] for e in fake.events} == {f"user-{n:04d}" for n in range(5)}


def test_each_response_arrives_after_its_events_were_accepted(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN the decorated handler
    with lambda_runtime("lambda_handler.handler", env=_env(fake, tmp_path / "spill"),
                        python_path=[EXAMPLES], log_dir=tmp_path) as runtime:
        for n in range(3):
            # WHEN an invocation returns
            result = runtime.api.invoke({"user_id": "user-flush", "items": ["x"] * (n + 1)})
            # THEN the fake already holds that invocation's events (flushed before the response)
            assert result.kind == "response"
            assert len(fake.events) == sum(range(1, n + 2))


def test_handler_error_is_reported_as_is_and_events_still_flushed(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN a handler that tracks two events, then raises
    with lambda_runtime("lambda_handler.handler", env=_env(fake, tmp_path / "spill"),
                        python_path=[EXAMPLES], log_dir=tmp_path) as runtime:
        # WHEN it is invoked
        result = runtime.api.invoke({"user_id": "user-error", "items": ["a", "b"], "fail": True})
        # THEN the runtime reports the handler's own error, unchanged...
        assert result.kind == "error"
        assert result.body["errorType"] == "ValueError"
        assert result.body["errorMessage"] == "boom requested"
        # ...the events were delivered anyway, and the runtime keeps serving
        assert len(fake.events) == 2
        assert runtime.api.invoke({"user_id": "user-error", "items": ["c"]}).kind == "response"
        assert len(fake.events) == 3


def test_hanging_amplitude_responds_before_deadline_minus_margin(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN a 3 s function and an Amplitude that never answers
    fake.script(*[Fault.hang(30)] * 5)
    spill = tmp_path / "spill"
    with lambda_runtime("lambda_handler.handler", env=_env(fake, spill),
                        python_path=[EXAMPLES], log_dir=tmp_path, timeout_ms=3000) as runtime:
        # WHEN an invocation tracks four events
        result = runtime.api.invoke({"user_id": "user-hang", "items": ["a", "b", "c", "d"]})
        runtime.process.terminate()
        runtime.wait_exit()
        output = runtime.output()
    # THEN the runtime got the response before deadline - margin (measured on the runtime side)
    assert result.kind == "response"
    assert result.posted_ms <= result.deadline_ms - MARGIN_MS + SCHEDULING_TOLERANCE_MS
    assert result.took_ms >= 1000  # it did wait for Amplitude, within its budget
    # AND the four events are accounted for as overflowed to the spill, not silently gone
    summaries = _flush_summaries(output)
    assert summaries, output
    assert summaries[-1]["tracked"] == 4
    assert summaries[-1]["overflowed"] == 4
    assert summaries[-1]["deadline_hit"] is True
    spilled = [line for f in spill.rglob("*.jsonl") for line in f.read_text().splitlines()[1:]]
    assert len(spilled) == 4


def test_zero_code_wrapper_flushes_a_handler_that_never_flushes(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN the layer's wrapper handler pointing at a plain handler through AMP_LITE_HANDLER
    env = _env(fake, tmp_path / "spill", AMP_LITE_HANDLER="zero_code_handler.handler")
    with lambda_runtime("amp_lite.aws_lambda.handler", env=env, python_path=[EXAMPLES],
                        log_dir=tmp_path) as runtime:
        # WHEN it is invoked twice
        first = runtime.api.invoke({"user_id": "user-zero", "items": ["a", "b"]})
        second = runtime.api.invoke({"user_id": "user-zero", "items": ["c"]})
        # THEN the user's handler ran and its events were flushed before each response
        assert (first.kind, first.body) == ("response", {"statusCode": 200, "tracked": 2})
        assert second.body["tracked"] == 1
        assert [e["event_properties"]["sku"] for e in fake.events] == ["a", "b", "c"]


@pytest.mark.parametrize(("value", "expected"), [
    ("no_such_module.handler", "cannot import module 'no_such_module'"),
    ("zero_code_handler.missing", "has no callable 'missing'"),
    ("handler_without_module", "expected module.function"),
])
def test_bad_amp_lite_handler_fails_the_init_phase_clearly(
        fake: FakeAmplitude, tmp_path: Path, value: str, expected: str) -> None:
    # GIVEN the wrapper with a broken AMP_LITE_HANDLER
    env = _env(fake, tmp_path / "spill", AMP_LITE_HANDLER=value)
    with lambda_runtime("amp_lite.aws_lambda.handler", env=env, python_path=[EXAMPLES],
                        log_dir=tmp_path) as runtime:
        # WHEN the runtime initialises
        error = runtime.api.wait_for_init_error()
        code = runtime.wait_exit()
    # THEN the init phase fails with a message naming the variable and the value
    assert error is not None, "no init error was posted"
    assert error["errorType"] == "ConfigError"
    assert f"AMP_LITE_HANDLER={value!r}" in error["errorMessage"]
    assert expected in error["errorMessage"]
    assert code != 0


def test_unset_amp_lite_handler_names_the_variable(fake: FakeAmplitude, tmp_path: Path) -> None:
    with lambda_runtime("amp_lite.aws_lambda.handler", env=_env(fake, tmp_path / "spill"),
                        python_path=[EXAMPLES], log_dir=tmp_path) as runtime:
        error = runtime.api.wait_for_init_error()
    assert error is not None
    assert "AMP_LITE_HANDLER is not set" in error["errorMessage"]


def test_summary_line_never_holds_event_contents_or_the_key(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN INFO logging on and an event with a recognisable property value
    with lambda_runtime("lambda_handler.handler", env=_env(fake, tmp_path / "spill"),
                        python_path=[EXAMPLES], log_dir=tmp_path) as runtime:
        runtime.api.invoke({"user_id": "user-secretive", "items": ["sku-very-private"]})
        runtime.process.terminate()
        runtime.wait_exit()
        output = runtime.output()
    # THEN exactly one summary line was logged, with counts only
    summaries = _flush_summaries(output)
    assert len(summaries) == 1 and summaries[0]["delivered"] == 1
    assert "sku-very-private" not in output
    assert "user-secretive" not in output
    assert API_KEY not in output
