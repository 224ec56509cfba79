"""`amp-lite demo` and `amp-lite --version`, run as a user would: in a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import amp_lite

DEMO_TIMEOUT_S = 30


def run_cli(*args: str, spill_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMPLITUDE_")}
    env["AMP_LITE_SPILL_DIR"] = str(spill_dir)
    return subprocess.run([sys.executable, "-m", "amp_lite", *args], env=env,
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False)


def parse_table(output: str) -> list[dict[str, str]]:
    """The demo's table as rows of {column: cell}, cut at the columns of the dashes line."""
    lines = output.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("invocation"))
    header, dashes = lines[header_at], lines[header_at + 1]
    starts = [m.start() for m in re.finditer(r"-+", dashes)]
    spans = list(zip(starts, [*starts[1:], None], strict=True))
    names = [header[a:b].strip() for a, b in spans]
    rows = []
    for line in lines[header_at + 2:]:
        if not line.strip():
            break
        rows.append({name: line[a:b].strip() for name, (a, b) in zip(names, spans, strict=True)})
    return rows


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    return run_cli("demo", spill_dir=tmp_path_factory.mktemp("demo-spill"))


def test_demo_runs_locally_without_an_api_key(
    demo: subprocess.CompletedProcess[str],
) -> None:
    # GIVEN no AMPLITUDE_API_KEY in the environment (see run_cli)
    # WHEN `amp-lite demo` runs
    # THEN it succeeds and says it talks to FakeAmplitude only
    assert demo.returncode == 0, demo.stderr
    assert "FakeAmplitude" in demo.stdout
    assert "nothing leaves this machine" in demo.stdout
    assert "127.0.0.1" in demo.stdout


def test_demo_prints_five_balanced_invocation_rows(
    demo: subprocess.CompletedProcess[str],
) -> None:
    # GIVEN the demo's output
    # WHEN its table is parsed by column
    rows = parse_table(demo.stdout)

    # THEN there are five invocations, numbered 1 to 5, each accounting for all its events
    assert [row["invocation"].split()[0] for row in rows] == ["1", "2", "3", "4", "5"]
    for row in rows:
        taken = int(row["tracked"]) + int(row["recovered"])
        settled = sum(int(row[c]) for c in ("delivered", "rejected", "overflowed", "dropped"))
        assert taken == settled, row


def test_demo_outage_spills_and_the_next_invocation_recovers(
    demo: subprocess.CompletedProcess[str],
) -> None:
    # GIVEN the demo's table
    rows = {row["invocation"].split()[0]: row for row in parse_table(demo.stdout)}

    # WHEN / THEN invocation 2 (the outage) overflowed its 4 events
    assert rows["2"]["overflowed"] == "4"
    assert rows["2"]["delivered"] == "0"
    # AND invocation 3 recovered those 4 and delivered them with its own 2
    assert rows["3"]["recovered"] == "4"
    assert rows["3"]["delivered"] == "6"
    assert rows["3"]["dropped"] == "0"


def test_version_flag_prints_the_package_version(tmp_path: Path) -> None:
    # GIVEN the installed package
    # WHEN `amp-lite --version` runs (as a module, and as the console script when installed)
    result = run_cli("--version", spill_dir=tmp_path)

    # THEN it prints the version and exits 0
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"amp-lite {amp_lite.__version__}"
    script = shutil.which("amp-lite", path=str(Path(sys.executable).parent))
    if script is not None:
        scripted = subprocess.run([script, "--version"], capture_output=True, text=True,
                                  timeout=DEMO_TIMEOUT_S, check=False)
        assert scripted.returncode == 0, scripted.stderr
        assert scripted.stdout.strip() == f"amp-lite {amp_lite.__version__}"
