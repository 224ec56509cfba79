"""The local spill trusts only what the process's own user controls (issue 16).

A spill directory (symlinks resolved) and every directory above it must be owned by this
process's user or root and not writable by group or others (one above it may be, if sticky,
like /tmp). A directory that fails is never read nor written: the spill uses a private fallback,
`<temp dir>/amp-lite-spill-<uid>/<hash>`, checked the same way, and says so in one ERROR; with
no fallback, events are dropped as `spill_untrusted`. Files are 0600 and directories 0700
whatever the umask.

Another user is played by chown to OTHER_UID, which needs root (CI runs as root): those tests
skip elsewhere. The system temp directory, where the fallback goes, is a private one in
tmp_path for every test here.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amp_lite import Amplitude, OfflineRetryHandler, OverflowWriteError, amplitude_flush
from amp_lite._client import FLUSH_LOG_FIELD
from amp_lite.overflow._local import LocalSpill
from amp_lite.overflow._spill_files import CLAIM_PREFIX, QUARANTINE_DIR, SPILL_SUFFIX
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY
from tests.support.doubles import LambdaContext
from tests.unit.test_local_spill import claim_all, make_events, spill_files, write
from tests.unit.test_spill_edges import errors, put

OTHER_UID = 65534  # "nobody": a user that is neither this process's nor root


@pytest.fixture(autouse=True)
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temp directory (tempfile.gettempdir()) for this test: private, in tmp_path."""
    temp = tmp_path / "temp"
    temp.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


@pytest.fixture
def other_user() -> int:
    """A uid to give directories to, as if another user had made them."""
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user (chown) needs root; CI runs as root")
    return OTHER_UID


def give_to(uid: int, *paths: Path) -> None:
    for path in paths:
        os.chown(path, uid, uid, follow_symlinks=False)


def planted_dir(path: Path, uid: int, *, mode: int = 0o777) -> Path:
    """A directory made by user `uid`, of `mode`, holding a genuine spill file (written by
    amp-lite's own LocalSpill, as another user's amp-lite would): its event, `planted-0000`,
    would be sent with our key if the spill trusted the directory."""
    write(LocalSpill(path), make_events("planted", 1))
    give_to(uid, path, *path.iterdir())
    path.chmod(mode)
    return path


def fallback_root(temp_dir: Path) -> Path:
    return temp_dir / f"amp-lite-spill-{os.geteuid()}"


def fallback_files(temp_dir: Path) -> list[Path]:
    return sorted(fallback_root(temp_dir).rglob(f"*{SPILL_SUFFIX}"))


def offline_client(fake: FakeAmplitude, overflow: Any = None) -> Amplitude:
    """One attempt per flush; a failure goes to the overflow sinks at once."""
    return Amplitude(API_KEY, server_url=fake.url, overflow=overflow,
                     retry=OfflineRetryHandler())


def flush_while_down(client: Amplitude, fake: FakeAmplitude, count: int, prefix: str) -> Any:
    fake.script(Fault.status_code(503))
    for n in range(count):
        client.track(f"{prefix}-event", user_id="user-0001", event_properties={"n": n})
    return client.flush(timeout_s=5)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def event_types(fake: FakeAmplitude) -> list[str]:
    return [event["event_type"] for event in fake.events]


