"""Configuration: explicit arguments vs environment variables vs defaults, and bad values."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from amp_lite import Amplitude, ConfigError, IngestionMetadata, Plan
from amp_lite._limits import MAX_BATCH_REQUEST_BYTES, MAX_REQUEST_BYTES
from amp_lite.testing import FakeAmplitude
from tests.conftest import API_KEY

US_URL = "https://api2.amplitude.com/2/httpapi"
US_BATCH_URL = "https://api2.amplitude.com/batch"
EU_URL = "https://api.eu.amplitude.com/2/httpapi"
EU_BATCH_URL = "https://api.eu.amplitude.com/batch"
PROXY_URL = "https://proxy.example.com/2/httpapi"


# -- server URL: zone, batch, explicit URL ---------------------------------------------------


def test_default_endpoint_is_us_http_v2_with_1mb_limit() -> None:
    # GIVEN no environment (clean_env) and no arguments but the key
    # WHEN a client is built
    client = Amplitude(API_KEY)
    # THEN it sends to the US HTTP V2 endpoint with the 1 MB request limit
    assert client.config.server_url == US_URL
    assert client.config.max_request_bytes == MAX_REQUEST_BYTES == 1_000_000


@pytest.mark.parametrize("zone", ["EU", "eu", "Eu"])
def test_eu_zone_argument_selects_eu_endpoint(zone: str) -> None:
    # GIVEN / WHEN server_zone="EU" in any case
    client = Amplitude(API_KEY, server_zone=zone)
    # THEN the EU HTTP V2 endpoint is used
    assert client.config.server_url == EU_URL


def test_eu_zone_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN AMPLITUDE_SERVER_ZONE=EU
    monkeypatch.setenv("AMPLITUDE_SERVER_ZONE", "EU")
    # WHEN a client is built without server_zone
    client = Amplitude(API_KEY)
    # THEN the EU endpoint is used
    assert client.config.server_url == EU_URL


def test_explicit_zone_wins_over_environment_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN AMPLITUDE_SERVER_ZONE=EU
    monkeypatch.setenv("AMPLITUDE_SERVER_ZONE", "EU")
    # WHEN server_zone="US" is passed
    client = Amplitude(API_KEY, server_zone="US")
    # THEN the argument wins
    assert client.config.server_url == US_URL


def test_explicit_zone_wins_even_over_an_invalid_environment_zone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a nonsense AMPLITUDE_SERVER_ZONE
    monkeypatch.setenv("AMPLITUDE_SERVER_ZONE", "mars")
    # WHEN server_zone is passed explicitly
    client = Amplitude(API_KEY, server_zone="EU")
    # THEN the environment is not even looked at
    assert client.config.server_url == EU_URL


@pytest.mark.parametrize(("zone", "expected"), [("US", US_BATCH_URL), ("EU", EU_BATCH_URL)])
def test_use_batch_selects_batch_endpoint_and_20mb_limit(zone: str, expected: str) -> None:
    # GIVEN / WHEN use_batch=True
    client = Amplitude(API_KEY, server_zone=zone, use_batch=True)
    # THEN the /batch endpoint of the zone with the 20 MB limit
    assert client.config.server_url == expected
    assert client.config.max_request_bytes == MAX_BATCH_REQUEST_BYTES == 20_000_000


def test_custom_batch_url_gets_20mb_limit_and_custom_v2_url_gets_1mb() -> None:
    # GIVEN / WHEN explicit URLs ending in /batch and /2/httpapi
    batch = Amplitude(API_KEY, server_url="http://127.0.0.1:9/batch")
    v2 = Amplitude(API_KEY, server_url="http://127.0.0.1:9/2/httpapi")
    # THEN the byte limit follows the path
    assert batch.config.max_request_bytes == MAX_BATCH_REQUEST_BYTES
    assert v2.config.max_request_bytes == MAX_REQUEST_BYTES


def test_explicit_server_url_wins_over_zone_batch_and_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN AMPLITUDE_SERVER_URL set to something else
    monkeypatch.setenv("AMPLITUDE_SERVER_URL", "http://127.0.0.1:9/2/httpapi")
    # WHEN server_url, server_zone and use_batch are all passed
    client = Amplitude(API_KEY, server_url=PROXY_URL, server_zone="EU", use_batch=True)
    # THEN server_url is used verbatim
    assert client.config.server_url == PROXY_URL
    assert client.config.max_request_bytes == MAX_REQUEST_BYTES


def test_server_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN AMPLITUDE_SERVER_URL
    monkeypatch.setenv("AMPLITUDE_SERVER_URL", PROXY_URL)
    # WHEN a client is built without server_url
    client = Amplitude(API_KEY)
    # THEN the environment URL is used
    assert client.config.server_url == PROXY_URL


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"server_zone": "EU"}, "https://api.eu.amplitude.com/2/httpapi"),
    ({"use_batch": True}, "https://api2.amplitude.com/batch"),
])
def test_explicit_zone_or_batch_argument_beats_environment_server_url(
        monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], expected: str) -> None:
    # GIVEN AMPLITUDE_SERVER_URL in the environment
    monkeypatch.setenv("AMPLITUDE_SERVER_URL", PROXY_URL)
    # WHEN server_zone or use_batch is passed explicitly
    client = Amplitude(API_KEY, **kwargs)
    # THEN the explicit argument wins over the environment variable
    assert client.config.server_url == expected


# -- gzip ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"server_zone": "EU"}, {"use_batch": True},
                                    {"server_url": "https://api2.amplitude.com/2/httpapi"},
                                    {"server_url": "https://api.eu.amplitude.com/batch"}])
def test_gzip_auto_on_for_amplitude_hosts(kwargs: dict[str, Any]) -> None:
    # GIVEN / WHEN a client aimed at one of Amplitude's ingestion hosts, gzip not given
    client = Amplitude(API_KEY, **kwargs)
    # THEN gzip is on
    assert client.config.gzip is True


@pytest.mark.parametrize("url", [PROXY_URL, "http://127.0.0.1:9/2/httpapi",
                                 "https://api.amplitude.com/2/httpapi",
                                 "https://api2.amplitude.com.evil.example/2/httpapi"])
def test_gzip_auto_off_for_other_hosts(url: str) -> None:
    # GIVEN / WHEN a custom URL (proxy, fake, other Amplitude host)
    client = Amplitude(API_KEY, server_url=url)
    # THEN gzip stays off
    assert client.config.gzip is False


def test_explicit_gzip_wins_both_ways() -> None:
    # GIVEN / WHEN gzip is passed explicitly against the automatic choice
    off = Amplitude(API_KEY, gzip=False)
    on = Amplitude(API_KEY, server_url=PROXY_URL, gzip=True)
    # THEN the argument wins
    assert off.config.gzip is False
    assert on.config.gzip is True


def test_gzip_true_compresses_large_bodies_on_the_wire(fake: FakeAmplitude) -> None:
    # GIVEN a client with gzip forced on, aimed at the fake
    client = Amplitude(API_KEY, server_url=fake.url, gzip=True, overflow=())
    client.track("big", user_id="user-1", event_properties={"p": "x" * 1000, "q": "y" * 1000,
                                                            "r": "z" * 1000})
    # WHEN flushed
    report = client.flush()
    # THEN the request went gzip-encoded and was accepted
    assert report.delivered == 1
    assert [r.gzip for r in fake.requests] == [True]


# -- flush timeout, enabled ------------------------------------------------------------------


def test_flush_timeout_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN AMP_LITE_FLUSH_TIMEOUT_S=2.5
    monkeypatch.setenv("AMP_LITE_FLUSH_TIMEOUT_S", "2.5")
    # WHEN / THEN it becomes flush_timeout_s
    assert Amplitude(API_KEY).config.flush_timeout_s == 2.5


def test_flush_timeout_default_is_ten_seconds() -> None:
    assert Amplitude(API_KEY).config.flush_timeout_s == 10.0


def test_explicit_flush_timeout_wins_even_over_bad_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a nonsense AMP_LITE_FLUSH_TIMEOUT_S
    monkeypatch.setenv("AMP_LITE_FLUSH_TIMEOUT_S", "soon")
    # WHEN flush_timeout_s is passed
    client = Amplitude(API_KEY, flush_timeout_s=3)
    # THEN the argument is used and the variable is ignored
    assert client.config.flush_timeout_s == 3.0


@pytest.mark.parametrize("raw", ["soon", "-1", "0", "nan", "inf"])
def test_bad_flush_timeout_environment_names_the_variable(
        monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    # GIVEN a bad AMP_LITE_FLUSH_TIMEOUT_S
    monkeypatch.setenv("AMP_LITE_FLUSH_TIMEOUT_S", raw)
    # WHEN / THEN ConfigError names the variable
    with pytest.raises(ConfigError, match="AMP_LITE_FLUSH_TIMEOUT_S"):
        Amplitude(API_KEY)


@pytest.mark.parametrize(("raw", "expected"), [("false", False), ("0", False), (" OFF ", False),
                                               ("no", False), ("true", True), ("1", True),
                                               ("Yes", True), ("on", True), ("", True)])
def test_enabled_from_environment(monkeypatch: pytest.MonkeyPatch, raw: str,
                                  expected: bool) -> None:
    # GIVEN AMP_LITE_ENABLED
    monkeypatch.setenv("AMP_LITE_ENABLED", raw)
    # WHEN / THEN it is read as a boolean word
    assert Amplitude(API_KEY).config.enabled is expected


def test_explicit_enabled_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN AMP_LITE_ENABLED=false
    monkeypatch.setenv("AMP_LITE_ENABLED", "false")
    # WHEN enabled=True is passed
    client = Amplitude(API_KEY, enabled=True)
    # THEN the client is enabled
    assert client.config.enabled is True
    assert client.track("e", user_id="user-1") is not None


def test_explicit_disabled_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN AMP_LITE_ENABLED=true
    monkeypatch.setenv("AMP_LITE_ENABLED", "true")
    # WHEN enabled=False is passed
    client = Amplitude(API_KEY, enabled=False)
    # THEN the client is disabled
    assert client.config.enabled is False


def test_bad_enabled_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN AMP_LITE_ENABLED=maybe
    monkeypatch.setenv("AMP_LITE_ENABLED", "maybe")
    # WHEN / THEN ConfigError names the variable
    with pytest.raises(ConfigError, match="AMP_LITE_ENABLED"):
        Amplitude(API_KEY)


# -- bad arguments and environment values ----------------------------------------------------


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"server_zone": "APAC"}, "server_zone"),
    ({"server_zone": 5}, "server_zone"),
    ({"server_url": "not a url"}, "server_url"),
    ({"server_url": "ftp://api2.amplitude.com/2/httpapi"}, "server_url"),
    ({"server_url": 123}, "server_url"),
    ({"min_id_length": 0}, "min_id_length"),
    ({"min_id_length": True}, "min_id_length"),
    ({"min_id_length": 2.5}, "min_id_length"),
    ({"flush_timeout_s": 0}, "flush_timeout_s"),
    ({"flush_timeout_s": -1}, "flush_timeout_s"),
    ({"flush_timeout_s": "3"}, "flush_timeout_s"),
    ({"request_timeout_s": float("inf")}, "request_timeout_s"),
    ({"request_timeout_s": float("nan")}, "request_timeout_s"),
    ({"ca_certs": "/nonexistent/ca.pem"}, "ca_certs"),
    ({"plan": "main"}, "plan"),
    ({"plan": {"branch": 1}}, "plan.branch"),
    ({"plan": {"colour": "red"}}, "plan.colour"),
    ({"ingestion_metadata": 3}, "ingestion_metadata"),
    ({"ingestion_metadata": {"source": "x"}}, "ingestion_metadata.source"),
    ({"ingestion_metadata": {"source_name": 2}}, "ingestion_metadata.source_name"),
    ({"retry": object()}, "retry"),
    ({"middleware": [42]}, "middleware"),
    ({"overflow": [42]}, "overflow"),
    ({"api_key": ""}, "api_key"),
    ({"api_key": "   "}, "api_key"),
    ({"api_key": 1234}, "api_key"),
])
def test_bad_argument_raises_config_error_naming_it(kwargs: dict[str, Any], named: str) -> None:
    # GIVEN a bad value for one argument
    kwargs = {"api_key": API_KEY, **kwargs}
    # WHEN / THEN the constructor raises ConfigError naming that argument
    with pytest.raises(ConfigError) as info:
        Amplitude(**kwargs)
    assert str(info.value).startswith(f"{named}:")


@pytest.mark.parametrize(("variable", "value"), [("AMPLITUDE_SERVER_ZONE", "APAC"),
                                                 ("AMPLITUDE_SERVER_URL", "ftp://x/2/httpapi"),
                                                 ("AMPLITUDE_SERVER_URL", "no-scheme"),
                                                 ("AMP_LITE_FLUSH_TIMEOUT_S", "x"),
                                                 ("AMP_LITE_ENABLED", "perhaps")])
def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                  variable: str, value: str) -> None:
    # GIVEN a bad environment value
    monkeypatch.setenv(variable, value)
    # WHEN / THEN ConfigError names the variable, not an argument
    with pytest.raises(ConfigError) as info:
        Amplitude(API_KEY)
    assert str(info.value).startswith(f"{variable}:")


def test_config_error_is_an_amp_lite_error() -> None:
    from amp_lite import AmpLiteError
    # GIVEN / WHEN a bad argument / THEN the error derives from the root
    with pytest.raises(AmpLiteError):
        Amplitude(API_KEY, server_zone="XX")


# -- API key ---------------------------------------------------------------------------------


def test_api_key_from_environment_is_used_on_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN AMPLITUDE_API_KEY and a fake that accepts only that key
    monkeypatch.setenv("AMPLITUDE_API_KEY", "env-key-abcdef")
    with FakeAmplitude(api_keys=["env-key-abcdef"]) as fake:
        client = Amplitude(server_url=fake.url, overflow=())
        client.track("e", user_id="user-1")
        # WHEN flushed
        report = client.flush()
        # THEN the environment key was sent and accepted
        assert report.delivered == 1
        assert len(fake.events) == 1


def test_explicit_api_key_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a different AMPLITUDE_API_KEY and a fake that accepts only API_KEY
    monkeypatch.setenv("AMPLITUDE_API_KEY", "env-key-wrong")
    with FakeAmplitude(api_keys=[API_KEY]) as fake:
        client = Amplitude(API_KEY, server_url=fake.url, overflow=())
        client.track("e", user_id="user-1")
        # WHEN flushed
        report = client.flush()
        # THEN the argument's key was used
        assert client.config.api_key == API_KEY
        assert report.delivered == 1
        assert report.rejected == 0


def test_empty_environment_key_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN AMPLITUDE_API_KEY set but empty
    monkeypatch.setenv("AMPLITUDE_API_KEY", "")
    # WHEN a client is built
    client = Amplitude()
    # THEN it has no key (and the constructor did not raise)
    assert client.config.api_key is None


def test_missing_key_track_works_flush_raises_and_events_stay_buffered(
        fake: FakeAmplitude) -> None:
    # GIVEN no key anywhere
    client = Amplitude(server_url=fake.url, overflow=())
    # WHEN events are tracked
    first = client.track("e1", user_id="user-1")
    second = client.track("e2", user_id="user-2")
    # THEN tracking works
    assert first is not None
    assert second is not None
    assert client.pending == 2
    # WHEN flushed
    with pytest.raises(ConfigError) as info:
        client.flush()
    # THEN the error names AMPLITUDE_API_KEY, nothing was sent, the events are still pending
    assert "AMPLITUDE_API_KEY" in str(info.value)
    assert fake.requests == []
    assert client.pending == 2
    # AND a second flush raises again without losing them
    with pytest.raises(ConfigError):
        client.flush()
    assert client.pending == 2


def test_missing_key_events_keep_their_order_ahead_of_later_ones(fake: FakeAmplitude) -> None:
    # GIVEN a keyless client whose flush failed with two buffered events
    client = Amplitude(server_url=fake.url, overflow=())
    client.track("e1", user_id="user-1")
    client.track("e2", user_id="user-1")
    with pytest.raises(ConfigError):
        client.flush()
    # WHEN another event is tracked
    client.track("e3", user_id="user-1")
    # THEN all three are pending
    assert client.pending == 3


def test_missing_key_flush_without_events_does_not_raise() -> None:
    # GIVEN no key and nothing tracked
    client = Amplitude(overflow=())
    # WHEN flushed (README: the error comes "at the first flush that has events")
    report = client.flush()
    # THEN nothing happens
    assert report.tracked == 0
    assert report.dropped == 0


def test_missing_key_at_end_of_invocation_drops_and_counts(fake: FakeAmplitude) -> None:
    # GIVEN a keyless client and an invocation scope with one event
    client = Amplitude(server_url=fake.url, overflow=())
    # WHEN the scope exits (its flush never raises)
    with client.invocation(timeout_s=2) as invocation:
        client.track("e", user_id="user-1")
    # THEN the event is counted as dropped for a config error, and nothing was sent
    assert invocation.report is not None
    assert invocation.report.dropped == 1
    assert dict(invocation.report.dropped_reasons) == {"config_error": 1}
    assert fake.requests == []


class _CountingProvider:
    """A key provider (Secrets Manager style) that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return API_KEY


