"""LocalSpill: the bounded spill directory that the next flush reads back (overflow/_local.py).

The basics: write, claim, complete, the cap, temporary files and abandoned claims. Deadlines,
unreadable files, a full disk, other format versions and other processes are in
test_spill_edges.py and integration/test_spill_processes.py."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from amp_lite import BufferedEvent, ConfigError, Deadline, OverflowWriteError
from amp_lite.overflow._defaults import default_spill
from amp_lite.overflow._local import STALE_S, LocalSpill, SpillClaim
from amp_lite.overflow._spill_files import CLAIM_PREFIX, SPILL_SUFFIX, TMP_PREFIX
from tests.conftest import API_KEY

FAKE_URL = "http://127.0.0.1:9/2/httpapi"


def make_events(prefix: str, count: int) -> list[BufferedEvent]:
    return [
        BufferedEvent.from_json(json.dumps({
            "event_type": f"{prefix}-event", "user_id": f"user-{prefix}",
            "insert_id": f"{prefix}-{i:04d}", "time": 1_700_000_000_000 + i,
        }).encode())
        for i in range(count)
    ]


def write(spill: LocalSpill, events: list[BufferedEvent], *, reason: str = "deadline",
          attempts: int = 1) -> None:
    spill.write(events, reason=reason, attempts=attempts, deadline=Deadline.after(5.0))


def spill_files(directory: Path) -> list[str]:
    """Every name in the directory, in its subdirectories too (`.claim-<id>/<name>`)."""
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def tmp_name(created_ns: int) -> str:
    return f"{TMP_PREFIX}{created_ns:020d}-{'0' * 32}-{0:010d}{SPILL_SUFFIX}"


def claim_all(spill: LocalSpill) -> SpillClaim:
    claim = spill.claim(max_events=10_000)
    assert claim is not None
    return claim


# -- write and claim ------------------------------------------------------------------------


def test_claim_returns_the_written_events_byte_for_byte(tmp_path: Path) -> None:
    # GIVEN a spill holding one write of three events
    spill = LocalSpill(tmp_path / "spill")
    events = make_events("a", 3)
    write(spill, events, attempts=4)

    # WHEN the next flush claims it
    claim = claim_all(spill)

    # THEN it gets the same raw bytes and insert_ids, in order, and the attempts count
    assert [e.raw for e in claim.events] == [e.raw for e in events]
    assert [e.insert_id for e in claim.events] == ["a-0000", "a-0001", "a-0002"]
    assert [e.user_id for e in claim.events] == ["user-a"] * 3
    assert claim.attempts == 4


def test_write_stores_the_reason_and_attempts_header(tmp_path: Path) -> None:
    # GIVEN a spill
    spill = LocalSpill(tmp_path / "spill")

    # WHEN events are written with a reason and an attempt count
    write(spill, make_events("a", 2), reason="throttled", attempts=3)

    # THEN the single spill file starts with a header naming both, then one event per line
    [name] = spill_files(spill.directory)
    assert name.endswith(SPILL_SUFFIX)
    lines = (spill.directory / name).read_bytes().splitlines()
    header = json.loads(lines[0])
    assert header["reason"] == "throttled"
    assert header["attempts"] == 3
    assert header["count"] == 2
    assert [json.loads(line)["insert_id"] for line in lines[1:]] == ["a-0000", "a-0001"]


def test_write_of_no_events_creates_no_file(tmp_path: Path) -> None:
    # GIVEN a spill
    spill = LocalSpill(tmp_path / "spill")

    # WHEN an empty list is written
    write(spill, [])

    # THEN nothing is on disk and nothing can be claimed
    assert spill_files(spill.directory) == []
    assert spill.claim(max_events=10) is None


def test_claim_of_an_empty_or_missing_directory_is_none(tmp_path: Path) -> None:
    # GIVEN a spill whose directory does not exist yet
    spill = LocalSpill(tmp_path / "never-created")

    # WHEN / THEN claiming gives nothing, and nothing is in use
    assert spill.claim(max_events=10) is None
    assert spill.used_bytes() == 0


def test_claim_takes_oldest_files_first_and_stops_after_max_events(tmp_path: Path) -> None:
    # GIVEN three files of two events each, written in order a, b, c
    spill = LocalSpill(tmp_path / "spill")
    for prefix in ("a", "b", "c"):
        write(spill, make_events(prefix, 2))

    # WHEN a claim asks for at most 3 events
    claim = spill.claim(max_events=3)

    # THEN it takes whole files, oldest first, and stops once it has 3 or more (a and b)
    assert claim is not None
    assert [e.insert_id for e in claim.events] == ["a-0000", "a-0001", "b-0000", "b-0001"]
    # AND the youngest file is left for the next claim
    rest = claim_all(spill)
    assert [e.insert_id for e in rest.events] == ["c-0000", "c-0001"]


def test_claim_takes_at_least_one_file_even_if_it_exceeds_max_events(tmp_path: Path) -> None:
    # GIVEN one file of five events and another behind it
    spill = LocalSpill(tmp_path / "spill")
    write(spill, make_events("a", 5))
    write(spill, make_events("b", 1))

    # WHEN a claim asks for one event
    claim = spill.claim(max_events=1)

    # THEN it takes the whole first file (a file is never split), and only that file
    assert claim is not None
    assert [e.insert_id for e in claim.events] == [f"a-{i:04d}" for i in range(5)]


def test_complete_deletes_the_claimed_files(tmp_path: Path) -> None:
    # GIVEN two spilled files, both claimed
    spill = LocalSpill(tmp_path / "spill")
    write(spill, make_events("a", 2))
    write(spill, make_events("b", 2))
    claim = claim_all(spill)

    # WHEN the flush that claimed them completes
    claim.complete()

    # THEN the directory is empty and nothing is left to claim
    assert spill_files(spill.directory) == []
    assert spill.used_bytes() == 0
    assert spill.claim(max_events=10) is None


def test_two_claims_never_take_the_same_file(tmp_path: Path) -> None:
    # GIVEN two spilled files
    spill = LocalSpill(tmp_path / "spill")
    write(spill, make_events("a", 2))
    write(spill, make_events("b", 2))

    # WHEN two flushes claim one file's worth each, then a third tries
    first = spill.claim(max_events=1)
    second = LocalSpill(spill.directory).claim(max_events=1)
    third = spill.claim(max_events=10)

    # THEN each file went to exactly one claim and the third got nothing
    assert first is not None and second is not None
    assert [e.insert_id for e in first.events] == ["a-0000", "a-0001"]
    assert [e.insert_id for e in second.events] == ["b-0000", "b-0001"]
    assert third is None
    # AND each claim holds its files in a directory of its own until it completes
    assert [n for n in spill_files(spill.directory) if "/" not in n] == sorted(
        n for n in os.listdir(spill.directory) if n.startswith(CLAIM_PREFIX))
    first.complete()
    second.complete()
    assert spill_files(spill.directory) == []


def test_concurrent_claims_take_each_event_exactly_once(tmp_path: Path) -> None:
    # GIVEN eight spilled files and eight threads ready to claim at the same moment
    spill = LocalSpill(tmp_path / "spill")
    for n in range(8):
        write(spill, make_events(f"f{n}", 3))
    barrier = threading.Barrier(8, timeout=10)
    taken: list[str] = []
    lock = threading.Lock()

    def claim_some() -> None:
        barrier.wait()
        claim = spill.claim(max_events=3)
        if claim is not None:
            with lock:
                taken.extend(e.insert_id for e in claim.events)

    # WHEN they all claim at once
    threads = [threading.Thread(target=claim_some) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    # THEN no event was handed out twice (each thread may get one file, or none if it lost races)
    assert len(taken) == len(set(taken))
    rest = spill.claim(max_events=10_000)
    leftover = [e.insert_id for e in rest.events] if rest else []
    assert sorted(taken + leftover) == sorted(
        e.insert_id for n in range(8) for e in make_events(f"f{n}", 3))


# -- the size cap ---------------------------------------------------------------------------


def test_write_past_max_bytes_raises_and_writes_nothing(tmp_path: Path) -> None:
    # GIVEN a spill whose cap fits exactly one write of this size
    probe = LocalSpill(tmp_path / "probe")
    write(probe, make_events("a", 3))
    one_write = probe.used_bytes()
    spill = LocalSpill(tmp_path / "spill", max_bytes=one_write + one_write // 2)
    write(spill, make_events("a", 3))
    used = spill.used_bytes()
    files = spill_files(spill.directory)

    # WHEN a second write would pass the cap
    with pytest.raises(OverflowWriteError, match="max_bytes"):
        write(spill, make_events("b", 3))

    # THEN nothing was written: same bytes in use, same files, no temporary file left
    assert spill.used_bytes() == used
    assert spill_files(spill.directory) == files
    assert [e.insert_id for e in claim_all(spill).events] == ["a-0000", "a-0001", "a-0002"]


def test_write_exactly_at_max_bytes_is_accepted(tmp_path: Path) -> None:
    # GIVEN a spill whose cap is exactly the size of one write
    probe = LocalSpill(tmp_path / "probe")
    write(probe, make_events("a", 2))
    spill = LocalSpill(tmp_path / "spill", max_bytes=probe.used_bytes())

    # WHEN that write is made
    write(spill, make_events("a", 2))

    # THEN it is stored (the cap is inclusive)
    assert spill.used_bytes() == probe.used_bytes()


@pytest.mark.parametrize("max_bytes", [0, -1, True, 1.5, "1024", None])
def test_invalid_max_bytes_is_a_config_error(tmp_path: Path, max_bytes: object) -> None:
    # GIVEN / WHEN a spill is built with a max_bytes that is not a positive int
    # THEN it is refused at once, naming the argument
    with pytest.raises(ConfigError, match="max_bytes"):
        LocalSpill(tmp_path, max_bytes=max_bytes)  # type: ignore[arg-type]


def test_write_into_a_directory_that_cannot_be_created_raises(tmp_path: Path) -> None:
    # GIVEN a spill directory below a regular file
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    spill = LocalSpill(blocker / "spill")

    # WHEN events are written / THEN the OSError is translated into OverflowWriteError
    with pytest.raises(OverflowWriteError) as excinfo:
        write(spill, make_events("a", 1))
    assert isinstance(excinfo.value.__cause__, OSError)


# -- temporary files and abandoned claims ---------------------------------------------------


def test_temporary_files_are_never_claimed(tmp_path: Path) -> None:
    # GIVEN a fresh temporary file (a write in progress) beside a finished one
    spill = LocalSpill(tmp_path / "spill")
    write(spill, make_events("a", 1))
    tmp = spill.directory / tmp_name(time.time_ns())
    tmp.write_bytes(b'{"v": 1, "attempts": 1}\n' + make_events("t", 1)[0].raw + b"\n")

    # WHEN everything is claimed
    claim = claim_all(spill)

    # THEN only the finished file was taken and the temporary file is untouched
    assert [e.insert_id for e in claim.events] == ["a-0000"]
    assert tmp.exists()
    assert tmp not in spill.pending_files()


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    # GIVEN a temporary file left by a process that died mid-write, older than STALE_S (its name
    # says when it was made)
    spill = LocalSpill(tmp_path / "spill")
    spill.directory.mkdir()
    tmp = spill.directory / tmp_name(time.time_ns() - (STALE_S + 60) * 10**9)
    tmp.write_bytes(b'{"v": 1}\n' + make_events("t", 1)[0].raw + b"\n")

    # WHEN the next flush looks for spilled files
    claim = spill.claim(max_events=10)

    # THEN the leftover is deleted, not sent
    assert claim is None
    assert not tmp.exists()
    assert spill.used_bytes() == 0


def test_abandoned_claim_is_given_back(tmp_path: Path) -> None:
    # GIVEN a claim whose flush dropped it without completing it (as a process that died would)
    spill = LocalSpill(tmp_path / "spill")
    events = make_events("a", 2)
    write(spill, events)
    [original] = spill_files(spill.directory)
    claim_all(spill)  # not kept: its lock is let go
    [claim_dir, claimed] = spill_files(spill.directory)
    assert claim_dir.startswith(CLAIM_PREFIX) and claimed == f"{claim_dir}/{original}"

    # WHEN a new process looks at the spill
    LocalSpill(spill.directory).pending_files()

    # THEN the file is back under its original name, and can be claimed again
    assert spill_files(spill.directory) == [original]
    again = claim_all(spill)
    assert [e.raw for e in again.events] == [e.raw for e in events]


def test_first_claim_after_an_abandoned_claim_takes_its_events(tmp_path: Path) -> None:
    # GIVEN an abandoned claim and nothing else in the spill
    spill = LocalSpill(tmp_path / "spill")
    events = make_events("a", 2)
    write(spill, events)
    claim_all(spill)

    # WHEN the next flush claims
    claim = LocalSpill(spill.directory).claim(max_events=10)

    # THEN it gets the abandoned events
    assert claim is not None
    assert [e.raw for e in claim.events] == [e.raw for e in events]


def test_fresh_claim_is_not_given_back(tmp_path: Path) -> None:
    # GIVEN a claim held by a flush that is still running
    spill = LocalSpill(tmp_path / "spill")
    write(spill, make_events("a", 2))
    held = claim_all(spill)

    # WHEN another flush looks for files
    other = LocalSpill(spill.directory).claim(max_events=10)

    # THEN it gets nothing, and the claim is still in place for its owner to complete
    assert other is None
    [claim_dir, _] = spill_files(spill.directory)
    assert claim_dir.startswith(CLAIM_PREFIX)
    held.complete()
    assert spill_files(spill.directory) == []


def test_complete_twice_is_harmless(tmp_path: Path) -> None:
    # GIVEN a completed claim
    spill = LocalSpill(tmp_path / "spill")
    write(spill, make_events("a", 1))
    claim = claim_all(spill)
    claim.complete()

    # WHEN it is completed again / THEN nothing happens and nothing is left
    claim.complete()
    assert spill_files(spill.directory) == []


# -- default_spill --------------------------------------------------------------------------


def test_default_spill_lives_in_a_hashed_directory_under_the_spill_root(clean_env: Path) -> None:
    # GIVEN AMP_LITE_SPILL_DIR pointing at clean_env (set by the fixture)
    # WHEN the default spill is built for a key and a server
    spill = default_spill(API_KEY, FAKE_URL)

    # THEN it is one directory below the root, and its path does not contain the key
    assert spill.directory.parent == clean_env
    assert API_KEY not in str(spill.directory)
    assert API_KEY not in repr(spill)
    # AND it is the same directory every time for the same key and server
    assert default_spill(API_KEY, FAKE_URL).directory == spill.directory


def test_default_spill_differs_per_key_and_per_url(clean_env: Path) -> None:
    # GIVEN / WHEN default spills for two keys and two servers
    base = default_spill(API_KEY, FAKE_URL).directory
    other_key = default_spill(API_KEY + "-other", FAKE_URL).directory
    other_url = default_spill(API_KEY, "https://api.eu.amplitude.com/2/httpapi").directory

    # THEN each (key, server) pair gets its own directory
    assert len({base, other_key, other_url}) == 3
    assert {other_key.parent, other_url.parent} == {clean_env}


def test_default_spill_round_trips_events(clean_env: Path) -> None:
    # GIVEN the default spill
    spill = default_spill(API_KEY, FAKE_URL)

    # WHEN events are written and claimed back
    write(spill, make_events("d", 2))
    claim = claim_all(spill)

    # THEN they come back and the files live under AMP_LITE_SPILL_DIR
    assert [e.insert_id for e in claim.events] == ["d-0000", "d-0001"]
    assert all(p.is_relative_to(clean_env) for p in spill.directory.iterdir())
