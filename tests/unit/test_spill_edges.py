"""LocalSpill at its edges (issue 12): deadlines (A), unreadable files (B), a full disk (C),
other format versions and min_id_length (D), and a spill shared with others (E; with real
processes in integration/test_spill_processes.py). Real files in tmp_path throughout."""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from amp_lite import Amplitude, BufferedEvent, Deadline, OverflowWriteError
from amp_lite.overflow import _local
from amp_lite.overflow._local import (
    CLAIM_SHARE,
    QUARANTINE_KEEP,
    RESERVE_CEILING_S,
    RESERVE_FLOOR_S,
    STALE_S,
    LocalSpill,
)
from amp_lite.overflow._spill_files import (
    CLAIM_PREFIX,
    DONE_PREFIX,
    QUARANTINE_DIR,
    SPILL_SUFFIX,
    TMP_PREFIX,
)
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.unit.test_local_spill import claim_all, make_events, spill_files, write

GENEROUS_S = 0.5  # slack for a loaded CI machine, on top of the bound under test
_order = itertools.count(1)


def spill_name(size: int) -> str:
    """A waiting file's name, each one younger than the last (names sort by time)."""
    return f"{time.time_ns() + next(_order):020d}-{uuid.uuid4().hex}-{size:010d}{SPILL_SUFFIX}"


def put(directory: Path, header: bytes | dict[str, object], lines: list[bytes],
        name: str | None = None) -> Path:
    """A spill file as a writer (or something else) left it, without fsync."""
    directory.mkdir(parents=True, exist_ok=True)
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    content = b"\n".join([head, *lines]) + b"\n"
    path = directory / (name or spill_name(len(content)))
    path.write_bytes(content)
    return path


def header(count: int, **fields: object) -> dict[str, object]:
    return {"v": 1, "reason": "deadline", "attempts": 1, "overflowed_at_ms": 1, "count": count,
            "min_id_length": None, **fields}


def good_file(directory: Path, prefix: str, count: int, **fields: object) -> Path:
    return put(directory, header(count, **fields), [e.raw for e in make_events(prefix, count)])


def ids(events: list[BufferedEvent]) -> list[str]:
    return [e.insert_id for e in events]


def stepping_clock(step_s: float) -> Callable[[], float]:
    """A clock that moves `step_s` on at every reading: time passes as the code looks at it."""
    ticks = itertools.count()
    return lambda: next(ticks) * step_s


def frozen(remaining_s: float) -> Deadline:
    """A deadline with exactly `remaining_s` left, however long the test takes."""
    return Deadline(remaining_s, clock=lambda: 0.0)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- A: the deadline --------------------------------------------------------------------------


@pytest.mark.parametrize("remaining_s", [0.0, 0.0001])
def test_write_the_deadline_cannot_fit_is_refused_and_leaves_nothing(
        tmp_path: Path, remaining_s: float) -> None:
    # GIVEN a spill, and a deadline with less time left than a write takes (about a millisecond)
    spill = LocalSpill(tmp_path / "spill")

    # WHEN events are written / THEN the write is refused, saying why
    with pytest.raises(OverflowWriteError, match="no time left"):
        spill.write(make_events("a", 3), reason="deadline", attempts=1,
                    deadline=frozen(remaining_s))
    # AND nothing was written, not even a temporary file
    assert spill_files(spill.directory) == []


def test_write_with_time_for_it_is_accepted(tmp_path: Path) -> None:
    # GIVEN a deadline with a second left (frozen: the test measures nothing)
    spill = LocalSpill(tmp_path / "spill")
    # WHEN / THEN the write goes through
    spill.write(make_events("a", 2), reason="deadline", attempts=1, deadline=frozen(1.0))
    assert ids(claim_all(spill).events) == ["a-0000", "a-0001"]


