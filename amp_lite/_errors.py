"""The error model: one root, and a subclass for each way things go wrong."""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._wire import BufferedEvent


_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 80  # enough to recognise a value, never a 2 MB message


def brief(value: Any) -> str:
    """A short repr of a caller's value for an error message; never raises (an int too long
    to print, a __repr__ that fails)."""
    try:
        return _BRIEF.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def redact(text: str, secret: str) -> str:
    """`text` with every occurrence of `secret` (the API key) masked: for anything logged that
    came from a server, which may echo the request."""
    return text.replace(secret, "<api key>") if secret else text


class AmpLiteError(Exception):
    """Root of every error amp_lite raises."""


class ConfigError(AmpLiteError):
    """The client is misconfigured: the message names the argument or environment variable."""


class KeyUnavailableError(ConfigError):
    """The API key's provider failed, or is waiting out a backoff after failing: a flush that
    cannot raise overflows its events instead, to be delivered once the key is known."""


class InvalidEventError(AmpLiteError, ValueError):
    """An event was refused by `track()`: the message names the field and the rule it broke."""


class OverflowWriteError(AmpLiteError):
    """An overflow sink could not take (some of) the events it was given.

    `unwritten` lists the events it did not write when it wrote the others; None means none
    were written. `drop_reason` is the reason to count them under when no later sink takes
    them (None: `sink_failed`).
    """

    def __init__(self, message: str, *, unwritten: Sequence[BufferedEvent] | None = None,
                 drop_reason: str | None = None) -> None:
        super().__init__(message)
        self.unwritten = unwritten
        self.drop_reason = drop_reason
