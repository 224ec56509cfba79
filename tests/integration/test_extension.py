"""The amp-lite Lambda extension as Lambda runs it: its real executable and boot script,
started by the control-plane fake (tests/support/lambda_control.py) before the real
awslambdaric runtime, the function's decorated handler handing its events over the Unix
socket, FakeAmplitude receiving what the extension delivers after the response.

The extension runs from the source tree laid out as the extension layer is (`extensions/amp-lite`
next to `python/amp_lite`); the layer canary at the end runs the built extension layer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amp_lite.testing import FakeAmplitude, Fault
from tests.support.lambda_control import (
    LambdaEnvironment,
    lambda_environment,
    source_extension_layer,
)
from tests.support.lambda_runtime import REPO_ROOT

API_KEY = "extension-key-0123456789"
EXTENSION = "amp-lite"
TIMEOUT_MS = 3000
HANDLER = textwrap.dedent("""
    import amp_lite

    @amp_lite.amplitude_flush
    def handler(event, context):
        for i in range(event.get("events", 10)):
            amp_lite.track("Extension Event", user_id="user-0001",
                           event_properties={"i": i, "run": event.get("run", 0)})
        return {"ok": True, "request_id": context.aws_request_id}
""")


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "app.py").write_text(HANDLER)
    return folder


@pytest.fixture
def fake() -> Iterator[FakeAmplitude]:
    with FakeAmplitude(api_keys=[API_KEY]) as server:
        yield server


def function_env(tmp_path: Path, fake: FakeAmplitude, **extra: str) -> dict[str, str]:
    return {"AMPLITUDE_API_KEY": API_KEY, "AMPLITUDE_SERVER_URL": fake.url,
            "AMP_LITE_EXTENSION": "on",
            "AMP_LITE_EXTENSION_SOCKET": str(tmp_path / "sock" / "handoff.sock"),
            "AMP_LITE_SPILL_DIR": str(tmp_path / "spill"),
            "AMP_LITE_EXTENSION_PYTHON": sys.executable, "AMP_LITE_LOG_LEVEL": "INFO",
            "AMPLITUDE_REQUEST_TIMEOUT_S": "1", **extra}


def environment(tmp_path: Path, code_dir: Path, fake: FakeAmplitude, *,
                extensions: bool = True, **extra: str) -> Any:
    layer = source_extension_layer(tmp_path)
    return lambda_environment("app.handler", env=function_env(tmp_path, fake, **extra),
                              python_path=[code_dir], log_dir=tmp_path,
                              extensions_dir=layer / "extensions" if extensions else None,
                              timeout_ms=TIMEOUT_MS)


def summaries(output: str, marker: str) -> list[dict[str, Any]]:
    """The JSON summary lines after `marker` in a process's output."""
    found = []
    for line in output.splitlines():
        _, sep, rest = line.partition(marker + " ")
        if sep:
            found.append(json.loads(rest))
    return found


def spilled(tmp_path: Path) -> int:
    return sum(1 for p in (tmp_path / "spill").rglob("*.jsonl"))


def journaled(tmp_path: Path) -> int:
    """Bytes of hand-offs the extension took and has not settled yet."""
    journal = tmp_path / "sock" / "journal"
    return journal.stat().st_size if journal.exists() else 0


def test_the_response_does_not_wait_for_amplitude(tmp_path: Path, code_dir: Path,
                                                  fake: FakeAmplitude) -> None:
    with environment(tmp_path, code_dir, fake) as lam:
        # WHEN a decorated invocation tracks 10 events
        result = lam.invoke({"events": 10})
        # THEN the caller has the handler's own answer, untouched
        assert result.kind == "response" and result.failure is None
        assert result.body == {"ok": True, "request_id": result.request_id}
        # AND Amplitude has all ten, sent by the extension after the response
        assert fake.wait_for_events(10)
        ext = lam.extension(EXTENSION)
        lines = summaries(ext.output(), "amp_lite extension flush")
        assert lines and lines[-1]["request_id"] == result.request_id
        assert (lines[-1]["handed_off"], lines[-1]["delivered"]) == (10, 10)
        # AND the function itself only handed them off
        runtime = lam.runtime
        assert runtime is not None
        function_lines = summaries(runtime.output(), "amp_lite flush")
        assert (function_lines[-1]["handed_off"], function_lines[-1]["delivered"]) == (10, 0)
        assert spilled(tmp_path) == 0


