"""Configuration that cannot work is refused when it is given, naming the argument or the
variable: durations past any invocation, malformed server URLs, keys with stray whitespace,
retry strategies with impossible arguments. And what a server echoes never logs the key."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from amp_lite import Amplitude, ConfigError, RetryHandler, amplitude_flush
from amp_lite.testing import FakeAmplitude, Fault
from tests.conftest import API_KEY

US_URL = "https://api2.amplitude.com/2/httpapi"


# -- durations (issue 12, item 13) ----------------------------------------------------------


@pytest.mark.parametrize("option", ["request_timeout_s", "flush_timeout_s"])
def test_a_duration_past_any_invocation_is_refused(option: str) -> None:
    # GIVEN 1e10 seconds (it used to pass, then every send raised OverflowError)
    # WHEN / THEN the client is refused at once, naming the option and the bound
    with pytest.raises(ConfigError, match=rf"^{option}: at most 3600 seconds"):
        Amplitude(API_KEY, **{option: 1e10})


def test_a_duration_past_any_invocation_is_refused_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMP_LITE_FLUSH_TIMEOUT_S", "1e10")
    with pytest.raises(ConfigError, match=r"^AMP_LITE_FLUSH_TIMEOUT_S: at most 3600"):
        Amplitude(API_KEY)


def test_decorator_and_flush_durations_have_the_same_bound() -> None:
    client = Amplitude(API_KEY, overflow=())
    with pytest.raises(ConfigError, match=r"^margin_ms: at most"):
        amplitude_flush(client, margin_ms=1e12)(lambda event, context: None)
    with pytest.raises(ConfigError, match=r"^timeout_s: at most"):
        client.flush(timeout_s=1e10)
    # the bound itself is accepted: a 60-minute Cloud Run function
    assert Amplitude(API_KEY, flush_timeout_s=3600).config.flush_timeout_s == 3600


# -- server URLs (item 14) --------------------------------------------------------------------


@pytest.mark.parametrize(("url", "rule"), [
    (f"{US_URL}\n", "spaces or control characters"),
    (f" {US_URL}", "spaces or control characters"),
    ("https://api2.amplitude.com:99999/2/httpapi", "port must be 1-65535"),
    ("https://api2.amplitude.com:0/2/httpapi", "port must be 1-65535"),
    ("api2.amplitude.com/2/httpapi", "http(s) URL"),
])
def test_a_malformed_server_url_is_refused(url: str, rule: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # WHEN given as the argument / THEN the error names the argument and the rule
    with pytest.raises(ConfigError) as info:
        Amplitude(API_KEY, server_url=url)
    assert str(info.value).startswith("server_url: ") and rule in str(info.value)
    # AND from the environment, it names the variable
    monkeypatch.setenv("AMPLITUDE_SERVER_URL", url)
    with pytest.raises(ConfigError, match=r"^AMPLITUDE_SERVER_URL: "):
        Amplitude(API_KEY)


def test_url_credentials_never_appear_in_a_repr_or_an_error() -> None:
    # GIVEN a proxy URL with a password in it
    client = Amplitude(API_KEY, server_url="https://amp:s3cret-pw@proxy.example/2/httpapi")
    # THEN the URL is kept as given, and shown without its password
    assert client.config.server_url.startswith("https://amp:s3cret-pw@")
    assert "s3cret-pw" not in repr(client) + repr(client.config)
    assert "amp:***@proxy.example" in repr(client)
    # AND a malformed URL with a password is refused without showing it
    with pytest.raises(ConfigError) as info:
        Amplitude(API_KEY, server_url="https://amp:s3cret-pw@proxy.example:99999/x")
    assert "s3cret-pw" not in str(info.value)


# -- API keys (item 15) -----------------------------------------------------------------------


def test_a_pasted_newline_around_the_key_is_stripped(fake: FakeAmplitude,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the key in the environment with a trailing newline, as copy-paste leaves it
    monkeypatch.setenv("AMPLITUDE_API_KEY", f"{API_KEY}\n")
    with FakeAmplitude(api_keys=[API_KEY]) as strict:
        client = Amplitude(server_url=strict.url, overflow=())
        client.track("Pasted", user_id="user-paste")
        # WHEN flushed / THEN the key Amplitude knows was sent, and the event delivered
        assert client.flush().delivered == 1
    assert client.config.api_key == API_KEY
    assert Amplitude(f"  {API_KEY} ").config.api_key == API_KEY


def test_a_key_provider_result_is_stripped_too() -> None:
    with FakeAmplitude(api_keys=[API_KEY]) as strict:
        client = Amplitude(lambda: f"{API_KEY}\r\n", server_url=strict.url, overflow=())
        client.track("Provided", user_id="user-provided")
        assert client.flush().delivered == 1


@pytest.mark.parametrize("key", ["two words", "tab\tinside", "nul\x00inside"])
def test_a_key_with_whitespace_inside_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(ConfigError, match=r"^api_key: .*no spaces or control characters") as info:
        Amplitude(key)
    assert key not in str(info.value)


# -- keys echoed by a server (item 16) ----------------------------------------------------------


def test_a_reply_that_echoes_the_key_never_puts_it_in_the_log(
        fake: FakeAmplitude, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a proxy whose 400 names the "missing field" with the request's key in it
    fake.script(Fault.status_code(400, {"code": 400, "missing_field": f"{API_KEY}"}))
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())
    client.track("Echoed", user_id="user-echo")
    # WHEN flushed with DEBUG logging on
    with caplog.at_level(logging.DEBUG, logger="amp_lite"):
        client.flush()
    # THEN the reply was logged, but never the key
    assert "missing field" in caplog.text
    assert API_KEY not in caplog.text


# -- retry strategies (item 17) ---------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"max_attempts": "3"}, "max_attempts"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": True}, "max_attempts"),
    ({"backoff_base_s": -1}, "backoff_base_s"),
    ({"backoff_cap_s": float("inf")}, "backoff_cap_s"),
    ({"sleep": "not callable"}, "sleep"),
])
def test_retry_handler_arguments_are_checked_at_construction(kwargs: dict[str, Any],
                                                             named: str) -> None:
    # WHEN the strategy is built with an impossible argument / THEN it is refused at once
    # (it used to raise inside the flush, and every event was counted internal_error)
    with pytest.raises(ConfigError, match=rf"^RetryHandler {named}: "):
        RetryHandler(**kwargs)


def test_a_long_echo_of_the_key_is_not_shown_in_part_either(
        fake: FakeAmplitude, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a "missing field" that is not a field name but the request itself, key included
    fake.script(Fault.status_code(400, {"code": 400,
                                        "missing_field": f"request had api_key={API_KEY}"}))
    client = Amplitude(API_KEY, server_url=fake.url, overflow=())
    client.track("Echoed", user_id="user-echo")
    with caplog.at_level(logging.DEBUG, logger="amp_lite"):
        client.flush()
    # THEN no part of the key reaches the log (it used to be cut at 40 characters, then redacted)
    assert API_KEY[:12] not in caplog.text
