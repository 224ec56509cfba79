"""`amp-lite demo`: a few simulated invocations, one of them through an outage.

Without AMPLITUDE_API_KEY it runs against FakeAmplitude on 127.0.0.1 and never leaves the
machine. With the key set it sends two demo events to the real Amplitude API, and says so.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from ._client import Amplitude
from ._config import ENV_API_KEY
from ._events import Identify
from ._report import DeliveryReport
from .overflow import LocalSpill
from .testing import FakeAmplitude, Fault

COLUMNS = ("invocation", "tracked", "recovered", "delivered", "rejected", "overflowed",
           "dropped", "attempts", "ms", "what happened")


@dataclass
class Step:
    name: str
    timeout_s: float
    events: int
    story: str
    before: Callable[[FakeAmplitude], None] = lambda fake: None


def run_demo(out: TextIO) -> int:
    if os.environ.get(ENV_API_KEY):
        return _run_live(out)
    with FakeAmplitude() as fake, tempfile.TemporaryDirectory(prefix="amp-lite-demo-") as spill:
        client = Amplitude("demo-api-key", server_url=fake.url, overflow=LocalSpill(spill))
        out.write(f"amp-lite demo: sending to FakeAmplitude at {fake.url} (no AMPLITUDE_API_KEY "
                  "set, nothing leaves this machine)\n\n")
        rows = [_run_step(client, fake, step) for step in _steps()]
        _print_table(out, rows)
        out.write(f"\nFakeAmplitude accepted {len(fake.events)} unique events "
                  f"({fake.duplicates} duplicates ignored by insert_id).\n")
    return 0


def _steps() -> list[Step]:
    return [
        Step("1 signup", 3.0, 3, "delivered in one request"),
        Step("2 checkout", 1.5, 4, "Amplitude down (503): retried until the budget, then spilled",
             lambda fake: fake.script(*[Fault.status_code(503)] * 100)),
        Step("3 browse", 3.0, 2, "Amplitude back: spilled events recovered and delivered",
             lambda fake: fake.clear_faults()),
        Step("4 burst", 3.0, 3, "user throttled (429): those events spilled for later",
             lambda fake: fake.throttle(users=["user-burst"])),
        Step("5 later", 3.0, 1, "throttle over: the spill drains",
             lambda fake: fake.clear_throttles()),
    ]


def _run_step(client: Amplitude, fake: FakeAmplitude, step: Step) -> tuple[str, ...]:
    step.before(fake)
    user = "user-burst" if "burst" in step.name else "user-demo-42"
    with client.invocation(timeout_s=step.timeout_s) as invocation:
        for i in range(step.events):
            client.track(step.name.split()[1], user_id=user, event_properties={"n": i})
    report = invocation.report or DeliveryReport()
    return _row(step.name, report, step.story)


def _row(name: str, report: DeliveryReport, story: str) -> tuple[str, ...]:
    return (name, str(report.tracked), str(report.recovered), str(report.delivered),
            str(report.rejected), str(report.overflowed), str(report.dropped),
            str(report.attempts), f"{report.elapsed_ms:.0f}", story)


def _print_table(out: TextIO, rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    for row in [COLUMNS, tuple("-" * w for w in widths), *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")


def _run_live(out: TextIO) -> int:
    client = Amplitude()
    out.write(f"amp-lite demo: AMPLITUDE_API_KEY is set, sending 2 demo events to the real "
              f"Amplitude API at {client.config.server_url}\n\n")
    with client.invocation(timeout_s=10) as invocation:
        client.track("amp-lite demo", device_id="amp-lite-demo-device",
                     event_properties={"source": "amp-lite demo"})
        client.identify(Identify().set("amp_lite_demo", True), device_id="amp-lite-demo-device")
    report = invocation.report or DeliveryReport()
    _print_table(out, [_row("live", report, "sent to Amplitude")])
    return 0 if report.delivered == report.tracked else 1