def test_api_key_provider_is_not_called_by_construction_or_track() -> None:
    # GIVEN a key provider
    provider = _CountingProvider()
    # WHEN a client is built and events are tracked
    client = Amplitude(provider, overflow=())
    client.track("e", user_id="user-1")
    # THEN the provider was not called, and the repr says where the key comes from
    assert provider.calls == 0
    assert "api_key=<from provider>" in repr(client)


def test_api_key_provider_is_not_called_by_an_empty_flush() -> None:
    # GIVEN a key provider and nothing tracked
    provider = _CountingProvider()
    client = Amplitude(provider, overflow=())
    # WHEN an empty buffer is flushed
    client.flush()
    # THEN the provider was not asked for the key
    assert provider.calls == 0


def test_api_key_provider_is_called_once_for_several_flushes() -> None:
    # GIVEN a key provider and a fake that accepts only its key
    provider = _CountingProvider()
    with FakeAmplitude(api_keys=[API_KEY]) as strict_fake:
        client = Amplitude(provider, server_url=strict_fake.url, overflow=())
        # WHEN two flushes with events happen
        client.track("e1", user_id="user-1")
        first = client.flush()
        client.track("e2", user_id="user-1")
        second = client.flush()
        # THEN the provider was called once and its key delivered both events
        assert provider.calls == 1
        assert (first.delivered, second.delivered) == (1, 1)
        assert API_KEY not in repr(client) + repr(client.config)


