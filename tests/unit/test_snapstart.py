"""Lambda SnapStart hooks (amp_lite._snapstart) with a registrar of our own, run the way
awslambdaric 4.2.2 runs them: before-snapshot hooks last registered first, after-restore hooks
in order. What must not be cloned into every restored environment: buffered init-time events,
kept-alive connections, the retry jitter's generator state."""

from __future__ import annotations

import gc
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from amp_lite import Amplitude, RetryHandler
from amp_lite import _snapstart as snapstart
from amp_lite.overflow import LocalSpill
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY

SNAPSTART_ENV = {snapstart.ENV_INITIALIZATION_TYPE: snapstart.SNAP_START}
Hook = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class FakeRegistrar:
    """snapshot_restore_py's two registries, and the runtime's way of running them."""

    def __init__(self) -> None:
        self.before: list[Hook] = []
        self.after: list[Hook] = []

    def register_before_snapshot(self, func: Callable[..., Any], *args: Any,
                                 **kwargs: Any) -> Callable[..., Any]:
        self.before.append((func, args, kwargs))
        return func

    def register_after_restore(self, func: Callable[..., Any], *args: Any,
                               **kwargs: Any) -> Callable[..., Any]:
        self.after.append((func, args, kwargs))
        return func

    def snapshot(self) -> None:  # awslambdaric.lambda_runtime_hooks_runner.run_before_snapshot
        while self.before:
            func, args, kwargs = self.before.pop()
            func(*args, **kwargs)

    def restore(self) -> None:  # ...run_after_restore
        for func, args, kwargs in self.after:
            func(*args, **kwargs)


