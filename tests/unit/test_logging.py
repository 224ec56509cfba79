"""The `amp_lite` logger: silent by default, one summary line per flush with
AMP_LITE_LOG_LEVEL=INFO, never event contents or the key. Run in fresh interpreters, since the
level is read at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY

SECRET_VALUE = "property-value-that-must-not-be-logged"
PROGRAM = f"""
import logging, sys
logging.basicConfig(stream=sys.stderr, level=logging.WARNING)  # as a platform's root handler
import amp_lite
client = amp_lite.Amplitude({API_KEY!r}, server_url=sys.argv[1], overflow=())
for n in range(2):
    client.track("Logged", user_id="user-logging", event_properties={{"v": {SECRET_VALUE!r}}})
print(client.flush().delivered)
"""


def _run(fake: FakeAmplitude, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AMP_LITE_")}
    return subprocess.run([sys.executable, "-c", PROGRAM, fake.url], capture_output=True,
                          text=True, timeout=60, check=True, env={**clean, **env})


def test_silent_by_default(fake: FakeAmplitude) -> None:
    # GIVEN no AMP_LITE_LOG_LEVEL, WHEN a flush delivers two events
    done = _run(fake)
    # THEN nothing is logged
    assert done.stdout.strip() == "2"
    assert done.stderr == ""


@pytest.mark.parametrize("level", ["INFO", "info"])
def test_info_gives_one_summary_line_per_flush(fake: FakeAmplitude, level: str) -> None:
    # GIVEN AMP_LITE_LOG_LEVEL=INFO, WHEN a flush delivers two events
    done = _run(fake, AMP_LITE_LOG_LEVEL=level)
    # THEN exactly one line: the report as JSON, with counts but no contents and no key
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    summary = json.loads(lines[0].split("amp_lite flush ", 1)[1])
    assert summary["delivered"] == 2 and summary["tracked"] == 2
    assert SECRET_VALUE not in done.stderr and API_KEY not in done.stderr


def test_a_bad_level_is_reported_not_raised(fake: FakeAmplitude) -> None:
    done = _run(fake, AMP_LITE_LOG_LEVEL="LOUD")
    assert done.stdout.strip() == "2"
    assert "AMP_LITE_LOG_LEVEL='LOUD' is not a logging level" in done.stderr
