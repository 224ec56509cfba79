"""Which directories the local spill trusts: the rule ssh applies to ~/.ssh.

What the spill reads back is sent to Amplitude with the client's API key, and what it writes is
personal data. So it uses a directory only where nobody but this process's user and root can
add a file or put another directory in its place:

- the directory itself (symlinks resolved) is owned by this user or root and is not writable by
  group or others;
- so is every directory above it, up to `/`, except that one of those may be writable by others
  if it is sticky (as /tmp is): others can add entries there, but not rename or remove ours.

`open_checked` checks a resolved path: the directory itself by fstat on a descriptor opened
O_DIRECTORY | O_NOFOLLOW (the caller lists through that descriptor: what was checked is what is
read), the directories above it by lstat (a symlink swapped in since the path was resolved
fails). Nobody but this user and root can rename anything along a path that passes, so the
caller may use the path itself for the rest of the call. Where the platform has no owners
(no os.geteuid), nothing is checked.

What it costs, measured on a 2-core Linux VM where one lstat takes ~2 us: every claim (so
every flush) checks again, with an open, an fstat, one lstat per directory above and a close:
a claim of an empty spill in /tmp/<dir>/amp-lite-spill/<hash> took 23-26 us instead of 17
(median), against ~850 us for the flush of one event to a local server. The first claim of a
process also resolves the path: 105 us instead of 43, once.

A directory that fails is replaced by `fallback_for(it)`, a private directory of this user under
the system temp directory, checked by the same rule (LocalSpill._checked).
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from pathlib import Path

from ._spill_files import O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, make_dir

ENFORCED = hasattr(os, "geteuid")
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class UntrustedError(Exception):
    """A directory fails the rule: the message names it, its owner and mode, and the fault."""


def rule() -> str:
    """The rule, as an error message states it."""
    uid = os.geteuid() if ENFORCED else "?"
    return (f"the rule: a spill directory and every directory above it are owned by this "
            f"process's user (uid {uid}) or root and not writable by group or others (one "
            f"above it may be, if sticky, like /tmp)")


class TrustedDir:
    """A directory that passed the rule at the start of one call of the spill: `path` (symlinks
    resolved), `ident` (st_dev, st_ino) and `fd`, a descriptor on it until `close()`."""

    __slots__ = ("fd", "ident", "path")

    def __init__(self, path: Path, fd: int | None, info: os.stat_result | None) -> None:
        self.path = path
        self.fd = fd
        self.ident = None if info is None else (info.st_dev, info.st_ino)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def check_same(self, fd: int) -> None:
        """OSError when `fd` is not on the directory that was checked: it was replaced since."""
        info = os.fstat(fd)
        if self.ident is not None and (info.st_dev, info.st_ino) != self.ident:
            raise OSError(f"{self.path} was replaced since it was checked")


def open_checked(path: Path) -> TrustedDir:
    """`path` (absolute, symlinks resolved), open, once it passes the rule. UntrustedError when
    it does not; FileNotFoundError when it is not there; OSError when it cannot be looked at."""
    if not ENFORCED:
        return TrustedDir(path, None, None)
    try:
        fd = os.open(path, os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # it was a directory when resolved: someone swapped it
            raise UntrustedError(f"{path} is a symbolic link (it was not when resolved)") from None
        raise
    try:
        info = os.fstat(fd)
        owners = (os.geteuid(), 0)
        _check(str(path), info, owners, above=False)
        _check_above(str(path), owners)
    except BaseException:
        os.close(fd)
        raise
    return TrustedDir(path, fd, info)


def make_private(path: Path) -> None:
    """Create `path` and the missing directories above it, each 0700 whatever the umask, once
    the deepest existing one passes the rule for a directory above: nothing is made where
    another user could move it. An existing `path` is left as it is (`open_checked` judges)."""
    missing: list[str] = []
    here = str(path)
    while not os.path.lexists(here):  # "/" always exists
        missing.append(here)
        here = os.path.dirname(here)
    if not missing:
        return
    info = os.lstat(here)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), here)
    if ENFORCED:
        owners = (os.geteuid(), 0)
        _check(here, info, owners, above=True)
        _check_above(here, owners)
    for new in reversed(missing):
        make_dir(new, exist_ok=True)  # made meanwhile by another process: open_checked judges


def fallback_for(directory: Path) -> Path:
    """Where the spill goes when `directory` fails the rule: `<temp dir>/amp-lite-spill-<uid>/`,
    then one directory per configured one (a hash of its path, as given), so that the events of
    two configurations (two API keys) stay apart there too."""
    import hashlib  # rarely needed: not on the import path of every cold start
    import tempfile

    digest = hashlib.sha256(os.fsencode(os.path.abspath(directory))).hexdigest()[:16]
    uid = os.geteuid() if ENFORCED else 0
    return Path(tempfile.gettempdir()) / f"amp-lite-spill-{uid}" / digest


def _check(path: str, info: os.stat_result, owners: tuple[int, int], *, above: bool) -> None:
    mode = info.st_mode
    if (stat.S_ISDIR(mode) and info.st_uid in owners
            and (not mode & _WRITABLE_BY_OTHERS or (above and mode & stat.S_ISVTX))):
        return  # the common case first: this runs for each directory at every claim
    raise UntrustedError(f"{path} (owner uid {info.st_uid}, mode {stat.S_IMODE(mode):04o}) "
                         f"{_fault(info, owners, above=above)}")


def _fault(info: os.stat_result, owners: tuple[int, int], *, above: bool) -> str:
    mode = info.st_mode
    if stat.S_ISLNK(mode):  # lstat on a path that was resolved: swapped since
        return "is a symbolic link (it was not when resolved)"
    if not stat.S_ISDIR(mode):
        return "is not a directory"
    faults = []
    if info.st_uid not in owners:
        faults.append("is owned by another user")
    if mode & _WRITABLE_BY_OTHERS and not (above and mode & stat.S_ISVTX):
        faults.append("is writable by group or others" + (" and not sticky" if above else ""))
    return " and ".join(faults)


def _check_above(path: str, owners: tuple[int, int]) -> None:
    """Every directory above `path`, up to `/`: whoever can rename in one can replace it."""
    for parent in _parents(path):
        _check(parent, os.lstat(parent), owners, above=True)


@functools.lru_cache(maxsize=16)
def _parents(path: str) -> tuple[str, ...]:
    """The directories above `path`, nearest first (as strings, once: building them costs
    about as much as the lstat calls do)."""
    parents = []
    while (parent := os.path.dirname(path)) != path:
        parents.append(parent)
        path = parent
    return tuple(parents)
