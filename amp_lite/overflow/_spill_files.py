"""The spill's files on disk: their names, their format, safe low-level I/O and the locks.

LocalSpill (_local.py) decides what is written, claimed, given back and set aside; this module
is how its directory looks and how a file in it is read, written, renamed and locked. The
directory holds:

- `<time_ns>-<uuid>-<size>.jsonl`: a spilled batch, waiting. A header line (format version,
  reason, attempts, time, count, min_id_length), then one event per line. The size (ten
  digits) is in the name, so the cap is checked from one listing, without a stat per file.
- `.tmp-<name>`: a write in progress (temporary file, fsync, atomic rename); removed on any
  failure, and by a later recovery when a crash left it (older than STALE_S).
- `.claim-<id>/`: the files one flush claimed, moved in by rename (so no two flushes take the
  same file) and flock'd by that flush while the claim lives. A claim whose lock is free was
  abandoned (its process died, or dropped the claim without completing it): its files are
  given back. One whose lock is held is never touched, so a give-back cannot race with its
  owner completing it.
- `.done-<id>/`: a completed claim, renamed at once (its events are settled), emptied within
  the deadline; what is left is deleted by the next claim.
- `quarantine/`: files that could not be read (`LocalSpill._set_aside`); never claimed, not
  counted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .._checks import is_int
from .._deadline import Deadline
from .._wire import BufferedEvent

try:
    import fcntl
except ImportError:  # not POSIX: flock() does nothing (LocalSpill then never calls abandoned())
    fcntl = None  # type: ignore[assignment]

# Not on every platform; 0 (no effect) where missing.
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)

SPILL_FORMAT_VERSION = 1
SPILL_SUFFIX = ".jsonl"
TMP_PREFIX = ".tmp-"
CLAIM_PREFIX = ".claim-"
DONE_PREFIX = ".done-"
QUARANTINE_DIR = "quarantine"
LEGACY_CLAIM_MARK = ".claimed-"  # an older amp-lite's claim (`<name>.claimed-<hex>`)

LOCK_POLL_S = 0.002  # between attempts at a lock another process holds
CHECK_EVERY = 256  # directory entries (or deletions) between two looks at the deadline

_NAME = re.compile(r"\d{20}-[0-9a-f]{32}-(\d{10})" + re.escape(SPILL_SUFFIX))
NAME_LENGTH = 20 + 1 + 32 + 1 + 10 + len(SPILL_SUFFIX)
SIZE_AT = slice(-len(SPILL_SUFFIX) - 10, -len(SPILL_SUFFIX))


class UnreadableError(Exception):
    """A spill file that cannot be read as one: set aside, never sent."""


class OtherVersionError(Exception):
    """A spill file of another format version: left in place."""


class SpillFile:
    """One spill file read back."""

    __slots__ = ("attempts", "events", "min_id_length")

    def __init__(self, attempts: int, min_id_length: int | None,
                 events: list[BufferedEvent]) -> None:
        self.attempts = attempts
        self.min_id_length = min_id_length
        self.events = events


# -- files ------------------------------------------------------------------------------------


def encode(events: Sequence[BufferedEvent], reason: str, attempts: int,
           min_id_length: int | None) -> bytes:
    header = {"v": SPILL_FORMAT_VERSION, "reason": reason, "attempts": attempts,
              "overflowed_at_ms": int(time.time() * 1000), "count": len(events),
              "min_id_length": min_id_length}
    return b"\n".join([json.dumps(header).encode(), *(e.raw for e in events)]) + b"\n"


def decode(data: bytes) -> SpillFile:
    """The file's header and events; any flaw makes the whole file UnreadableError."""
    if not data.endswith(b"\n"):
        raise UnreadableError("truncated: no final newline")
    header, *lines = data[:-1].split(b"\n")
    attempts, count, min_id_length = _parse_header(header)
    if len(lines) != count:
        raise UnreadableError(f"the header counts {count} events, the file holds {len(lines)}")
    events = []
    for number, line in enumerate(lines, 2):
        try:
            events.append(BufferedEvent.from_json(line))
        except (ValueError, RecursionError):
            raise UnreadableError(f"line {number} is not an event") from None
    return SpillFile(attempts, min_id_length, events)