@pytest.fixture(autouse=True)
def fresh_enrolment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no client enrolled and no hook registered."""
    monkeypatch.setattr(snapstart, "_enrolled", snapstart._Enrolled())


@pytest.fixture
def registrar() -> FakeRegistrar:
    return FakeRegistrar()


def snapstart_client(registrar: FakeRegistrar, fake: FakeAmplitude,
                     **options: Any) -> Amplitude:
    client = Amplitude(API_KEY, server_url=fake.url, **options)
    snapstart.enroll(client, environ=SNAPSTART_ENV, registrar=registrar)
    return client


def track_init_events(client: Amplitude, n: int) -> None:
    for i in range(n):
        client.track("cold_start", user_id="user-00042", event_properties={"n": i})


def snapstart_summaries(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    prefix = "amp_lite snapstart: before snapshot "
    return [json.loads(r.getMessage()[len(prefix):]) for r in caplog.records
            if r.getMessage().startswith(prefix)]


def test_hooks_are_registered_once_however_many_clients(
        registrar: FakeRegistrar, fake: FakeAmplitude) -> None:
    # GIVEN SnapStart, WHEN three clients are built
    clients = [snapstart_client(registrar, fake) for _ in range(3)]
    # THEN one before-snapshot and one after-restore hook are registered, and all three kept
    assert [f for f, _, _ in registrar.before] == [snapstart.before_snapshot]
    assert [f for f, _, _ in registrar.after] == [snapstart.after_restore]
    assert set(snapstart._enrolled.clients) == set(clients)


def test_nothing_is_registered_outside_snapstart(registrar: FakeRegistrar,
                                                 fake: FakeAmplitude) -> None:
    # GIVEN an on-demand environment (the variable's other values) and none at all
    for environ in ({snapstart.ENV_INITIALIZATION_TYPE: "on-demand"}, {}):
        client = Amplitude(API_KEY, server_url=fake.url)
        # WHEN a client is enrolled
        snapstart.enroll(client, environ=environ, registrar=registrar)
    # THEN no hook is registered and no client kept
    assert registrar.before == registrar.after == []
    assert len(snapstart._enrolled.clients) == 0


def test_before_snapshot_delivers_init_events_and_leaves_the_buffer_empty(
        registrar: FakeRegistrar, fake: FakeAmplitude,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN two clients that tracked events during init, outside any handler
    first, second = snapstart_client(registrar, fake), snapstart_client(registrar, fake)
    track_init_events(first, 3)
    track_init_events(second, 2)
    # WHEN the runtime runs the before-snapshot hooks
    with caplog.at_level(logging.INFO, logger="amp_lite"):
        registrar.snapshot()
    # THEN every event reached Amplitude before the snapshot, nothing stays buffered...
    assert len(fake.events) == 5
    assert first._scopes.outside.take_all() == second._scopes.outside.take_all() == []
    # ...and a balanced report was logged for each client
    summaries = snapstart_summaries(caplog)
    assert sorted(s["tracked"] for s in summaries) == [2, 3]
    assert all(s["delivered"] == s["tracked"] for s in summaries)


def test_before_snapshot_spills_what_a_hanging_amplitude_does_not_take(
        registrar: FakeRegistrar, fake: FakeAmplitude, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a client with a local spill that tracked 4 events at init, and Amplitude hanging
    spill = LocalSpill(tmp_path / "spill")
    client = snapstart_client(registrar, fake, overflow=spill, flush_timeout_s=0.5)
    track_init_events(client, 4)
    fake.script(*[Fault.hang(30)] * 5)
    # WHEN the before-snapshot hook runs
    with caplog.at_level(logging.INFO, logger="amp_lite"):
        registrar.snapshot()
    # THEN the 4 events are in the spill, accounted for in a balanced report; none buffered
    [summary] = snapstart_summaries(caplog)
    assert summary["tracked"] == 4
    assert summary["overflowed"] == 4
    assert summary["tracked"] + summary["recovered"] == (
        summary["delivered"] + summary["rejected"] + summary["overflowed"] + summary["dropped"])
    assert list((tmp_path / "spill").rglob("*.jsonl"))
    assert client._scopes.outside.take_all() == []


def test_before_snapshot_closes_pooled_connections(registrar: FakeRegistrar,
                                                   fake: FakeAmplitude) -> None:
    # GIVEN a client that delivered once at init (a kept-alive connection in its pool)
    client = snapstart_client(registrar, fake)
    track_init_events(client, 1)
    client.flush()
    assert fake.connections_opened == 1
    # WHEN the before-snapshot hook runs, then the restored environment sends
    registrar.snapshot()
    track_init_events(client, 1)
    client.flush()
    # THEN that send opened a connection of its own: none came from the snapshot
    assert fake.connections_opened == 2
    assert len(fake.events) == 2


def test_before_snapshot_tolerates_a_collected_client_and_a_failing_one(
        registrar: FakeRegistrar, fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN three enrolled clients: one garbage-collected, one whose close() raises, one live
    dropped = snapstart_client(registrar, fake)
    track_init_events(dropped, 1)
    del dropped
    gc.collect()
    broken = snapstart_client(registrar, fake)
    monkeypatch.setattr(broken, "close", lambda: 1 / 0)
    live = snapstart_client(registrar, fake)
    track_init_events(live, 2)
    # WHEN the before-snapshot hook runs / THEN it does not raise into the runtime...
    registrar.snapshot()
    # ...and the live client's events were delivered (the collected one's went with it)
    assert len(fake.events) == 2
    assert len(snapstart._enrolled.clients) == 2


def test_a_client_without_a_key_does_not_fail_the_snapshot(
        registrar: FakeRegistrar, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a client built without any API key, which tracked an event at init
    monkeypatch.delenv("AMPLITUDE_API_KEY", raising=False)
    client = Amplitude()
    snapstart.enroll(client, environ=SNAPSTART_ENV, registrar=registrar)
    track_init_events(client, 1)
    # WHEN the before-snapshot hook runs / THEN it returns, the event counted as dropped
    with caplog.at_level(logging.INFO, logger="amp_lite"):
        registrar.snapshot()
    [summary] = snapstart_summaries(caplog)
    assert summary["dropped"] == 1
    assert client._scopes.outside.take_all() == []


def test_restored_copies_of_one_snapshot_draw_different_jitter(
        registrar: FakeRegistrar, fake: FakeAmplitude) -> None:
    # GIVEN the default retry strategy's jitter generator as the snapshot holds it
    snapstart_client(registrar, fake)
    rng = RetryHandler().jitter.__self__  # type: ignore[attr-defined]
    at_snapshot = rng.getstate()
    continuation = [rng.uniform(0.0, 2.0) for _ in range(8)]
    copies = []
    for _ in range(2):
        # WHEN an environment is restored from that snapshot and its after-restore hooks run
        rng.setstate(at_snapshot)
        registrar.restore()
        retry = RetryHandler()
        copies.append([retry.jitter(0.0, 2.0) for _ in range(8)])
    # THEN each draws its own backoffs: neither the snapshot's continuation nor each other's
    assert copies[0] != continuation
    assert copies[1] != continuation
    assert copies[0] != copies[1]


def test_after_restore_leaves_the_global_random_alone(registrar: FakeRegistrar,
                                                      fake: FakeAmplitude) -> None:
    # GIVEN a user who seeded the global random generator
    snapstart_client(registrar, fake)
    random.seed(1234)
    state = random.getstate()
    # WHEN the after-restore hook runs / THEN the user's generator is untouched
    registrar.restore()
    assert random.getstate() == state


def test_hooks_never_raise(registrar: FakeRegistrar, fake: FakeAmplitude,
                           monkeypatch: pytest.MonkeyPatch,
                           caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a jitter generator that cannot be reseeded and a flush that raises
    client = snapstart_client(registrar, fake)
    track_init_events(client, 1)

    class Unseedable:
        def seed(self, *args: Any) -> None:
            raise OSError("no entropy")

    monkeypatch.setattr(snapstart._retry, "JITTER_RNG", Unseedable())
    monkeypatch.setattr(client, "flush_scope", lambda *a: 1 / 0)
    # WHEN the runtime runs both hooks / THEN neither raises, both failures are logged
    with caplog.at_level(logging.ERROR, logger="amp_lite"):
        registrar.snapshot()
        registrar.restore()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("before the SnapStart snapshot" in m for m in messages)
    assert any("reseed the retry jitter" in m for m in messages)


def test_a_missing_hooks_package_is_a_warning_not_an_error(
        fake: FakeAmplitude, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN SnapStart but no snapshot_restore_py to register with
    monkeypatch.setattr(snapstart, "HOOKS_MODULE", "snapshot_restore_py_absent")
    # WHEN a client is built / THEN it is built, with a warning
    with caplog.at_level(logging.WARNING, logger="amp_lite"):
        client = Amplitude(API_KEY, server_url=fake.url)
        snapstart.enroll(client, environ=SNAPSTART_ENV)
    assert any("not installed" in r.getMessage() for r in caplog.records)
    assert not snapstart._enrolled.registered