def test_failing_api_key_provider_raises_config_error_naming_api_key() -> None:
    # GIVEN a provider that fails with a message holding a secret
    def provider() -> str:
        raise RuntimeError("secret-in-message-42")

    client = Amplitude(provider, overflow=())
    client.track("e", user_id="user-1")
    # WHEN flushed
    with pytest.raises(ConfigError) as info:
        client.flush()
    # THEN the error names api_key, not the provider's message, and the event stays pending
    assert str(info.value).startswith("api_key:")
    assert "secret-in-message-42" not in str(info.value)
    assert client.pending == 1


def test_missing_key_is_irrelevant_when_disabled() -> None:
    # GIVEN no key and a disabled client
    client = Amplitude(enabled=False)
    # WHEN tracking and flushing
    tracked = client.track("e", user_id="user-1")
    report = client.flush()
    # THEN no error, nothing tracked
    assert tracked is None
    assert report.tracked == 0


def test_config_is_immutable() -> None:
    # GIVEN a client
    client = Amplitude(API_KEY)
    # WHEN / THEN its config cannot be changed in place
    with pytest.raises(dataclasses.FrozenInstanceError):
        client.config.api_key = "other"  # type: ignore[misc]


def test_repr_never_contains_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN clients with the key from an argument and from the environment
    monkeypatch.setenv("AMPLITUDE_API_KEY", "env-secret-key-777")
    from_arg = Amplitude(API_KEY)
    from_env = Amplitude()
    # WHEN / THEN no repr shows it
    for text in (repr(from_arg), repr(from_arg.config), str(from_arg.config)):
        assert API_KEY not in text
    for text in (repr(from_env), repr(from_env.config)):
        assert "env-secret-key-777" not in text
    # AND the client repr still says whether a key is set
    assert "api_key=<set>" in repr(from_arg)
    monkeypatch.delenv("AMPLITUDE_API_KEY")
    assert "api_key=<missing>" in repr(Amplitude())


