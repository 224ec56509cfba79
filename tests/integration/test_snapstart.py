"""Lambda SnapStart under the real awslambdaric runtime client (4.2.2), which runs the hooks
registered with snapshot_restore_py around `GET /runtime/restore/next` when
AWS_LAMBDA_INITIALIZATION_TYPE is `snap-start`; and the import checks of invariant I6 for the
hooks package."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from amp_lite import Amplitude
from amp_lite import _snapstart as snapstart
from amp_lite.overflow import LocalSpill
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.integration.test_invariants import StartRecorder
from tests.support.lambda_runtime import lambda_runtime
from tests.unit.test_snapstart import FakeRegistrar

SUPPORT = Path(__file__).resolve().parents[1] / "support"
HANDLER = "snapstart_handler.handler"


def _env(fake: FakeAmplitude, spill: Path, **extra: str) -> dict[str, str]:
    return {"AMPLITUDE_API_KEY": API_KEY, "AMPLITUDE_SERVER_URL": fake.url,
            "AMP_LITE_SPILL_DIR": str(spill), "AMP_LITE_LOG_LEVEL": "INFO", **extra}


def _snapshot_summaries(output: str) -> list[dict[str, object]]:
    return [json.loads(m) for m in
            re.findall(r"amp_lite snapstart: before snapshot (\{.*\})", output)]


def _spilled_lines(spill: Path) -> list[str]:
    return [line for f in spill.rglob("*.jsonl") for line in f.read_text().splitlines()[1:]]


def test_init_events_are_delivered_before_the_snapshot(fake: FakeAmplitude,
                                                       tmp_path: Path) -> None:
    # GIVEN a SnapStart init of a handler module that tracks one event at import
    with lambda_runtime(HANDLER, env=_env(fake, tmp_path / "spill"), python_path=[SUPPORT],
                        log_dir=tmp_path, snapstart=True) as runtime:
        # WHEN the runtime reaches the snapshot point
        assert runtime.api.wait_for_snapshot(), runtime.output()
        # THEN the init-time event had already reached Amplitude, its report logged
        assert [e["event_type"] for e in fake.events] == ["cold_start"]
        [summary] = _snapshot_summaries(runtime.output())
        assert (summary["tracked"], summary["delivered"]) == (1, 1)
        # WHEN the environment is restored and invoked
        runtime.api.restore()
        result = runtime.api.invoke({"user_id": "user-after-restore"})
        # THEN the invocation works and delivers, over a connection opened after the restore
        assert result.kind == "response", result.body
        assert result.body == {"init_events_still_buffered": 0, "jitter_reseeded": True}
        assert [e["event_type"] for e in fake.events] == ["cold_start", "invoked"]
        assert fake.connections_opened == 2
        assert runtime.api.init_error is None and runtime.api.restore_error is None


def test_init_events_are_spilled_before_the_snapshot_when_amplitude_hangs(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN Amplitude hanging during a SnapStart init, flushes capped at 1.5 s (enough for the
    # restored environment's flush to read the spill back)
    fake.script(*[Fault.hang(30)] * 5)
    spill = tmp_path / "spill"
    env = _env(fake, spill, AMP_LITE_FLUSH_TIMEOUT_S="1.5")
    with lambda_runtime(HANDLER, env=env, python_path=[SUPPORT], log_dir=tmp_path,
                        snapstart=True) as runtime:
        # WHEN the runtime reaches the snapshot point
        assert runtime.api.wait_for_snapshot(), runtime.output()
        # THEN the init-time event is in the spill, accounted for, and nothing was delivered
        [summary] = _snapshot_summaries(runtime.output())
        assert (summary["tracked"], summary["overflowed"]) == (1, 1)
        assert len(_spilled_lines(spill)) == 1
        assert fake.events == []
        # WHEN Amplitude recovers and the restored environment is invoked
        fake.clear_faults()
        runtime.api.restore()
        result = runtime.api.invoke({"user_id": "user-after-restore"})
        # THEN the spilled event is recovered and delivered with the new one
        assert result.kind == "response", result.body
        assert sorted(e["event_type"] for e in fake.events) == ["cold_start", "invoked"]
        assert _spilled_lines(spill) == []


def test_without_snapstart_the_runtime_never_reaches_a_snapshot_point(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN the same handler in an on-demand init
    with lambda_runtime(HANDLER, env=_env(fake, tmp_path / "spill"), python_path=[SUPPORT],
                        log_dir=tmp_path) as runtime:
        # WHEN it is invoked
        result = runtime.api.invoke({"user_id": "user-on-demand"})
        # THEN no snapshot was asked for, and the init event waited for the first flush
        assert result.kind == "response"
        assert not runtime.api.snapshot_requested
        assert sorted(e["event_type"] for e in fake.events) == ["cold_start", "invoked"]
        assert result.body["jitter_reseeded"] is False
        assert _snapshot_summaries(runtime.output()) == []


_PROBE = ("import json, sys\n"
          "import amp_lite\n"
          "from amp_lite import _snapstart\n"
          "amp_lite.Amplitude('k'); amp_lite.Amplitude('k')\n"
          "hooks = sys.modules.get('snapshot_restore_py')\n"
          "print(json.dumps([hooks is not None,\n"
          "    len(hooks.get_before_snapshot()) if hooks else 0,\n"
          "    len(hooks.get_after_restore()) if hooks else 0]))\n")


def _probe(**env: str) -> list[object]:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                            timeout=30, check=False, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    loaded: list[object] = json.loads(result.stdout)
    return loaded


def test_i6_outside_snapstart_the_hooks_package_is_never_imported() -> None:
    # GIVEN a fresh interpreter without AWS_LAMBDA_INITIALIZATION_TYPE (and with "on-demand")
    for env in ({}, {"AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand"}):
        # WHEN it imports amp_lite and builds two clients
        # THEN snapshot_restore_py was not imported and nothing was registered
        assert _probe(**env) == [False, 0, 0]


def test_under_snapstart_two_clients_register_one_hook_of_each_kind() -> None:
    # GIVEN a fresh interpreter initialising for SnapStart
    # WHEN it builds two clients / THEN one before-snapshot and one after-restore hook exist
    assert _probe(AWS_LAMBDA_INITIALIZATION_TYPE="snap-start") == [True, 1, 1]


def test_i1_the_hooks_start_no_thread_timer_or_atexit_hook(
        fake: FakeAmplitude, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a SnapStart client with init events, one of them overflowed (Amplitude hangs)
    monkeypatch.setattr(snapstart, "_enrolled", snapstart._Enrolled())
    registrar = FakeRegistrar()
    client = Amplitude(API_KEY, server_url=fake.url, overflow=LocalSpill(tmp_path / "spill"),
                       flush_timeout_s=0.5)
    snapstart.enroll(client, environ={snapstart.ENV_INITIALIZATION_TYPE: snapstart.SNAP_START},
                     registrar=registrar)
    client.track("cold_start", user_id="user-00042")
    fake.script(Fault.hang(30))
    recorder = StartRecorder(monkeypatch)
    # WHEN the runtime runs the before-snapshot and after-restore hooks
    registrar.snapshot()
    registrar.restore()
    # THEN no thread, timer or atexit hook was started
    assert recorder.started == []
    assert list((tmp_path / "spill").rglob("*.jsonl"))