def test_amplitude_hanging_costs_the_caller_nothing_and_loses_nothing(
        tmp_path: Path, code_dir: Path, fake: FakeAmplitude) -> None:
    with environment(tmp_path, code_dir, fake) as lam:
        lam.invoke({"events": 1, "run": 0})  # warm: the cold start is not what is measured
        assert fake.wait_for_events(1)
        # GIVEN Amplitude hanging on every request
        fake.script(*[Fault.hang(30) for _ in range(20)])
        # WHEN an invocation tracks 10 events
        result = lam.invoke({"events": 10, "run": 1})
        # THEN the caller's answer came without waiting for Amplitude (which never answers)
        assert result.kind == "response" and result.failure is None
        assert result.caller_ms < 1000
        # AND the extension gave up by the deadline less its margin: no timeout, and the
        # events wait in the spill
        assert result.ended_s is not None and result.ended_s <= result.deadline_s
        line = summaries(lam.extension(EXTENSION).output(), "amp_lite extension flush")[-1]
        assert line["overflowed"] == 10 and line["delivered"] == 0
        assert spilled(tmp_path) >= 1
        # WHEN Amplitude is back and the next invocation ends
        fake.clear_faults()
        lam.invoke({"events": 1, "run": 2})
        # THEN all 12 are there, none twice
        assert fake.wait_for_events(12)
        assert len(set(fake.insert_ids)) == 12


def test_a_throttled_user_is_delivered_later(tmp_path: Path, code_dir: Path,
                                             fake: FakeAmplitude) -> None:
    with environment(tmp_path, code_dir, fake) as lam:
        fake.throttle(users=["user-0001"])
        lam.invoke({"events": 5, "run": 0})
        line = summaries(lam.extension(EXTENSION).output(), "amp_lite extension flush")[-1]
        assert line["delivered"] == 0 and line["overflowed"] == 5
        fake.clear_throttles()
        lam.invoke({"events": 5, "run": 1})
        assert fake.wait_for_events(10)


def test_an_extension_killed_after_taking_the_events_loses_none(
        tmp_path: Path, code_dir: Path, fake: FakeAmplitude) -> None:
    with environment(tmp_path, code_dir, fake) as lam:
        lam.invoke({"events": 1, "run": 0})
        assert fake.wait_for_events(1)
        # GIVEN Amplitude hanging, so that the extension is still delivering after the response
        fake.script(*[Fault.hang(30) for _ in range(20)])
        first = lam.extension(EXTENSION)
        # WHEN the extension is killed after it acknowledged the hand-off
        result = _invoke_and_kill(lam, {"events": 10, "run": 1}, tmp_path)
        # THEN the invocation failed as Lambda fails it (the caller had its answer first)
        assert result.failure == "Extension.Crash"
        assert result.runtime_posted
        # WHEN Amplitude is back and the environment starts again
        fake.clear_faults()
        lam.invoke({"events": 1, "run": 2})
        # THEN the new extension found the ten in the spill and delivered them
        assert lam.extension(EXTENSION) is not first
        assert fake.wait_for_events(12)
        assert len(set(fake.insert_ids)) == 12


def _invoke_and_kill(lam: LambdaEnvironment, event: dict[str, Any], tmp_path: Path) -> Any:
    """Invoke, and kill the extension once it journaled the hand-off (then it is delivering
    to an Amplitude that hangs)."""
    import threading

    killer_done = threading.Event()

    def kill_after_answer() -> None:
        try:
            lam.wait_for(lambda: journaled(tmp_path) > 0, wait_s=10)
            lam.kill_extension(EXTENSION)
        finally:
            killer_done.set()

    killer = threading.Thread(target=kill_after_answer, daemon=True)
    killer.start()
    result = lam.invoke(event)
    killer_done.wait(10)
    return result