def test_missing_key_error_does_not_echo_anything_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a whitespace key in the environment (refused)
    monkeypatch.setenv("AMPLITUDE_API_KEY", "  ")
    # WHEN / THEN the error names api_key without echoing values
    with pytest.raises(ConfigError) as info:
        Amplitude()
    assert "api_key" in str(info.value)
    assert "'  '" not in str(info.value)


# -- plan and ingestion_metadata -------------------------------------------------------------


def _flushed_event(fake: FakeAmplitude, **kwargs: Any) -> dict[str, Any]:
    client = Amplitude(API_KEY, server_url=fake.url, overflow=(), **kwargs)
    client.track("e", user_id="user-1")
    assert client.flush().delivered == 1
    return fake.events[-1]


@pytest.mark.parametrize("plan", [
    Plan(branch="main", source="web", version="1", version_id="vid-9"),
    {"branch": "main", "source": "web", "version": "1", "version_id": "vid-9"},
    {"branch": "main", "source": "web", "version": "1", "versionId": "vid-9"},
])
def test_plan_forms_go_out_with_versionid_wire_name(
        fake: FakeAmplitude, plan: Plan | Mapping[str, str]) -> None:
    # GIVEN / WHEN a client with a plan (dataclass or mapping) sends an event
    event = _flushed_event(fake, plan=plan)
    # THEN the event carries the plan with versionId
    assert event["plan"] == {"branch": "main", "source": "web", "version": "1",
                             "versionId": "vid-9"}


