"""The Cloud Functions flush budget: which timeout wins, and bad values."""

from __future__ import annotations

import pytest

from amp_lite import ConfigError
from amp_lite.gcp import DEFAULT_TIMEOUT_S, function_timeout_s


@pytest.mark.parametrize(("explicit", "env", "expected"), [
    (None, {}, DEFAULT_TIMEOUT_S),
    (None, {"CLOUD_RUN_TIMEOUT_SECONDS": "300"}, 300.0),
    (None, {"FUNCTION_TIMEOUT_SEC": "120", "CLOUD_RUN_TIMEOUT_SECONDS": "300"}, 120.0),
    (None, {"AMP_LITE_TIMEOUT_S": "9", "FUNCTION_TIMEOUT_SEC": "120"}, 9.0),
    (4.5, {"AMP_LITE_TIMEOUT_S": "9", "FUNCTION_TIMEOUT_SEC": "120"}, 4.5),
])
def test_timeout_precedence(explicit: float | None, env: dict[str, str],
                            expected: float) -> None:
    # the decorator argument, then AMP_LITE_TIMEOUT_S, then the platform's variables, then 60 s
    assert function_timeout_s(explicit, env) == expected


@pytest.mark.parametrize(("env", "name"), [
    ({"AMP_LITE_TIMEOUT_S": "soon"}, "AMP_LITE_TIMEOUT_S"),
    ({"CLOUD_RUN_TIMEOUT_SECONDS": "-5"}, "CLOUD_RUN_TIMEOUT_SECONDS"),
    ({"FUNCTION_TIMEOUT_SEC": "0"}, "FUNCTION_TIMEOUT_SEC"),
])
def test_bad_timeouts_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        function_timeout_s(None, env)


def test_bad_explicit_timeout_names_the_argument() -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        function_timeout_s(0, {})