def _parse_header(line: bytes) -> tuple[int, int, int | None]:
    """(attempts, count, min_id_length); OtherVersionError for a header of another version."""
    try:
        header = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: deeply nested JSON
        raise UnreadableError("the header is not JSON") from None
    if not isinstance(header, dict) or not is_int(header.get("v")):
        raise UnreadableError("the header has no format version")
    if header["v"] != SPILL_FORMAT_VERSION:
        raise OtherVersionError(header["v"])
    attempts, count = header.get("attempts"), header.get("count")
    min_id_length = header.get("min_id_length")
    if not (is_int(attempts) and attempts >= 0 and is_int(count) and count >= 0):
        raise UnreadableError("the header's attempts or count is not a count")
    if min_id_length is not None and not (is_int(min_id_length) and min_id_length > 0):
        raise UnreadableError("the header's min_id_length is not a positive integer")
    return attempts, count, min_id_length


def open_regular(path: Path) -> int:
    """An fd on a regular file, without following a symlink or blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | _O_NONBLOCK | O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableError("a symbolic link") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableError("not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_at_most(fd: int, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := os.read(fd, limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise UnreadableError(f"grew past max_bytes {limit} while read")
    return b"".join(chunks)


def rename_back(source: Path, names: list[str], spill_dir: Path) -> list[str]:
    given = []
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.rename(source / name, spill_dir / name)
            given.append(name)
    return given


def make_dir(path: str | Path, *, exist_ok: bool = False) -> None:
    """A directory of mode 0700 exactly, whatever the umask (which could only remove bits from
    mkdir's mode, the owner's too). An existing one is left as it is when `exist_ok`."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if exist_ok:
            return
        raise
    os.chmod(path, 0o700)


def write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]


def empty(directory: Path, names: Iterable[str], deadline: Deadline | None) -> None:
    """Delete `names` in `directory`, then the directory, until the deadline comes."""
    for count, name in enumerate(names):
        if count % CHECK_EVERY == 0 and deadline is not None and deadline.expired():
            return
        with contextlib.suppress(OSError):
            (directory / name).unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()


def size_in_name(name: str) -> int | None:
    """The size a spill file's name records (also with the temporary prefix)."""
    match = _NAME.fullmatch(name.removeprefix(TMP_PREFIX))
    return int(match.group(1)) if match else None


def age_s(name: str) -> float:
    """Seconds since the time_ns a name starts with (0 when it starts with none)."""
    stamp = name[:20]
    return time.time() - int(stamp) / 1e9 if stamp.isdigit() and len(stamp) == 20 else 0.0


def counted_size(entry: os.DirEntry[str], include_claimed: bool) -> int:
    """What an entry other than a waiting spill file counts for in `used_bytes`."""
    name = entry.name
    if name.startswith(CLAIM_PREFIX):
        return _claimed_size(entry.path) if include_claimed else 0
    if name == QUARANTINE_DIR or name.startswith(DONE_PREFIX):
        return 0
    if LEGACY_CLAIM_MARK in name and not include_claimed:
        return 0
    size = size_in_name(name)
    if size is not None:
        return size
    try:  # a file of another name (an older amp-lite's, another version's)
        info = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def _claimed_size(path: str) -> int:
    try:
        with os.scandir(path) as entries:
            return sum(counted_size(entry, True) for entry in entries)
    except OSError:
        return 0


# -- locks ------------------------------------------------------------------------------------


def flock(fd: int, wait_s: float) -> None:
    """Lock `fd`, trying until `wait_s` has passed: a flush must not block past its deadline."""
    if fcntl is None:
        return
    give_up = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = give_up - time.monotonic()
            if left <= 0:
                raise TimeoutError("another process holds the spill directory lock") from None
            time.sleep(min(LOCK_POLL_S, left))


def abandoned(fd: int, path: Path) -> bool:
    """Whether the claim open at `fd` was abandoned: its lock is free (then we hold it) and it
    is still a claim (a completed one was renamed `.done-` before its lock was let go)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its owner holds it: alive
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except OSError:
        return False