def naming(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [message for message in errors(caplog) if text in message]


# -- a directory another user controls is never read nor written -------------------------------


@pytest.mark.parametrize("through", ["the directory", "a symlink to it"])
def test_a_world_writable_directory_of_another_user_is_never_read_nor_written(
        fake: FakeAmplitude, tmp_path: Path, temp_dir: Path, other_user: int, through: str,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a world-writable directory another user made, holding a genuine spill file, as
    # the spill's directory (or a symlink to it)
    hostile = planted_dir(tmp_path / "hostile", other_user)
    before = spill_files(hostile)
    configured = hostile
    if through == "a symlink to it":
        configured = tmp_path / "link"
        configured.symlink_to(hostile)
    client = offline_client(fake, LocalSpill(configured))

    # WHEN a flush fails to deliver, then a healthy one runs
    with caplog.at_level(logging.WARNING, logger="amp_lite"):
        failed = flush_while_down(client, fake, 3, "ours")
        hostile_after_write, in_fallback = spill_files(hostile), fallback_files(temp_dir)
        healthy = client.flush(timeout_s=5)

    # THEN the failed flush read nothing back and spilled its events, balanced, to the fallback
    assert failed.balanced and failed.recovered == 0 and failed.dropped == 0
    assert dict(failed.overflowed_to) == {"local_spill": 3}
    assert len(in_fallback) == 1
    # AND the other user's directory was neither written nor read (no claim made in it)
    assert hostile_after_write == before
    assert spill_files(hostile) == before
    # AND the healthy flush sent our events back, and never the planted one
    assert healthy.balanced and (healthy.recovered, healthy.delivered) == (3, 3)
    assert event_types(fake) == ["ours-event"] * 3
    assert "planted-0000" not in fake.insert_ids
    assert fallback_files(temp_dir) == []
    # AND one ERROR named the configured path, the rejected directory's owner and mode, and
    # where the events went
    [message] = naming(caplog, str(configured))
    assert str(hostile) in message
    assert f"owner uid {other_user}, mode 0777" in message
    assert str(fallback_root(temp_dir)) in message
    assert "not writable by group or others" in message  # the rule


@pytest.mark.parametrize("root_from", ["AMP_LITE_SPILL_DIR", "the temp directory"])
def test_a_default_root_made_by_another_user_is_not_used(
        fake: FakeAmplitude, clean_env: Path, temp_dir: Path, other_user: int, root_from: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN the default spill's root made beforehand by another user (not writable by us, but
    # that user could rename or replace the directory we would make in it)
    if root_from == "AMP_LITE_SPILL_DIR":
        root = clean_env
    else:
        monkeypatch.delenv("AMP_LITE_SPILL_DIR")
        root = temp_dir / "amp-lite-spill"
    root.mkdir(mode=0o755)
    give_to(other_user, root)
    client = offline_client(fake)  # the default sinks: the local spill under the root

    # WHEN a flush fails to deliver, then a healthy one runs
    with caplog.at_level(logging.WARNING, logger="amp_lite"):
        failed = flush_while_down(client, fake, 2, "ours")
        healthy = client.flush(timeout_s=5)

    # THEN nothing was made in the root: the events went to the fallback, and came back
    assert list(root.iterdir()) == []
    assert failed.balanced and dict(failed.overflowed_to) == {"local_spill": 2}
    assert healthy.balanced and (healthy.recovered, healthy.delivered) == (2, 2)
    # AND one ERROR named the root, its owner and mode
    [message] = naming(caplog, str(root))
    assert f"{root} (owner uid {other_user}, mode 0755) is owned by another user" in message


def test_with_no_trusted_fallback_events_are_dropped_and_counted(
        fake: FakeAmplitude, tmp_path: Path, temp_dir: Path, other_user: int,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a spill directory and the fallback's root both made beforehand by another user
    hostile = planted_dir(tmp_path / "hostile", other_user)
    before = spill_files(hostile)
    fallback_root(temp_dir).mkdir(mode=0o700)
    give_to(other_user, fallback_root(temp_dir))
    client = offline_client(fake, LocalSpill(hostile))
    result = object()

    @amplitude_flush(client)
    def handler(event: Any, context: Any) -> object:
        client.track("ours-event", user_id="user-0001")
        client.track("ours-event", user_id="user-0002")
        return result

    # WHEN two invocations run while Amplitude is down
    with caplog.at_level(logging.INFO, logger="amp_lite"):
        for _ in range(2):
            fake.script(Fault.status_code(503))
            assert handler({}, LambdaContext(10_000)) is result  # the handler's own result

    # THEN each flush dropped its 2 events as spill_untrusted, counted and balanced
    summaries = [r.__dict__[FLUSH_LOG_FIELD] for r in caplog.records
                 if FLUSH_LOG_FIELD in r.__dict__]
    assert len(summaries) == 2
    for summary in summaries:
        assert summary["dropped"] == 2 and summary["dropped_reasons"] == {"spill_untrusted": 2}
        assert summary["recovered"] == 0  # the planted file was not read
        assert (summary["tracked"] + summary["recovered"] == summary["delivered"]
                + summary["rejected"] + summary["overflowed"] + summary["dropped"])
    # AND one ERROR named both directories and why; each flush's drop was logged with its count
    [message] = naming(caplog, str(hostile))
    assert str(fallback_root(temp_dir)) in message and "spill_untrusted" in message
    assert f"owner uid {other_user}, mode 0700" in message
    assert len(naming(caplog, "2 events dropped (spill_untrusted")) == 2
    # AND nothing was written anywhere, nothing planted was sent
    assert spill_files(hostile) == before
    assert list(fallback_root(temp_dir).iterdir()) == []
    assert fake.events == []


def test_a_directory_that_turns_untrusted_after_first_use_is_not_read_any_more(
        fake: FakeAmplitude, tmp_path: Path, temp_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a spill that spilled 2 events into its directory
    spill = LocalSpill(tmp_path / "spill")
    client = offline_client(fake, spill)
    assert flush_while_down(client, fake, 2, "early").overflowed == 2
    # ... which then became writable by others (anyone may have planted files in it since)
    spill.directory.chmod(0o777)
    before = spill_files(spill.directory)

    # WHEN a healthy flush runs, then one that fails
    with caplog.at_level(logging.WARNING, logger="amp_lite"):
        client.track("later-event", user_id="user-0001")
        healthy = client.flush(timeout_s=5)
        failed = flush_while_down(client, fake, 1, "last")

    # THEN the healthy flush read nothing from it: only its own event was sent
    assert healthy.balanced and (healthy.recovered, healthy.delivered) == (0, 1)
    assert event_types(fake) == ["later-event"]
    # AND the failed one spilled to the fallback; the directory was left as it was
    assert failed.balanced and dict(failed.overflowed_to) == {"local_spill": 1}
    assert len(fallback_files(temp_dir)) == 1
    assert spill_files(spill.directory) == before
    # AND one ERROR said why
    [message] = naming(caplog, str(spill.directory))
    assert "mode 0777) is writable by group or others" in message


# -- what stays trusted -------------------------------------------------------------------------


def test_a_symlink_to_a_private_directory_of_ours_keeps_working(
        fake: FakeAmplitude, tmp_path: Path, temp_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN the spill configured as a symlink to a private directory of ours (an EFS mount)
    mount = tmp_path / "efs" / "spill"
    mount.mkdir(parents=True, mode=0o700)
    link = tmp_path / "spill-link"
    link.symlink_to(mount)
    client = offline_client(fake, LocalSpill(link))

    # WHEN a flush fails to deliver, then a healthy one runs
    with caplog.at_level(logging.WARNING, logger="amp_lite"):
        failed = flush_while_down(client, fake, 2, "ours")
        spilled = spill_files(mount)
        healthy = client.flush(timeout_s=5)

    # THEN the events were spilled through the link and read back; no fallback, no ERROR
    assert failed.balanced and dict(failed.overflowed_to) == {"local_spill": 2}
    assert len(spilled) == 1 and spilled[0].endswith(SPILL_SUFFIX)
    assert healthy.balanced and (healthy.recovered, healthy.delivered) == (2, 2)
    assert not fallback_root(temp_dir).exists()
    assert errors(caplog) == []


def test_a_sticky_directory_above_is_fine(tmp_path: Path) -> None:
    # GIVEN a spill directory in a world-writable sticky directory of ours (like /tmp, whose
    # owner is root: others may add entries there, but not rename or remove ours)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    spill = LocalSpill(shared / "spill")

    # WHEN events are written and claimed / THEN they come back
    write(spill, make_events("a", 1))
    assert [e.insert_id for e in claim_all(spill).events] == ["a-0000"]


# -- the rule, directory by directory ---------------------------------------------------------


def _owned_by_other(tmp_path: Path, uid: int) -> tuple[Path, Path]:
    spill = tmp_path / "spill"
    spill.mkdir(mode=0o700)
    give_to(uid, spill)
    return spill, spill


def _group_writable(tmp_path: Path, uid: int) -> tuple[Path, Path]:
    spill = tmp_path / "spill"
    spill.mkdir()
    spill.chmod(0o770)
    return spill, spill


def _parent_of_other(tmp_path: Path, uid: int) -> tuple[Path, Path]:
    parent = tmp_path / "theirs"
    (parent / "spill").mkdir(parents=True, mode=0o700)
    give_to(uid, parent)
    return parent / "spill", parent


def _parent_writable_not_sticky(tmp_path: Path, uid: int) -> tuple[Path, Path]:
    parent = tmp_path / "open"
    (parent / "spill").mkdir(parents=True, mode=0o700)
    parent.chmod(0o777)
    return parent / "spill", parent


def _sticky_parent_of_other(tmp_path: Path, uid: int) -> tuple[Path, Path]:
    parent = tmp_path / "their-tmp"
    (parent / "spill").mkdir(parents=True, mode=0o700)
    parent.chmod(0o1777)
    give_to(uid, parent)
    return parent / "spill", parent


@pytest.mark.parametrize(("make", "fault", "needs_other_user"), [
    (_owned_by_other, "is owned by another user", True),
    (_group_writable, "is writable by group or others", False),
    (_parent_of_other, "is owned by another user", True),
    (_parent_writable_not_sticky, "is writable by group or others and not sticky", False),
    (_sticky_parent_of_other, "is owned by another user", True),
], ids=["owned-by-other", "group-writable", "parent-of-other", "parent-not-sticky",
        "sticky-parent-of-other"])
def test_each_fault_is_refused_naming_the_directory_and_why(
        tmp_path: Path, make: Any, fault: str, needs_other_user: bool,
        request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a spill whose directory, or one above it, breaks the rule, holding a spilled event
    uid = request.getfixturevalue("other_user") if needs_other_user else os.geteuid()
    spill_dir, culprit = make(tmp_path, uid)
    planted = put(spill_dir, {"v": 1, "reason": "deadline", "attempts": 1,
                              "overflowed_at_ms": 1, "count": 1, "min_id_length": None},
                  [make_events("planted", 1)[0].raw])
    spill = LocalSpill(spill_dir)

    # WHEN the next flush claims from it
    with caplog.at_level(logging.ERROR, logger="amp_lite"):
        claim = spill.claim(max_events=10)

    # THEN nothing is read; the ERROR names the directory at fault, its owner, mode and fault
    assert claim is None
    [message] = errors(caplog)
    info = culprit.lstat()
    assert (f"{culprit} (owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}) "
            f"{fault}") in message
    # AND the spill now works in its fallback, leaving the directory as it was
    write(spill, make_events("ours", 1))
    assert [e.insert_id for e in claim_all(spill).events] == ["ours-0000"]
    assert list(spill_dir.iterdir()) == [planted]


def test_a_directory_replaced_between_its_check_and_the_write_is_not_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a spill in use, whose directory is replaced right after the write checked it
    spill = LocalSpill(tmp_path / "spill")
    write(spill, make_events("a", 1))
    checked = spill._checked

    def checked_then_replaced(*, create: bool) -> Any:
        place = checked(create=create)
        spill.directory.rename(tmp_path / "moved")
        spill.directory.mkdir(mode=0o700)
        return place

    monkeypatch.setattr(spill, "_checked", checked_then_replaced)

    # WHEN events are written / THEN the write is refused, naming the directory, and the
    # directory now at that path was not written to
    with pytest.raises(OverflowWriteError, match="spill was replaced since it was checked"):
        write(spill, make_events("b", 1))
    assert spill_files(spill.directory) == []


# -- modes: 0600 files, 0700 directories, whatever the umask ---------------------------------------


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


UMASKS = pytest.mark.parametrize("umask", [0o022, 0o000, 0o277], indirect=True,
                                 ids=["umask-022", "umask-000", "umask-277"])


@UMASKS
def test_spill_files_are_0600_whatever_the_umask(tmp_path: Path, umask: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a spill, and a watch on the temporary file's mode at its fsync
    spill = LocalSpill(tmp_path / "spill")
    temporary: list[int] = []
    real_fsync = os.fsync

    def watching_fsync(fd: int) -> None:
        temporary.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", watching_fsync)

    # WHEN events are written
    write(spill, make_events("a", 1))

    # THEN the temporary file and the spill file were 0600: the umask neither adds nor takes
    [name] = spill_files(spill.directory)
    assert [oct(m) for m in temporary] == [oct(0o600)]
    assert oct(mode(spill.directory / name)) == oct(0o600)


@UMASKS
def test_spill_directories_are_0700_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    # GIVEN a spill whose directory and the two above it do not exist yet
    spill = LocalSpill(tmp_path / "a" / "b" / "spill")

    # WHEN events are written, a claim is made, and an unreadable file is set aside
    write(spill, make_events("a", 1))
    claim = claim_all(spill)
    [claim_dir] = [p for p in spill.directory.iterdir() if p.name.startswith(CLAIM_PREFIX)]
    claim_mode = mode(claim_dir)
    claim.complete()
    put(spill.directory, b"not a header", [])
    assert spill.claim(max_events=10) is None

    # THEN every directory the spill made is 0700: those above it too (a world-writable one
    # there would let others replace the spill's directory)
    made = [tmp_path / "a", tmp_path / "a" / "b", spill.directory,
            spill.directory / QUARANTINE_DIR]
    assert [oct(mode(d)) for d in made] == [oct(0o700)] * 4
    assert oct(claim_mode) == oct(0o700)
