"""LocalSpill: a bounded directory of overflowed events, read back by the next flush.

On Lambda, /tmp survives between warm invocations of one execution environment, so events that
missed one invocation's budget are retried at the start of the next flush that has time. The
directory may be shared by threads and by processes (Lambda Managed Instances run several per
environment): everything below is safe for both, and every call is bounded by its deadline.

The directory's layout (what each name holds), the files' format, the low-level I/O and the
locks are in _spill_files.py; this module decides what is written, claimed, given back and set
aside, and when.

Writers flock the directory itself around the cap check and the rename, so `max_bytes` holds
with concurrent writers; no lock file is left behind. Files of another format version are left
where they are, for the amp-lite that wrote them.

Every call first checks the directory against the trust rule (_trust.py: owned by this user or
root, not writable by others, nor are the directories above it). One that fails is never read
or written again by this LocalSpill: it moves to a private fallback directory, or, when that
fails too, refuses every write (spill_untrusted) and reads nothing; an ERROR says so once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .._checks import positive_int
from .._deadline import Deadline
from .._errors import OverflowWriteError
from .._limits import MAX_REQUEST_BYTES
from .._report import DROPPED_SPILL_UNTRUSTED
from .._value import Value
from .._wire import BufferedEvent
from ._spill_files import (
    CHECK_EVERY,
    CLAIM_PREFIX,
    DONE_PREFIX,
    LEGACY_CLAIM_MARK,
    NAME_LENGTH,
    O_CLOEXEC,
    O_DIRECTORY,
    O_NOFOLLOW,
    QUARANTINE_DIR,
    SIZE_AT,
    SPILL_FORMAT_VERSION,
    SPILL_SUFFIX,
    TMP_PREFIX,
    OtherVersionError,
    SpillFile,
    UnreadableError,
    abandoned,
    age_s,
    counted_size,
    decode,
    empty,
    encode,
    flock,
    make_dir,
    open_regular,
    read_at_most,
    rename_back,
    size_in_name,
    write_all,
)
from ._trust import (
    TrustedDir,
    UntrustedError,
    fallback_for,
    make_private,
    open_checked,
    rule,
)

try:
    import fcntl
except ImportError:  # not POSIX: threads stay safe, processes sharing a directory do not, and
    fcntl = None  # type: ignore[assignment]  # abandoned claims are given back by age (STALE_S)

logger = logging.getLogger("amp_lite")

FCHMOD = hasattr(os, "fchmod")  # POSIX (and Windows from Python 3.13)

DEFAULT_SPILL_MAX_BYTES = 16 * 1024 * 1024  # Lambda's /tmp is 512 MB by default; stay modest
QUARANTINE_KEEP = 32  # files kept aside for a human; past that, an unreadable file is deleted

STALE_S = 15 * 60  # Lambda's longest invocation: no live write (or claim, without flock) is older
RECOVERY_INTERVAL_S = 60.0  # a LocalSpill looks for abandoned claims at most this often...
RECOVERY_MAX = 32  # ...and handles at most this many of them (and leftovers) per look
CLAIM_SHARE = 0.25  # of the time left that a claim may take: sending its events needs the rest
UNBOUNDED_WAIT_S = 1.0  # how long a call given no deadline waits for a lock

# What the I/O costs, measured on an ext4 SSD with fsync (median of 30): a write of 1 event
# (263 bytes) 0.58 ms, 2,000 events (515 kB) 1.09 ms, 6,000 (1.5 MB) 1.62 ms: 0.55 ms + 0.7 ns
# per byte. A claim reads and parses a file of 1 event in 0.03 ms, of 2,000 events in 7.5 ms:
# 25 us + 14.5 ns per byte. Listing the directory, which each write does for the cap, costs
# ~0.7 us per file (28 ms for 40,000 files); the last listing's time is used. Estimates scale
# the slowest recent observation by (BASE_BYTES + size), so a slower disk or CPU (a small
# Lambda) is learnt within a few calls; the seeds (twice the figures above) stand until then.
WRITE_BASE_BYTES = 800_000
WRITE_SEED = (500_000, 0.002)
READ_BASE_BYTES = 2_000
READ_SEED = (500_000, 0.015)
COST_WINDOW = 8  # observations an estimate looks at
HEADER_BYTES = 200  # about what a header line takes, to estimate a write before building it
# The reserve a flush keeps back for this sink: four request-sized writes (a flush overflows
# one chunk per reason); 0.05 s at least (~30 such writes on the disk above), 0.5 s at most.
RESERVE_WRITES = 4
RESERVE_FLOOR_S = 0.05
RESERVE_CEILING_S = 0.5

# Errors of this process, not of the file it reads: the file goes back, the claim stops there.
_NOT_THE_FILES_FAULT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR,
                                  errno.EAGAIN})

class _NoTimeError(Exception):
    """Reading the file would take longer than the claim may."""


class _Costs:
    """Recent (bytes, seconds) of one kind of I/O, to tell how long the next one takes."""

    def __init__(self, base_bytes: int, seed: tuple[int, float]) -> None:
        self._base = base_bytes
        self._recent: deque[tuple[int, float]] = deque([seed], maxlen=COST_WINDOW)

    def record(self, size: int, seconds: float) -> None:
        self._recent.append((size, seconds))

    def estimate(self, size: int) -> float:
        recent = tuple(self._recent)  # one C call: safe while another thread appends
        return max(s * (self._base + size) / (self._base + b) for b, s in recent)


class _ClaimDir:
    """`.claim-<id>/`, flock'd for as long as the claim lives. Dropping the SpillClaim without
    completing it closes the lock (a finalizer, not run at exit), and it is given back."""

    def __init__(self, spill_dir: Path) -> None:
        self.id = f"{time.time_ns():020d}-{uuid.uuid4().hex}"
        self.path = spill_dir / f"{CLAIM_PREFIX}{self.id}"
        make_dir(self.path)
        self._close: Callable[[], object] = lambda: None
        if fcntl is None:
            return
        fd = os.open(self.path, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        self._close = closing = weakref.finalize(self, os.close, fd)
        closing.atexit = False
        try:
            flock(fd, 0.05)  # a recovery may hold it for a moment: it saw an empty claim
        except BaseException:
            self._close()
            with contextlib.suppress(OSError):
                self.path.rmdir()
            raise

    def finish(self, names: list[str], deadline: Deadline | None) -> None:
        """Settle the claim at once (one rename), then delete its files while time allows."""
        done = self.path.with_name(f"{DONE_PREFIX}{self.id}")
        try:
            os.rename(self.path, done)
            empty(done, names, deadline)
        except OSError as exc:  # left claimed: given back and sent again (de-duplicated)
            logger.warning("amp_lite: could not complete spill claim %s (%s)", self.path.name,
                           _describe(exc))
        finally:
            self._close()


class SpillClaim(Value):
    """Spill files taken by one flush: `complete()` deletes them once their events settled.

    The events of one claim were all tracked with the same `min_id_length` (None: the client's
    option was unset) and must be sent with it. `quarantined` counts the unreadable files set
    aside while claiming. A claim never completed is given back once its process is gone or
    the SpillClaim is garbage-collected."""

    _fields = ("events", "attempts", "min_id_length", "quarantined", "_names", "_dir")
    __slots__ = _fields
    _unshown = frozenset({"_names", "_dir"})

    def __init__(self, events: list[BufferedEvent], attempts: int,
                 min_id_length: int | None = None, quarantined: int = 0,
                 _names: list[str] | None = None, _dir: _ClaimDir | None = None) -> None:
        self.events = events
        self.attempts = attempts
        self.min_id_length = min_id_length
        self.quarantined = quarantined
        self._names: list[str] = _names if _names is not None else []  # the claim dir's files
        self._dir = _dir

    def complete(self, *, deadline: Deadline | None = None) -> None:
        """Delete the claimed files. Settled at once; deleting stops at `deadline` and the
        next claim finishes it. Never raises; a second call does nothing."""
        claim_dir, self._dir = self._dir, None
        if claim_dir is not None:
            claim_dir.finish(self._names, deadline)

    def _add(self, name: str, spill_file: SpillFile) -> None:
        self._names.append(name)
        self.events.extend(spill_file.events)
        self.attempts = max(self.attempts, spill_file.attempts)
        self.min_id_length = spill_file.min_id_length


class LocalSpill:
    """Overflow to files in `directory`, at most `max_bytes` in all (then writes are refused).

    Use one directory per client configuration (API key and server): events read back are sent
    with the API key of the client that reads them. `reserve_s` follows the measured cost of
    recent writes; `quarantined` counts the unreadable files this object set aside.

    The directory is used only while it passes the trust rule (_trust.py); otherwise its
    fallback (`_trust.fallback_for`) is, checked the same way.
    """

    name = "local_spill"

    def __init__(self, directory: str | os.PathLike[str], *,
                 max_bytes: int = DEFAULT_SPILL_MAX_BYTES) -> None:
        self.max_bytes = positive_int(max_bytes, "LocalSpill max_bytes")
        self.directory = Path(directory)
        self.quarantined = 0
        self._writes = _Costs(WRITE_BASE_BYTES, WRITE_SEED)
        self._reads = _Costs(READ_BASE_BYTES, READ_SEED)
        self._list_s = 0.0  # what the last listing of the directory took
        self.reserve_s = self._reserve()
        self._write_lock = threading.Lock()  # threads of this process, before the flock
        self._state_lock = threading.Lock()  # quarantined and the two fields below
        self._recovered_at: float | None = None
        self._foreign: set[str] = set()  # files of another format version, seen already
        self._trust_lock = threading.Lock()  # the four fields below
        self._at: Path | None = None  # the directory in use, resolved when first found
        self._fallback: Path | None = None  # set when `directory` failed the rule: used instead
        self._rejected: str | None = None  # why it failed, until the ERROR says where events go
        self._refused: str | None = None  # why no directory can be used: writes are refused

    def __repr__(self) -> str:
        return f"LocalSpill({str(self.directory)!r}, max_bytes={self.max_bytes})"

    # -- where: the directory, checked ------------------------------------------------------------

    def _checked(self, *, create: bool) -> TrustedDir | None:
        """The directory this call uses, checked against the trust rule now (a few stat calls)
        and open: `directory`, or once it failed, its fallback (made at once, so that the ERROR
        can say where events go). None when it is not there and not `create`: nothing to read.
        OverflowWriteError (spill_untrusted) when no directory passes; OSError when one cannot
        be made or looked at."""
        with self._trust_lock:
            while self._refused is None:
                wanted = self._fallback or self.directory
                at = self._at or Path(os.path.realpath(wanted))
                make = create or (self._fallback is not None and self._at is None)
                try:
                    if make:
                        make_private(at)
                    checked = open_checked(at)
                except FileNotFoundError:
                    if make:
                        raise
                    return None
                except UntrustedError as why:
                    self._reject(wanted, why)
                    continue
                except OSError as exc:  # cannot be made or looked at (ENOTDIR, EACCES...):
                    # not a trust matter; for the fallback, the one ERROR says so
                    self._told(f"its fallback {at} cannot be used ({_describe(exc)})")
                    raise
                self._at = at
                self._told(f"it spills to {at} instead")
                return checked
        raise OverflowWriteError(self._refused, drop_reason=DROPPED_SPILL_UNTRUSTED)

    def _reject(self, wanted: Path, why: UntrustedError) -> None:
        """`wanted` failed the rule: this spill never uses it again. The configured directory
        gives way to the fallback; the fallback to nothing, said once at ERROR."""
        self._at = None
        if self._fallback is None:
            self._fallback, self._rejected = fallback_for(self.directory), str(why)
            return
        before = (f"not {self.directory}: {self._rejected}; nor its fallback"
                  if self._rejected is not None else "not its fallback")
        self._refused = (f"the local spill has no directory it trusts ({before} {wanted}: "
                         f"{why}; {rule()})")
        logger.error("amp_lite: %s. Events that need the spill are dropped (%s)",
                     self._refused, DROPPED_SPILL_UNTRUSTED)

    def _told(self, then: str) -> None:
        """The one ERROR for a rejected `directory`, once what becomes of its events is known."""
        if self._rejected is not None:
            logger.error("amp_lite: the local spill does not use %s: %s. It reads nothing from "
                         "it; %s (%s)", self.directory, self._rejected, then, rule())
            self._rejected = None

    def _where(self) -> Path:
        """The directory in use, for messages."""
        return self._at or self._fallback or self.directory

    # -- writing ----------------------------------------------------------------------------

    def write(self, events: Sequence[BufferedEvent], *, reason: str, attempts: int,
              deadline: Deadline, min_id_length: int | None = None) -> None:
        """Store `events` as one file, or raise OverflowWriteError having stored nothing: when
        the spill is full, when `deadline` leaves less time than such a write takes here,
        when the directory stays locked by another writer until then, when the disk fails, or
        when no directory passes the trust rule (drop_reason spill_untrusted).
        """
        if not events:
            return
        size = sum(len(e.raw) + 1 for e in events) + HEADER_BYTES  # refused before it is built
        self._check_time(deadline, self._list_s + self._writes.estimate(size), size)
        content = encode(events, reason, attempts, min_id_length)
        cost = self._list_s + self._writes.estimate(len(content))
        try:
            place = self._checked(create=True)
            assert place is not None  # create=True: made, or an OSError
            place.close()  # the lock opens the directory again, and checks it is the same one
            with self._dir_lock(place, deadline, cost):
                self._check_time(deadline, cost, len(content))  # the lock may have kept us
                self._check_room(place.path, len(content), deadline)
                self._check_time(deadline, self._writes.estimate(len(content)), len(content))
                self._write_file(place.path, content)
        except OSError as exc:
            raise OverflowWriteError(f"local spill write failed in {self._where()}: "
                                     f"{_describe(exc)}") from exc

    def _check_time(self, deadline: Deadline, cost: float, size: int) -> None:
        if deadline.remaining_s() < cost:
            raise OverflowWriteError(
                f"no time left to write {size} bytes to the local spill: "
                f"{deadline.remaining_s() * 1000:.1f} ms left, a write takes "
                f"~{cost * 1000:.1f} ms here")

    def _check_room(self, at: Path, size: int, deadline: Deadline) -> None:
        """Under the directory lock, so that no other writer gets in before the rename."""
        started = time.perf_counter()
        used = self._scan(at, include_claimed=False, deadline=deadline)
        self._listed(time.perf_counter() - started)
        if used + size > self.max_bytes:
            raise OverflowWriteError(
                f"local spill full: {used} + {size} bytes > max_bytes {self.max_bytes} "
                f"in {at}")

    def _write_file(self, at: Path, content: bytes) -> None:
        """Temporary file (0600 whatever the umask), fsync, atomic rename; the temporary file
        never outlives a failure."""
        started = time.perf_counter()
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex}-{len(content):010d}{SPILL_SUFFIX}"
        tmp = at / f"{TMP_PREFIX}{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                     0o600)
        try:
            try:
                if FCHMOD:
                    os.fchmod(fd, 0o600)  # the umask may have taken bits off: exactly 0600
                write_all(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, at / name)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        self._writes.record(len(content), time.perf_counter() - started)
        self.reserve_s = self._reserve()

    def _listed(self, seconds: float) -> None:
        """A listing of the directory took `seconds`; each write makes one (for the cap)."""
        self._list_s = seconds
        self.reserve_s = self._reserve()

    def _reserve(self) -> float:
        wanted = RESERVE_WRITES * (self._list_s + self._writes.estimate(MAX_REQUEST_BYTES))
        return min(RESERVE_CEILING_S, max(RESERVE_FLOOR_S, wanted))

    @contextlib.contextmanager
    def _dir_lock(self, place: TrustedDir, deadline: Deadline | None,
                  keep_s: float) -> Iterator[None]:
        """The directory's writer lock (threads, then processes), waiting at most until
        `keep_s` before `deadline`; TimeoutError after that. OSError when the directory is no
        longer the one checked at the start of the call."""
        wait_s = UNBOUNDED_WAIT_S if deadline is None else deadline.remaining_s() - keep_s
        if not (self._write_lock.acquire(timeout=wait_s) if wait_s > 0
                else self._write_lock.acquire(blocking=False)):
            raise TimeoutError("another thread holds the spill directory lock")
        try:
            if fcntl is None:
                yield
                return
            fd = os.open(place.path, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            try:  # what is left of the wait after the thread lock, not a second one
                place.check_same(fd)
                flock(fd, wait_s if deadline is None else deadline.remaining_s() - keep_s)
                yield
            finally:
                os.close(fd)  # releases the flock
        finally:
            self._write_lock.release()

    # -- what is in the directory -------------------------------------------------------------

    def used_bytes(self, *, include_claimed: bool = True) -> int:
        """Bytes of the spill files in the directory. The cap leaves out claimed files: a flush
        in progress deletes its claim when it ends and writes its events that fail again anew,
        so counting both would refuse that re-spill once the spill is half full. So the
        directory can briefly hold more than `max_bytes`: what flushes in progress claimed (at
        most one request's worth each), and claims abandoned by a crashed process until they
        are given back. Not counted: the quarantine, and completed claims being deleted."""
        try:
            place = self._checked(create=False)
            if place is None:
                return 0
            place.close()
            return self._scan(place.path, include_claimed=include_claimed, deadline=None)
        except (FileNotFoundError, OverflowWriteError):  # not there, or no directory trusted
            return 0

    def _scan(self, at: Path, *, include_claimed: bool, deadline: Deadline | None) -> int:
        """Sizes from the names; only a file of another name is stat'ed (an older amp-lite's,
        another version's). TimeoutError when the deadline comes first."""
        total = 0
        with os.scandir(at) as entries:
            for count, entry in enumerate(entries, 1):
                if count % CHECK_EVERY == 0 and deadline is not None and deadline.expired():
                    raise TimeoutError("no time left to measure the spill directory")
                name = entry.name
                size = name[SIZE_AT]
                if len(name) == NAME_LENGTH and size.isdigit() and name.endswith(SPILL_SUFFIX):
                    total += int(size)  # a waiting file: no regex, no stat
                else:
                    total += counted_size(entry, include_claimed)
        return total

    def pending_files(self) -> list[Path]:
        """Spilled files waiting to be sent, oldest first (names start with a timestamp)."""
        try:
            place = self._checked(create=False)
            if place is None:
                return []
            names = self._list(place, None)
        except (FileNotFoundError, OverflowWriteError):  # not there, or no directory trusted
            return []
        pending = self._pending(names + self._recover(place, names, None))
        return [place.path / n for n in pending]

    def _pending(self, names: list[str]) -> list[str]:
        with self._state_lock:
            self._foreign.intersection_update(names)  # forget files that are gone
            foreign = set(self._foreign)
        return sorted(n for n in names if n.endswith(SPILL_SUFFIX) and not n.startswith(".")
                      and n not in foreign)

    def _list(self, place: TrustedDir, budget: Deadline | None) -> list[str]:
        """The directory's names, read through the descriptor that was checked (then closed);
        a listing cut short by the budget gives what it saw."""
        names: list[str] = []
        try:
            with os.scandir(place.path if place.fd is None else place.fd) as entries:
                for entry in entries:
                    if len(names) % CHECK_EVERY == 0 and budget is not None and budget.expired():
                        break
                    names.append(entry.name)
        finally:
            place.close()
        return names

    # -- claiming -----------------------------------------------------------------------------

    def claim(self, *, max_events: int, deadline: Deadline | None = None) -> SpillClaim | None:
        """Take spilled files, oldest first, up to `max_events` events (at least one file),
        all tracked with the same min_id_length. With a `deadline`, the claim takes at most
        CLAIM_SHARE of the time left (checking, listing, claiming, reading) and no file whose
        reading would not fit. Never raises: problems are logged, unreadable files set aside;
        a directory that fails the trust rule is not read."""
        budget = None if deadline is None else Deadline.after(
            CLAIM_SHARE * deadline.remaining_s(), deadline.clock)
        try:
            place = self._checked(create=False)
            if place is None:
                return None
            started = time.perf_counter()
            names = self._list(place, budget)
            self._listed(time.perf_counter() - started)  # the writes of this flush list too
            self._delete_done(place.path, names, budget)
            pending = self._pending(names + self._recover(place, names, budget))
            if not pending:
                return None
            claim_dir = _ClaimDir(place.path)
        except (FileNotFoundError, OverflowWriteError):  # not there, or no directory trusted
            return None  # (the ERROR saying why was logged when it was decided)
        except OSError as exc:
            logger.warning("amp_lite: could not claim from the local spill in %s (%s)",
                           self._where(), _describe(exc))
            return None
        claim = SpillClaim(events=[], attempts=0, _dir=claim_dir)
        self._fill(place, claim, claim_dir.path, pending, max_events, budget)
        if claim._names:
            return claim
        claim.complete()
        return None

    def _fill(self, place: TrustedDir, claim: SpillClaim, into: Path, pending: list[str],
              max_events: int, budget: Deadline | None) -> None:
        for name in pending:
            if claim.events and len(claim.events) >= max_events:
                return
            size = min(size_in_name(name) or 0, self.max_bytes)
            if budget is not None and budget.remaining_s() < self._reads.estimate(size):
                return
            try:
                if not self._take(place, name, claim, into, budget):
                    return
            except OSError as exc:  # keep what was claimed before it
                logger.warning("amp_lite: claiming from the local spill in %s stopped (%s)",
                               place.path, _describe(exc))
                return

    def _take(self, place: TrustedDir, name: str, claim: SpillClaim, into: Path,
              budget: Deadline | None) -> bool:
        """Claim the file `name` into `claim`. False when the claim must stop before it: no
        time left to read it, or its events need another min_id_length."""
        try:
            os.rename(place.path / name, into / name)
        except OSError:
            return True  # another flush took it, or it is gone
        try:
            spill_file = self._read(into / name, budget)
        except FileNotFoundError:
            return True
        except OtherVersionError as other:
            self._leave_foreign(place, into, name, other, budget)
            return True
        except _NoTimeError:
            self._put_back(place, into, [name], budget, anyway=True)
            return False
        except OSError as exc:
            if exc.errno in _NOT_THE_FILES_FAULT:
                self._put_back(place, into, [name], budget, anyway=True)
                raise
            claim.quarantined += self._set_aside(place.path, into / name, _describe(exc))
            return True
        except UnreadableError as bad:
            claim.quarantined += self._set_aside(place.path, into / name, _describe(bad))
            return True
        if claim._names and spill_file.min_id_length != claim.min_id_length:
            self._put_back(place, into, [name], budget, anyway=True)
            return False
        claim._add(name, spill_file)
        return True

    def _read(self, path: Path, budget: Deadline | None) -> SpillFile:
        """Read and check one claimed file: a regular file (no symlink, FIFO or device) of at
        most max_bytes (what one write can produce), wholly valid, or UnreadableError."""
        started = time.perf_counter()
        fd = open_regular(path)
        try:
            size = os.fstat(fd).st_size
            if size > self.max_bytes:
                raise UnreadableError(f"{size} bytes, more than max_bytes {self.max_bytes}")
            if budget is not None and budget.remaining_s() < self._reads.estimate(size):
                raise _NoTimeError
            data = read_at_most(fd, self.max_bytes)
        finally:
            os.close(fd)
        spill_file = decode(data)
        self._reads.record(len(data), time.perf_counter() - started)
        return spill_file

    def _leave_foreign(self, place: TrustedDir, into: Path, name: str, other: OtherVersionError,
                       budget: Deadline | None) -> None:
        self._put_back(place, into, [name], budget, anyway=True)
        with self._state_lock:
            self._foreign.add(name)
        logger.warning("amp_lite: spill file %r is in format version %s, not %d: left in place "
                       "for the amp-lite that wrote it", name, other, SPILL_FORMAT_VERSION)

    def _set_aside(self, at: Path, path: Path, reason: str) -> int:
        """Move an unreadable file to quarantine/ for a human (deleted instead once that holds
        QUARANTINE_KEEP files), so that it never costs a flush again. Returns 1."""
        aside = at / QUARANTINE_DIR
        try:
            make_dir(aside, exist_ok=True)
            if len(os.listdir(aside)) < QUARANTINE_KEEP or path.is_dir():
                os.rename(path, aside / path.name)
                done = f"moved to {QUARANTINE_DIR}/"
            else:
                path.unlink()
                done = f"deleted ({QUARANTINE_DIR}/ is full)"
        except OSError as exc:
            done = f"left in {path.parent.name}/ ({_describe(exc)})"
        with self._state_lock:
            self.quarantined += 1
        logger.error("amp_lite: unreadable spill file %r (%s), %s", path.name, reason, done)
        return 1

    def _put_back(self, place: TrustedDir, source: Path, names: list[str],
                  budget: Deadline | None, *, anyway: bool = False) -> list[str]:
        """Rename claimed files back into the spill. Under the writer lock, as they count
        against max_bytes again. While it stays busy, an abandoned claim stays as it is (a
        later recovery gives it back); a file taken by a claim in progress goes back `anyway`
        (the claim would delete it): a writer may then pass the cap by that file, once.
        Returns the names given back."""
        try:
            with self._dir_lock(place, budget, 0.0):
                return rename_back(source, names, place.path)
        except OSError as exc:  # TimeoutError (busy), or no descriptor left for the lock
            if anyway:  # a rename needs no descriptor; the claim would delete the file
                return rename_back(source, names, place.path)
            if not isinstance(exc, TimeoutError):
                logger.warning("amp_lite: could not give spill files back (%s)", _describe(exc))
        return []

    # -- recovery -----------------------------------------------------------------------------

    def _recover(self, place: TrustedDir, names: list[str], budget: Deadline | None) -> list[str]:
        """At most every RECOVERY_INTERVAL_S: give back abandoned claims, remove temporary
        files a crash left. Returns the names given back."""
        now = time.monotonic()
        with self._state_lock:
            if self._recovered_at is not None and now - self._recovered_at < RECOVERY_INTERVAL_S:
                return []
            self._recovered_at = now
        given = self._remove_stale(place.path, names)
        claims = sorted(n for n in names if n.startswith(CLAIM_PREFIX))
        for name in claims[:RECOVERY_MAX]:
            given += self._give_back_if_abandoned(place, name, budget)
        return given

    def _give_back_if_abandoned(self, place: TrustedDir, name: str,
                                budget: Deadline | None) -> list[str]:
        path, claim_id = place.path / name, name[len(CLAIM_PREFIX):]
        if fcntl is None:
            return (self._give_back(place, path, claim_id, budget) if age_s(claim_id) > STALE_S
                    else [])
        try:
            fd = os.open(path, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        except OSError:
            return []  # completed meanwhile (renamed .done-), or not ours
        try:
            return self._give_back(place, path, claim_id, budget) if abandoned(fd, path) else []
        finally:
            os.close(fd)

    def _give_back(self, place: TrustedDir, path: Path, claim_id: str,
                   budget: Deadline | None) -> list[str]:
        with contextlib.suppress(OSError):
            inside = os.listdir(path)
            if not inside and age_s(claim_id) < STALE_S:
                return []  # maybe a claim being made: its directory comes before its lock
            given = self._put_back(place, path, inside, budget)
            if len(given) == len(inside):
                path.rmdir()
            return given
        return []

    def _remove_stale(self, at: Path, names: list[str]) -> list[str]:
        """Temporary files older than STALE_S are deleted; an older amp-lite's claims older
        than that are given back (its rule). Returns the names given back."""
        stale = [n for n in names if (n.startswith(TMP_PREFIX) and
                 age_s(n[len(TMP_PREFIX):]) > STALE_S) or LEGACY_CLAIM_MARK in n]
        given: list[str] = []
        for name in stale[:RECOVERY_MAX]:
            path = at / name
            with contextlib.suppress(OSError):
                if name.startswith(TMP_PREFIX):
                    path.unlink()
                elif time.time() - os.lstat(path).st_mtime > STALE_S:
                    original = name.partition(LEGACY_CLAIM_MARK)[0]
                    os.rename(path, at / original)
                    given.append(original)
        return given

    def _delete_done(self, at: Path, names: list[str], budget: Deadline | None) -> None:
        """Finish deleting completed claims that their flush had no time left to empty."""
        for name in [n for n in names if n.startswith(DONE_PREFIX)][:RECOVERY_MAX]:
            if budget is not None and budget.expired():
                return
            with contextlib.suppress(OSError):
                empty(at / name, os.listdir(at / name), budget)


def _describe(exc: BaseException) -> str:
    """A short reason: the errno's name for an OSError, the message for ours."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return str(exc) or type(exc).__name__