def test_without_the_extension_the_function_delivers_its_events(
        tmp_path: Path, code_dir: Path, fake: FakeAmplitude) -> None:
    # GIVEN AMP_LITE_EXTENSION=on but no extension layer
    with environment(tmp_path, code_dir, fake, extensions=False) as lam:
        result = lam.invoke({"events": 10})
        # THEN the function delivered them itself, and said why at WARNING
        assert result.kind == "response" and result.failure is None
        assert fake.wait_for_events(10)
        runtime = lam.runtime
        assert runtime is not None
        output = runtime.output()
        assert "hand-off to the extension" in output and "WARNING" in output
        assert summaries(output, "amp_lite flush")[-1]["delivered"] == 10


def test_shutdown_delivers_what_the_extension_holds(tmp_path: Path, code_dir: Path,
                                                     fake: FakeAmplitude) -> None:
    with environment(tmp_path, code_dir, fake) as lam:
        fake.script(*[Fault.hang(30) for _ in range(20)])
        lam.invoke({"events": 10})
        assert spilled(tmp_path) >= 1
        fake.clear_faults()
        # WHEN the environment shuts down
        record = lam.shutdown()
        # THEN the extension delivered the ten within the shutdown deadline and exited
        assert record is not None and record.killed == []
        assert fake.wait_for_events(10)
        assert record.exit_codes.get(EXTENSION) == 0
        line = summaries(lam.extension(EXTENSION).output(), "amp_lite extension shutdown")[-1]
        assert line["delivered"] == 10 and line["shutdown"] == "spindown"


def test_warm_invocations_share_one_connection(tmp_path: Path, code_dir: Path,
                                               fake: FakeAmplitude) -> None:
    with environment(tmp_path, code_dir, fake) as lam:
        for run in range(100):
            result = lam.invoke({"events": 3, "run": run})
            assert result.failure is None
        assert fake.wait_for_events(300)
        # every request came from the extension, over one TCP connection
        assert fake.connections_opened == 1
        assert len(summaries(lam.extension(EXTENSION).output(),
                             "amp_lite extension flush")) == 100


def test_installed_but_not_enabled_holds_no_invocation(tmp_path: Path, code_dir: Path,
                                                       fake: FakeAmplitude) -> None:
    # GIVEN the extension layer, without AMP_LITE_EXTENSION=on
    with environment(tmp_path, code_dir, fake, AMP_LITE_EXTENSION="") as lam:
        result = lam.invoke({"events": 4})
        # THEN it registered for SHUTDOWN only, and the function delivered its own events
        assert list(lam.extension(EXTENSION).events) == ["SHUTDOWN"]
        assert result.failure is None and fake.wait_for_events(4)
        record = lam.shutdown()
        assert record is not None and record.exit_codes.get(EXTENSION) == 0


def test_the_extension_registers_before_importing_amp_lite(
        tmp_path: Path, code_dir: Path, fake: FakeAmplitude) -> None:
    with environment(tmp_path, code_dir, fake) as lam:
        lam.init()
        ext = lam.extension(EXTENSION)
        assert ext.registered_s is not None
        # generous: a process start and one local request (the benchmark measures it)
        assert ext.registered_s - ext.started_s < 2.0


# -- the built extension layer ------------------------------------------------------------


