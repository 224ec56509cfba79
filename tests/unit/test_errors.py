"""errors.brief: a caller's value shown in an error message, short and never raising."""

from __future__ import annotations

import pytest

from amp_lite import Amplitude, InvalidEventError
from amp_lite._errors import brief
from tests.conftest import API_KEY


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def test_brief_shows_short_values_as_repr() -> None:
    assert brief("abc") == "'abc'"
    assert brief(42) == "42"


def test_brief_never_raises_and_stays_short() -> None:
    # GIVEN values whose repr raises or is enormous
    # WHEN shown / THEN a type name or a truncated repr, never an exception
    assert brief(10**5000) == "<int>"
    assert brief(BrokenRepr()).startswith("<BrokenRepr")
    assert len(brief("x" * 2_000_000)) < 100


def test_refusal_of_a_huge_value_has_a_short_message() -> None:
    # GIVEN a client, WHEN an event_type of 2 million spaces (not a valid name) is tracked
    client = Amplitude(API_KEY, overflow=())
    with pytest.raises(InvalidEventError, match=r"^event_type: must be a non-empty string") as exc:
        client.track(" " * 2_000_000, user_id="user-0001")
    # THEN the message names the field and rule without carrying the whole value
    assert len(str(exc.value)) < 200
