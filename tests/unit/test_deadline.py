"""Deadline: an absolute expiry on an injected clock (invariant I3's building block)."""

from __future__ import annotations

import time

import pytest

from amp_lite._deadline import Deadline
from tests.support.doubles import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_after_sets_expiry_relative_to_the_clock(clock: FakeClock) -> None:
    # GIVEN a clock at 1000 s
    # WHEN a deadline is made 2.5 s after now
    deadline = Deadline.after(2.5, clock)
    # THEN it expires at 1002.5 and all 2.5 s remain
    assert deadline.expires_at == pytest.approx(1002.5)
    assert deadline.remaining_s() == pytest.approx(2.5)
    assert not deadline.expired()


def test_remaining_shrinks_as_the_clock_advances(clock: FakeClock) -> None:
    # GIVEN a 2 s deadline
    deadline = Deadline.after(2.0, clock)
    # WHEN 0.75 s pass
    clock.advance(0.75)
    # THEN 1.25 s remain and it has not expired
    assert deadline.remaining_s() == pytest.approx(1.25)
    assert not deadline.expired()


def test_remaining_is_never_negative_and_expired_after_expiry(clock: FakeClock) -> None:
    # GIVEN a 1 s deadline
    deadline = Deadline.after(1.0, clock)
    # WHEN 5 s pass
    clock.advance(5.0)
    # THEN nothing remains (not a negative amount) and it is expired
    assert deadline.remaining_s() == 0.0
    assert deadline.expired()


def test_expired_exactly_at_the_expiry_instant(clock: FakeClock) -> None:
    # GIVEN a 1 s deadline
    deadline = Deadline.after(1.0, clock)
    # WHEN exactly 1 s passes
    clock.advance(1.0)
    # THEN it counts as expired
    assert deadline.expired()


def test_after_with_negative_seconds_is_already_expired(clock: FakeClock) -> None:
    # GIVEN a clock at 1000 s
    # WHEN a deadline is asked for -3 s from now
    deadline = Deadline.after(-3.0, clock)
    # THEN it expires now (not in the past) and is already expired
    assert deadline.expires_at == pytest.approx(1000.0)
    assert deadline.remaining_s() == 0.0
    assert deadline.expired()


def test_after_zero_seconds_is_expired(clock: FakeClock) -> None:
    # GIVEN / WHEN a zero-second deadline
    deadline = Deadline.after(0.0, clock)
    # THEN it is expired at once
    assert deadline.expired()


def test_shortened_by_moves_the_expiry_earlier_and_keeps_the_clock(clock: FakeClock) -> None:
    # GIVEN a 2 s deadline
    deadline = Deadline.after(2.0, clock)
    # WHEN it is shortened by 0.5 s
    shorter = deadline.shortened_by(0.5)
    # THEN the new one has 1.5 s left, the original is unchanged (immutable)
    assert shorter.remaining_s() == pytest.approx(1.5)
    assert deadline.remaining_s() == pytest.approx(2.0)
    # AND the new one follows the same injected clock
    clock.advance(1.0)
    assert shorter.remaining_s() == pytest.approx(0.5)
    assert deadline.remaining_s() == pytest.approx(1.0)


def test_shortened_by_more_than_remaining_is_expired(clock: FakeClock) -> None:
    # GIVEN a 0.2 s deadline
    deadline = Deadline.after(0.2, clock)
    # WHEN it is shortened by 1 s
    shorter = deadline.shortened_by(1.0)
    # THEN nothing remains
    assert shorter.remaining_s() == 0.0
    assert shorter.expired()


def test_shortened_by_negative_never_extends(clock: FakeClock) -> None:
    # GIVEN a 1 s deadline
    deadline = Deadline.after(1.0, clock)
    # WHEN it is "shortened" by a negative amount
    same = deadline.shortened_by(-5.0)
    # THEN it is not extended
    assert same.expires_at == deadline.expires_at
    assert same.remaining_s() == pytest.approx(1.0)


def test_clamp_returns_seconds_when_they_fit(clock: FakeClock) -> None:
    # GIVEN 3 s left
    deadline = Deadline.after(3.0, clock)
    # WHEN 1 s is clamped
    # THEN 1 s is returned unchanged
    assert deadline.clamp(1.0) == pytest.approx(1.0)


def test_clamp_returns_what_is_left_when_seconds_do_not_fit(clock: FakeClock) -> None:
    # GIVEN 3 s, of which 2.5 s pass
    deadline = Deadline.after(3.0, clock)
    clock.advance(2.5)
    # WHEN 10 s are clamped
    # THEN only the 0.5 s left are returned
    assert deadline.clamp(10.0) == pytest.approx(0.5)


def test_clamp_is_zero_after_expiry_and_for_negative_seconds(clock: FakeClock) -> None:
    # GIVEN a 1 s deadline
    deadline = Deadline.after(1.0, clock)
    # WHEN negative seconds are clamped THEN the result is 0, never negative
    assert deadline.clamp(-2.0) == 0.0
    # WHEN the deadline has passed THEN any clamp is 0
    clock.advance(2.0)
    assert deadline.clamp(5.0) == 0.0


def test_default_clock_is_monotonic() -> None:
    # GIVEN a deadline on the default clock
    before = time.monotonic()
    deadline = Deadline.after(60.0)
    after = time.monotonic()
    # THEN its expiry is 60 s after a monotonic reading taken while it was made
    assert before + 60.0 <= deadline.expires_at <= after + 60.0
    assert 0.0 < deadline.remaining_s() <= 60.0


def test_equality_ignores_the_clock(clock: FakeClock) -> None:
    # GIVEN two deadlines with the same expiry but different clocks
    a = Deadline(1005.0, clock)
    b = Deadline(1005.0, FakeClock(0.0))
    # THEN they compare equal (the clock is not part of the value)
    assert a == b
    # AND a Deadline is immutable
    with pytest.raises(AttributeError):
        a.expires_at = 1.0  # type: ignore[misc]