def test_claim_takes_at_most_its_share_of_the_time_left(tmp_path: Path) -> None:
    # GIVEN 300 waiting files, and a clock that moves 1 ms on each time it is read
    spill = LocalSpill(tmp_path / "spill")
    for n in range(300):
        good_file(spill.directory, f"f{n:03d}", 1)
    clock = stepping_clock(0.001)
    deadline = Deadline.after(1.0, clock)

    # WHEN a claim may take up to 1,000 events before that 1 s deadline
    claim = spill.claim(max_events=1000, deadline=deadline)

    # THEN it stopped within its share (a quarter: 0.25 s of this clock), having taken the
    # oldest files, and left the others waiting
    assert claim is not None
    assert 0 < len(claim.events) < 300
    assert clock() <= CLAIM_SHARE * 1.0 + 0.01  # a reading or two past the end, no more
    assert ids(claim.events) == [f"f{n:03d}-0000" for n in range(len(claim.events))]
    assert len(spill.pending_files()) == 300 - len(claim.events)


def test_claim_with_no_time_left_takes_nothing(tmp_path: Path) -> None:
    # GIVEN waiting files and a deadline already passed
    spill = LocalSpill(tmp_path / "spill")
    good_file(spill.directory, "a", 1)
    # WHEN / THEN a claim takes nothing and leaves the file waiting
    assert spill.claim(max_events=10, deadline=Deadline.after(0.0)) is None
    assert len(spill.pending_files()) == 1