def test_plan_none_fields_are_left_out(fake: FakeAmplitude) -> None:
    # GIVEN / WHEN a partial plan
    event = _flushed_event(fake, plan=Plan(branch="main"))
    # THEN only the set fields are sent
    assert event["plan"] == {"branch": "main"}


@pytest.mark.parametrize("metadata", [
    IngestionMetadata(source_name="ampli", source_version="2.0.0"),
    {"source_name": "ampli", "source_version": "2.0.0"},
])
def test_ingestion_metadata_forms(fake: FakeAmplitude,
                                  metadata: IngestionMetadata | Mapping[str, str]) -> None:
    # GIVEN / WHEN a client with ingestion metadata sends an event
    event = _flushed_event(fake, ingestion_metadata=metadata)
    # THEN it is on the event
    assert event["ingestion_metadata"] == {"source_name": "ampli", "source_version": "2.0.0"}


def test_no_plan_or_metadata_by_default(fake: FakeAmplitude) -> None:
    # GIVEN / WHEN a default client sends an event
    event = _flushed_event(fake)
    # THEN neither field is present
    assert "plan" not in event
    assert "ingestion_metadata" not in event


def test_plan_dataclass_to_wire() -> None:
    # GIVEN / WHEN / THEN Plan.to_wire renames version_id and skips None
    assert Plan(version_id="v", source="s").to_wire() == {"source": "s", "versionId": "v"}
    assert IngestionMetadata(source_name="n").to_wire() == {"source_name": "n"}


def test_min_id_length_is_kept() -> None:
    # GIVEN / WHEN / THEN min_id_length is stored, default None
    assert Amplitude(API_KEY, min_id_length=3).config.min_id_length == 3
    assert Amplitude(API_KEY).config.min_id_length is None


def test_ca_certs_takes_a_path_object(tmp_path: Any) -> None:
    # GIVEN a CA bundle named by a pathlib.Path / THEN it is accepted, kept as a string
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not parsed until the first send")
    assert Amplitude(API_KEY, ca_certs=bundle).config.ca_certs == str(bundle)
    # AND a value that is not a path names the argument and the rule
    with pytest.raises(ConfigError, match=r"^ca_certs: must be the path of a CA bundle file"):
        Amplitude(API_KEY, ca_certs=42)  # type: ignore[typeddict-item]
