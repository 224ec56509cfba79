"""Soak (issue 8, item 2): 5,000 warm invocations in one process, one client, random faults.

A warm Lambda environment serves thousands of invocations with one client. Whatever Amplitude
does meanwhile, amp_lite must not grow: memory (RSS and tracemalloc) stays flat after warm-up,
sockets and file descriptors stay bounded, the local spill never passes its cap, and every
flush accounts for every event.

The figures are printed (run with `-s`) and written as JSON to $AMP_LITE_SOAK_OUT when set, for
the README's Reliability section.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from amp_lite import Amplitude, DeliveryReport, RetryHandler
from amp_lite._http import POOL_MAXSIZE
from amp_lite.overflow import LocalSpill
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY

SEED = 20_260_508
INVOCATIONS = 5_000
WARM_UP = 500  # invocations before the baseline sample: pools, caches and the spill settle
SAMPLE_EVERY = 250
NORMAL_TIMEOUT_S = 1.5  # above the 1 s a flush needs before it reads the local spill back
HANG_TIMEOUT_S = 0.15  # a hanging Amplitude costs an invocation its whole (short) budget
HANG_S = 0.25  # how long FakeAmplitude holds a hanging request before resetting it
SPILL_MAX_BYTES = 16 * 1024  # small, so that outage streaks push the spill against its cap
STREAK_LENGTH = 25  # invocations in a row that meet an outage (the spill fills up)
SCHEDULING_TOLERANCE_MS = 250

# The bounds this test states (from the sample taken after warm-up to the last one).
MAX_RSS_GROWTH_BYTES = 5 * 1024 * 1024
MAX_TRACEMALLOC_GROWTH_BYTES = 512 * 1024
MAX_CLIENT_SOCKETS = POOL_MAXSIZE  # urllib3 keeps at most this many alive per host
MAX_ALL_SOCKETS = 2 * POOL_MAXSIZE + 6  # both ends of each (FakeAmplitude runs in-process),
#                                         its listener, and hung requests being reset
MAX_FD_GROWTH = 8

# Fault mix, per invocation (weights). Each fault is scripted for that invocation only.
FAULT_WEIGHTS = {
    "ok": 800, "503_then_ok": 60, "5xx_burst": 15, "outage": 10, "throttle": 40,
    "reset": 40, "reset_mid_body": 15, "non_json_200": 10, "hang": 10, "outage_streak": 1,
}


@dataclass
class Sample:
    invocation: int
    rss_bytes: int
    traced_bytes: int
    fds: int
    sockets: int
    client_sockets: int
    spill_bytes: int


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def socket_inodes() -> dict[str, str]:
    """fd -> socket inode, for every socket this process has open."""
    inodes = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the fd of the listing itself, already closed
            continue
        if target.startswith("socket:["):
            inodes[fd] = target[len("socket:["):-1]
    return inodes


def client_side_inodes(server_port: int) -> set[str]:
    """Inodes of TCP sockets whose remote end is the server (the client's connections)."""
    found = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == server_port:
                found.add(fields[9])
    return found


def take_sample(invocation: int, fake: FakeAmplitude, spill: LocalSpill) -> Sample:
    inodes = socket_inodes()
    ours = client_side_inodes(fake.port)
    return Sample(
        invocation=invocation, rss_bytes=rss_bytes(),
        traced_bytes=tracemalloc.get_traced_memory()[0], fds=len(os.listdir("/proc/self/fd")),
        sockets=len(inodes), client_sockets=sum(1 for i in inodes.values() if i in ours),
        spill_bytes=spill.used_bytes())


class CountingHandler(logging.Handler):
    """Counts amp_lite's records by level without keeping them (pytest's capture would keep
    every record, and that memory would be measured as ours)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.levels: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.levels[record.levelname] += 1


@pytest.fixture
def counted_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingHandler]:
    logger = logging.getLogger("amp_lite")
    handler = CountingHandler()
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def script_faults(fake: FakeAmplitude, kind: str, user: str) -> float:
    """Script this invocation's fault; return its time budget."""
    if kind == "503_then_ok":
        fake.script(*[Fault.status_code(503)] * random.Random(user).randint(1, 3))
    elif kind == "5xx_burst":
        fake.script(Fault.status_code(500), Fault.status_code(502), Fault.status_code(504))
    elif kind in ("outage", "outage_streak"):  # over 10 attempts: retries exhausted, spilled
        fake.script(*[Fault.status_code(503)] * 12)
    elif kind == "throttle":
        fake.throttle(users=[user])
    elif kind == "reset":
        fake.script(Fault.reset())
    elif kind == "reset_mid_body":
        fake.script(Fault.reset_mid_body())
    elif kind == "non_json_200":
        fake.script(Fault.reply(200, b"<html>captive portal</html>", "text/html"))
    elif kind == "hang":
        fake.script(Fault.hang(HANG_S))
        return HANG_TIMEOUT_S
    return NORMAL_TIMEOUT_S


@dataclass
class SoakRun:
    """One client serving `INVOCATIONS` invocations against a scripted FakeAmplitude."""

    fake: FakeAmplitude
    spill: LocalSpill
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    totals: Counter[str] = field(default_factory=Counter)  # summed report counts
    faults: Counter[str] = field(default_factory=Counter)
    unbalanced: list[int] = field(default_factory=list)
    late: list[tuple[int, str, float]] = field(default_factory=list)
    over_cap: list[tuple[int, int]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    accepted_by_server: int = 0
    streak_left: int = 0
    spill_max_bytes: int = 0
    elapsed_s: float = 0.0
    growth: list[tracemalloc.StatisticDiff] = field(default_factory=list)

    def run(self) -> None:
        client = Amplitude(API_KEY, server_url=self.fake.url, overflow=self.spill,
                           retry=RetryHandler(backoff_base_s=0.002, backoff_cap_s=0.01,
                                              jitter=self.rng.uniform))
        tracemalloc.start()
        started = time.monotonic()
        try:
            warm = None
            for i in range(INVOCATIONS):
                self.invoke(client, i)
                if (i + 1) % SAMPLE_EVERY == 0:
                    self.samples.append(take_sample(i + 1, self.fake, self.spill))
                if i + 1 == WARM_UP:
                    warm = tracemalloc.take_snapshot()
            self.elapsed_s = time.monotonic() - started
            assert warm is not None
            self.growth = tracemalloc.take_snapshot().compare_to(warm, "lineno")[:8]
        finally:
            tracemalloc.stop()
            client.close()

    def invoke(self, client: Amplitude, i: int) -> None:
        """One warm invocation of 1-4 events, with this invocation's fault scripted."""
        kind = self.rng.choices(list(FAULT_WEIGHTS), list(FAULT_WEIGHTS.values()))[0]
        if self.streak_left:
            kind, self.streak_left = "outage_streak", self.streak_left - 1
        elif kind == "outage_streak":
            self.streak_left = STREAK_LENGTH - 1
        self.faults[kind] += 1
        user = f"user-{self.rng.randrange(50):04d}"
        budget_s = script_faults(self.fake, kind, user)
        with client.invocation(timeout_s=budget_s) as invocation:
            for n in range(self.rng.randint(1, 4)):
                client.track("soak", user_id=user, device_id=f"device-{user}",
                             event_properties={"n": n, "invocation": i, "kind": kind})
        report = invocation.report
        assert report is not None
        _add(self.totals, report)  # reports are not kept: their memory would be measured
        if not report.balanced:
            self.unbalanced.append(i)
        if report.elapsed_ms > budget_s * 1000 + SCHEDULING_TOLERANCE_MS:
            self.late.append((i, kind, report.elapsed_ms))
        used = self.spill.used_bytes()
        self.spill_max_bytes = max(self.spill_max_bytes, used)
        if used > SPILL_MAX_BYTES:
            self.over_cap.append((i, used))
        self.fake.clear_faults()
        self.fake.clear_throttles()
        self.accepted_by_server += len(self.fake.events)
        self.fake.reset()  # the fake's own memory must not be measured as amp_lite's

    def pending_in_spill(self) -> int:
        """Events still waiting in the spill (each file: a header line, then one per event)."""
        return sum(len(p.read_bytes().splitlines()) - 1 for p in self.spill.pending_files())


def test_soak_5000_warm_invocations_stay_flat_and_bounded(
        fake: FakeAmplitude, tmp_path: Path, counted_logs: CountingHandler) -> None:
    # GIVEN one client for the whole run, a small local spill, and a seeded fault schedule
    soak = SoakRun(fake, LocalSpill(tmp_path / "spill", max_bytes=SPILL_MAX_BYTES))
    # WHEN it serves 5,000 invocations of 1-4 events each
    soak.run()
    pending = soak.pending_in_spill()
    figures = _figures(soak, counted_logs.levels, pending)
    _publish(figures, soak.samples, soak.growth)
    totals, samples = soak.totals, soak.samples

    # THEN every fault kind happened, and every report is balanced and on time
    assert set(soak.faults) == set(FAULT_WEIGHTS)
    assert soak.unbalanced == []
    assert soak.late == []
    # AND across the run every event is accounted for: delivered (and seen by the server),
    # rejected, dropped (the spill was full) or still waiting in the spill
    assert totals["delivered"] == soak.accepted_by_server
    assert totals["tracked"] == (totals["delivered"] + totals["rejected"] + totals["dropped"]
                                 + pending)
    assert totals["overflowed"] > 0 and totals["recovered"] > 0
    # AND the spill filled up during the outage streaks but never passed its cap (checked
    # after every invocation); what it could not take was counted as dropped
    assert soak.spill_max_bytes > SPILL_MAX_BYTES // 4
    assert soak.over_cap == []
    # AND memory is flat after warm-up, sockets and file descriptors bounded
    baseline = next(s for s in samples if s.invocation >= WARM_UP)
    last = samples[-1]
    assert last.rss_bytes - baseline.rss_bytes < MAX_RSS_GROWTH_BYTES, figures
    assert last.traced_bytes - baseline.traced_bytes < MAX_TRACEMALLOC_GROWTH_BYTES, figures
    assert max(s.client_sockets for s in samples) <= MAX_CLIENT_SOCKETS, figures
    assert max(s.sockets for s in samples) <= MAX_ALL_SOCKETS, figures
    assert max(s.fds for s in samples[samples.index(baseline):]) - baseline.fds <= MAX_FD_GROWTH
    assert all(s.spill_bytes <= SPILL_MAX_BYTES for s in samples)


def test_recovered_events_that_fail_again_stay_in_a_half_full_spill(
        fake: FakeAmplitude, tmp_path: Path) -> None:
    # GIVEN a spill with room for ~20 events, and an outage that outlasts two flushes
    spill = LocalSpill(tmp_path / "spill", max_bytes=4_000)
    client = Amplitude(API_KEY, server_url=fake.url, overflow=spill, flush_timeout_s=2.0,
                       retry=RetryHandler(max_attempts=2, backoff_base_s=0.001))
    reports = []
    for _ in range(3):
        fake.script(*[Fault.status_code(503)] * 4)
        for n in range(5):
            client.track("outage", user_id="user-0001", event_properties={"n": n})
        # WHEN each flush recovers the spilled events, fails again and overflows
        reports.append(client.flush())
        fake.clear_faults()
    # THEN no event that was durably spilled is lost: 15 events, all still in the spill
    assert [r.dropped for r in reports] == [0, 0, 0]
    assert sum(len(p.read_bytes().splitlines()) - 1 for p in spill.pending_files()) == 15


def _add(totals: Counter[str], report: DeliveryReport) -> None:
    totals["invocations"] += 1
    for name in ("tracked", "recovered", "delivered", "rejected", "overflowed", "dropped",
                 "attempts"):
        totals[name] += getattr(report, name)
    totals["max_flush_ms"] = max(totals["max_flush_ms"], round(report.elapsed_ms))
    for reason, count in report.overflowed_reasons.items():
        totals[f"overflowed:{reason}"] += count
    for reason, count in report.dropped_reasons.items():
        totals[f"dropped:{reason}"] += count


def _figures(soak: SoakRun, log_levels: Counter[str], pending_in_spill: int
             ) -> dict[str, object]:
    samples, totals, elapsed_s = soak.samples, soak.totals, soak.elapsed_s
    baseline = next(s for s in samples if s.invocation >= WARM_UP)
    last = samples[-1]
    mib = 1024 * 1024
    return {
        "invocations": totals["invocations"], "seconds": round(elapsed_s, 1),
        "invocations_per_s": round(totals["invocations"] / elapsed_s, 1),
        "warm_up_invocations": WARM_UP,
        "rss_mib": {"after_warm_up": round(baseline.rss_bytes / mib, 2),
                    "end": round(last.rss_bytes / mib, 2),
                    "growth": round((last.rss_bytes - baseline.rss_bytes) / mib, 3),
                    "bound": MAX_RSS_GROWTH_BYTES / mib},
        "tracemalloc_kib": {"after_warm_up": round(baseline.traced_bytes / 1024, 1),
                            "end": round(last.traced_bytes / 1024, 1),
                            "growth": round((last.traced_bytes - baseline.traced_bytes) / 1024, 1),
                            "bound": MAX_TRACEMALLOC_GROWTH_BYTES / 1024},
        "fds": {"after_warm_up": baseline.fds, "end": last.fds,
                "max": max(s.fds for s in samples)},
        "sockets": {"client_max": max(s.client_sockets for s in samples),
                    "client_bound": MAX_CLIENT_SOCKETS,
                    "all_max": max(s.sockets for s in samples), "all_bound": MAX_ALL_SOCKETS},
        "spill_bytes": {"max": soak.spill_max_bytes, "end": last.spill_bytes,
                        "cap": SPILL_MAX_BYTES, "pending_events_at_end": pending_in_spill},
        "events": {k: v for k, v in sorted(totals.items()) if k != "invocations"},
        "faults": dict(soak.faults), "log_records": dict(log_levels),
    }


def _publish(figures: dict[str, object], samples: list[Sample],
             growth: list[tracemalloc.StatisticDiff]) -> None:
    print("\namp-lite soak:", json.dumps(figures, indent=2))
    print("largest tracemalloc changes since warm-up:")
    for stat in growth:
        print(f"  {stat}")
    print(f"{'invocation':>10} {'RSS MiB':>8} {'traced KiB':>10} {'fds':>4} {'sockets':>7} "
          f"{'client':>6} {'spill B':>8}")
    for s in samples:
        print(f"{s.invocation:>10} {s.rss_bytes / 2**20:>8.2f} {s.traced_bytes / 1024:>10.1f} "
              f"{s.fds:>4} {s.sockets:>7} {s.client_sockets:>6} {s.spill_bytes:>8}")
    out = os.environ.get("AMP_LITE_SOAK_OUT")
    if out:
        Path(out).write_text(json.dumps({**figures, "samples": [asdict(s) for s in samples]},
                                        indent=2) + "\n")