def test_layer_canary_with_the_extension(tmp_path: Path, code_dir: Path,
                                         fake: FakeAmplitude) -> None:
    runtime = f"{sys.version_info[0]}.{sys.version_info[1]}"
    built = tmp_path / "ext-layer.zip"
    subprocess.run([sys.executable, str(REPO_ROOT / "layers" / "build.py"), "--python",
                    runtime, "--extension", "--output", str(built)],
                   check=True, capture_output=True, timeout=600)
    assert built.stat().st_size < 800 * 1024  # the plain layer's gate (test_layer.py)
    opt = tmp_path / "opt"
    with zipfile.ZipFile(built) as archive:
        assert oct(archive.getinfo("extensions/amp-lite").external_attr >> 16) == "0o100755"
        archive.extractall(opt)
        for info in archive.infolist():  # zipfile does not restore modes
            (opt / info.filename).chmod(info.external_attr >> 16 & 0o777)
    for path in sorted(opt.rglob("*"), reverse=True):  # read-only, as /opt is
        path.chmod(path.stat().st_mode & 0o555)
    try:
        env = function_env(tmp_path, fake, PYTHONDONTWRITEBYTECODE="1")
        with lambda_environment("app.handler", env=env, python_path=[opt / "python", code_dir],
                                log_dir=tmp_path, extensions_dir=opt / "extensions",
                                timeout_ms=TIMEOUT_MS) as lam:
            result = lam.invoke({"events": 10})
            assert result.kind == "response" and result.failure is None
            assert fake.wait_for_events(10)
            line = summaries(lam.extension(EXTENSION).output(), "amp_lite extension flush")
            assert line[-1]["delivered"] == 10
    finally:
        for path in opt.rglob("*"):
            os.chmod(path, 0o755)
        opt.chmod(0o755)


SLOW_HANDLER = textwrap.dedent("""
    import time
    import amp_lite

    @amp_lite.amplitude_flush
    def handler(event, context):
        for i in range(event.get("events", 10)):
            amp_lite.track("Late Event", user_id="user-0001", event_properties={"i": i})
        time.sleep(event.get("sleep_s", 0))  # the hand-off comes this late
        return {"ok": True}
""")


def test_a_hand_off_too_close_to_the_deadline_waits_in_the_journal(
        tmp_path: Path, code_dir: Path, fake: FakeAmplitude) -> None:
    (code_dir / "app.py").write_text(SLOW_HANDLER)
    with environment(tmp_path, code_dir, fake) as lam:
        # GIVEN a hand-off 2.45 s into a 3 s invocation (the margin is 0.5 s: ~50 ms left)
        result = lam.invoke({"events": 5, "sleep_s": 2.45})
        assert result.failure is None
        # THEN the extension kept the five for later: none sent, none dropped
        assert journaled(tmp_path) > 0
        assert "wait for the next flush" in lam.extension(EXTENSION).output()
        # WHEN the next invocation has time / THEN all ten arrive
        lam.invoke({"events": 5})
        assert fake.wait_for_events(10)


def test_a_disabled_client_does_not_hold_the_invocation(tmp_path: Path, code_dir: Path,
                                                        fake: FakeAmplitude) -> None:
    # GIVEN AMP_LITE_ENABLED=false (the kill switch) with the extension on
    with environment(tmp_path, code_dir, fake, AMP_LITE_ENABLED="false") as lam:
        lam.invoke({"events": 1})
        result = lam.invoke({"events": 3})
        # THEN the invocation ends when the handler does, not at its deadline less the margin
        assert result.failure is None and result.post_response_ms < 1000
        assert fake.insert_ids == []


def test_an_extension_that_cannot_start_holds_no_invocation(tmp_path: Path, code_dir: Path,
                                                            fake: FakeAmplitude) -> None:
    # GIVEN the socket's directory made by someone else's rules (0755): the extension refuses it
    (tmp_path / "sock").mkdir(mode=0o755)
    (tmp_path / "sock").chmod(0o755)
    with environment(tmp_path, code_dir, fake) as lam:
        result = lam.invoke({"events": 4})
        # THEN no crash, no wait: the function delivered its own events
        assert result.failure is None and result.post_response_ms < 1000
        assert fake.wait_for_events(4)
        assert "cannot start" in lam.extension(EXTENSION).output()
