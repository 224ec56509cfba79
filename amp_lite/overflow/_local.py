"""LocalSpill: a bounded directory of overflowed events, read back by the next flush.

On Lambda, /tmp survives between warm invocations of one execution environment, so events that
missed one invocation's budget are retried at the start of the next flush that has time.
Writes are crash-safe (temporary file, fsync, atomic rename). Concurrent flushes in one process
(Cloud Functions gen2 threads) claim files by renaming them, so no file is sent twice at once.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._checks import positive_int
from .._deadline import Deadline
from .._errors import OverflowWriteError
from .._wire import BufferedEvent

logger = logging.getLogger("amp_lite")

SPILL_FORMAT_VERSION = 1
DEFAULT_SPILL_MAX_BYTES = 16 * 1024 * 1024  # Lambda's /tmp is 512 MB by default; stay modest
STALE_CLAIM_S = 15 * 60  # Lambda's longest invocation: a claim older than that was abandoned
SPILL_SUFFIX = ".jsonl"
CLAIM_MARK = ".claimed-"
TMP_PREFIX = ".tmp-"


@dataclass
class SpillClaim:
    """Spill files taken by one flush: `complete()` deletes them once their events settled.
    A claim never completed (the process died) is given back after STALE_CLAIM_S."""

    events: list[BufferedEvent]
    attempts: int
    _paths: list[Path] = field(default_factory=list, repr=False)  # the claimed files

    def complete(self) -> None:
        for claimed in self._paths:
            claimed.unlink(missing_ok=True)


class LocalSpill:
    """Overflow to files in `directory`, at most `max_bytes` in all (then writes are refused).

    Use one directory per client configuration (API key and server): events read back are sent
    with the API key of the client that reads them.
    """

    name = "local_spill"
    reserve_s = 0.05

    def __init__(self, directory: str | os.PathLike[str], *,
                 max_bytes: int = DEFAULT_SPILL_MAX_BYTES) -> None:
        self.max_bytes = positive_int(max_bytes, "LocalSpill max_bytes")
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"LocalSpill({str(self.directory)!r}, max_bytes={self.max_bytes})"

    def write(self, events: Sequence[BufferedEvent], *, reason: str, attempts: int,
              deadline: Deadline, min_id_length: int | None = None) -> None:
        if not events:
            return
        header = {"v": SPILL_FORMAT_VERSION, "reason": reason, "attempts": attempts,
                  "overflowed_at_ms": int(time.time() * 1000), "count": len(events),
                  "min_id_length": min_id_length}
        content = b"\n".join([json.dumps(header).encode(), *(e.raw for e in events)]) + b"\n"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            used = self.used_bytes(include_claimed=False)
            if used + len(content) > self.max_bytes:
                raise OverflowWriteError(
                    f"local spill full: {used} + {len(content)} bytes > max_bytes "
                    f"{self.max_bytes} in {self.directory}")
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex}{SPILL_SUFFIX}"
            tmp = self.directory / f"{TMP_PREFIX}{name}"
            with open(tmp, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.directory / name)
        except OSError as exc:
            raise OverflowWriteError(f"local spill write failed in {self.directory}: "
                                     f"{type(exc).__name__}") from exc

    def used_bytes(self, *, include_claimed: bool = True) -> int:
        """Bytes in the directory. The cap leaves out claimed files: a flush in progress deletes
        its claim when it ends and writes its events that fail again anew, so counting both
        would refuse that re-spill once the spill is half full. So the directory can briefly
        hold more than `max_bytes`: what flushes in progress claimed (at most one request's
        worth each), and claims abandoned by a crashed process until they are given back."""
        total = 0
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if not include_claimed and CLAIM_MARK in entry.name:
                        continue
                    try:
                        total += entry.stat().st_size
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            return 0
        return total

    def pending_files(self) -> list[Path]:
        """Spilled files waiting to be sent, oldest first (names start with a timestamp)."""
        try:
            names = os.listdir(self.directory)
            if self._recover_abandoned(names):
                names = os.listdir(self.directory)  # list again: files were given back
        except FileNotFoundError:
            return []
        names.sort()
        return [self.directory / n for n in names if n.endswith(SPILL_SUFFIX)
                and not n.startswith(TMP_PREFIX)]

    def claim(self, *, max_events: int) -> SpillClaim | None:
        """Take spilled files, oldest first, up to `max_events` events (at least one file)."""
        claim = SpillClaim(events=[], attempts=0)
        for path in self.pending_files():
            if claim.events and len(claim.events) >= max_events:
                break
            claimed = path.with_name(f"{path.name}{CLAIM_MARK}{uuid.uuid4().hex}")
            try:
                path.rename(claimed)
            except FileNotFoundError:
                continue  # another flush in this process took it
            os.utime(claimed)  # the claim's age, not the file's, marks it abandoned later
            claim._paths.append(claimed)
            attempts, events = _read_spill_file(claimed)
            claim.events.extend(events)
            claim.attempts = max(claim.attempts, attempts)
        return claim if claim._paths else None

    def _recover_abandoned(self, names: list[str]) -> bool:
        """Give back claims and remove temporary files left by a process that died mid-flush.
        Returns True when a claim was given back."""
        cutoff = time.time() - STALE_CLAIM_S
        given_back = False
        for name in names:
            path = self.directory / name
            if CLAIM_MARK not in name and not name.startswith(TMP_PREFIX):
                continue
            try:
                if path.stat().st_mtime > cutoff:
                    continue
                if name.startswith(TMP_PREFIX):
                    path.unlink()
                else:
                    path.rename(self.directory / name.split(CLAIM_MARK)[0])
                    given_back = True
            except FileNotFoundError:
                continue
        return given_back


def _read_spill_file(path: Path) -> tuple[int, list[BufferedEvent]]:
    lines = path.read_bytes().splitlines()
    attempts, events, corrupt = 0, [], 0
    try:
        header = json.loads(lines[0]) if lines else {}
        attempts = int(header.get("attempts", 0))
    except (ValueError, TypeError, AttributeError):
        corrupt += 1
    for line in lines[1:]:
        try:
            events.append(BufferedEvent.from_json(line))
        except ValueError:
            corrupt += 1
    if corrupt:
        logger.error("amp_lite: %d unreadable lines in spill file %s were discarded",
                     corrupt, path.name)
    return attempts, events
