"""The Lambda control-plane fake (tests/support/lambda_control.py) against the protocol.

Real processes throughout: tiny Python extensions (tests/support/dummy_extension.py) and the
real awslambdaric runtime running tests/support/control_handler.py. Every wait is on a
condition; timings are asserted only with generous tolerances.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.dummy_extension import steps, write_extension
from tests.support.lambda_control import (
    EXTENSION_CRASH,
    EXTENSION_EXIT_ERROR,
    EXTENSION_INIT_ERROR,
    EXTENSION_LAUNCH_ERROR,
    TIMEOUT,
    Crash,
    LambdaEnvironment,
    lambda_environment,
)
from tests.support.lambda_shared import FUNCTION_ARN, REPO_ROOT, epoch_ms

SUPPORT = REPO_ROOT / "tests" / "support"
HANDLER = "control_handler.handler"
SLACK_S = 1.0  # scheduling slack allowed on any timing assertion


@pytest.fixture
def extensions(tmp_path: Path) -> Path:
    directory = tmp_path / "extensions"
    directory.mkdir()
    return directory


@contextmanager
def environment(tmp_path: Path, extensions: Path, **options: Any) -> Iterator[LambdaEnvironment]:
    with lambda_environment(HANDLER, env={"FUNCTION_SETTING": "on"}, python_path=[SUPPORT],
                            log_dir=tmp_path, extensions_dir=extensions, **options) as lam:
        yield lam


def _call(lam: LambdaEnvironment, method: str, path: str, headers: dict[str, str],
          body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://{lam.address}{path}", data=body, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _pid_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait for a reaper in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


# --- invoke --------------------------------------------------------------------------------


def test_invoke_reaches_extensions_before_the_runtime_and_ends_when_they_are_back(
        tmp_path: Path, extensions: Path) -> None:
    # GIVEN an extension that works 300 ms after each INVOKE before calling next again
    write_extension(extensions, "lingers", invoke_sleep_ms=300)
    with environment(tmp_path, extensions) as lam:
        # WHEN the function is invoked twice
        first, second = lam.invoke({"n": 1}), lam.invoke({"n": 2})
        ext, runtime = lam.extension("lingers"), lam.runtime
        assert runtime is not None
    for result in (first, second):
        # THEN the runtime answered, and the extension had its INVOKE before the runtime did
        assert (result.kind, result.failure) == ("response", None)
        assert result.handed_out_s is not None
        assert result.delivered_s["lingers"] <= result.handed_out_s
        assert result.body["request_id"] == result.request_id
        # ...the caller's answer came first; the invocation ended when the extension was back
        assert result.handed_out_s < result.posted_s < result.ended_s
        assert result.ended_s == result.extension_done_s["lingers"]
        assert result.extension_done_s["lingers"] - result.delivered_s["lingers"] >= 0.3
        assert 0 < result.post_response_ms <= 300 + SLACK_S * 1000
    # AND the INVOKE events carried the invocation's request id, deadline, ARN and tracing
    invokes = [e for e in ext.received if e["eventType"] == "INVOKE"]  # SHUTDOWN came last
    assert [e["requestId"] for e in invokes] == [first.request_id, second.request_id]
    assert ext.received[-1]["eventType"] == "SHUTDOWN"
    event = invokes[0]
    assert event["deadlineMs"] == first.deadline_ms
    assert event["invokedFunctionArn"] == FUNCTION_ARN
    assert event["tracing"]["type"] == "X-Amzn-Trace-Id"
    # AND the second invocation went out only after the first had ended
    assert second.handed_out_s is not None and second.handed_out_s > first.ended_s
    # AND one registration, one next at init plus one per invocation, for either process
    assert (lam.registrations("lingers"), lam.next_calls("lingers")) == (1, 3)
    assert runtime.next_calls == 3
    assert first.init is not None and second.init is None  # a cold start, then a warm one
    assert ext.registered_s is not None and ext.registered_s < runtime.started_s


def test_a_handler_error_is_the_answer_and_does_not_reset(tmp_path: Path,
                                                          extensions: Path) -> None:
    write_extension(extensions, "watcher")
    with environment(tmp_path, extensions) as lam:
        # WHEN the handler raises, then is invoked again
        failed = lam.invoke({"fail": True})
        ok = lam.invoke({})
    # THEN the caller got the runtime's error; the environment went on (no reset)
    assert (failed.kind, failed.error_type, failed.failure) == ("error", "ValueError", None)
    assert failed.runtime_posted
    assert (ok.kind, ok.generation) == ("response", 1)
    assert len(lam.inits) == 1 and lam.shutdowns[-1].reason == "spindown"


def test_extensions_not_subscribed_to_invoke_do_not_hold_invocations(
        tmp_path: Path, extensions: Path) -> None:
    # GIVEN one extension registered for SHUTDOWN only, one registered for nothing
    write_extension(extensions, "bystander", events=["SHUTDOWN"])
    write_extension(extensions, "idle", events=[])
    with environment(tmp_path, extensions) as lam:
        # WHEN the function is invoked
        result = lam.invoke({})
        # THEN the invocation ended as soon as the runtime was back at next
        assert result.failure is None and result.extension_done_s == {}
        assert result.ended_s == result.runtime_done_s
        assert result.post_response_ms < 250
        # ...neither extension got an event, each called next once (at init) and waits there
        for name in ("bystander", "idle"):
            assert lam.extension(name).received == []
            assert lam.next_calls(name) == 1
        # WHEN the environment shuts down
        record = lam.shutdown()
    # THEN the SHUTDOWN subscriber got SHUTDOWN and left; the other was SIGKILLed at once
    assert record is not None
    assert (record.sent, record.killed) == (["bystander"], ["idle"])
    assert record.exit_codes == {"bystander": 0, "idle": -9}
    shutdown_event = lam.extension("bystander").received[-1]
    assert shutdown_event == {"eventType": "SHUTDOWN", "shutdownReason": "spindown",
                              "deadlineMs": record.deadline_ms}


def test_extension_environment_and_working_directory(tmp_path: Path, extensions: Path) -> None:
    write_extension(extensions, "inspector")
    with environment(tmp_path, extensions) as lam:
        result = lam.invoke({})
        start = steps(lam.extension("inspector").output(), "start")[0]
    # THEN the extension had the function's and the platform's variables...
    env = start["env"]
    assert env["AWS_LAMBDA_RUNTIME_API"] == lam.address
    assert env["FUNCTION_SETTING"] == "on"
    assert (env["AWS_LAMBDA_FUNCTION_NAME"], env["AWS_LAMBDA_FUNCTION_VERSION"],
            env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]) == ("amp-test", "$LATEST", "256")
    assert env["AWS_REGION"] == "us-east-1" and env["PATH"] == os.environ["PATH"]
    # ...not the runtime's, and an empty working directory of its own
    for runtime_only in ("PYTHONPATH", "_HANDLER", "AWS_LAMBDA_LOG_GROUP_NAME"):
        assert runtime_only not in env
    assert start["cwd_entries"] == [] and Path(start["cwd"]) != extensions
    # AND the runtime did get its own
    assert result.body["handler_env"] == HANDLER
    assert result.body["function_setting"] == "on"


# --- init ----------------------------------------------------------------------------------


def test_the_runtime_starts_only_after_a_slow_extension_registered(
        tmp_path: Path, extensions: Path) -> None:
    # GIVEN an extension that takes 400 ms before registering, and a prompt one
    write_extension(extensions, "prompt")
    write_extension(extensions, "slowpoke", register_delay_ms=400)
    with environment(tmp_path, extensions) as lam:
        # WHEN the environment initialises
        init = lam.init()
        slow, prompt = lam.extension("slowpoke"), lam.extension("prompt")
    # THEN the runtime was started, and asked for work, only after the slow one registered
    assert init.ok and init.runtime is not None
    assert slow.registered_s is not None and prompt.registered_s is not None
    assert slow.registered_s - slow.started_s >= 0.4
    assert prompt.registered_s < slow.registered_s
    first_next_s = init.runtime.first_next_s
    assert first_next_s is not None and init.registered_s is not None
    assert slow.registered_s <= init.registered_s <= init.runtime.started_s < first_next_s
    # AND init completed with the last first next call
    assert init.done_s is not None and init.done_s >= first_next_s


@pytest.mark.parametrize(("options", "status", "error_type"), [
    ({"register_as": "not-my-file-name"}, 403, "Extension.InvalidExtensionName"),
    ({"events": ["INVOKE", "LOGS"]}, 400, "Extension.InvalidEventType"),
], ids=["wrong-name", "unknown-event"])
def test_a_refused_registration_fails_the_init(tmp_path: Path, extensions: Path,
                                               options: dict[str, Any], status: int,
                                               error_type: str) -> None:
    # GIVEN an extension whose register call is wrong (it exits 1 when refused)
    write_extension(extensions, "misfit", **options)
    with environment(tmp_path, extensions) as lam:
        # WHEN the function is invoked
        result = lam.invoke({})
        register = steps(lam.extension("misfit").output(), "register")[0]
    # THEN the register call was refused with the emulator's error type
    assert (register["status"], register["body"]["errorType"]) == (status, error_type)
    assert [(r.status, r.error_type) for r in lam.rejections] == [(status, error_type)]
    # AND its exit failed the init before any runtime started: the caller got Extension.Crash
    assert result.init is not None and result.init.runtime is None
    assert (result.kind, result.error_type, result.failure) == ("error", EXTENSION_CRASH,
                                                                EXTENSION_CRASH)
    assert lam.crashes[0].phase == "init"


def test_an_extension_that_never_registers_times_the_init_out(
        tmp_path: Path, extensions: Path) -> None:
    write_extension(extensions, "mute", register_delay_ms=60_000)
    with environment(tmp_path, extensions, init_timeout_ms=500) as lam:
        init = lam.init()
        mute = lam.extension("mute")
    # THEN the init failed, no runtime was started, and the extension was killed
    assert (init.ok, init.failure, init.runtime) == (False, TIMEOUT, None)
    assert mute.killed and mute.exit_code == -9
    assert "mute did not register" in init.error["errorMessage"]


def test_init_error_fails_the_init(tmp_path: Path, extensions: Path) -> None:
    write_extension(extensions, "fragile", init_error="Fatal.ConnectFailed")
    with environment(tmp_path, extensions) as lam:
        result = lam.invoke({})
        fragile = lam.extension("fragile")
    assert (result.failure, result.error_type) == (EXTENSION_INIT_ERROR, EXTENSION_INIT_ERROR)
    assert fragile.init_error == ("Fatal.ConnectFailed", {"errorType": "Fatal.ConnectFailed"})
    # it stayed (against the docs' advice) and was killed at the reset, not sent SHUTDOWN
    assert fragile.killed and fragile.received == []


def test_the_runtime_init_error_is_the_answer(tmp_path: Path, extensions: Path) -> None:
    # GIVEN a handler module that does not exist
    write_extension(extensions, "watcher")
    with lambda_environment("no_such_module.handler", env={}, python_path=[SUPPORT],
                            log_dir=tmp_path, extensions_dir=extensions) as lam:
        result = lam.invoke({})
        record = lam.shutdowns[-1]
    # THEN the caller got the runtime's own init error, and the environment was reset
    assert (result.kind, result.failure) == ("error", "Runtime.ImportModuleError")
    assert "no_such_module" in result.body["errorMessage"]
    assert (record.reason, record.sent) == ("failure", ["watcher"])


def test_more_than_ten_extensions_fail_the_launch(tmp_path: Path, extensions: Path) -> None:
    for n in range(11):
        write_extension(extensions, f"ext-{n:02d}")
    with environment(tmp_path, extensions) as lam:
        init = lam.init()
    assert (init.failure, init.extensions) == (EXTENSION_LAUNCH_ERROR, [])


def test_protocol_refusals(tmp_path: Path, extensions: Path) -> None:
    write_extension(extensions, "member")
    with environment(tmp_path, extensions) as lam:
        lam.init()
        events = json.dumps({"events": ["INVOKE"]}).encode()
        # registering once init is under way is closed
        assert _call(lam, "POST", "/2020-01-01/extension/register",
                     {"Lambda-Extension-Name": "member"}, events)[1]["errorType"] == \
            "Extension.RegistrationClosed"
        # next without, with a malformed, with an unknown identifier
        for identifier, error_type in (
                (None, "Extension.MissingExtensionIdentifier"),
                ("not-a-uuid", "Extension.InvalidExtensionIdentifier"),
                (str(uuid.uuid4()), "Extension.UnknownExtensionIdentifier")):
            headers = {} if identifier is None else {"Lambda-Extension-Identifier": identifier}
            status, body = _call(lam, "GET", "/2020-01-01/extension/event/next", headers)
            assert (status, body["errorType"]) == (403, error_type)
        # a response for an invocation that is not in flight
        status, body = _call(lam, "POST", f"/2018-06-01/runtime/invocation/{uuid.uuid4()}/"
                                          "response", {}, b"{}")
        assert (status, body["errorType"]) == (400, "InvalidRequestID")
        # and the environment is unharmed
        assert lam.invoke({}).failure is None


# --- timeouts, crashes, resets ---------------------------------------------------------------


def test_an_extension_past_the_deadline_times_out_and_the_next_invoke_reinitialises(
        tmp_path: Path, extensions: Path) -> None:
    # GIVEN an extension that, in its first process only, works 30 s after an INVOKE
    write_extension(extensions, "sleepy", invoke_sleep_ms=30_000, once=tmp_path / "slept")
    with environment(tmp_path, extensions, timeout_ms=500, shutdown_budget_ms=300) as lam:
        # WHEN the function is invoked
        late = lam.invoke({})
        first_sleepy, first_runtime = lam.extension("sleepy"), lam.runtime
        # THEN the caller had the runtime's answer, but the invocation timed out at the
        # deadline and reset the environment: the extension, still busy, was SIGKILLed
        assert (late.kind, late.runtime_posted, late.failure) == ("response", True, TIMEOUT)
        assert late.deadline_s is not None
        assert late.deadline_s <= late.ended_s <= late.deadline_s + SLACK_S
        record = lam.shutdowns[-1]
        assert (record.reason, record.killed_at_deadline) == ("timeout", ["sleepy"])
        assert first_sleepy.killed and first_sleepy.exit_code == -9
        # WHEN it is invoked again
        again = lam.invoke({})
    # THEN everything was initialised again: a new extension process, registered anew,
    # and a new runtime
    assert (again.failure, again.generation) == (None, 2) and again.init is not None
    second_sleepy = lam.extension("sleepy")
    assert second_sleepy is not first_sleepy and second_sleepy.generation == 2
    assert second_sleepy.process.pid != first_sleepy.process.pid
    assert lam.registrations("sleepy") == 2
    assert lam.runtime is not first_runtime and len(lam.runtimes) == 2


def test_a_handler_past_the_deadline_gets_the_platform_timeout(tmp_path: Path,
                                                               extensions: Path) -> None:
    # GIVEN a prompt extension subscribed to SHUTDOWN, and a handler that takes 30 s
    write_extension(extensions, "observer")
    with environment(tmp_path, extensions, timeout_ms=400, shutdown_budget_ms=1000) as lam:
        result = lam.invoke({"sleep_ms": 30_000})
        runtime, observer = lam.runtimes[0], lam.extension("observer")
        record = lam.shutdowns[-1]
        after = lam.invoke({})
    # THEN the caller got the platform's timeout error at the deadline
    assert (result.kind, result.error_type, result.runtime_posted) == ("error", TIMEOUT, False)
    assert result.body["errorMessage"] == "Task timed out after 0.40 seconds"
    assert result.deadline_s is not None
    assert result.deadline_s <= result.posted_s <= result.deadline_s + SLACK_S
    # AND the runtime was stopped (SIGTERM), the extension told, and it left on its own
    assert runtime.terminated and runtime.exit_code == -15
    assert observer.received[-1] == {"eventType": "SHUTDOWN", "shutdownReason": "timeout",
                                     "deadlineMs": record.deadline_ms}
    assert (observer.exit_code, observer.killed) == (0, False)
    # AND the next invoke ran in a new environment
    assert (after.failure, after.generation) == (None, 2)


def test_an_extension_exiting_during_an_invocation_is_a_crash_even_with_exit_code_0(
        tmp_path: Path, extensions: Path) -> None:
    # GIVEN an extension that, in its first process only, exits 0 on INVOKE
    write_extension(extensions, "quitter", exit_on_invoke=0, once=tmp_path / "quit")
    write_extension(extensions, "witness")
    with environment(tmp_path, extensions) as lam:
        # WHEN an invocation runs (its handler takes 500 ms)
        result = lam.invoke({"sleep_ms": 500})
        record = lam.shutdowns[-1]
        after = lam.invoke({})
    # THEN the invocation failed with Extension.Crash before the runtime could answer
    assert (result.kind, result.error_type, result.failure) == ("error", EXTENSION_CRASH,
                                                                EXTENSION_CRASH)
    crash = lam.crashes[0]
    assert crash == Crash("quitter", 1, 0, crash.exited_s, EXTENSION_CRASH, "invoke",
                          result.request_id)
    # AND the environment was reset ("failure"), then initialised again for the next invoke
    assert record.reason == "failure"
    assert lam.extensions("witness")[0].received[-1]["shutdownReason"] == "failure"
    assert (after.failure, after.generation) == (None, 2)


def test_exit_error_then_exit_is_an_extension_exit_error(tmp_path: Path,
                                                         extensions: Path) -> None:
    write_extension(extensions, "reporter", exit_error_on_invoke="Fatal.Boom",
                    once=tmp_path / "reported")
    with environment(tmp_path, extensions) as lam:
        result = lam.invoke({"sleep_ms": 500})
        reporter = lam.extensions("reporter")[0]
    assert result.failure == EXTENSION_EXIT_ERROR
    assert reporter.exit_error == ("Fatal.Boom", {})
    assert steps(reporter.output(), "exit_error")[0]["status"] == 202


def test_killing_an_idle_extension_resets_the_environment(tmp_path: Path,
                                                          extensions: Path) -> None:
    write_extension(extensions, "victim")
    write_extension(extensions, "witness", events=["SHUTDOWN"])
    with environment(tmp_path, extensions) as lam:
        assert lam.invoke({}).failure is None
        # WHEN the test kills one extension between invocations
        victim = lam.kill_extension("victim")
        # THEN it is a crash; the reset ran at once and told the other extension
        assert (victim.exit_code, victim.killed) == (-9, True)
        assert [(c.name, c.phase, c.failure) for c in lam.crashes] == [
            ("victim", "idle", EXTENSION_CRASH)]
        assert lam.shutdowns[-1].reason == "failure"
        assert lam.extensions("witness")[0].received[-1]["shutdownReason"] == "failure"
        # AND the next invocation initialises again
        after = lam.invoke({})
    assert (after.failure, after.generation) == (None, 2)
    assert lam.extension("victim").process.pid != victim.process.pid


# --- shutdown -------------------------------------------------------------------------------


def test_shutdown_sends_shutdown_then_sigkills_at_the_deadline(tmp_path: Path,
                                                               extensions: Path) -> None:
    # GIVEN an extension that leaves on SHUTDOWN, one that lingers 30 s after it
    write_extension(extensions, "polite", shutdown_exit_code=3)
    write_extension(extensions, "stubborn", shutdown_sleep_ms=30_000)
    with environment(tmp_path, extensions, shutdown_budget_ms=600) as lam:
        lam.init()
        # WHEN the environment shuts down
        before_ms = epoch_ms()
        record = lam.shutdown()
        assert record is not None
        runtime = lam.runtime
        assert runtime is not None
        # THEN both got SHUTDOWN, with the deadline the budget gives
        assert record.sent == ["polite", "stubborn"]
        assert before_ms + 600 <= record.deadline_ms <= before_ms + 600 + SLACK_S * 1000
        for name in ("polite", "stubborn"):
            assert lam.extension(name).received == [{
                "eventType": "SHUTDOWN", "shutdownReason": "spindown",
                "deadlineMs": record.deadline_ms}]
        # ...the runtime got SIGTERM first; the polite one left before the deadline
        assert (record.runtime_exit_code, record.runtime_killed) == (-15, False)
        assert runtime.exited_s is not None
        assert runtime.exited_s < record.exited_s["polite"] < record.deadline_s
        # ...and the stubborn one was SIGKILLed at the deadline
        assert (record.killed, record.killed_at_deadline) == (["stubborn"], ["stubborn"])
        assert record.exit_codes == {"polite": 3, "stubborn": -9}
        assert record.deadline_s <= record.exited_s["stubborn"] <= record.deadline_s + SLACK_S
        # AND a second shutdown has nothing left to do
        assert lam.shutdown() is None


def test_nothing_outlives_the_context(tmp_path: Path, extensions: Path) -> None:
    # GIVEN an extension that starts a child process of its own
    write_extension(extensions, "parent", spawn_child=True)
    threads_before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="the test failed"), \
            environment(tmp_path, extensions) as lam:
        lam.invoke({})
        output = lam.extension("parent").output()
        pids = [lam.extension("parent").process.pid, steps(output, "child")[0]["pid"]]
        runtime = lam.runtime
        assert runtime is not None
        pids.append(runtime.process.pid)
        port = int(lam.address.rsplit(":", 1)[1])
        # WHEN the test fails inside the context
        raise RuntimeError("the test failed")
    # THEN every process, the extension's own child included, is gone...
    assert lam.wait_for(lambda: not any(_pid_running(p) for p in pids), 5.0)
    # ...the server no longer listens, and the fake's threads have ended
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert lam.wait_for(lambda: set(threading.enumerate()) <= threads_before, 5.0)