@pytest.fixture(scope="module")
def forty_thousand(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spill of 40,000 one-event files (as a long outage of busy invocations leaves)."""
    directory = tmp_path_factory.mktemp("spill40k")
    head = json.dumps(header(1)).encode()
    for n in range(40_000):
        event = json.dumps({"event_type": "old", "user_id": "user-0001",
                            "insert_id": f"old-{n:05d}"}).encode()
        content = head + b"\n" + event + b"\n"
        (directory / f"{n + 1:020d}-{uuid.uuid4().hex}-{len(content):010d}{SPILL_SUFFIX}"
         ).write_bytes(content)
    return directory


@pytest.fixture
def spill_of_40k(forty_thousand: Path, tmp_path: Path) -> Iterator[LocalSpill]:
    """The 40,000 files (made once: that takes seconds), given back after the test (those a
    flush re-spilled come back as fewer, larger files)."""
    directory = tmp_path / "spill"
    os.rename(forty_thousand, directory)
    yield LocalSpill(directory, max_bytes=64 * 1024 * 1024)
    for path in list(directory.glob(f"*/*{SPILL_SUFFIX}")):
        os.rename(path, directory / path.name)  # out of claims (kept or dropped)
    for path in directory.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
    os.rename(directory, forty_thousand)


def test_claim_of_a_40000_file_spill_keeps_to_its_deadline(spill_of_40k: LocalSpill) -> None:
    # GIVEN 40,000 waiting files and a claim that may take 2 s at most (its share, a quarter,
    # leaves a loaded machine ample time to list them: about 30 ms when idle)
    started = time.monotonic()

    # WHEN a flush claims up to a request's worth
    claim = spill_of_40k.claim(max_events=2000, deadline=Deadline.after(2.0))

    # THEN it took the oldest files it had time for, within the deadline
    elapsed = time.monotonic() - started
    assert claim is not None and claim.events
    assert elapsed < 2.0, f"claim took {elapsed:.3f} s"
    assert ids(claim.events) == [f"old-{n:05d}" for n in range(len(claim.events))]


def test_flush_over_a_40000_file_spill_ends_by_its_deadline(spill_of_40k: LocalSpill) -> None:
    # GIVEN 40,000 spilled files and an Amplitude that hangs
    with FakeAmplitude() as fake:
        fake.script(*[Fault.hang(5)] * 50)
        client = Amplitude(API_KEY, server_url=fake.url, overflow=spill_of_40k,
                           flush_timeout_s=1.2)
        for n in range(5):
            client.track("new", user_id="user-0001", event_properties={"n": n})

        # WHEN a 1.2 s flush recovers what it can and overflows everything again
        started = time.monotonic()
        report = client.flush()
        elapsed = time.monotonic() - started

    # THEN it ended by its deadline (slack for a loaded machine) and lost nothing it had time
    # to write; the rest is counted
    assert elapsed < 1.2 + 0.3, f"flush took {elapsed:.3f} s"
    assert report.balanced


def test_reserve_follows_what_writes_cost_here(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a spill, whose reserve before any write is the floor (writes cost ~1 ms here)
    spill = LocalSpill(tmp_path / "spill")
    assert spill.reserve_s == RESERVE_FLOOR_S

    # WHEN its disk turns slow: every fsync takes 30 ms
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.03)  # a slow disk, not a wait for a condition
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    for n in range(3):
        write(spill, make_events(f"s{n}", 2))

    # THEN the reserve grew to cover a few such writes, within its ceiling
    assert 4 * 0.03 <= spill.reserve_s <= RESERVE_CEILING_S
    assert isinstance(spill.reserve_s, float)


# -- B: unreadable files ----------------------------------------------------------------------


POISON_HEADERS = {
    "infinite-attempts": b'{"v": 1, "reason": "deadline", "attempts": 1e999, "count": 1}',
    "deeply-nested": b'{"v": 1, "attempts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "not-json": b"garbage header",
    "not-an-object": b"[1, 2, 3]",
    "no-version": b'{"attempts": 1, "count": 1}',
    "count-mismatch": b'{"v": 1, "attempts": 1, "count": 7, "min_id_length": null}',
    "bad-min-id-length": b'{"v": 1, "attempts": 1, "count": 1, "min_id_length": "five"}',
}


@pytest.mark.parametrize("poison", list(POISON_HEADERS.values()), ids=list(POISON_HEADERS))
def test_a_poison_file_costs_a_healthy_flush_nothing(
        fake: FakeAmplitude, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        poison: bytes) -> None:
    # GIVEN an older good spill file, then a poison one
    spill = LocalSpill(tmp_path / "spill")
    good_file(spill.directory, "old", 2)
    bad = put(spill.directory, poison, [make_events("bad", 1)[0].raw])
    client = Amplitude(API_KEY, server_url=fake.url, overflow=spill)
    client.track("new", user_id="user-0001")

    # WHEN a healthy flush recovers the spill
    with caplog.at_level(logging.ERROR, logger="amp_lite"):
        report = client.flush(timeout_s=5)

    # THEN its own event and the good file's were delivered, nothing dropped
    assert report.balanced and report.dropped == 0
    assert (report.tracked, report.recovered, report.delivered) == (1, 2, 3)
    assert {"old-0000", "old-0001"} <= set(fake.insert_ids)
    # AND the poison file was moved aside for a human, counted and logged with why
    assert spill_files(spill.directory) == [QUARANTINE_DIR, f"{QUARANTINE_DIR}/{bad.name}"]
    assert spill.quarantined == 1
    [message] = errors(caplog)
    assert bad.name in message and "unreadable" in message


def test_a_fifo_named_like_a_spill_file_is_set_aside_without_blocking(tmp_path: Path) -> None:
    # GIVEN a FIFO named like a spill file (opening it to read would wait for a writer)
    spill = LocalSpill(tmp_path / "spill")
    spill.directory.mkdir()
    fifo = spill.directory / spill_name(100)
    os.mkfifo(fifo)
    result: list[object] = []

    # WHEN a claim runs (in a thread, so that a hang fails the test instead of blocking it)
    worker = threading.Thread(target=lambda: result.append(spill.claim(max_events=10)),
                              daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # let the blocked reader go before failing
        for path in spill.directory.rglob("*"):
            if stat.S_ISFIFO(path.lstat().st_mode):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    # THEN it returned at once with nothing, and the FIFO is in quarantine
    assert not worker.is_alive(), "the claim blocked on a FIFO"
    assert result == [None]
    assert (spill.directory / QUARANTINE_DIR / fifo.name).exists()


@pytest.mark.parametrize("target", ["regular-file-outside", "/dev/zero"])
def test_a_symlink_is_set_aside_without_reading_its_target(tmp_path: Path, target: str) -> None:
    # GIVEN a symlink named like a spill file, to a valid spill file outside the spill (or to
    # /dev/zero, which never ends)
    spill = LocalSpill(tmp_path / "spill")
    spill.directory.mkdir()
    outside = good_file(tmp_path / "elsewhere", "outside", 1)
    link = spill.directory / spill_name(100)
    link.symlink_to(outside if target == "regular-file-outside" else Path(target))

    # WHEN the spill is claimed
    claim = spill.claim(max_events=10)

    # THEN nothing was read through it; the link is in quarantine, its target untouched
    assert claim is None
    assert (spill.directory / QUARANTINE_DIR / link.name).is_symlink()
    assert outside.exists()


def test_a_file_larger_than_max_bytes_is_set_aside_unread(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a valid-looking file of 200 events in a spill capped at 4,000 bytes (one write can
    # never be that large)
    spill = LocalSpill(tmp_path / "spill", max_bytes=4_000)
    big = good_file(spill.directory, "big", 200)
    assert big.stat().st_size > 4_000
    reads: list[int] = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))

    # WHEN it is claimed / THEN it is set aside without being read
    assert spill.claim(max_events=10) is None
    assert reads == []
    assert (spill.directory / QUARANTINE_DIR / big.name).exists()


def test_one_bad_line_sets_the_whole_file_aside_and_the_log_shows_no_contents(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a good file, then one whose second event line is cut short
    spill = LocalSpill(tmp_path / "spill")
    good_file(spill.directory, "good", 1)
    events = [e.raw for e in make_events("secret", 3)]
    bad = put(spill.directory, header(3), [events[0], events[1][:20], events[2]])

    # WHEN everything is claimed
    with caplog.at_level(logging.ERROR, logger="amp_lite"):
        claim = claim_all(spill)

    # THEN the claim holds the good file only and says one file was set aside
    assert ids(claim.events) == ["good-0000"]
    assert claim.quarantined == 1 and spill.quarantined == 1
    # AND the ERROR log names the file and the line, never an event's contents
    [message] = errors(caplog)
    assert bad.name in message and "line 3 is not an event" in message
    assert "secret" not in message and "user-" not in message


def test_the_quarantine_is_neither_claimed_nor_counted(tmp_path: Path) -> None:
    # GIVEN a file set aside
    spill = LocalSpill(tmp_path / "spill")
    put(spill.directory, b"garbage", [b"x"])
    assert spill.claim(max_events=10) is None

    # WHEN the spill is claimed and measured again / THEN the quarantine is not seen
    assert spill.claim(max_events=10) is None
    assert LocalSpill(spill.directory).claim(max_events=10) is None
    assert spill.used_bytes() == 0
    assert spill.pending_files() == []


def test_the_quarantine_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    # GIVEN more unreadable files than the quarantine keeps
    spill = LocalSpill(tmp_path / "spill")
    for _ in range(QUARANTINE_KEEP + 3):
        put(spill.directory, b"garbage", [b"x"])

    # WHEN they are claimed
    assert spill.claim(max_events=10) is None

    # THEN every one was counted, QUARANTINE_KEEP kept, the rest deleted
    assert spill.quarantined == QUARANTINE_KEEP + 3
    assert len(os.listdir(spill.directory / QUARANTINE_DIR)) == QUARANTINE_KEEP
    assert spill.pending_files() == []


# -- C: a full disk ---------------------------------------------------------------------------


def _enospc(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["fsync", "write", "rename"])
def test_a_full_disk_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              failing: str) -> None:
    # GIVEN a spill on a disk that fills up at the `failing` step of a write
    spill = LocalSpill(tmp_path / "spill")
    with monkeypatch.context() as patch:
        patch.setattr(os, failing, _enospc)

        # WHEN events are written / THEN the write is refused
        with pytest.raises(OverflowWriteError) as refused:
            write(spill, make_events("a", 3))

    # AND nothing is left behind to count against the cap
    assert spill_files(spill.directory) == []
    assert spill.used_bytes() == 0
    # AND the error says why
    assert "ENOSPC" in str(refused.value)
    assert isinstance(refused.value.__cause__, OSError)
    assert refused.value.__cause__.errno == errno.ENOSPC
    # AND once there is room again, writing works
    write(spill, make_events("b", 1))
    assert ids(claim_all(spill).events) == ["b-0000"]


# -- D: other format versions, min_id_length --------------------------------------------------


def test_a_file_of_another_format_version_is_left_in_place(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a file written by a newer amp-lite (format 2), and an older-format one behind it
    spill = LocalSpill(tmp_path / "spill")
    newer = put(spill.directory, {"v": 2, "layout": "unknown to us"}, [b"whatever v2 holds"])
    content = newer.read_bytes()
    good_file(spill.directory, "v1", 1)

    # WHEN the spill is claimed, twice
    with caplog.at_level(logging.WARNING, logger="amp_lite"):
        first = claim_all(spill)
        second = spill.claim(max_events=10)

    # THEN the claim took the version-1 file only; the other stays as it was, where it was:
    # not claimed, not quarantined, and reported once
    assert ids(first.events) == ["v1-0000"] and second is None
    first.complete()
    assert spill_files(spill.directory) == [newer.name]
    assert newer.read_bytes() == content
    assert spill.quarantined == 0
    warnings = [r.getMessage() for r in caplog.records if "format version 2" in r.getMessage()]
    assert len(warnings) == 1


def test_a_claim_holds_files_of_one_min_id_length(tmp_path: Path) -> None:
    # GIVEN files spilled with min_id_length 3, 3, unset, then 3 again (oldest first)
    spill = LocalSpill(tmp_path / "spill")
    good_file(spill.directory, "a", 1, min_id_length=3)
    good_file(spill.directory, "b", 1, min_id_length=3)
    good_file(spill.directory, "c", 1)
    good_file(spill.directory, "d", 1, min_id_length=3)

    # WHEN the spill is claimed until empty
    claims = []
    while (claim := spill.claim(max_events=100)) is not None:
        claims.append((claim.min_id_length, ids(claim.events)))
        claim.complete()

    # THEN each claim carries the min_id_length its events were tracked with, one per claim,
    # oldest first
    assert claims == [(3, ["a-0000", "b-0000"]), (None, ["c-0000"]), (3, ["d-0000"])]


def test_the_written_min_id_length_comes_back_with_the_claim(tmp_path: Path) -> None:
    # GIVEN events overflowed by a client sending min_id_length=2
    spill = LocalSpill(tmp_path / "spill")
    spill.write(make_events("a", 2), reason="deadline", attempts=1, deadline=Deadline.after(5),
                min_id_length=2)
    # WHEN / THEN the claim says so
    assert claim_all(spill).min_id_length == 2


# -- E: sharing the spill ---------------------------------------------------------------------


def _age_everything(directory: Path) -> None:
    old = time.time() - 24 * 3600
    for path in [directory, *directory.rglob("*")]:
        os.utime(path, (old, old))


def test_a_claim_whose_owner_is_alive_is_never_given_back_however_old(tmp_path: Path) -> None:
    # GIVEN a claim held by a live flush, its files made a day old
    spill = LocalSpill(tmp_path / "spill")
    write(spill, make_events("a", 2))
    held = claim_all(spill)
    _age_everything(spill.directory)

    # WHEN another process looks at the spill and claims
    other = LocalSpill(spill.directory)
    other.pending_files()
    taken = other.claim(max_events=10)

    # THEN nothing was given back or taken twice; its owner completes it
    assert taken is None
    held.complete()
    assert spill_files(spill.directory) == []


def test_a_dropped_claim_is_given_back_at_once(tmp_path: Path) -> None:
    # GIVEN a claim dropped by its flush a moment ago (its process could have died)
    spill = LocalSpill(tmp_path / "spill")
    write(spill, make_events("a", 2))
    claim_all(spill)

    # WHEN another process claims / THEN it gets the events now, not 15 minutes later
    assert ids(claim_all(LocalSpill(spill.directory)).events) == ["a-0000", "a-0001"]


def test_complete_settles_at_once_and_deletes_within_its_deadline(tmp_path: Path) -> None:
    # GIVEN a claim of 3 files, completed with no time left
    spill = LocalSpill(tmp_path / "spill")
    for prefix in "abc":
        write(spill, make_events(prefix, 1))
    claim = claim_all(spill)
    claim.complete(deadline=Deadline.after(0.0))

    # THEN its files are settled (never given back nor claimed again), though not yet deleted
    [done] = [n for n in spill_files(spill.directory) if "/" not in n]
    assert done.startswith(DONE_PREFIX)
    assert LocalSpill(spill.directory).claim(max_events=10) is None
    # AND the next claim deletes them
    assert spill_files(spill.directory) == []


def test_write_gives_up_on_a_directory_locked_by_another_process_at_its_deadline(
        tmp_path: Path) -> None:
    # GIVEN a spill directory that another writer keeps locked
    spill = LocalSpill(tmp_path / "spill")
    spill.directory.mkdir()
    other = os.open(spill.directory, os.O_RDONLY)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        # WHEN a write with 0.2 s left comes / THEN it is refused by then, having written nothing
        started = time.monotonic()
        with pytest.raises(OverflowWriteError, match="lock"):
            write_with(spill, Deadline.after(0.2))
        assert time.monotonic() - started < 0.2 + GENEROUS_S
        assert spill_files(spill.directory) == []
    finally:
        os.close(other)
    # AND once the lock is let go, writing works
    write_with(spill, Deadline.after(5))
    assert len(spill.pending_files()) == 1


def write_with(spill: LocalSpill, deadline: Deadline) -> None:
    spill.write(make_events("w", 1), reason="deadline", attempts=1, deadline=deadline)


def test_leftovers_of_other_claims_cost_a_claim_nothing(tmp_path: Path) -> None:
    # GIVEN a stale temporary file and a completed claim left undeleted, beside a good file
    spill = LocalSpill(tmp_path / "spill")
    good_file(spill.directory, "good", 1)
    done = spill.directory / f"{DONE_PREFIX}00000000000000000001-{'0' * 32}"
    done.mkdir()
    (done / spill_name(10)).write_bytes(b"settled")
    (spill.directory / f"{TMP_PREFIX}{1:020d}-{'0' * 32}-{0:010d}{SPILL_SUFFIX}").write_bytes(b"")

    # WHEN the spill is claimed / THEN the good file is taken and the leftovers are gone
    claim = claim_all(spill)
    assert ids(claim.events) == ["good-0000"]
    claim.complete()
    assert spill_files(spill.directory) == []



def test_without_flock_claims_are_given_back_by_age(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a platform without flock (not POSIX), and a claim dropped by its flush
    monkeypatch.setattr(_local, "fcntl", None)
    spill = LocalSpill(tmp_path / "spill")
    write(spill, make_events("a", 2))
    claim_all(spill)

    # WHEN another LocalSpill claims at once / THEN nothing: without a lock to tell, a claim is
    # only taken for abandoned when older than STALE_S
    assert LocalSpill(spill.directory).claim(max_events=10) is None
    # AND once its name says it is that old, it is given back and claimed
    [claim_dir] = [p for p in spill.directory.iterdir() if p.name.startswith(CLAIM_PREFIX)]
    old_ns = time.time_ns() - (STALE_S + 60) * 10**9
    claim_dir.rename(spill.directory / f"{CLAIM_PREFIX}{old_ns:020d}-{'0' * 32}")
    again = claim_all(LocalSpill(spill.directory))
    assert ids(again.events) == ["a-0000", "a-0001"]
    again.complete()
    assert spill_files(spill.directory) == []


def test_running_out_of_file_descriptors_is_not_the_files_fault(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a good spill file, and a process that has run out of file descriptors
    spill = LocalSpill(tmp_path / "spill")
    good = good_file(spill.directory, "good", 1)

    def no_fd(path: Path) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(_local, "open_regular", no_fd)

    # WHEN it is claimed / THEN nothing is taken, and the file waits where it was, unharmed
    assert spill.claim(max_events=10) is None
    assert spill.quarantined == 0
    assert spill_files(spill.directory) == [good.name]
