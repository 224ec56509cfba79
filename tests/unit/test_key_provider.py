"""How a key provider is asked: within the flush's deadline, never long behind another flush,
no backoff for a flush that simply had no time, and its own spill per provider."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from amp_lite import Amplitude, Deadline
from amp_lite._errors import KeyUnavailableError
from amp_lite._key_sources import ProvidedKey, SecretFetcher
from tests.conftest import API_KEY

TOLERANCE_S = 0.5


def test_a_flush_does_not_wait_past_its_deadline_behind_another_flushs_fetch() -> None:
    # GIVEN a provider that takes 1.5 s, being asked by one flush (a thread: gen2 serves many)
    release = threading.Event()

    def slow() -> str:
        release.wait(1.5)
        return API_KEY

    key = ProvidedKey(slow)
    first = threading.Thread(target=key.get, kwargs={"deadline": Deadline.after(5)})
    first.start()
    try:
        time.sleep(0.05)  # let the first flush take the lock
        # WHEN a second flush with 0.2 s left asks / THEN it gives up at its deadline
        started = time.monotonic()
        with pytest.raises(KeyUnavailableError, match="still fetching"):
            key.get(Deadline.after(0.2))
        assert time.monotonic() - started < 0.2 + TOLERANCE_S
    finally:
        release.set()
        first.join(5)
    # AND the first fetch's key serves the next flush
    assert key.get(Deadline.after(1)) == API_KEY


def test_a_flush_with_no_time_to_fetch_does_not_start_a_backoff(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a secret fetcher whose store answers at once
    class Store:
        def get(self, name: str, **options: Any) -> str:
            return API_KEY

    fetcher = SecretFetcher("AMPLITUDE_API_KEY_SECRET", "amp/key")
    monkeypatch.setattr(fetcher, "_provider", lambda timeout_s: Store())
    key = ProvidedKey(fetcher)
    # WHEN a flush with almost no time left asks / THEN it is told so, without a fetch
    with pytest.raises(KeyUnavailableError, match="no time left"):
        key.get(Deadline.after(0.01))
    # AND the next flush with time fetches at once (it used to wait out a 5 s backoff)
    assert key.get(Deadline.after(2)) == API_KEY


def test_providers_of_one_name_get_spills_of_their_own() -> None:
    # GIVEN two clients whose providers share a name (two lambdas) but not a key
    clients = [Amplitude(lambda k=k: k, overflow=None) for k in ("key-project-a", "key-project-b")]
    # THEN their default spills differ: one project's events never go out with the other's key
    spills = [c._route.sinks()[-1] for c in clients]
    assert spills[0].directory != spills[1].directory  # type: ignore[attr-defined]
    # AND a labelled provider keeps one directory wherever it runs
    labelled = [Amplitude(SecretFetcher("AMPLITUDE_API_KEY_SECRET", "amp/key")) for _ in "ab"]
    dirs = {c._route.sinks()[-1].directory for c in labelled}  # type: ignore[attr-defined]
    assert len(dirs) == 1
