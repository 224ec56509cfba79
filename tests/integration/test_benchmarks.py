"""The benchmark suite cannot rot: `benchmarks/run.py --quick` runs end to end.

Asserts that it exits 0, prints the table, writes a JSON file with every scenario for both SDKs
(replay has no official equivalent) and confirmed delivery. Asserts nothing about timings:
those are for the table, not for tests.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "run.py"
TIMEOUT_S = 300

BOTH_SDKS = {
    "1_track": {"per_event_us"},
    "2_warm": {"median_ms", "p99_ms", "connections"},
    "3_cold": {"bare_total_ms", "boto3_total_ms", "bare_import_ms", "boto3_import_ms"},
    "6_layer": {"bare_total_ms", "botocore_total_ms", "source_total_ms", "bare_import_ms",
                "botocore_import_ms", "source_import_ms"},
}
BULK = {"wall_s", "events_per_s", "rss_delta_mb", "rss_peak_mb"}
REPLAY = {"replay_events_per_s", "floor_events_per_s", "ratio_to_floor"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    done = subprocess.run([sys.executable, str(RUN), "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout, json.loads(out.read_text())


def _numbers(values: Any) -> bool:
    return (isinstance(values, list) and len(values) > 0
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values))


def test_the_table_is_printed(quick_run: tuple[str, dict[str, Any]]) -> None:
    stdout, _ = quick_run
    header = next(line for line in stdout.splitlines() if line.startswith("| scenario"))
    for column in ("amp-lite", "official", "spread", "ratio", "target", "met?"):
        assert column in header
    for label in ("1 track()", "2 warm invocation", "2 TCP+TLS connections", "3 cold, bare",
                  "3 cold, boto3", "4 bulk", "5 replay", "6 layer cold, bare",
                  "6 layer cold, botocore loaded", "6 layer import, botocore loaded",
                  "6 layer import, no .pyc"):
        assert f"| {label}" in stdout, label


def test_every_scenario_has_numbers_for_both_sdks(
        quick_run: tuple[str, dict[str, Any]]) -> None:
    _, results = quick_run
    samples = results["samples"]
    for scenario, metrics in BOTH_SDKS.items():
        for sdk in ("amp_lite", "official"):
            for metric in metrics:
                assert _numbers(samples[scenario][sdk][metric]), (scenario, sdk, metric)
    bulk = [name for name in samples if name.startswith("4_bulk_")]
    assert bulk
    for scenario in bulk:
        for sdk in ("amp_lite", "official"):
            for metric in BULK:
                assert _numbers(samples[scenario][sdk][metric]), (scenario, sdk, metric)
    for metric in REPLAY:  # no peer has a replay consumer: amp-lite against its floor
        assert _numbers(samples["5_replay"]["amp_lite"][metric]), metric


def test_delivery_was_confirmed_at_the_collector(quick_run: tuple[str, dict[str, Any]]) -> None:
    stdout, results = quick_run
    delivery = results["delivery"]
    assert delivery["confirmed"] is True
    assert delivery["checks"] > 0
    assert all(run["received"] == run["expected"] for run in delivery["runs"])
    assert "delivery confirmed at the collector" in stdout


def test_the_machine_is_described(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, results = quick_run
    for key in ("cpu_model", "cores", "python", "amp_lite", "amplitude_analytics", "date"):
        assert results["machine"][key], key
