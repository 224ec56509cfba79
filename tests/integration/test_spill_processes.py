"""One LocalSpill directory shared by several processes (issue 12, item E).

Lambda Managed Instances run several processes per execution environment, all with the same
/tmp. Real processes (spawned, so none inherits another's locks) write and claim against one
directory: every event written is read back exactly once across all of them, no exception
escapes, and the spill never holds more than max_bytes outside the claims in progress.
Each test waits on processes and events, never on a sleep, and every loop is bounded.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

from amp_lite import BufferedEvent, Deadline, OverflowWriteError
from amp_lite.overflow import LocalSpill

SPAWN = multiprocessing.get_context("spawn")
START_TIMEOUT_S = 60  # spawning and importing amp_lite, on a loaded machine
JOIN_TIMEOUT_S = 120


def events(prefix: str, count: int) -> list[BufferedEvent]:
    return [BufferedEvent.from_json(json.dumps({
        "event_type": "e", "user_id": "user-0001", "insert_id": f"{prefix}-{n:03d}",
        "event_properties": {"pad": "x" * 100}}).encode()) for n in range(count)]


# -- what each process runs (top-level functions: spawned processes import this module) ------


def claim_until_empty(directory: str, start: Barrier, writers_done: Event | None,
                      results: multiprocessing.Queue[Any]) -> None:
    """Claim one file at a time until the spill is empty and no writer is left; report the
    insert_ids taken, or the exception that escaped."""
    try:
        spill, taken = LocalSpill(directory), []
        start.wait(START_TIMEOUT_S)
        while True:
            claim = spill.claim(max_events=1)
            if claim is not None:
                taken += [e.insert_id for e in claim.events]
                claim.complete()
            elif writers_done is None or writers_done.is_set():
                if spill.claim(max_events=1) is None:  # one more look: a write just landed?
                    break
            else:
                writers_done.wait(0.005)
        results.put(("claimed", taken))
    except BaseException as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def write_batches(directory: str, prefix: str, batches: int, max_bytes: int, start: Barrier,
                  results: multiprocessing.Queue[Any]) -> None:
    """Write `batches` files of 2 events each; report the insert_ids of the accepted writes
    (a write refused because the spill is full is not an error)."""
    try:
        spill, written = LocalSpill(directory, max_bytes=max_bytes), []
        start.wait(START_TIMEOUT_S)
        for n in range(batches):
            batch = events(f"{prefix}-{n:03d}", 2)
            try:
                spill.write(batch, reason="deadline", attempts=1, deadline=Deadline.after(10))
            except OverflowWriteError as exc:
                if "full" not in str(exc):
                    raise
                continue
            written += [e.insert_id for e in batch]
        results.put(("written", written))
    except BaseException as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


# -- helpers of the parent ---------------------------------------------------------------------


def run(processes: list[Any], results: multiprocessing.Queue[Any],
        sample: Callable[[], None] | None = None) -> list[tuple[str, Any]]:
    """Start the processes, call `sample` until they are all done, and collect their reports.
    Between two samples it waits on the processes' sentinels (3 ms at most), which gives the
    writers room to take the directory lock."""
    for process in processes:
        process.start()
    ended = time.monotonic() + JOIN_TIMEOUT_S
    while sample is not None and any(p.is_alive() for p in processes):
        assert time.monotonic() < ended, "processes still running"
        sample()
        wait([p.sentinel for p in processes], timeout=0.003)
    reports = [results.get(timeout=JOIN_TIMEOUT_S) for _ in processes]
    for process in processes:
        process.join(JOIN_TIMEOUT_S)
        assert process.exitcode == 0, process
    return reports


def sweep(directory: Path) -> list[str]:
    """Claim what is left as a fresh process would, until nothing is: each new LocalSpill gives
    back a bounded number of abandoned claims (bounded loop)."""
    taken: list[str] = []
    for _ in range(100):
        spill = LocalSpill(directory)
        while (claim := spill.claim(max_events=1000)) is not None:
            taken += [e.insert_id for e in claim.events]
            claim.complete()
        if not any(p.name.endswith(".jsonl") for p in directory.rglob("*")):
            return taken
    raise AssertionError(f"spill not empty: {sorted(os.listdir(directory))}")


def pending_bytes_under_lock(directory: Path) -> int:
    """What counts against the cap, measured while no writer can rename (the writers' lock)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return LocalSpill(directory).used_bytes(include_claimed=False)
    finally:
        os.close(fd)


def errors(reports: list[tuple[str, Any]]) -> list[Any]:
    return [detail for kind, detail in reports if kind == "error"]


# -- the tests -------------------------------------------------------------------------------


def test_processes_recovering_abandoned_claims_take_each_event_once(tmp_path: Path) -> None:
    # GIVEN 300 spilled files, 200 of them claimed by a flush that died (claims dropped, and
    # made a day old so that any rule of age sees them as abandoned)
    directory = tmp_path / "spill"
    spill = LocalSpill(directory)
    expected = []
    for n in range(300):
        batch = events(f"f{n:03d}", 1)
        spill.write(batch, reason="deadline", attempts=1, deadline=Deadline.after(10))
        expected += [e.insert_id for e in batch]
    for _ in range(200):
        assert spill.claim(max_events=1) is not None  # dropped at once
    day_ago = time.time() - 24 * 3600
    for path in [directory, *directory.rglob("*")]:
        os.utime(path, (day_ago, day_ago))

    # WHEN 8 processes start recovering and claiming at the same moment
    results, start = SPAWN.Queue(), SPAWN.Barrier(8)
    reports = run([SPAWN.Process(target=claim_until_empty, args=(str(directory), start, None,
                                                                 results))
                   for _ in range(8)], results)
    leftover = sweep(directory)

    # THEN no exception escaped, and every event was taken exactly once, by one of them or
    # by the last sweep
    assert errors(reports) == []
    taken = [i for kind, ids in reports if kind == "claimed" for i in ids] + leftover
    twice = sorted(i for i, n in Counter(taken).items() if n > 1)
    assert twice == []
    assert sorted(taken) == sorted(expected)


def test_writer_processes_never_pass_max_bytes(tmp_path: Path) -> None:
    # GIVEN a spill capped at 20 kB and 6 writer processes with 60 kB to write between them
    directory = tmp_path / "spill"
    directory.mkdir()
    max_bytes = 20_000
    results, start = SPAWN.Queue(), SPAWN.Barrier(6)
    writers = [SPAWN.Process(target=write_batches,
                             args=(str(directory), f"w{w}", 20, max_bytes, start, results))
               for w in range(6)]
    sampled: list[int] = []

    # WHEN they all write at once, while the parent measures the spill again and again
    reports = run(writers, results, lambda: sampled.append(pending_bytes_under_lock(directory)))

    # THEN no exception escaped; the cap held at every measure and at the end
    assert errors(reports) == []
    assert sampled and max(sampled) <= max_bytes
    assert LocalSpill(directory).used_bytes() <= max_bytes
    # AND the cap was reached (some writes were refused), or the test proved nothing
    written = [i for kind, ids in reports if kind == "written" for i in ids]
    assert 0 < len(written) < 6 * 20 * 2
    # AND what the writers were told was written is exactly what is there: whole files, no
    # temporary file, nothing of a refused write
    assert not [n for n in os.listdir(directory) if not n.endswith(".jsonl")]
    assert sorted(sweep(directory)) == sorted(written)


def test_writer_and_claimer_processes_hand_over_each_event_once(tmp_path: Path) -> None:
    # GIVEN 3 writer processes (40 files each) and 3 claimer processes on one spill
    directory = tmp_path / "spill"
    directory.mkdir()
    results, start, writers_done = SPAWN.Queue(), SPAWN.Barrier(6), SPAWN.Event()
    writers = [SPAWN.Process(target=write_batches,
                             args=(str(directory), f"w{w}", 40, 10_000_000, start, results))
               for w in range(3)]
    claimers = [SPAWN.Process(target=claim_until_empty,
                              args=(str(directory), start, writers_done, results))
                for _ in range(3)]

    # WHEN they all run at once, the claimers going on until the writers are done
    for process in writers + claimers:
        process.start()
    for process in writers:
        process.join(JOIN_TIMEOUT_S)
    writers_done.set()
    reports = [results.get(timeout=JOIN_TIMEOUT_S) for _ in writers + claimers]
    for process in writers + claimers:
        process.join(JOIN_TIMEOUT_S)
        assert process.exitcode == 0, process
    leftover = sweep(directory)

    # THEN no exception escaped, and every event written was claimed exactly once
    assert errors(reports) == []
    written = [i for kind, ids in reports if kind == "written" for i in ids]
    claimed = [i for kind, ids in reports if kind == "claimed" for i in ids] + leftover
    assert len(written) == 3 * 40 * 2
    assert sorted(claimed) == sorted(written)
    assert list(directory.iterdir()) == []

